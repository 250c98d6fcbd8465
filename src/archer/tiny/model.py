"""A tiny Qwen2-style causal LM, built offline from a config dataclass (about 130k parameters by default)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from archer.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class TinyModelConfig:
    """Shape of the tiny model. On 2 CPU cores many small steps of a small model beat fewer of a bigger one.

    The default head layout (2 query heads and 1 key/value head of 32) keeps head_dim at 32: vLLM's CPU attention
    serves no smaller head (GPU vLLM does), so the default model also loads in `make eval`'s vLLM backend.
    """

    hidden_size: int = field(default=64, metadata={"help": "Width of the residual stream."})
    num_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    num_heads: int = field(
        default=2, metadata={"help": "Attention heads (hidden_size must divide by it); head_dim = hidden / heads."}
    )
    num_kv_heads: int = field(default=1, metadata={"help": "Key/value heads (grouped-query attention)."})
    intermediate_size: int = field(default=256, metadata={"help": "Width of the SwiGLU MLP."})
    max_position_embeddings: int = field(default=128, metadata={"help": "Longest prompt + completion, in tokens."})
    rope_theta: float = field(default=10_000.0, metadata={"help": "RoPE base frequency."})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "Share input embeddings and LM head."})
    initializer_range: float = field(default=0.02, metadata={"help": "Std of the normal weight initialisation."})

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name}={getattr(self, name)}: must be >= 1")
        if self.hidden_size % self.num_heads:
            raise UserError(f"model.hidden_size={self.hidden_size}: must divide by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"model.num_kv_heads={self.num_kv_heads}: must divide num_heads={self.num_heads}")
        if self.max_position_embeddings < 16:
            raise UserError(f"model.max_position_embeddings={self.max_position_embeddings}: must be >= 16")


def qwen2_config(tokenizer: PreTrainedTokenizerBase, cfg: TinyModelConfig) -> Qwen2Config:
    """The transformers config for ``cfg`` with ``tokenizer``'s vocabulary and eos / pad ids."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype="float32",
    )


def build_model(
    tokenizer: PreTrainedTokenizerBase, cfg: TinyModelConfig | None = None, seed: int = 0
) -> Qwen2ForCausalLM:
    """A freshly initialised float32 ``Qwen2ForCausalLM`` for ``tokenizer`` (same ``seed``, same weights)."""
    cfg = cfg or TinyModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # PreTrainedModel.to is wrapped in functools.wraps, whose typeshed type leaves `self` unbound
        model = Qwen2ForCausalLM(qwen2_config(tokenizer, cfg)).to(torch.float32)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    logger.info("built tiny Qwen2 model: %s parameters", f"{model.num_parameters():,}")
    return model
