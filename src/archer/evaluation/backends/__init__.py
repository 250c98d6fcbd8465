"""Generation backends for ``archer eval``, and how one is chosen.

- ``transformers``: ``model.generate`` in this process (CPU or one GPU); the reference, and what CI runs.
- ``vllm``: vLLM's own offline API (``vllm.LLM``) in this process, or one engine process per GPU group for data
  parallelism (``vllm.py``; every vLLM call lives in ``vllm_engine.py``).
- ``openai``: any OpenAI-compatible server's ``/v1/completions`` (``vllm serve``, SGLang, TGI; ``openai.py``).

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

from archer.errors import UserError
from archer.evaluation.backends.base import Backend, BackendOptions

BACKENDS = ("auto", "transformers", "vllm", "openai")


def vllm_available() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def select_backend(requested: str = "auto", base_url: str | None = None) -> str:
    """``auto``: the server when ``--base-url`` is given, else vLLM when installed with a GPU, else transformers."""
    if requested not in BACKENDS:
        raise UserError(f"--backend {requested!r}: valid: {', '.join(BACKENDS)}")
    if base_url is not None and requested not in ("auto", "openai"):
        raise UserError(f"--base-url is for --backend openai, not --backend {requested}")
    if requested == "openai" and base_url is None:
        raise UserError("--backend openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1")
    if requested == "vllm" and not vllm_available():
        raise UserError(
            "--backend vllm: vLLM is not installed or no GPU is visible; use --backend transformers, or "
            "--backend openai --base-url URL for a running server"
        )
    if requested == "auto":
        if base_url is not None:
            return "openai"
        return "vllm" if vllm_available() else "transformers"
    return requested


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
