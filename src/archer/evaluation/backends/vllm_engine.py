"""Every call ``archer eval`` makes into vLLM, on vLLM 0.30's public offline API and nothing else.

Importing this module imports vLLM (GPU install only: ``make install-gpu``). The calls are written with plain
keyword arguments on purpose: ``make api-check`` reads them with ``ast`` and checks each name against the pinned
vLLM wheel (``LLM.__init__`` and ``EngineArgs`` for the engine, ``SamplingParams``' fields, ``TokensPrompt``'s
keys, ``RequestOutput.outputs`` and ``CompletionOutput.index`` / ``.text``).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def build_engine(
    model: str,
    dtype: str,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    max_model_length: int | None,
    seed: int,
) -> LLM:
    """One engine over ``tensor_parallel_size`` GPUs (data parallelism is one such engine per process)."""
    return LLM(
        model=model,
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_length,  # an EngineArgs field, passed through LLM's **kwargs; None: the model's
        seed=seed,
    )


def generate(
    engine: LLM,
    prompts: Sequence[list[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seeds: Sequence[int],
    use_tqdm: bool = True,
) -> list[list[str]]:
    """k completions per token-id prompt, problem i seeded with ``seeds[i]`` (its samples get ``seed + j``).

    No top-k (0 disables it in vLLM), no stop strings: generation ends at the model's EOS or the token budget.
    Texts are decoded without special tokens, as TRL decodes completions in training.
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
    completions = []
    for output in engine.generate(requests, params, use_tqdm=use_tqdm):
        by_index = {choice.index: choice.text for choice in output.outputs}
        completions.append([by_index[j] for j in sorted(by_index)])
    return completions
