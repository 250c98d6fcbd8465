"""``vllm.inputs.TokensPrompt`` as in vLLM 0.30: a TypedDict (only the key archer uses)."""

from typing import TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
