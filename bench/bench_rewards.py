"""Cost of the rewards: sandbox overhead per run, grading throughput over cores, math verification speed.

Rows (see bench/run.py for the contract): ours and the reference are timed alternately in this process after a
warm-up of both, and compared by their medians (time.perf_counter).

    .venv/bin/python bench/bench_rewards.py [--quick]
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archer import sandbox  # noqa: E402
from archer.rewards import code as code_rewards  # noqa: E402
from archer.rewards import math_reward  # noqa: E402
from archer.rewards.math import check_pair, verify_many  # noqa: E402

logger = logging.getLogger("bench_rewards")


def _interleaved(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, measured alternately after one warm-up call of both."""
    ours()
    reference()
    ours_s, reference_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference()
        reference_s.append(time.perf_counter() - start)
    return statistics.median(ours_s), statistics.median(reference_s)


def _sandbox_overhead(repeats: int) -> dict:
    bare = [sys.executable, "-I", "-c", "pass"]
    ours, reference = _interleaved(
        lambda: sandbox.run_python("pass"), lambda: subprocess.run(bare, check=True), repeats
    )
    runtime = sandbox._runtime()
    return {
        "figure": "sandboxed run of a trivial program (bwrap + namespaces + rlimits) vs bare subprocess",
        "ours": f"{ours * 1e3:.1f} ms",
        "reference": f"{reference * 1e3:.1f} ms",
        "ratio": ours / reference,
        "target": "<= 3.0x",
        "note": f"median of {repeats}; sandbox runs {runtime.python} -I, bare runs {sys.executable} -I",
    }


def _grading_throughput(num_tests: int, repeats: int) -> dict:
    """tests/s grading one problem whose tests all pass (no early stop), all cores vs one."""
    tests = [{"input": f"{i} {i + 1}\n", "output": f"{2 * i + 1}\n", "testtype": "stdin"} for i in range(num_tests)]
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    cores = code_rewards.grading_workers()
    pools = {n: ThreadPoolExecutor(n, thread_name_prefix=f"bench-{n}") for n in (cores, 1)}

    def grade_with(workers: int) -> None:
        code_rewards._EXECUTOR = pools[workers]
        assert code_rewards.grade_code(code, tests).passed

    saved = code_rewards._EXECUTOR
    try:
        ours, reference = _interleaved(lambda: grade_with(cores), lambda: grade_with(1), repeats)
    finally:
        code_rewards._EXECUTOR = saved
        for pool in pools.values():
            pool.shutdown()
    return {
        "figure": f"code grading throughput, {num_tests} sandboxed stdin tests: {cores} workers vs 1",
        "ours": f"{num_tests / ours:.1f} tests/s",
        "reference": f"{num_tests / reference:.1f} tests/s",
        "ratio": ours / reference,  # seconds per problem: lower is better, 1/cores is perfect scaling
        "target": f"<= {1.3 / cores:.2f}x",
        "note": f"median of {repeats}; ratio is time with all cores / time with one (perfect: 1/{cores})",
    }


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
    rows.insert(0, _sandbox_overhead(repeats=3 if quick else 30))
    rows.insert(1, _grading_throughput(num_tests=4 if quick else 24, repeats=1 if quick else 3))
    return rows


if __name__ == "__main__":
    from run import standalone

    sys.exit(standalone(run))
