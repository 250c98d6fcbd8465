"""Code reward: the last ```python block after the reasoning must pass every test, each run in the sandbox.

Tests run in parallel on a process-wide thread pool (one sandbox per core at a time), shared by every caller so
that training and evaluation never oversubscribe the machine. A problem stops at its first failing test.

Two sets of rules, both settings of the reward (recipe ``data:`` keys in training, suite keys in evaluation):

- LiveCodeBench's, the defaults and what evaluation uses (LiveCodeBench/LiveCodeBench, lcb_runner/evaluation/
  compute_code_generation_metrics.py: ``timeout=6`` per test, and a process guard of (timeout + 1) s per test + 5 s):
  each test has its own wall-clock limit, 6 s, nothing caps the completion as a whole (the guard never binds before
  the per-test limits), and stdout is compared line by line with numeric tolerance (``compare="lines"``);
- the authors' training reward, which the paper code recipes set: 30 s per stdin/stdout test, 60 s for the whole
  run of an assert-script ("functional") test, 1 GiB of address space, at most 16 randomly drawn tests of a
  stdin/stdout problem (functional problems run all of theirs), and the whole stripped stdout compared with the
  whole stripped expected output (``compare="whole"``).

``budget_s`` optionally caps the sum of one completion's test run times, checked before each test starts; time
spent queueing behind other completions' tests does not count.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from archer.errors import UserError
from archer.rewards.extract import completion_text, extract_code
from archer.rewards.livecodebench import (
    build_program,
    functional_matches,
    normalize_tests,
    stdout_matches,
    whole_stdout_matches,
)
from archer.sandbox import runner as sandbox

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6.0  # LiveCodeBench's per-test limit
DEFAULT_SCRIPT_TIMEOUT_S = 60.0  # an assert script's whole run (the authors' limit for a functional problem)
DEFAULT_MEMORY_MB = sandbox.DEFAULT_MEMORY_MB  # address space per process and the run's budget: 1 GiB
DEFAULT_BUDGET_S: float | None = None  # no whole-completion cap (LiveCodeBench)
# How a stdin test's output is compared with the expected output: LiveCodeBench's rule or the authors' training rule
COMPARE_RULES = {"lines": stdout_matches, "whole": whole_stdout_matches}
DEFAULT_COMPARE = "lines"
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict. ``status``: passed, wrong_answer, runtime_error, timeout, output_limit, memory_limit,
    skipped, budget."""

    __test__ = False  # not a pytest class

    index: int  # position in the problem's full test list
    passed: bool
    status: str
    wall_s: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class GradeResult:
    """All tests passed or not, with each graded test's outcome (tests after a failure may be ``skipped``)."""

    passed: bool
    tests: list[TestOutcome] = field(default_factory=list)

    @property
    def num_passed(self) -> int:
        return sum(outcome.passed for outcome in self.tests)


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_PID = 0
_EXECUTOR_LOCK = threading.Lock()


def grading_workers() -> int:
    """How many sandboxes run at once: ``ARCHER_SANDBOX_WORKERS`` or one per CPU core."""
    return int(os.environ.get("ARCHER_SANDBOX_WORKERS", "0")) or (os.cpu_count() or 1)


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR, _EXECUTOR_PID
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None or os.getpid() != _EXECUTOR_PID:  # a forked child has the object but no threads
            _EXECUTOR = ThreadPoolExecutor(grading_workers(), thread_name_prefix="archer-grade")
            _EXECUTOR_PID = os.getpid()
        return _EXECUTOR


def _judge(
    result: sandbox.ExecResult, test: dict[str, str], index: int, budget_cut: bool, compare: str = DEFAULT_COMPARE
) -> TestOutcome:
    if result.timed_out:
        return TestOutcome(index, False, "budget" if budget_cut else "timeout", result.wall_s)
    if result.output_limit_exceeded:
        return TestOutcome(index, False, "output_limit", result.wall_s)
    if result.memory_limit_exceeded:
        return TestOutcome(index, False, "memory_limit", result.wall_s)
    if result.returncode != 0:
        return TestOutcome(index, False, "runtime_error", result.wall_s, result.stderr[-_DETAIL_CHARS:])
    if test["testtype"] == "script":  # its asserts ran to the end: exit status 0
        return TestOutcome(index, True, "passed", result.wall_s)
    if test["testtype"] == "functional":  # the harness's report, on its own channel
        got, matches = result.report or "", functional_matches(result.report, test["output"])
    else:
        got, matches = result.stdout, COMPARE_RULES[compare](result.stdout, test["output"])
    if matches:
        return TestOutcome(index, True, "passed", result.wall_s)
    detail = f"expected {test['output'][:_DETAIL_CHARS]!r}, got {got[-_DETAIL_CHARS:]!r}"
    return TestOutcome(index, False, "wrong_answer", result.wall_s, detail)


class _Grading:
    """One problem in flight: its tests are queued on the shared pool and share a stop flag and a budget."""

    def __init__(
        self,
        code: str,
        tests: list[dict[str, str]],
        indices: list[int],
        fn_name: str | None,
        timeout_s: float,
        memory_mb: int,
        budget_s: float | None,
        stop_on_failure: bool,
        script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
        compare: str = DEFAULT_COMPARE,
    ) -> None:
        self.code, self.tests, self.fn_name = code, tests, fn_name
        self.timeout_s, self.memory_mb, self.budget_s = timeout_s, memory_mb, budget_s
        self.script_timeout_s, self.compare = script_timeout_s, compare
        self.stop_on_failure = stop_on_failure
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._spent_s = 0.0  # run time of this completion's finished tests
        pool = _executor()
        self._futures: list[Future[TestOutcome]] = [pool.submit(self._run, i) for i in indices]

    def _run(self, index: int) -> TestOutcome:
        if self._stop.is_set():
            return TestOutcome(index, False, "skipped")
        test = self.tests[index]
        full = self.script_timeout_s if test["testtype"] == "script" else self.timeout_s
        limit = full
        if self.budget_s is not None:
            with self._lock:
                remaining = self.budget_s - self._spent_s
            if remaining <= 0:
                return TestOutcome(index, False, "budget")
            limit = min(limit, remaining)
        program, stdin = build_program(self.code, test, self.fn_name)
        functional = test["testtype"] == "functional"  # reports on its own channel
        result = sandbox.run_python(program, stdin, timeout_s=limit, memory_mb=self.memory_mb, report=functional)
        with self._lock:
            self._spent_s += result.wall_s
        outcome = _judge(result, test, index, budget_cut=limit < full, compare=self.compare)
        if not outcome.passed and self.stop_on_failure:
            self._stop.set()
        return outcome

    def result(self) -> GradeResult:
        outcomes = [future.result() for future in self._futures]
        return GradeResult(passed=bool(outcomes) and all(o.passed for o in outcomes), tests=outcomes)


def _choose(tests: list[dict[str, str]], max_tests: int | None, rng: random.Random) -> list[int]:
    """Which tests to run: every functional and script test, and at most ``max_tests`` stdin tests drawn at random
    (the authors sample only stdin/stdout problems; a functional problem runs all its tests)."""
    if max_tests is not None and max_tests <= 0:
        raise UserError(f"max_tests must be a positive number of tests per problem, got {max_tests}")
    stdin = [i for i, test in enumerate(tests) if test["testtype"] == "stdin"]
    if max_tests is None or len(stdin) <= max_tests:
        return list(range(len(tests)))
    others = [i for i, test in enumerate(tests) if test["testtype"] != "stdin"]
    return sorted(others + rng.sample(stdin, max_tests))


def _check_rules(compare: str, script_timeout_s: float) -> None:
    if compare not in COMPARE_RULES:
        raise UserError(f"compare {compare!r}: valid rules are {', '.join(COMPARE_RULES)}")
    if script_timeout_s <= 0:
        raise UserError(f"script_timeout_s must be > 0 seconds, got {script_timeout_s}")


def _start(
    code: str,
    tests: list[dict[str, str]],
    fn_name: str | None,
    timeout_s: float,
    memory_mb: int,
    max_tests: int | None,
    rng: random.Random,
    budget_s: float | None,
    stop_on_failure: bool,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    compare: str = DEFAULT_COMPARE,
) -> _Grading:
    indices = _choose(tests, max_tests, rng)
    return _Grading(
        code, tests, indices, fn_name, timeout_s, memory_mb, budget_s, stop_on_failure, script_timeout_s, compare
    )


def grade_code(
    code: str,
    tests: Any,
    fn_name: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_tests: int | None = None,
    *,
    seed: int | None = None,
    budget_s: float | None = DEFAULT_BUDGET_S,
    stop_on_failure: bool = True,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    compare: str = DEFAULT_COMPARE,
) -> GradeResult:
    """Run ``code`` on ``tests`` (any form ``normalize_tests`` accepts) in the sandbox; passed iff all pass.

    ``timeout_s`` limits each stdin or functional test, ``script_timeout_s`` the whole run of a script test,
    ``budget_s`` (None: no cap) the sum of the tests' run times; ``memory_mb`` is each run's address space and
    memory budget. ``max_tests`` grades a random subset of the stdin tests (seeded by ``seed``); ``compare`` is
    the stdout rule (``lines``: LiveCodeBench's, ``whole``: the authors' training rule); ``stop_on_failure=False``
    runs every test even after a failure (for per-test reports). Raises SandboxUnavailable when bubblewrap cannot
    be used.
    """
    _check_rules(compare, script_timeout_s)
    normalized = normalize_tests(tests, fn_name)
    if not normalized:
        raise UserError("grade_code needs at least one test: with none, any code would pass")
    sandbox.ensure_sandbox()
    rng = random.Random(seed)
    grading = _start(
        code, normalized, fn_name, timeout_s, memory_mb, max_tests, rng, budget_s, stop_on_failure,
        script_timeout_s, compare,
    )  # fmt: skip
    return grading.result()


def _per_row(value: Any, n: int) -> list[Any]:
    if value is None or isinstance(value, (str, int)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"code_reward got {n} completions but {len(values)} values of a per-row column")
    return values


def _fn_name_from_metadata(metadata: Any) -> str | None:
    """LiveCodeBench keeps the method name in a JSON ``metadata`` column as ``func_name``."""
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return None
    return metadata.get("func_name") if isinstance(metadata, dict) else None


def code_reward(
    completions: Sequence[Any],
    tests: Sequence[Any],
    fn_name: Any = None,
    max_tests: int | None = None,
    seed: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    budget_s: float | None = DEFAULT_BUDGET_S,
    require_think_close: bool = False,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    compare: str = DEFAULT_COMPARE,
    **kwargs: Any,
) -> list[float | None]:
    """TRL reward: 1.0 when the last ```python block after ``</think>`` passes every test of its row, else 0.0.

    ``tests`` holds one entry per row (a list of tests or a JSON / LiveCodeBench-compressed string); ``fn_name``
    is a per-row column or one name for all rows (else read from a LiveCodeBench ``metadata`` column).
    ``max_tests`` samples at most that many stdin tests per row (training); None grades all (evaluation).
    ``timeout_s`` limits each stdin or functional test, ``script_timeout_s`` the whole run of a script test,
    ``budget_s`` (None: no cap) the sum of one completion's test run times, ``memory_mb`` each run's address space
    and memory; ``compare`` is the stdout rule (``lines`` or ``whole``, see the module docstring).
    ``require_think_close``: a completion without ``</think>`` scores 0 (``archer.rewards.thinking``). A row with
    no tests gets None (skipped) and a warning; a row whose ``tests`` is None (a math row of a mixed dataset) gets
    None silently. Never runs code without the sandbox: raises SandboxUnavailable.
    """
    _check_rules(compare, script_timeout_s)
    n = len(completions)
    test_rows, names = _per_row(tests, n), _per_row(fn_name, n)
    metadata = _per_row(kwargs.get("metadata"), n)
    sandbox.ensure_sandbox()
    rng = random.Random(seed)
    rewards: list[float | None] = [0.0] * n
    decoded: dict[Any, list[dict[str, str]]] = {}
    running: list[tuple[int, _Grading]] = []
    for i, (completion, row_tests, name, meta) in enumerate(zip(completions, test_rows, names, metadata, strict=True)):
        if row_tests is None:  # not a code row
            rewards[i] = None
            continue
        name = name or _fn_name_from_metadata(meta)
        key = (row_tests if isinstance(row_tests, str) else id(row_tests), name)
        if key not in decoded:
            try:
                decoded[key] = normalize_tests(row_tests, name)
            except UserError as err:
                raise UserError(f"code_reward: row {i}: {err}") from None
        row = decoded[key]
        if not row:
            logger.warning("code_reward: row %d has no tests; reward skipped", i)
            rewards[i] = None
            continue
        code = extract_code(completion_text(completion), require_think_close)
        if code is None:
            continue
        grading = _start(
            code, row, name, timeout_s, memory_mb, max_tests, rng, budget_s, True, script_timeout_s, compare
        )  # fmt: skip
        running.append((i, grading))
    for i, grading in running:
        rewards[i] = 1.0 if grading.result().passed else 0.0
    return rewards
