"""Math reward: answer extraction, symbolic checks, bad golds, time limits, and correctness off the main thread."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archer.errors import UserError
from archer.rewards import (
    REWARD_FUNCS,
    completion_text,
    extract_boxed_answer,
    get_reward_func,
    math_reward,
    verify_math,
)
from archer.rewards.math import _pool, check_pair, verify_many


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{42}", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}} done", "\\sqrt{\\frac{a}{b^{2}}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped set braces do not close the box
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed {8}", "8"),
        ("<think>maybe \\boxed{1}</think> so \\boxed{2}", "2"),
        ("<think>surely \\boxed{1}</think> the answer is 1", None),  # a box inside the reasoning does not count
        ("<think>still thinking \\boxed{1}", "1"),  # no </think>: graded whole, as the authors grade
        ("prompt opened the block \\boxed{1} </think> \\boxed{3}", "3"),  # lone </think>
        ("</think> \\boxed{5} <think> more \\boxed{6}", None),  # reopened and never closed
        ("no box here: 42", None),
        ("\\boxed{}", None),
        (
            "\\boxed{1} and a truncated \\boxed{\\frac{1}{",
            None,
        ),  # a cut-off last box is not replaced by an earlier one
    ],
)
def test_extract_boxed_answer(text: str, expected: str | None) -> None:
    assert extract_boxed_answer(text) == expected


def test_completion_text_accepts_strings_and_chat_messages() -> None:
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a \\boxed{1}"}]) == "a \\boxed{1}"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]) == "hi"
    with pytest.raises(TypeError):
        completion_text(3)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("\\frac{2}{4}", "0.5"),
        ("\\dfrac{1}{2}", "$\\frac{1}{2}$"),
        ("0.5", "50\\%"),
        ("(1,2)", "(1, 2)"),
        ("[0,1)", "[0, 1)"),
        ("(x-1)(x+1)", "x^2-1"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("1000", "1,000"),
        ("\\{2, 1\\}", "\\{1, 2\\}"),
        ("x = 3", "3"),
        ("12", "\\boxed{12}"),
        ("007", "7"),
    ],
)
def test_equivalent_answers_score_one(answer: str, gold: str) -> None:
    assert verify_math(answer, gold) == 1.0


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("0.33", "\\frac{1}{3}"),  # close is not equal
        ("1.9", "19"),
        ("-5", "5"),
        ("(2,1)", "(1,2)"),  # tuples are ordered
        ("[0,1)", "[0,1]"),  # open vs closed end
        ("x^2+1", "x^2-1"),
        ("\\frac{\\sqrt{2}}{2}", "0.7071067"),  # an irrational answer vs a truncated decimal gold
        ("50", "50\\%"),
        ("120", "12"),
        ("B", "A"),
        ("２０４", "204"),  # fullwidth digits: int() reads them, Math-Verify does not
        ("٢٠٤", "204"),  # Arabic-Indic digits
    ],
)
def test_wrong_answers_that_look_right_score_zero(answer: str, gold: str) -> None:
    assert verify_math(answer, gold) == 0.0


def test_integer_fast_path_is_ascii_only() -> None:
    assert math_reward(["\\boxed{２０４}", "\\boxed{204}"], solution=["204", "204"]) == [0.0, 1.0]
    assert verify_math("204", "２０４") is None  # such a gold is not an integer Math-Verify can parse


@pytest.mark.parametrize("gold", ["", "\\frac{", "}}{{", "\\boxed{}"])
def test_unparsable_gold_is_none(gold: str) -> None:
    assert verify_math("1", gold) is None
    assert verify_math(None, gold) is None


def test_math_reward_rules_and_bad_gold_warning(caplog: pytest.LogCaptureFixture) -> None:
    completions = [
        "<think>6*7</think> The answer is \\boxed{42}.",
        "<think>6*7 is \\boxed{42}</think> I think 41.",  # right box only inside the reasoning
        "<think>6*7 is \\boxed{42} and then I ran out of tok",  # never closes: graded whole (the authors' rule)
        [{"role": "assistant", "content": "\\boxed{\\frac{84}{2}}"}],
        "\\boxed{42.0}",
        "\\boxed{4 2}",  # not 42
        "\\boxed{42}",
    ]
    solutions = ["42"] * 6 + ["\\frac{"]
    with caplog.at_level(logging.WARNING, logger="archer.rewards.math"):
        rewards = math_reward(completions, solution=solutions, prompts=["p"] * 7)
    assert rewards == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, None]
    assert math_reward(completions[2:3], solution=["42"], require_think_close=True) == [0.0]
    assert any("row(s) [6]" in r.message and "\\\\frac{" in r.message for r in caplog.records)


def test_math_reward_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        math_reward(["a", "b"], solution=["1"])


def test_correct_from_threads() -> None:
    """math-verify alone answers False off the main thread; ours must not."""
    assert check_pair("\\frac{3}{6}", "0.5", 5) == 1.0  # main thread, sanity

    pairs = [(f"\\frac{{{i}}}{{{2 * i}}}", "0.5") for i in range(1, 9)] + [("\\frac{1}{3}", "0.5")]
    seen: list[list[float | None]] = []
    thread = threading.Thread(target=lambda: seen.append(verify_many(pairs)))
    thread.start()
    thread.join()
    assert seen == [[1.0] * 8 + [0.0]]

    # Several threads at once (TRL's async rewards), each with its own distinct (uncached) answers.
    def score(k: int) -> list[float | None]:
        return math_reward([f"\\boxed{{\\frac{{{k}}}{{{3 * k}}}}}", "\\boxed{0.25}"], solution=["1/3", "1/3"])

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(score, range(11, 19))) == [[1.0, 0.0]] * 8


def test_pathological_answer_is_bounded_and_pool_recovers() -> None:
    verify_math("\\frac{1}{5}", "0.2")  # the pool is up
    # A 100-million-digit power: the big-integer work runs in C, where math-verify's own alarm cannot stop it.
    start = time.monotonic()
    assert verify_math("10^{10^{8}}", "1", timeout_s=1.0) == 0.0
    assert time.monotonic() - start < 3.0
    assert verify_math("\\frac{10}{20}", "0.5") == 1.0


_BALANCED = st.recursive(
    st.text(alphabet="x1+^\\ ", max_size=5).filter(lambda t: not t.endswith("\\")),
    lambda inner: st.builds(lambda a, b: "{" + a + "}" + b, inner, inner),
    max_leaves=8,
)


@given(_BALANCED)
def test_boxed_extraction_balances_any_nesting(content: str) -> None:
    expected = content.strip() or None
    assert extract_boxed_answer("<think>\\boxed{0}</think> so \\boxed{" + content + "} done") == expected


def test_pool_replaces_a_worker_killed_while_idle() -> None:
    assert verify_math("\\frac{1}{4}", "0.25") == 1.0  # the pool is up
    pool = _pool()
    for worker in list(pool._idle.queue):
        worker.proc.kill()
        worker.proc.wait()
    assert verify_math("\\frac{2}{8}", "0.25") == 1.0
    assert verify_math("\\frac{3}{8}", "0.25") == 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_integer_fast_path_agrees_with_math_verify(a: int, b: int) -> None:
    assert verify_math(str(a), str(b)) == check_pair(str(a), str(b), 5)
    assert verify_math(str(a), str(a)) == 1.0


def test_registry() -> None:
    assert get_reward_func("math") is math_reward is REWARD_FUNCS["math"]
    with pytest.raises(UserError, match="valid rewards are .*math"):
        get_reward_func("maths")
