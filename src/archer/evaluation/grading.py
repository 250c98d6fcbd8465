"""Score completions with the project's own rewards, so that training and evaluation grade alike.

A problem's grading spec is the ``specific`` dict of its lighteval ``Doc``:
``{"grader": "math", "gold": <reference answer, or a list of accepted answers>}`` or
``{"grader": "code", "tests": [{"input", "output", "testtype"}, ...], "fn_name": <str or None>}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

GRADERS = ("math", "code")


@dataclass(frozen=True)
class SampleScore:
    """The grade of one completion and what the grader read from it (boxed answer or code block)."""

    score: float
    extracted: str | None


@dataclass(frozen=True)
class GradingOptions:
    """How completions are read and code is run; ``None`` keeps the defaults of ``archer.rewards.code_reward``."""

    require_think_close: bool = field(default=False, metadata={"help": "a completion without </think> scores 0"})
    code_timeout_s: float | None = field(default=None, metadata={"help": "wall-clock limit per test run"})
    code_budget_s: float | None = field(
        default=None, metadata={"help": "cap on the sum of one completion's test run times (None: no cap)"}
    )
    code_memory_mb: int | None = field(default=None, metadata={"help": "address-space limit of the program"})


def grade(
    spec: Mapping[str, Any], completions: Sequence[str], options: GradingOptions | None = None
) -> list[SampleScore]:
    """Grade every completion of one problem; returns one ``SampleScore`` per completion, in order."""
    kind = spec.get("grader")
    options = options or GradingOptions()
    if kind == "math":
        return _grade_math(spec["gold"], completions, options)
    if kind == "code":
        return _grade_code(spec["tests"], spec.get("fn_name"), completions, options)
    raise ValueError(f"unknown grader {kind!r}; valid: {', '.join(GRADERS)}")


def _grade_math(gold: Any, completions: Sequence[str], options: GradingOptions) -> list[SampleScore]:
    # math_reward is the training reward (TRL signature); it checks in its own worker processes. Several accepted
    # answers (OlympiadBench's final_answer list) score 1 when any matches, as rllm's math reward does.
    from archer.rewards import extract_boxed_answer, math_reward

    close = options.require_think_close
    best = [0.0] * len(completions)
    for answer in gold if isinstance(gold, list) else [gold]:
        rewards = math_reward(list(completions), solution=[str(answer)] * len(completions), require_think_close=close)
        best = [max(b, float(r or 0.0)) for b, r in zip(best, rewards, strict=True)]
    return [SampleScore(b, extract_boxed_answer(text, close)) for b, text in zip(best, completions, strict=True)]


def _grade_code(
    tests: Sequence[Mapping[str, Any]], fn_name: str | None, completions: Sequence[str], options: GradingOptions
) -> list[SampleScore]:
    # code_reward is the training reward with every test (max_tests=None); it runs the k programs in parallel
    # sandboxes (ARCHER_SANDBOX_WORKERS) and raises SandboxUnavailable (a UserError) without bubblewrap.
    from archer.rewards import code_reward, extract_code

    limits: dict[str, Any] = {
        key: value
        for key, value in (("timeout_s", options.code_timeout_s), ("memory_mb", options.code_memory_mb))
        if value is not None
    }
    close = options.require_think_close
    rewards = code_reward(
        list(completions),
        tests=[list(tests)] * len(completions),
        fn_name=fn_name,
        budget_s=options.code_budget_s,
        require_think_close=close,
        **limits,
    )
    return [
        SampleScore(float(r or 0.0), extract_code(text, close)) for r, text in zip(rewards, completions, strict=True)
    ]
