"""Generation backends for ``archer eval``, and how one is chosen.

- ``transformers``: ``model.generate`` in this process (CPU or one GPU); the reference, and what CI runs.
- ``vllm``: vLLM's own offline API (``vllm.LLM``) in this process, or one engine process per GPU group for data
  parallelism (``backends_vllm.py``; every vLLM call lives in ``vllm_engine.py``).
- ``openai``: any OpenAI-compatible server's ``/v1/completions`` (``vllm serve``, SGLang, TGI; ``backends_openai.py``).

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tqdm.auto import tqdm

from archer.errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "vllm", "openai")
PROMPT_FORMATS = ("tokens", "text")


@dataclass(frozen=True)
class Sampling:
    k: int
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class BackendOptions:
    dtype: str = field(default="auto", metadata={"help": "weights dtype: auto, float32, bfloat16, float16"})
    batch_size: int = field(default=16, metadata={"help": "transformers: problems per generate() call"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per engine"})
    data_parallel_size: int = field(default=1, metadata={"help": "vLLM: engines, one process per GPU group"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: fraction of GPU memory"})
    max_model_length: int | None = field(default=None, metadata={"help": "vLLM: context length (prompt + output)"})
    seed: int = field(default=1234, metadata={"help": "sampling seed (the suite's)"})
    base_url: str | None = field(default=None, metadata={"help": "openai: server URL, e.g. http://host:8000/v1"})
    api_key_env: str | None = field(default=None, metadata={"help": "openai: environment variable with the key"})
    served_model: str | None = field(
        default=None, metadata={"help": "openai: model name on the server (default: the one it serves)"}
    )
    prompt_format: str = field(default="tokens", metadata={"help": "openai: send token ids or prompt text"})
    max_concurrency: int = field(default=32, metadata={"help": "openai: requests in flight at once"})
    max_retries: int = field(default=5, metadata={"help": "openai: retries on 5xx, timeouts, connection errors"})
    request_timeout_s: float = field(default=3600.0, metadata={"help": "openai: seconds per request"})


class Backend(Protocol):
    name: str
    tokenizer: object

    def generate(
        self, prompts: Sequence[list[int]], sampling: Sampling, desc: str, texts: Sequence[str] | None = None
    ) -> list[list[str]]: ...

    def protocol(self) -> dict[str, object]: ...

    def close(self) -> None: ...


def problem_seeds(seed: int, num_problems: int, k: int) -> list[int]:
    """One seed per problem, k apart: vLLM gives sample j of a request ``seed + j``, so no two samples share one."""
    return [seed + i * k for i in range(num_problems)]


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
        from archer.evaluation.backends_vllm import VLLMBackend

        return VLLMBackend(model, options)
    if name == "openai":
        from archer.evaluation.backends_openai import OpenAIBackend

        return OpenAIBackend(model, options)
    return TransformersBackend(model, options)


class TransformersBackend:
    """``model.generate`` on left-padded batches of prompts, k samples per prompt."""

    name = "transformers"

    def __init__(self, model: str, options: BackendOptions):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if options.dtype == "auto" else getattr(torch, options.dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()

    def protocol(self) -> dict[str, object]:
        return {"dtype": self.options.dtype, "batch_size": self.options.batch_size}

    def close(self) -> None:
        pass

    def generate(
        self, prompts: Sequence[list[int]], sampling: Sampling, desc: str, texts: Sequence[str] | None = None
    ) -> list[list[str]]:
        import torch

        torch.manual_seed(self.options.seed)
        greedy = sampling.temperature == 0
        kwargs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": sampling.temperature}
        if not greedy:
            kwargs |= {"top_p": sampling.top_p, "top_k": 0}
        out: list[list[str]] = []
        with tqdm(total=len(prompts), desc=desc, unit="problem") as bar:
            for start in range(0, len(prompts), self.options.batch_size):
                batch = [{"input_ids": ids} for ids in prompts[start : start + self.options.batch_size]]
                inputs = self.tokenizer.pad(batch, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    ids = self.model.generate(
                        **inputs,
                        max_new_tokens=sampling.max_new_tokens,
                        num_return_sequences=sampling.k,
                        pad_token_id=self.tokenizer.pad_token_id,
                        **kwargs,
                    )
                texts_out = self.tokenizer.batch_decode(
                    ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                out.extend(texts_out[i : i + sampling.k] for i in range(0, len(texts_out), sampling.k))
                bar.update(len(batch))
        return out
