"""The embedded default: a tiny tokenizer and Qwen2-style model built offline, an SFT warm-start, held-out accuracy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from archer.data.arithmetic import ArithmeticTask
from archer.tiny.accuracy import (
    HeldoutResult,
    SampledResult,
    evaluate_heldout,
    generate_completions,
    heldout_accuracy,
    sampled_heldout,
)
from archer.tiny.model import TinyModelConfig, build_model
from archer.tiny.sft import SFTConfig, run_sft
from archer.tiny.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "HeldoutResult",
    "SampledResult",
    "SFTConfig",
    "TinyModelConfig",
    "build_model",
    "build_tokenizer",
    "evaluate_heldout",
    "generate_completions",
    "heldout_accuracy",
    "prepare_tiny_model",
    "run_sft",
    "sampled_heldout",
]


def prepare_tiny_model(
    out_dir: str | Path,
    model_cfg: TinyModelConfig | None = None,
    sft_cfg: SFTConfig | None = None,
    task: ArithmeticTask | None = None,
    callback: Callable[[int, Qwen2ForCausalLM], None] | None = None,
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    """Build the tokenizer and model, warm-start them with SFT, and save both to ``out_dir``.

    The folder then loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (same token ids) and carries a
    ``generation_config.json`` that stops at eos. The model's seed is ``sft_cfg.seed``. ``callback`` goes to
    :func:`run_sft` (called after every optimizer step).
    """
    model_cfg, sft_cfg, task = model_cfg or TinyModelConfig(), sft_cfg or SFTConfig(), task or ArithmeticTask()
    tokenizer = build_tokenizer(task=task)
    model = build_model(tokenizer, model_cfg, seed=sft_cfg.seed)
    stats = run_sft(model, tokenizer, task, sft_cfg, callback=callback)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("saved the warm-started tiny model to %s", out_dir)
    return model, tokenizer, stats
