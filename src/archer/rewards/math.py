"""Math reward: the last ``\\boxed{}`` after the reasoning, checked symbolically against the gold with math-verify.

math-verify 0.5.2 limits its own run time with ``signal.alarm``, which only works on the main thread: elsewhere
it silently answers False. TRL may call rewards from threads, so every check that needs math-verify runs in a
small pool of worker processes (started once, reused), where it is always on the main thread; the parent also
kills a worker whose check overruns, since a C-level computation (a huge power, say) ignores the alarm.
Plain integers are compared directly, and results are cached: an RL batch repeats answers and golds a lot.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archer.rewards.extract import completion_text, extract_boxed_answer

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
WORKER_MEMORY_MB = 3072  # address-space limit of a verification worker
_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a busy machine
_INT_RE = re.compile(r"[+-]?[0-9]{1,60}")  # ASCII only: int() also reads "２０４", Math-Verify does not
_CACHE_SIZE = 65536


# --------------------------------------------------------------------------------------------------------------
# The check itself (runs inside a worker process).


def _boxed(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$").strip()
    return "\\boxed{" + text + "}"


def check_pair(answer: str | None, gold: str, limit_s: float) -> float | None:
    """1.0 / 0.0 for ``answer`` against ``gold``; None when the gold cannot be parsed. Main thread only."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    limit = max(1, int(limit_s))
    gold_text = gold if ("\\boxed" in gold or "\\fbox" in gold) else _boxed(gold)
    gold_parsed = parse(
        gold_text,
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        fallback_mode="no_fallback",
        extraction_mode="first_match",
        parsing_timeout=limit,
    )
    if not gold_parsed:
        return None
    if answer is None or not answer.strip():
        return 0.0
    pred = parse(
        _boxed(answer),
        extraction_config=[LatexExtractionConfig()],
        fallback_mode="no_fallback",
        parsing_timeout=limit,
    )
    if not pred:
        return 0.0
    return 1.0 if verify(gold_parsed, pred, timeout_seconds=limit) else 0.0


# --------------------------------------------------------------------------------------------------------------
# Worker processes.


class _Worker:
    """One ``archer.rewards._math_worker`` process and its line-buffered reply channel."""

    def __init__(self) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # the folder holding the ``archer`` package
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archer.rewards._math_worker", str(WORKER_MEMORY_MB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal stops the trainer, which then closes us
        )
        self.ready = False
        self.started = time.monotonic()
        self._buffer = b""

    def fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, answer: str | None, gold: str, limit_s: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([answer, gold, limit_s]).encode() + b"\n")
        self.proc.stdin.flush()

    def read_lines(self) -> list[bytes] | None:
        """Complete lines now available, or None at end of file (the worker died)."""
        chunk = os.read(self.fileno(), 1 << 16)
        if not chunk:
            return None
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _VerifierPool:
    """A fixed set of workers shared by all threads; each call borrows the idle ones (at least one)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(size):
            self._idle.put(_Worker())

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return

    def run(self, jobs: Sequence[tuple[str | None, str]], timeout_s: float) -> list[float | None]:
        """Check every (answer, gold) pair; a pair whose check overruns ``timeout_s`` scores 0.0."""
        results: list[float | None] = [0.0] * len(jobs)
        if not jobs:
            return results
        workers = [self._idle.get()]
        while len(workers) < len(jobs):
            try:
                workers.append(self._idle.get_nowait())
            except queue.Empty:
                break
        pending = collections.deque(range(len(jobs)))
        busy: dict[_Worker, tuple[int | None, float]] = {}  # worker -> (job index or None while starting, deadline)
        selector = selectors.DefaultSelector()

        def dispatch(worker: _Worker) -> None:
            if not pending:
                return
            index = pending.popleft()
            try:
                worker.send(*jobs[index], timeout_s)
            except OSError:  # it died while idle (killed from outside): start another, retry the job
                pending.appendleft(index)
                replace(worker)
                return
            busy[worker] = (index, time.monotonic() + timeout_s)

        def replace(worker: _Worker) -> None:
            selector.unregister(worker)
            worker.kill()
            workers.remove(worker)
            fresh = _Worker()
            workers.append(fresh)
            selector.register(fresh, selectors.EVENT_READ, fresh)
            if pending:
                busy[fresh] = (None, fresh.started + _STARTUP_TIMEOUT_S)

        try:
            for worker in list(workers):
                selector.register(worker, selectors.EVENT_READ, worker)
                if worker.ready:
                    dispatch(worker)
                else:
                    busy[worker] = (None, worker.started + _STARTUP_TIMEOUT_S)
            while busy:
                wait = min(deadline for _, deadline in busy.values()) - time.monotonic()
                for key, _ in selector.select(max(wait, 0.0)):
                    worker = key.data
                    lines = worker.read_lines()
                    if lines is None:  # died: a crash inside sympy, or killed for memory
                        index, _ = busy.pop(worker, (None, 0.0))
                        if not worker.ready:
                            raise RuntimeError(
                                "the math-verification worker failed to start: "
                                f"`{sys.executable} -m archer.rewards._math_worker` must import math_verify"
                            )
                        if index is not None:
                            logger.warning("math verification worker died on answer %r; scored 0", jobs[index][0])
                        replace(worker)
                        continue
                    for line in lines:
                        value = json.loads(line)
                        if not worker.ready:
                            worker.ready = True
                        else:
                            index, _ = busy[worker]
                            assert index is not None  # a ready worker's entry holds its job
                            results[index] = value
                        busy.pop(worker, None)
                        dispatch(worker)
                now = time.monotonic()
                for worker, (index, deadline) in list(busy.items()):
                    if now < deadline:
                        continue
                    del busy[worker]
                    if index is None:
                        raise RuntimeError(f"the math-verification worker did not start in {_STARTUP_TIMEOUT_S:.0f} s")
                    logger.warning(
                        "math verification of answer %r took over %.1f s; scored 0", jobs[index][0], timeout_s
                    )
                    replace(worker)
        finally:
            for worker in workers:
                if worker in busy:  # interrupted mid-check: its reply would arrive out of step
                    worker.kill()
                    worker = _Worker()
                self._idle.put(worker)
            selector.close()
        return results


_POOL: _VerifierPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _VerifierPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # a forked child must not share its parent's workers
            size = int(os.environ.get("ARCHER_MATH_WORKERS", "0")) or max(1, min(4, os.cpu_count() or 1))
            _POOL = _VerifierPool(size)
            atexit.register(_POOL.close)
        return _POOL


# --------------------------------------------------------------------------------------------------------------
# Public API.

_CACHE: collections.OrderedDict[tuple[str | None, str], float | None] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


_SLOW = object()  # marker: the pair needs a symbolic check


def _fast_result(answer: str | None, gold: str) -> Any:
    """The result when no symbolic check is needed (plain integers, empty gold), else ``_SLOW``."""
    gold = gold.strip()
    if _INT_RE.fullmatch(gold):
        if answer is None:
            return 0.0
        answer = answer.strip()
        if _INT_RE.fullmatch(answer):
            return 1.0 if int(answer) == int(gold) else 0.0
    elif not gold:
        return None
    return _SLOW


def verify_many(pairs: Sequence[tuple[str | None, str]], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[float | None]:
    """Check (answer, gold) pairs; an answer of None means "no answer" (0.0, or None for a bad gold)."""
    results: list[float | None] = [None] * len(pairs)
    todo: dict[tuple[str | None, str], list[int]] = {}
    for i, pair in enumerate(pairs):
        fast = _fast_result(*pair)
        if fast is not _SLOW:
            results[i] = fast
            continue
        with _CACHE_LOCK:
            if pair in _CACHE:
                _CACHE.move_to_end(pair)
                results[i] = _CACHE[pair]
                continue
        todo.setdefault(pair, []).append(i)
    if todo:
        unique = list(todo)
        checked = _pool().run(unique, timeout_s)
        with _CACHE_LOCK:
            for pair, value in zip(unique, checked, strict=True):
                for i in todo[pair]:
                    results[i] = value
                _CACHE[pair] = value
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return results


def verify_math(answer_text: str | None, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> float | None:
    """1.0 if ``answer_text`` (the content of a box) equals ``gold`` mathematically, else 0.0; None for a bad gold.

    Safe to call from any thread; a check that takes longer than ``timeout_s`` scores 0.0.
    """
    return verify_many([(answer_text, "" if gold is None else str(gold))], timeout_s)[0]


def math_reward(
    completions: Sequence[Any],
    solution: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    require_think_close: bool = False,
    **kwargs: Any,
) -> list[float | None]:
    """TRL reward: 1.0 when the last ``\\boxed{}`` after ``</think>`` matches the row's ``solution``, else 0.0.

    ``require_think_close``: a completion without ``</think>`` scores 0 (the chat template opened the reasoning;
    see ``archer.rewards.thinking``). Rows whose gold solution cannot be parsed get None (TRL skips them) and one
    warning per distinct gold; rows whose solution is None (a code row of a mixed dataset) get None silently.
    """
    if len(completions) != len(solution):
        raise ValueError(f"math_reward got {len(completions)} completions but {len(solution)} solutions")
    answers = [extract_boxed_answer(completion_text(c), require_think_close) for c in completions]
    golds = ["" if g is None else str(g) for g in solution]
    results = verify_many(list(zip(answers, golds, strict=True)), timeout_s)
    unparsable: dict[str, list[int]] = {}
    for i, value in enumerate(results):
        if solution[i] is None:  # not a math row
            results[i] = None
        elif value is None:
            unparsable.setdefault(golds[i], []).append(i)
    for gold, rows in unparsable.items():
        logger.warning("math_reward: the solution %r of row(s) %s cannot be parsed; reward skipped", gold[:200], rows)
    return results
