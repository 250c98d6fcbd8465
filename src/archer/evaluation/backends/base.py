"""What every generation backend shares: the sampling protocol, the options, the interface, per-problem seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

# The head sizes vLLM's CPU attention kernels serve (vLLM 0.30: CPUAttentionBackend.get_supported_head_sizes; a test
# holds this to the installed vLLM); a model with another head size fails at its first step there.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

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
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "vLLM: fraction of GPU memory (on CPU: of host RAM); None: 0.9 on GPUs, a KV cache sized for the model on CPU"
        },
    )
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

    @property  # read-only, so that each backend may hold its own tokenizer class
    def tokenizer(self) -> object: ...

    def generate(
        self, prompts: Sequence[list[int]], sampling: Sampling, desc: str, texts: Sequence[str] | None = None
    ) -> list[list[str]]: ...

    def protocol(self) -> dict[str, object]: ...

    def close(self) -> None: ...


def problem_seeds(seed: int, num_problems: int, k: int) -> list[int]:
    """One seed per problem, k apart: vLLM gives sample j of a request ``seed + j``, so no two samples share one."""
    return [seed + i * k for i in range(num_problems)]
