"""What the ``evaluate`` metric modules under ``metrics/`` compute: Archer's graders over k completions per problem.

``metrics/archer_math/archer_math.py`` and ``metrics/archer_code/archer_code.py`` are thin ``evaluate.Metric``
scripts (``evaluate.load("metrics/archer_math")``, pushable as Hub metric repos) over :func:`score`, so that a
user's own generations are scored exactly as training and ``archer eval`` score them: by
``archer.evaluation.grading.grade`` (the math reward's answer extraction and Math-Verify, the code reward's
sandbox with every test) and the unbiased pass@k of ``archer.evaluation.metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from archer.evaluation.grading import GradingOptions, grade
from archer.evaluation.metrics import aggregate

CITATION = """\
@article{wang2025archer,
  title   = {Stabilizing Knowledge, Promoting Reasoning: Dual-Token Constraints for RLVR},
  author  = {Wang, Jiakang and others},
  journal = {arXiv preprint arXiv:2507.15778},
  year    = {2025}
}
@article{chen2021codex,
  title   = {Evaluating Large Language Models Trained on Code},
  author  = {Chen, Mark and others},
  journal = {arXiv preprint arXiv:2107.03374},
  year    = {2021}
}
"""


def math_specs(references: Sequence[str | Sequence[str]]) -> list[dict[str, Any]]:
    """One math grading spec per problem from its gold answer (LaTeX or plain text, as Math-Verify reads it), or
    from its list of accepted answers (any one scores 1)."""
    return [{"grader": "math", "gold": gold if isinstance(gold, str) else list(gold)} for gold in references]


def code_specs(references: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One code grading spec per problem. A reference is the problem's tests (JSON text of
    ``[{"input", "output", "testtype"}, ...]``, APPS-style ``{"inputs", "outputs"}``, or LiveCodeBench's compressed
    private tests), or ``{"tests": <that>, "fn_name": <method functional tests call; "" or None for stdin tests>}``."""
    from archer.rewards import normalize_tests

    specs = []
    for i, reference in enumerate(references):
        tests, fn_name = (
            (reference["tests"], reference.get("fn_name") or None)
            if isinstance(reference, Mapping)
            else (reference, None)
        )
        try:
            decoded = normalize_tests(tests, fn_name)
        except Exception as err:  # a malformed reference is the caller's input: say which one
            raise ValueError(f"references[{i}]: {err}") from None
        if not decoded:
            raise ValueError(f"references[{i}]: no tests")
        specs.append({"grader": "code", "tests": decoded, "fn_name": fn_name})
    return specs


def grading_options(**kwargs: Any) -> GradingOptions:
    """The metric's compute keywords beyond ``pass_k``: the fields of ``GradingOptions``, as ``archer eval`` grades."""
    valid = [f.name for f in fields(GradingOptions)]
    if unknown := sorted(set(kwargs) - set(valid)):
        raise ValueError(f"unknown keyword {unknown[0]!r}; valid: pass_k, {', '.join(valid)}")
    return GradingOptions(**kwargs)


def score(
    specs: Sequence[Mapping[str, Any]],
    predictions: Sequence[Sequence[str]],
    options: GradingOptions | None = None,
    pass_k: Sequence[int] = (),
) -> dict[str, Any]:
    """Grade the k completions of every problem; fractions in [0, 1], as ``evaluate`` metrics report them.

    Returns ``avg@k`` (mean score over all samples: pass@1 averaged over k), unbiased ``pass@k`` and ``pass@j``
    for every j in ``pass_k``, ``k``, and per problem its k ``scores`` and what the grader read from each completion
    (``extracted``: the boxed answer or the code block, None when there was none).
    """
    if len(specs) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(specs)} references: give one list per problem")
    if not specs:
        raise ValueError("no problems to score")
    k = len(predictions[0])
    if k == 0 or any(len(texts) != k for texts in predictions):
        raise ValueError(f"every problem needs the same number k >= 1 of completions (the first has {k})")
    if bad := [j for j in pass_k if not 1 <= j <= k]:
        raise ValueError(f"pass_k: {bad[0]} is not between 1 and k = {k}")
    graded = [grade(spec, list(texts), options) for spec, texts in zip(specs, predictions, strict=True)]
    scores = [[sample.score for sample in problem] for problem in graded]
    return {
        **aggregate(scores, pass_k, scale=1.0),
        "k": k,
        "scores": scores,
        "extracted": [[sample.extracted for sample in problem] for problem in graded],
    }
