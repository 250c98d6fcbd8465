"""vLLM backend: one engine in this process, or one engine process per GPU group for data parallelism.

vLLM 0.30's ``LLM`` refuses ``data_parallel_size > 1`` in a single process, so ``--data-parallel-size N`` starts N
worker processes (spawned, not forked: CUDA must not be initialised before each sees only its GPUs), each with
``CUDA_VISIBLE_DEVICES`` set to its ``--tensor-parallel-size`` GPUs and its own ``LLM``. Problems are dealt out in
turn (problem i to engine i mod N) and put back in order; each carries its own seed, so the samples are the same
for any N. The engines live for the whole suite and stop with ``close()``. This module does not import vLLM:
``vllm_engine`` does, inside each engine's process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from archer.errors import UserError
from archer.evaluation.backends.base import BackendOptions, Sampling, problem_seeds

logger = logging.getLogger(__name__)


def engine_dtype(dtype: str) -> str:
    """``auto`` means bfloat16 for vLLM (vLLM's own ``auto`` turns float32 checkpoints into float16)."""
    return "bfloat16" if dtype == "auto" else dtype


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
        "dtype": engine_dtype(options.dtype),
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_model_length": options.max_model_length,
        "seed": options.seed,
    }


def _run(engine: Any, job: tuple[list[list[int]], Sampling, list[int]], use_tqdm: bool) -> list[list[str]]:
    from archer.evaluation.backends import vllm_engine

    prompts, s, seeds = job
    return vllm_engine.generate(engine, prompts, s.k, s.temperature, s.top_p, s.max_new_tokens, seeds, use_tqdm)


def _engine_worker(conn: Connection, devices: list[str], engine_args: dict[str, Any], show_progress: bool) -> None:
    """One data-parallel engine: build it on ``devices``, then answer generate jobs until told to stop (None)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # before vLLM (and CUDA) start in this process
    try:
        from archer.evaluation.backends import vllm_engine

        engine = vllm_engine.build_engine(**engine_args)
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
        self.conn, child = context.Pipe()
        # not a daemon: vLLM starts processes of its own, which daemons may not
        self.process = context.Process(
            target=_engine_worker, args=(child, devices, engine_args, show_progress), name=f"vllm-gpus-{devices}"
        )
        self.process.start()
        child.close()

    def receive(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the vLLM engine on GPUs {','.join(self.devices)} exited unexpectedly") from None
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


class VLLMBackend:
    """vLLM's ``LLM.generate`` on token-id prompts: tensor parallel inside an engine, data parallel across engines."""

    name = "vllm"

    def __init__(self, model: str, options: BackendOptions):
        from transformers import AutoTokenizer

        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        args = _engine_args(model, options)
        self._engine = None
        self._workers: list[_EngineProcess] = []
        if options.data_parallel_size == 1:
            from archer.evaluation.backends import vllm_engine

            self._engine = vllm_engine.build_engine(**args)
            return
        groups = gpu_groups(options.tensor_parallel_size, options.data_parallel_size, visible_gpus())
        logger.info("starting %d vLLM engines on GPUs %s", len(groups), groups)
        try:
            self._workers = [_EngineProcess(group, args, show_progress=i == 0) for i, group in enumerate(groups)]
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
            return _run(self._engine, (list(prompts), sampling, seeds), use_tqdm=True)
        n = len(self._workers)
        for rank, worker in enumerate(self._workers):
            worker.conn.send((list(prompts[rank::n]), sampling, seeds[rank::n]))
        shards = [worker.receive() for worker in self._workers]
        out: list[list[str]] = [[] for _ in prompts]
        for rank, shard in enumerate(shards):
            out[rank::n] = shard
        return out

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
        self._engine = None
