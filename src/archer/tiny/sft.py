"""Supervised warm-start of the tiny model on freshly generated arithmetic problems (a plain torch loop).

Each example is ``prompt ids + completion ids + eos``, tokenised in two parts exactly as the RL trainer sees a
prompt and its sampled completion. The loss is the mean cross-entropy over completion tokens (and the eos) only.
A fraction ``answer_only_frac`` of the examples gets the answer-only completion ``<think></think> \\boxed{N}``: the
warm-started model then sometimes shows its working and sometimes guesses, which leaves RL a path to find.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from archer.data.arithmetic import ArithmeticTask
from archer.errors import UserError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SCHEDULES = ("cosine", "linear", "constant")
ModelT = TypeVar("ModelT", bound=PreTrainedModel)  # run_sft's callback gets the model it was given


@dataclass
class SFTConfig:
    """The warm-start's optimisation settings (defaults: about 2-2.5 minutes on 2 CPU cores)."""

    steps: int = field(default=2500, metadata={"help": "Optimizer steps; every step draws a fresh batch."})
    batch_size: int = field(default=64, metadata={"help": "Problems per step."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    schedule: str = field(default="cosine", metadata={"help": f"Decay after warm-up: one of {SCHEDULES}."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps from 0 to the peak rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip (0 disables it)."})
    answer_only_frac: float = field(
        default=0.5, metadata={"help": "Fraction of examples whose completion skips the working."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds the problem stream and the completion-type draws."})
    log_every: int = field(default=250, metadata={"help": "Log the running loss every this many steps."})
    target_accuracy: float | None = field(
        default=None,
        metadata={
            "help": "Early stop: every eval_every steps, greedy accuracy on a validation set (problems drawn like "
            "training ones, never the held-out set); SFT ends once it reaches this (`steps` is then a cap, and the "
            "schedule still spans `steps`). Slow seeds train longer, fast ones stop with room left for RL. "
            "None: always run `steps`."
        },
    )
    eval_every: int = field(default=250, metadata={"help": "With target_accuracy: validation every this many steps."})
    validation_size: int = field(default=200, metadata={"help": "With target_accuracy: validation problems."})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise UserError(f"sft.steps={self.steps}, sft.batch_size={self.batch_size}: both must be >= 1")
        if not self.learning_rate > 0:
            raise UserError(f"sft.learning_rate={self.learning_rate}: must be > 0")
        if self.schedule not in SCHEDULES:
            raise UserError(f"sft.schedule={self.schedule!r}: must be one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise UserError(f"sft.warmup_steps={self.warmup_steps}: must be in [0, steps={self.steps})")
        if not 0.0 <= self.answer_only_frac <= 1.0:
            raise UserError(f"sft.answer_only_frac={self.answer_only_frac}: must be in [0, 1]")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.log_every < 1:
            raise UserError("sft.weight_decay and sft.max_grad_norm must be >= 0, sft.log_every >= 1")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise UserError(f"sft.target_accuracy={self.target_accuracy}: must be in (0, 1] or null")
        if self.eval_every < 1 or self.validation_size < 1:
            raise UserError("sft.eval_every and sft.validation_size must be >= 1")


def lr_factor(step: int, cfg: SFTConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return 1.0 - progress
    return 1.0


def make_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels``; labels are -100 except on completion + eos."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    rows = [(p, c + [tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    length = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def validation_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: list) -> float:
    """Greedy accuracy on ``problems`` (graded by the math reward); leaves the model in training mode."""
    from archer.tiny.accuracy import generate_completions, score

    completions = generate_completions(model, tokenizer, [p.prompt for p in problems])
    return sum(score(completions, [p.solution for p in problems])) / len(problems)


def completion_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (completion) positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


def run_sft(
    model: ModelT,
    tokenizer: PreTrainedTokenizerBase,
    task: ArithmeticTask,
    cfg: SFTConfig | None = None,
    callback: Callable[[int, ModelT], None] | None = None,
) -> dict[str, Any]:
    """Warm-start ``model`` in place; return stats (losses, wall time, examples seen).

    ``callback(steps_done, model)``, when given, runs after every optimizer step (e.g. to probe the model).
    """
    cfg = cfg or SFTConfig()
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    validation = task.validation(cfg.validation_size) if cfg.target_accuracy is not None else []
    history: list[tuple[int, float]] = []
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    logger.info(
        "SFT warm-start: %s steps x %d problems, lr %.1e %s",
        cfg.steps if cfg.target_accuracy is None else f"<= {cfg.steps}",
        cfg.batch_size,
        cfg.learning_rate,
        cfg.schedule,
    )
    with tqdm(range(cfg.steps), desc="SFT warm-start", unit="step", dynamic_ncols=True) as bar:
        for step in bar:
            problems = [task.sample(rng) for _ in range(cfg.batch_size)]
            completions = [p.answer_only if rng.random() < cfg.answer_only_frac else p.worked for p in problems]
            loss = completion_loss(model, make_batch(tokenizer, [p.prompt for p in problems], completions))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if callback is not None:
                callback(step + 1, model)
            if validation and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                history.append((step + 1, validation_accuracy(model, tokenizer, validation)))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", validation=f"{history[-1][1]:.3f}")
                logger.info("SFT step %d: validation accuracy %.3f", step + 1, history[-1][1])
                if cfg.target_accuracy is not None and history[-1][1] >= cfg.target_accuracy:
                    logger.info("SFT stops early: validation accuracy reached %.3f", cfg.target_accuracy)
                    break
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                recent = sum(losses[-cfg.log_every :]) / len(losses[-cfg.log_every :])
                bar.set_postfix(loss=f"{recent:.4f}")
                logger.info(
                    "SFT step %d/%d: loss %.4f, lr %.2e", step + 1, cfg.steps, recent, scheduler.get_last_lr()[0]
                )
    model.eval()
    seconds = time.perf_counter() - start
    window = min(50, len(losses))
    stats = {
        "steps": len(losses),
        "examples": len(losses) * cfg.batch_size,
        "initial_loss": losses[0],
        "final_loss": sum(losses[-window:]) / window,
        "seconds": seconds,
        "config": asdict(cfg),
    }
    if validation:
        stats["validation_accuracy"] = history
    logger.info("SFT done in %.1f s: loss %.4f -> %.4f", seconds, stats["initial_loss"], stats["final_loss"])
    return stats
