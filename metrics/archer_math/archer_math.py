"""Archer's math grader as an `evaluate` metric: avg@k and unbiased pass@k over k completions per problem."""

import datasets
import evaluate

from archer import PAPER_URL
from archer.evaluation.evaluate_metrics import CITATION, grading_options, math_specs, score

_DESCRIPTION = """\
Scores k sampled completions per math problem exactly as Archer's training reward and `archer eval` do: the
answer is the last \\boxed{} after the reasoning (text after the last `</think>`, or the whole completion without
one), checked against the gold answer symbolically with Math-Verify, in worker processes with a time
limit per check. A completion scores 1 or 0. Reported: avg@k (the mean score over all samples, i.e. pass@1 averaged
over k), the unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), optional pass@j for j < k, and
every completion's score and extracted answer. Values are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = r"""
Args:
    predictions (`list` of `list` of `str`): the k completions of each problem (the same k for every problem).
    references (`list` of `str`, or `list` of `list` of `str`): each problem's gold answer, e.g. "\\frac{7}{8}" or
        "25"; or its accepted answers (any one scores 1, as OlympiadBench lists them).
    pass_k (`list` of `int`, optional): extra j <= k for which unbiased pass@j is reported too.
    require_think_close (`bool`, optional, default False): False grades a completion without `</think>` whole, as
        the paper's authors (and `archer eval`'s paper suite) grade; True scores it 0, a stricter rule (a completion
        cut off mid-thought then has no answer: an implicit length penalty).
Returns:
    avg@k (`float`): mean score over all completions of all problems (k is the number given per problem).
    pass@k (`float`): unbiased pass@k, averaged over problems; pass@j likewise for each j in `pass_k`.
    k (`int`): completions per problem.
    scores (`list` of `list` of `float`): each completion's score (1.0 right, 0.0 wrong), per problem.
    extracted (`list` of `list` of `str` or None): the boxed answer read from each completion.
Examples:
    >>> archer_math = evaluate.load("metrics/archer_math")
    >>> results = archer_math.compute(
    ...     predictions=[["<think>3/4 = 6/8</think> \\boxed{\\frac{7}{8}}", "\\boxed{0.875}", "\\boxed{7}"]],
    ...     references=["\\frac{7}{8}"],
    ... )
    >>> results["avg@3"], results["pass@3"], results["scores"]
    (0.6666666666666666, 1.0, [[1.0, 1.0, 0.0]])
"""


_PREDICTIONS = datasets.Sequence(datasets.Value("string"))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ArcherMath(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": _PREDICTIONS, "references": datasets.Value("string")}),
                datasets.Features(
                    {"predictions": _PREDICTIONS, "references": datasets.Sequence(datasets.Value("string"))}
                ),
            ],
            reference_urls=[PAPER_URL, "https://github.com/huggingface/Math-Verify"],
        )

    def _compute(self, predictions, references, pass_k=(), **grading):
        return score(math_specs(references), predictions, grading_options(**grading), pass_k)
