"""Code grading budget: LiveCodeBench's protocol (6 s per test, no cap on a completion's total) by default, and an
optional cap on the sum of one completion's test run times. The sandbox is replaced by a fake that reports run
times, so slow tests cost no time here (the real sandbox is exercised in test_rewards_code.py)."""

from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import archer.rewards.code as code_module
from archer.rewards import code_reward, grade_code
from archer.sandbox import runner as sandbox

SLOW_S = 5.9  # each test: under the 6 s per-test limit, 12 of them well over the old 60 s whole-completion cap
TESTS = [{"input": str(i), "output": str(i)} for i in range(12)]


@pytest.fixture
def fake_sandbox(monkeypatch):
    """Runs echo their stdin after SLOW_S seconds of (reported) wall time; a limit below that times them out."""
    limits: list[float] = []
    lock = threading.Lock()

    def run_python(program: str, stdin: str = "", timeout_s: float = 6.0, memory_mb: int = 1024, **_):
        with lock:
            limits.append(timeout_s)
        if timeout_s < SLOW_S:
            return sandbox.ExecResult("", "", None, timed_out=True, wall_s=timeout_s)
        return sandbox.ExecResult(stdin, "", 0, wall_s=SLOW_S)

    monkeypatch.setattr(sandbox, "run_python", run_python)
    monkeypatch.setattr(sandbox, "ensure_sandbox", lambda: None)
    pool = ThreadPoolExecutor(1)  # one test at a time: the order of the budget's checks is fixed
    monkeypatch.setattr(code_module, "_executor", lambda: pool)
    yield limits
    pool.shutdown()


def test_defaults_are_livecodebenchs_protocol():
    for func in (grade_code, code_reward):
        parameters = inspect.signature(func).parameters
        assert parameters["timeout_s"].default == 6.0
        assert parameters["budget_s"].default is None


def test_a_correct_but_slow_solution_with_many_tests_passes(fake_sandbox):
    result = grade_code("print(input())", TESTS)
    assert result.passed and result.num_passed == 12
    assert set(fake_sandbox) == {6.0}
    completion = "</think>\n```python\nprint(input())\n```"
    assert code_reward([completion], tests=[TESTS]) == [1.0]


def test_an_explicit_budget_caps_the_sum_of_run_times(fake_sandbox):
    result = grade_code("print(input())", TESTS, budget_s=60.0, stop_on_failure=False)
    # 10 x 5.9 s fit in 60 s; the 11th runs with the 1 s left and is cut; nothing is left for the 12th
    assert [o.status for o in result.tests] == ["passed"] * 10 + ["budget"] * 2
    assert fake_sandbox == [6.0] * 10 + [pytest.approx(1.0)]
