"""Archer's code grader as an `evaluate` metric: every test run in a bubblewrap sandbox; avg@k and unbiased pass@k."""

import datasets
import evaluate

from archer import PAPER_URL
from archer.evaluation.evaluate_metrics import CITATION, code_specs, grading_options, score

_DESCRIPTION = """\
Scores k sampled completions per programming problem exactly as Archer's training reward and `archer eval` do:
the program is the last ```python block after the reasoning (text after the last `</think>`, or the whole completion
without one), run against every test of the problem, LiveCodeBench style (stdin/stdout tests, or
functional tests calling a named method), each run in its own bubblewrap sandbox (no network, no host files, a
memory budget, a time limit per test). A completion scores 1 when it passes every test, else 0. Reported: avg@k,
the unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), optional pass@j for j < k, and every
completion's score and extracted program. Values are fractions in [0, 1]. Needs bubblewrap and libseccomp
(`apt-get install bubblewrap libseccomp2`); without them it refuses to run any code.
"""

_KWARGS_DESCRIPTION = r"""
Args:
    predictions (`list` of `list` of `str`): the k completions of each problem (the same k for every problem).
    references (`list` of `str`, or `list` of `dict`): each problem's tests, as JSON text of
        `[{"input": ..., "output": ..., "testtype": "stdin" | "functional"}, ...]` (or APPS-style
        `{"inputs": [...], "outputs": [...]}`, or LiveCodeBench's compressed private tests); or a dict
        `{"tests": <that text>, "fn_name": <the method functional tests call; "" for stdin tests>}`.
    pass_k (`list` of `int`, optional): extra j <= k for which unbiased pass@j is reported too.
    require_think_close (`bool`, optional, default False): False grades a completion without `</think>` whole, as
        the paper's authors grade; True scores it 0 (stricter: an implicit length penalty).
    code_timeout_s (`float`, optional): wall-clock limit per test run (default: 6 s, LiveCodeBench's).
    code_budget_s (`float`, optional): cap on the sum of one completion's test run times (default: none).
    code_memory_mb (`int`, optional): memory budget of one run (default: the code reward's).
Returns:
    avg@k (`float`): mean score over all completions of all problems (k is the number given per problem).
    pass@k (`float`): unbiased pass@k, averaged over problems; pass@j likewise for each j in `pass_k`.
    k (`int`): completions per problem.
    scores (`list` of `list` of `float`): each completion's score (1.0: every test passed), per problem.
    extracted (`list` of `list` of `str` or None): the code block read from each completion.
Examples:
    >>> archer_code = evaluate.load("metrics/archer_code")
    >>> tests = '[{"input": "2 3\\n", "output": "5\\n", "testtype": "stdin"}]'
    >>> results = archer_code.compute(
    ...     predictions=[["```python\na, b = map(int, input().split())\nprint(a + b)\n```", "no code"]],
    ...     references=[tests],
    ... )
    >>> results["avg@2"], results["pass@2"], results["scores"]
    (0.5, 1.0, [[1.0, 0.0]])
"""

_PREDICTIONS = datasets.Sequence(datasets.Value("string"))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ArcherCode(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": _PREDICTIONS, "references": datasets.Value("string")}),
                datasets.Features(
                    {
                        "predictions": _PREDICTIONS,
                        "references": {"tests": datasets.Value("string"), "fn_name": datasets.Value("string")},
                    }
                ),
            ],
            reference_urls=[PAPER_URL, "https://livecodebench.github.io/"],
        )

    def _compute(self, predictions, references, pass_k=(), **grading):
        return score(code_specs(references), predictions, grading_options(**grading), pass_k)
