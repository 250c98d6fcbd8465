"""Code reward: extraction, LiveCodeBench storage and judging rules, graded examples through the sandbox."""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from paths import ROOT

from archer.errors import UserError
from archer.rewards import (
    REWARD_FUNCS,
    code_reward,
    decode_lcb_tests,
    extract_code,
    get_reward_func,
    grade_code,
    normalize_tests,
)
from archer.rewards.livecodebench import functional_matches, stdout_matches, whole_stdout_matches
from archer.sandbox import runner as sandbox
from archer.sandbox.runner import SandboxUnavailable, sandbox_available

PROBLEMS = {p["question_id"]: p for p in json.loads((ROOT / "tests" / "data" / "code" / "problems.json").read_text())}
_skip_without_bwrap = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")


def needs_bwrap(test: Any) -> Any:
    return pytest.mark.sandbox(_skip_without_bwrap(test))


def _all_tests(problem: dict[str, Any]) -> list[dict[str, str]]:
    return decode_lcb_tests(problem["public_test_cases"]) + decode_lcb_tests(problem["private_test_cases"])


def _fenced(code: str) -> str:
    return f"<think>I will write it.</think>\nHere:\n```python\n{code}```\n"


# ----------------------------------------------------------------------------------------------------------------
# Extraction and judging rules (no sandbox needed).


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("```python\nA\n```\ntext\n```py\nB\n```", "B\n"),
        ("```python3\nC\n```", "C\n"),
        ("<think>```python\nDRAFT\n```</think>\n```python\nFINAL\n```", "FINAL\n"),
        ("<think>```python\nDRAFT\n```</think>\nno code after thinking", None),
        ("<think>```python\nDRAFT\n```", "DRAFT\n"),  # the reasoning never ends: graded whole, as the authors
        ("```python\nDONE\n```\n```python\ncut off", "DONE\n"),  # the last *complete* block
        ("```\nprint('no language tag')\n```", None),
        ("```python\n   \n```", None),
    ],
)
def test_extract_code(text: str, expected: str | None) -> None:
    assert extract_code(text) == expected


@pytest.mark.parametrize(
    ("output", "expected", "match"),
    [
        ("3\n", "3", True),
        ("  3  \r\n\n", "3\n", True),  # stripped lines, CRLF
        ("2.5\n", "2.50", True),  # Decimal equality
        ("1e1", "10", True),
        ("1 2.0 3", "1.0 2 3.00", True),
        ("3.0000001", "3", False),  # no epsilon: LiveCodeBench compares Decimals exactly
        ("YES", "yes", False),
        ("1\n2", "1 2", False),
        ("1\n\n2", "1\n2", False),  # an inner blank line is a line
        ("", "0", False),
        ("sNaN", "sNaN2", False),
    ],
)
def test_stdout_rule(output: str, expected: str, match: bool) -> None:
    assert stdout_matches(output, expected) is match


def test_functional_rule() -> None:
    assert functional_matches("[0, 1]\n", "[0, 1]")
    assert not functional_matches("[0, 1]\n", "[1, 0]")
    assert functional_matches("2.0\n", "2")
    assert not functional_matches("", "[0, 1]")  # no report
    assert not functional_matches("[0, 1]", "[0, 1]")  # an unfinished report
    assert not functional_matches("[0, 1]\n[0, 1]\n", "[0, 1]")  # two reports: someone besides the harness wrote
    assert not functional_matches(None, "[0, 1]")


def test_decode_lcb_private_tests_and_refuse_malicious_pickles(tmp_path: Path) -> None:
    private = decode_lcb_tests(PROBLEMS["avg"]["private_test_cases"])
    assert [t["output"] for t in private] == ["0.25\n", "3\n", "1.0\n", "2.5\n"]
    assert decode_lcb_tests(PROBLEMS["pairs"]["public_test_cases"])[0]["testtype"] == "functional"

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    for payload in (Evil(), ["a list, not a JSON string"]):
        blob = base64.b64encode(zlib.compress(pickle.dumps(payload))).decode()
        with pytest.raises(UserError):
            decode_lcb_tests(blob)
    assert not marker.exists()
    with pytest.raises(UserError, match="neither JSON nor"):
        decode_lcb_tests("not json, not base64 !!")


def test_normalize_tests_validates() -> None:
    assert normalize_tests({"inputs": ["1\n"], "outputs": ["2\n"]}) == [
        {"input": "1\n", "output": "2\n", "testtype": "stdin"}
    ]
    assert normalize_tests([{"input": "[1]", "output": 1}], fn_name="f")[0] == {
        "input": "[1]",
        "output": "1",
        "testtype": "functional",
    }
    with pytest.raises(UserError, match="valid: stdin, functional"):
        normalize_tests([{"input": "", "output": "", "testtype": "interactive"}])
    with pytest.raises(UserError, match="no fn_name"):
        normalize_tests([{"input": "", "output": "", "testtype": "functional"}])
    with pytest.raises(UserError, match="'input' and 'output'"):
        normalize_tests([{"stdin": "1"}])


def test_registry_has_code() -> None:
    assert get_reward_func("code") is code_reward is REWARD_FUNCS["code"]


def test_refuses_to_run_without_bubblewrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sandbox, "_RUNTIME", None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        code_reward([_fenced("print(3)\n"), "no code"], tests=[[{"input": "", "output": "3"}]] * 2)
    with pytest.raises(SandboxUnavailable):
        grade_code("print(3)", [{"input": "", "output": "3"}])


# ----------------------------------------------------------------------------------------------------------------
# Graded examples through the sandbox.


@needs_bwrap
@pytest.mark.parametrize("problem_id", sorted(PROBLEMS))
def test_graded_examples(problem_id: str) -> None:
    problem = PROBLEMS[problem_id]
    tests = _all_tests(problem)
    for name, code in problem["solutions"].items():
        result = grade_code(code, tests, fn_name=problem["fn_name"], timeout_s=2.0, stop_on_failure=False)
        assert result.passed is name.startswith("correct"), (name, result)
        assert len(result.tests) == len(tests)
        if name == "correct":
            assert all(o.status == "passed" for o in result.tests)
        if name == "wrong_hardcoded_sample":  # passes the public sample, fails hidden tests
            assert result.tests[0].passed and result.num_passed < len(tests)
        if name == "runtime_error":
            assert {o.status for o in result.tests} == {"runtime_error"}
            assert "ZeroDivisionError" in result.tests[0].detail
        if name == "wrong_slow":
            assert {o.status for o in result.tests} == {"timeout"}
        if name == "wrong_equal_to_everything":
            assert not any(o.passed for o in result.tests)


@needs_bwrap
def test_stop_on_failure_skips_the_rest() -> None:
    tests = [{"input": str(i), "output": "ok"} for i in range(12)]
    result = grade_code("print('no')", tests)
    assert not result.passed
    statuses = [o.status for o in result.tests]
    assert statuses.count("wrong_answer") >= 1 and statuses.count("skipped") >= 12 - 2 * os.cpu_count()


@needs_bwrap
def test_budget_per_problem() -> None:
    tests = [{"input": str(i), "output": str(i)} for i in range(6)]
    start = time.monotonic()
    result = grade_code("import time\ntime.sleep(1.0)\nprint(input())", tests, timeout_s=5.0, budget_s=1.5)
    assert not result.passed
    assert "budget" in {o.status for o in result.tests}
    assert time.monotonic() - start < 4.0


@needs_bwrap
def test_max_tests_samples_a_seeded_subset() -> None:
    tests = [{"input": str(i), "output": str(i)} for i in range(10)]
    code = "print(input())"
    picks = [[o.index for o in grade_code(code, tests, max_tests=3, seed=s).tests] for s in (1, 1, 2)]
    assert all(len(p) == 3 and p == sorted(p) for p in picks)
    assert picks[0] == picks[1] != picks[2]
    assert len(grade_code(code, tests).tests) == 10
    with pytest.raises(UserError, match="max_tests"):
        grade_code(code, tests, max_tests=0)
    with pytest.raises(UserError, match="at least one test"):
        grade_code(code, [])


@pytest.mark.parametrize(
    ("output", "expected", "lines", "whole"),
    [
        ("3\n", "3", True, True),
        ("  3  \n\n", "3\n", True, True),  # outer whitespace is stripped by both rules
        ("1.50\n", "1.5\n", True, False),  # LiveCodeBench compares numbers as decimals; the authors compare text
        ("1  2\n", "1 2\n", True, False),  # ... and tokens, not the spacing between them
        ("1 \n2\n", "1\n2\n", True, False),  # ... and stripped lines
        ("1\n\n2\n", "1\n2\n", False, False),
    ],
)
def test_the_two_stdout_rules(output: str, expected: str, lines: bool, whole: bool) -> None:
    assert stdout_matches(output, expected) is lines
    assert whole_stdout_matches(output, expected) is whole


def test_max_tests_draws_only_stdin_tests() -> None:
    import random

    from archer.rewards.code import _choose

    stdin = [{"input": str(i), "output": str(i), "testtype": "stdin"} for i in range(40)]
    functional = [{"input": "1", "output": "1", "testtype": "functional"} for _ in range(20)]
    picked = _choose(stdin + functional, 16, random.Random(0))
    assert len(picked) == 16 + 20 and set(range(40, 60)) <= set(picked)  # every functional test, 16 stdin ones
    assert _choose(functional, 16, random.Random(0)) == list(range(20))  # a functional problem runs all its tests
    script = [{"input": "assert True", "output": "", "testtype": "script"}]
    assert _choose(script, 1, random.Random(0)) == [0]


@needs_bwrap
def test_assert_scripts_run_after_the_solution_with_leetcode_helpers() -> None:
    # verl's "functional" ground truth: one script of asserts, run once; LeetCode's list and tree helpers exist
    script = (
        "def check(candidate):\n"
        "    assert is_same_list(candidate(list_node([1, 2, 3])), list_node([3, 2, 1]))\n"
        "    assert candidate(None) is None\n"
        "    root = tree_node([1, None, 2, 3])\n"
        "    assert root.right.left.val == 3 and is_same_tree(root, tree_node([1, None, 2, 3]))\n"
        "\n"
        "check(Solution().reverseList)"
    )
    test = [{"input": script, "output": "", "testtype": "script"}]
    right = (
        "class Solution:\n"
        "    def reverseList(self, head: Optional[ListNode]) -> Optional[ListNode]:\n"
        "        previous = None\n"
        "        while head:\n"
        "            head.next, previous, head = previous, head, head.next\n"
        "        return previous\n"
    )
    assert grade_code(right, test).passed
    wrong = grade_code(right.replace("return previous", "return head"), test)
    assert not wrong.passed and wrong.tests[0].status == "runtime_error" and "AssertionError" in wrong.tests[0].detail
    # the script's limit is its own (the authors: 60 s for the whole run), not the per-test one
    slow = "import time\ntime.sleep(1.5)\n" + right
    assert grade_code(slow, test, timeout_s=0.5, script_timeout_s=10).passed
    assert grade_code(slow, test, timeout_s=10, script_timeout_s=0.5).tests[0].status == "timeout"


@needs_bwrap
def test_the_address_space_limit_is_a_setting() -> None:
    # The authors run each program under a 1 GiB address space (prlimit --as): 1.5 GiB of bytes cannot be had there.
    tests = [{"input": "", "output": "ok", "testtype": "stdin"}]
    code = "block = bytearray(1536 << 20)\nprint('ok')"
    assert not grade_code(code, tests, memory_mb=1024).passed
    assert grade_code("block = bytearray(64 << 20)\nprint('ok')", tests, memory_mb=1024).passed


@needs_bwrap
def test_code_reward_rows(caplog: pytest.LogCaptureFixture) -> None:
    avg, pairs = PROBLEMS["avg"], PROBLEMS["pairs"]
    avg_private, pairs_private = avg["private_test_cases"], pairs["private_test_cases"]
    completions = [
        _fenced(avg["solutions"]["correct"]),
        [{"role": "assistant", "content": _fenced(avg["solutions"]["wrong_integer_division"])}],
        "<think>draft:\n```python\n" + avg["solutions"]["correct"] + "```\n",  # unclosed: graded whole
        _fenced(pairs["solutions"]["correct"]),
        _fenced(pairs["solutions"]["wrong_order"]),
        _fenced(pairs["solutions"]["correct"]),  # fn_name from LiveCodeBench's metadata column
        _fenced(avg["solutions"]["correct"]),  # a row with no tests
    ]
    tests = [avg_private, avg_private, avg_private, pairs_private, pairs_private, pairs["public_test_cases"], "[]"]
    fn_name = [None, None, None, "twoSum", "twoSum", None, None]
    metadata = ["{}"] * 5 + [json.dumps({"func_name": "twoSum"}), "{}"]
    rewards = code_reward(completions, tests=tests, fn_name=fn_name, metadata=metadata, prompts=["p"] * 7)
    assert rewards == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, None]
    assert "row 6 has no tests" in caplog.text


@needs_bwrap
def test_code_reward_names_the_bad_row() -> None:
    with pytest.raises(UserError, match="row 1: code test 0 has testtype"):
        code_reward(["x", "y"], tests=[[{"input": "", "output": ""}], [{"input": "", "output": "", "testtype": "x"}]])


# ----------------------------------------------------------------------------------------------------------------
# The result channel of functional tests cannot be written by the solution; any text yields a score.

_PAIRS_TESTS = [{"input": "[2,7,11,15]\n9", "output": "[0, 1]", "testtype": "functional"}]
_FORGERIES = {
    # Print the old result line (marker + answer) after the harness, from an atexit hook.
    "atexit_print": (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stdout.write('\\n\\x1earcher-result\\x1e[0, 1]\\n'))\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return -1\n"
    ),
    # Write a report line on the report descriptor, at import and from an atexit hook.
    "report_fd": (
        "import atexit, os\n"
        "for fd in range(3, 16):\n"
        "    try:\n        os.write(fd, b'[0, 1]\\n')\n    except OSError:\n        pass\n"
        "atexit.register(lambda: os.write(3, b'[0, 1]\\n'))\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return -1\n"
    ),
    # A child left behind writes a report after the harness's.
    "child_after": (
        "import os, time\n"
        "if os.fork() == 0:\n    time.sleep(0.3)\n    os.write(3, b'[0, 1]\\n')\n    os._exit(0)\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return -1\n"
    ),
    # Report the answer through /proc/self/fd instead of the descriptor itself.
    "proc_fd": (
        "import os\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n        with open(f'/proc/self/fd/{name}', 'w') as f:\n            f.write('[0, 1]\\n')\n"
        "    except OSError:\n        pass\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return -1\n"
    ),
}


@needs_bwrap
@pytest.mark.parametrize("attack", sorted(_FORGERIES))
def test_forged_results_fail(attack: str) -> None:
    result = grade_code(_FORGERIES[attack], _PAIRS_TESTS, fn_name="twoSum", timeout_s=3.0)
    assert not result.passed, (attack, result)
    honest = _FORGERIES[attack].replace("return -1", "return [0, 1]")
    if attack == "atexit_print":  # the same program, returning the answer, passes: only the channel changed
        assert grade_code(honest, _PAIRS_TESTS, fn_name="twoSum", timeout_s=3.0).passed


@needs_bwrap
def test_any_completion_text_gets_a_score() -> None:
    tests = [{"input": "", "output": "1"}]
    completions = [
        _fenced("print('\ud800')\n"),  # a lone surrogate inside the code
        "\ud83d<think>\udfff</think>```python\nprint(1)\n```",  # and around it: the code itself is fine
        _fenced("print('\udcff')\n"),  # a surrogate escape: a byte that is not UTF-8
        _fenced("print('\x00')\n"),
        "\udc80" * 1000,
    ]
    assert code_reward(completions, tests=[tests] * len(completions)) == [0.0, 1.0, 0.0, 0.0, 0.0]
