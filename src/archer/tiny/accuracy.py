"""Held-out accuracy of a model on the arithmetic task: batched greedy decoding, graded by the math reward."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from archer.data.arithmetic import THINK_CLOSE, THINK_OPEN, ArithmeticTask

logger = logging.getLogger(__name__)

# The evaluation suite of the embedded default (`make eval`): the paper's sampling protocol on the held-out set.
TINY_SUITE = "tiny"  # eval/suites/tiny.yaml, found through the package's assets (archer.resources)


@dataclass
class HeldoutResult:
    """Greedy completions on the held-out problems and how they score."""

    accuracy: float
    worked_frac: float  # completions with non-empty working between <think> and </think>
    completions: list[str]
    solutions: list[str]
    rewards: list[float]


def score(completions: list[str], solutions: list[str]) -> list[float]:
    """Grade with the training reward, ``archer.rewards.math_reward``; an ungradable row scores 0."""
    from archer.rewards import math_reward  # lazy: importing archer.tiny stays light

    return [float(r or 0.0) for r in math_reward(completions, solution=solutions)]


def shows_working(completion: str) -> bool:
    """True when the completion has text between ``<think>`` and ``</think>``."""
    head, sep, rest = completion.partition(THINK_OPEN)
    body, closed, _ = rest.partition(THINK_CLOSE)
    return bool(sep and closed and body.strip())


@torch.inference_mode()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    batch_size: int = 250,
    max_new_tokens: int = 40,
) -> list[str]:
    """Greedy completions of plain-text ``prompts`` (left padding, as TRL generates), special tokens skipped."""
    was_training = model.training
    model.eval()
    completions: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="held-out generation", unit="batch", leave=False):
            enc = tokenizer(
                prompts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            ).to(model.device)
            # PreTrainedModel's type lacks generate (GenerationMixin is mixed into the *ForCausalLM classes), so
            # nn.Module.__getattr__ types it as a Tensor
            out = model.generate(  # type: ignore[operator]
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            completions += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return completions


def evaluate_heldout(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: ArithmeticTask,
    n: int = 500,
    seed: int | None = None,
    batch_size: int = 250,
    max_new_tokens: int = 40,
) -> HeldoutResult:
    """Greedy accuracy on ``task.heldout(n, seed)`` (default seed: the task's reserved, never-trained-on set)."""
    problems = task.heldout(n, seed)
    if seed not in (None, task.heldout_seed) or n > task.heldout_size:
        logger.warning("held-out set (n=%d, seed=%s) is not the task's reserved set: it may overlap training", n, seed)
    prompts, solutions = [p.prompt for p in problems], [p.solution for p in problems]
    completions = generate_completions(model, tokenizer, prompts, batch_size, max_new_tokens)
    rewards = score(completions, solutions)
    return HeldoutResult(
        accuracy=sum(rewards) / len(rewards),
        worked_frac=sum(map(shows_working, completions)) / len(completions),
        completions=completions,
        solutions=solutions,
        rewards=rewards,
    )


def heldout_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: ArithmeticTask,
    n: int = 500,
    seed: int | None = None,
    batch_size: int = 250,
    max_new_tokens: int = 40,
) -> float:
    """Fraction of ``n`` held-out problems that greedy decoding answers correctly."""
    return evaluate_heldout(model, tokenizer, task, n, seed, batch_size, max_new_tokens).accuracy


@dataclass(frozen=True)
class SampledResult:
    """Held-out accuracy under sampling, as ``archer eval`` computes it (its results folder: ``results``)."""

    accuracy: float  # avg@k: pass@1 averaged over k samples per problem, a fraction
    pass_at_k: float  # unbiased pass@k, a fraction
    k: int
    temperature: float
    protocol: dict[str, Any]
    results: Path


def sampled_heldout(model_dir: str | Path, suite: str | Path = TINY_SUITE) -> SampledResult:
    """Run the tiny evaluation suite (``make eval``'s default) on a saved model folder, written to its ``eval/``.

    The suite reads the task and the number of held-out problems from the folder's ``config.yaml``.
    """
    from archer.evaluation.runner import EvalRequest, evaluate
    from archer.resources import resolve_yaml

    out_dir, results = evaluate(EvalRequest(model=str(model_dir), suite=str(resolve_yaml(suite, "eval", "suites"))))
    (name, task), *others = results["tasks"].items()
    if others:
        logger.warning("suite %s has several tasks; the held-out figures come from %s", suite, name)
    k = task["k"]
    return SampledResult(
        accuracy=task["metrics"][f"avg@{k}"] / 100,
        pass_at_k=task["metrics"][f"pass@{k}"] / 100,
        k=k,
        temperature=task["temperature"],
        protocol={
            **{key: task[key] for key in ("k", "temperature", "top_p", "max_new_tokens")},
            "problems": task["num_problems"],
            "seed": results["protocol"].get("seed"),
            "suite": results["suite"],
        },
        results=out_dir / "results.json",
    )
