"""Cost of the rewards: sandbox overhead per run, grading throughput over cores (LiveCodeBench's rules and the
authors' training rules, with what one 16-GPU rollout needs), math verification speed.

The sandbox rows compare a trivial run three ways, interleaved: the sandbox as it is (per-run cgroup, seccomp
filter, pid handshake, reaping), the sandbox before its hardening (``archer/sandbox/runner.py`` at BEFORE_COMMIT,
loaded from git; skipped outside a git checkout), and a bare subprocess.

Rows (see bench/run.py for the contract): ours and the reference are timed alternately in this process after a
warm-up of both, and compared by their medians (time.perf_counter).

    .venv/bin/python bench/bench_rewards.py [--quick]
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archer.rewards import code as code_rewards  # noqa: E402
from archer.rewards import math_reward  # noqa: E402
from archer.rewards.math import check_pair, verify_many  # noqa: E402
from archer.sandbox import limits as sandbox_limits  # noqa: E402
from archer.sandbox import runner as sandbox  # noqa: E402

logger = logging.getLogger("bench_rewards")
# main just before the sandbox hardening (cgroup, seccomp, reaping)
BEFORE_COMMIT = "e40a2594e7e3fece7c0261682ffb49d3714051b4"


def _medians(calls: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each call, measured in turn after one warm-up call of each."""
    for call in calls:
        call()
    seconds: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, times in zip(calls, seconds, strict=True):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in seconds]


def _interleaved(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, measured alternately after one warm-up call of both."""
    ours_s, reference_s = _medians([ours, reference], repeats)
    return ours_s, reference_s


def _sandbox_before() -> object | None:
    """The sandbox module as of BEFORE_COMMIT, read from git; None where git or that commit is missing."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_COMMIT}:src/archer/sandbox/runner.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("archer_sandbox_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{BEFORE_COMMIT[:7]}:src/archer/sandbox/runner.py", "exec"), module.__dict__)
    return module


def _sandbox_overhead(repeats: int) -> list[dict]:
    bare = [sys.executable, "-I", "-c", "pass"]
    before = _sandbox_before()
    calls = [lambda: sandbox.run_python("pass"), lambda: subprocess.run(bare, check=True)]
    if before is not None:
        calls.append(lambda: before.run_python("pass"))  # type: ignore[attr-defined]
    after_s, bare_s, *before_s = _medians(calls, repeats)
    runtime = sandbox._runtime()
    limits = sandbox_limits.run_limits()
    rows = [
        {
            "figure": "sandboxed run of a trivial program (bwrap, namespaces, cgroup, seccomp) vs bare subprocess",
            "ours": f"{after_s * 1e3:.1f} ms",
            "reference": f"{bare_s * 1e3:.1f} ms",
            "ratio": after_s / bare_s,
            "target": "<= 3.0x",
            "note": f"median of {repeats}; sandbox runs {runtime.python} -I, bare runs {sys.executable} -I; "
            f"memory: {limits.memory}, processes: {limits.processes}",
        }
    ]
    if before_s:
        rows.append(
            {
                "figure": f"the same run, sandbox now vs before its hardening ({BEFORE_COMMIT[:7]}: rlimits only)",
                "ours": f"{after_s * 1e3:.1f} ms",
                "reference": f"{before_s[0] * 1e3:.1f} ms (bare {bare_s * 1e3:.1f} ms)",
                "ratio": after_s / before_s[0],
                "target": "<= 1.25x",
                "note": f"median of {repeats}, interleaved; the added cost per run is "
                f"{(after_s - before_s[0]) * 1e3:+.1f} ms",
            }
        )
    return rows


def _all_cores_vs_one(grade: Callable[[], object], cores: int, repeats: int) -> tuple[float, float]:
    """Seconds per ``grade()`` with the code reward's pool at ``cores`` workers and at one, interleaved."""
    pools = {n: ThreadPoolExecutor(n, thread_name_prefix=f"bench-{n}") for n in (cores, 1)}

    def grade_with(workers: int) -> None:
        code_rewards._EXECUTOR = pools[workers]
        grade()

    saved = code_rewards._EXECUTOR
    try:
        return _interleaved(lambda: grade_with(cores), lambda: grade_with(1), repeats)
    finally:
        code_rewards._EXECUTOR = saved
        for pool in pools.values():
            pool.shutdown()


def _grading_throughput(num_tests: int, repeats: int) -> dict:
    """tests/s grading one problem whose tests all pass (no early stop), all cores vs one."""
    tests = [{"input": f"{i} {i + 1}\n", "output": f"{2 * i + 1}\n", "testtype": "stdin"} for i in range(num_tests)]
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    cores = code_rewards.grading_workers()

    def grade() -> None:
        assert code_rewards.grade_code(code, tests).passed

    ours, reference = _all_cores_vs_one(grade, cores, repeats)
    return {
        "figure": f"code grading throughput, {num_tests} sandboxed stdin tests: {cores} workers vs 1",
        "ours": f"{num_tests / ours:.1f} tests/s",
        "reference": f"{num_tests / reference:.1f} tests/s",
        "ratio": ours / reference,  # seconds per problem: lower is better, 1/cores is perfect scaling
        "target": f"<= {1.3 / cores:.2f}x",
        "note": f"median of {repeats}; ratio is time with all cores / time with one (perfect: 1/{cores})",
    }


STEP_S = 660.0  # the paper's code run: ~1,000 GPU-hours / 320 rollouts ~ 3.1 GPU-hours per rollout, ~11 min on 16 GPUs
ROLLOUT = 1024  # completions per rollout (64 prompts x 16)
STALL_SHARE = 0.05  # grading should take at most this share of a step


def _authors_mix(n: int) -> tuple[list[str], list[list[dict]]]:
    """``n`` completions of one stdin/stdout problem with 20 tests, graded by the authors' rules: a quarter right,
    half wrong (a wrong answer from the first test on), a quarter crashing; no time-out (see the note)."""
    tests = [
        {
            "input": f"{k + 3}\n" + " ".join(str(i * k % 97) for i in range(k + 3)) + "\n",
            "output": "",
            "testtype": "stdin",
        }
        for k in range(20)
    ]
    for test in tests:
        values = [int(v) for v in test["input"].split("\n")[1].split()]
        test["output"] = f"{sum(values)} {max(values)}\n"
    right = "n = int(input())\nvalues = list(map(int, input().split()))\nprint(sum(values), max(values))\n"
    kinds = [right, right.replace("sum(values)", "sum(values) + 1"), right.replace("max(values)", "values[n]")]
    codes = [kinds[0] if i % 4 == 0 else kinds[2] if i % 4 == 3 else kinds[1] for i in range(n)]
    return [f"<think>Sum and max.</think>\n```python\n{code}```" for code in codes], [tests] * n


def _authors_grading(num_completions: int, repeats: int) -> list[dict]:
    """Completions graded per second under the authors' training rules, all cores vs one, and what one 16-GPU
    rollout needs."""
    completions, tests = _authors_mix(num_completions)
    rules = dict(max_tests=16, timeout_s=30.0, script_timeout_s=60.0, memory_mb=1024, compare="whole")
    cores = code_rewards.grading_workers()
    rewards: list = []

    def grade() -> None:
        rewards[:] = code_rewards.code_reward(completions, tests=tests, seed=0, **rules)

    ours, reference = _all_cores_vs_one(grade, cores, repeats)
    assert rewards == [1.0 if i % 4 == 0 else 0.0 for i in range(num_completions)], rewards
    core_s = reference / num_completions  # worker-seconds per completion (one worker: no overlap)
    rollout_core_s = ROLLOUT * core_s
    needed = rollout_core_s / (STALL_SHARE * STEP_S)
    tle_core_s = 16 * 30.0  # a program that never ends holds up to 16 workers for 30 s each before the stop
    return [
        {
            "figure": f"code grading, the authors' rules (16 of 20 stdin tests, 30 s, 1 GiB, whole stdout), "
            f"{num_completions} completions: {cores} workers vs 1",
            "ours": f"{num_completions / ours:.2f} completions/s",
            "reference": f"{num_completions / reference:.2f} completions/s",
            "ratio": ours / reference,  # time: lower is better, 1/cores is perfect scaling
            "target": f"<= {1.3 / cores:.2f}x",
            "note": f"median of {repeats}; mix: 1/4 right (16 tests each), 1/2 wrong, 1/4 crash (stop at the first "
            f"failure); {core_s:.3f} worker-seconds per completion",
        },
        {
            "figure": f"grading one rollout of {ROLLOUT} such completions vs the paper's step (~{STEP_S / 60:.0f} min on "
            "16 GPUs)",
            "ours": f"{rollout_core_s / cores:.0f} s on {cores} cores ({rollout_core_s:.0f} worker-s)",
            "reference": f"{STEP_S:.0f} s",
            "ratio": rollout_core_s / cores / STEP_S,
            "target": f"<= {STALL_SHARE:.2f}x",
            "note": f"{needed:.0f} cores grade it within {STALL_SHARE:.0%} of the step; each completion whose "
            f"program never ends adds up to {tle_core_s:.0f} worker-s (16 tests x 30 s)",
        },
    ]


def _math_throughput(batch: int, repeats: int) -> list[dict]:
    counter = itertools.count(1)

    def fresh_pairs() -> list[tuple[str, str]]:  # distinct every call: no cache hits
        k = next(counter) * batch
        return [(f"\\frac{{{i}}}{{{i + k}}}", f"{i}/{i + k}") for i in range(batch)]

    def direct() -> None:  # math-verify on the main thread, no process boundary
        for answer, gold in fresh_pairs():
            check_pair(answer, gold, 5)

    ours, reference = _interleaved(lambda: verify_many(fresh_pairs()), direct, repeats)
    rows = [
        {
            "figure": f"math verification, {batch} distinct symbolic answers: worker pool vs direct main-thread calls",
            "ours": f"{batch / ours:.0f} answers/s",
            "reference": f"{batch / reference:.0f} answers/s",
            "ratio": ours / reference,
            "target": "<= 1.0x",
            "note": f"median of {repeats}; pool of {os.environ.get('ARCHER_MATH_WORKERS') or 'min(4, cores)'} "
            "workers, correct from any thread (direct calls are not)",
        }
    ]
    # The embedded default's RL step: 128 completions of integer answers, many repeated.
    completions = [f"<think>{i}+{i}={2 * i}.</think> \\boxed{{{(2 * i) % 37}}}" for i in range(128)]
    solutions = [str((2 * i) % 41) for i in range(128)]

    def direct_batch() -> None:
        for completion, gold in zip(completions, solutions, strict=True):
            check_pair(completion.rsplit("{", 1)[1].rstrip("}"), gold, 5)

    ours, reference = _interleaved(lambda: math_reward(completions, solutions), direct_batch, repeats)
    rows.append(
        {
            "figure": "math_reward on a tiny-recipe batch (128 integer answers) vs math-verify per completion",
            "ours": f"{ours * 1e3:.2f} ms",
            "reference": f"{reference * 1e3:.1f} ms",
            "ratio": ours / reference,
            "target": "<= 0.1x",
            "note": f"median of {repeats}; integers compare exactly without sympy (the RL step is ~300 ms)",
        }
    )
    return rows


def run(quick: bool = False) -> list[dict]:
    repeats = 2 if quick else 9
    rows = _math_throughput(batch=16 if quick else 128, repeats=repeats)
    if not sandbox.sandbox_available():
        logger.warning("bubblewrap cannot run here: sandbox rows skipped")
        return rows
    overhead = _sandbox_overhead(repeats=3 if quick else 30)
    rows[:0] = [*overhead, _grading_throughput(num_tests=4 if quick else 24, repeats=1 if quick else 3)]
    rows[len(overhead) + 1 : len(overhead) + 1] = _authors_grading(8 if quick else 32, repeats=1 if quick else 3)
    return rows


if __name__ == "__main__":
    from run import standalone

    sys.exit(standalone(run))
