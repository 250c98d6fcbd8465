"""Verifiable rewards with TRL's reward-function signature: ``f(completions, **dataset_columns) -> list[float]``."""

from __future__ import annotations

from collections.abc import Callable

from archer.errors import UserError
from archer.rewards.code import GradeResult, TestOutcome, code_reward, grade_code
from archer.rewards.extract import completion_text, extract_boxed_answer, extract_code
from archer.rewards.livecodebench import decode_lcb_tests, normalize_tests
from archer.rewards.math import math_reward, verify_math
from archer.rewards.thinking import resolve_require_think_close, template_requires_think_close

REWARD_FUNCS: dict[str, Callable[..., list]] = {"math": math_reward, "code": code_reward}


def get_reward_func(name: str) -> Callable[..., list]:
    """The reward function registered as ``name``."""
    if name not in REWARD_FUNCS:
        raise UserError(f"unknown reward {name!r}: valid rewards are {', '.join(sorted(REWARD_FUNCS))}")
    return REWARD_FUNCS[name]


__all__ = [
    "REWARD_FUNCS",
    "GradeResult",
    "TestOutcome",
    "code_reward",
    "completion_text",
    "decode_lcb_tests",
    "extract_boxed_answer",
    "extract_code",
    "get_reward_func",
    "grade_code",
    "math_reward",
    "normalize_tests",
    "resolve_require_think_close",
    "template_requires_think_close",
    "verify_math",
]
