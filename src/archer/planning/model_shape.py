"""A model's shape from its ``config.json`` (no weights, no network): what parameter counts and memory depend on.

The configs of the models our recipes train ship under ``archer/data/model_configs/``, so a dry run of a paper
recipe works offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import UserError

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "data" / "model_configs"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer (Llama / Qwen2 / Qwen3 family) that memory depends on."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 has biases on q, k and v
    o_bias: bool  # Llama's attention_bias also puts one on o_proj
    qk_norm: bool  # Qwen3 normalises queries and keys per head

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "config.json") -> ModelShape:
        """Read a config.json's content; keys it leaves out take the model type's transformers defaults."""
        from transformers import AutoConfig

        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UserError(f"{source}: model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}")
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if key not in config:
                raise UserError(f"{source}: missing key {key!r}")
        try:
            cfg = AutoConfig.for_model(**config)
        except (ValueError, TypeError) as err:
            raise UserError(f"{source}: {err}") from None
        heads = cfg.num_attention_heads
        attention_bias = bool(getattr(cfg, "attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            intermediate_size=cfg.intermediate_size,
            tie_word_embeddings=bool(cfg.tie_word_embeddings),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            qk_norm=model_type == "qwen3",
        )

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_parameters(self) -> int:
        h = self.hidden_size
        attention = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        attention += (
            (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + h * self.o_bias + 2 * self.head_dim * self.qk_norm
        )
        mlp = 3 * h * self.intermediate_size  # gate, up, down (SwiGLU)
        return attention + mlp + 2 * h  # two RMSNorms

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_parameters(self) -> int:
        lm_head = 0 if self.tie_word_embeddings else self.embedding_parameters
        return self.embedding_parameters + lm_head + self.num_layers * self.layer_parameters + self.hidden_size

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_layers * self.kv_dim * dtype_bytes


def config_file_for(name_or_path: str) -> Path:
    """The config.json of a local model folder, or the copy shipped for a Hub id (``org/name``)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"model.name_or_path: {local} has no config.json")
        return local / "config.json"
    shipped = MODEL_CONFIGS / (name_or_path.replace("/", "--") + ".json")
    if shipped.is_file():
        return shipped
    known = sorted(p.stem.replace("--", "/") for p in MODEL_CONFIGS.glob("*.json"))
    raise UserError(
        f"model.name_or_path: no config.json for {name_or_path!r} offline; give a local model folder or one of "
        f"{', '.join(known)} (or add its config.json to {MODEL_CONFIGS})"
    )


def load_model_shape(name_or_path: str) -> ModelShape:
    path = config_file_for(name_or_path)
    return ModelShape.from_config(json.loads(path.read_text()), source=str(path))
