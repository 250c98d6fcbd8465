"""A stand-in for the few names of vLLM 0.30 that ``archer.evaluation.backends.vllm_engine`` uses (tests only; no GPU).

Signatures accept exactly the keywords archer passes, under vLLM's names; ``tests/test_eval_vllm.py`` checks every
name here against the pinned vLLM wheel. ``LLM.generate`` writes, as each completion's text, what it was asked:
the GPUs it saw, the seed of that sample, the prompt's token ids and the sampling settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENGINES: list[LLM] = []  # every engine built in this process, for tests to inspect


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    seed: int | None = None
    skip_special_tokens: bool = True


@dataclass
class CompletionOutput:
    index: int
    text: str


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]


class LLM:
    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        max_model_len: int | None = None,  # in vLLM, an EngineArgs field reached through LLM's **kwargs
    ) -> None:
        if model == "broken":
            raise RuntimeError("fake vLLM: cannot load model 'broken'")
        self.kwargs = {
            "model": model,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
        }
        self.gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ENGINES.append(self)

    def generate(self, prompts, sampling_params, *, use_tqdm=True) -> list[RequestOutput]:
        assert len(prompts) == len(sampling_params)
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            ids = ",".join(map(str, prompt["prompt_token_ids"]))
            texts = [
                f"gpus={self.gpus} seed={params.seed + j} ids={ids} T={params.temperature} top_p={params.top_p} "
                f"top_k={params.top_k} max={params.max_tokens} skip={params.skip_special_tokens}"
                for j in range(params.n)
            ]
            # returned out of order: callers must sort by index
            outputs.append(RequestOutput([CompletionOutput(j, t) for j, t in reversed(list(enumerate(texts)))]))
        return outputs
