"""The paper's batch on any number of processes: one rule shared by the trainer, the dry run and the Slurm script.

The paper's terms (docs/method.md#training-recipe) and the recipe keys that state them:

- a *rollout* is one generation batch, ``generation_batch_size`` responses (prompts x ``num_generations``), sampled
  once and trained on for ``num_iterations`` epochs (the paper: 1024 = 64 x 16, 3 epochs);
- a *mini-batch* is what one optimizer step sees, ``responses_per_step`` responses over all processes together
  (the paper: 512), so a rollout makes ``generation_batch_size / responses_per_step x num_iterations`` optimizer
  steps (the paper: 6) when no group is dropped, fewer when some are (see :func:`rollout_schedule`);
- a *micro-batch* is what one process runs forward and backward at once, ``per_device_train_batch_size``.

The accumulation (micro-batches per process per optimizer step) is derived at launch:
``responses_per_step / (per_device_train_batch_size x processes)``; a process count that does not divide the
mini-batch is refused with one line. A recipe that states ``gradient_accumulation_steps`` instead (the tiny
recipes) gets a mini-batch of ``per_device_train_batch_size x processes x gradient_accumulation_steps`` responses,
which grows with the processes. Without ``generation_batch_size`` or ``steps_per_generation`` a rollout is one
mini-batch (TRL's default).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from archer.errors import UserError

if TYPE_CHECKING:
    from archer.recipe import Recipe


class BatchError(UserError, ValueError):
    """A batch that cannot run: a ``ValueError`` for library callers, a ``UserError`` (one line) for the CLI."""


@dataclass(frozen=True)
class Batch:
    """How one rollout is sampled and consumed on ``num_processes`` processes."""

    num_processes: int
    per_device_train_batch_size: int  # the micro-batch
    gradient_accumulation_steps: int  # micro-batches per process per optimizer step (derived or given)
    num_generations: int
    generation_batch_size: int  # responses per rollout, all processes
    num_iterations: int  # epochs over each rollout

    @property
    def responses_per_step(self) -> int:
        """The mini-batch: responses per optimizer step, all processes together."""
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @property
    def prompts_per_rollout(self) -> int:
        return self.generation_batch_size // self.num_generations

    @property
    def steps_per_generation(self) -> int:
        """TRL's name: micro-batches per process in one rollout."""
        return self.generation_batch_size // (self.per_device_train_batch_size * self.num_processes)

    @property
    def mini_batches_per_rollout(self) -> int:
        return self.generation_batch_size // self.responses_per_step

    @property
    def optimizer_steps_per_rollout(self) -> int:
        """When every group is kept; a rollout whose kept responses fill fewer mini-batches makes fewer."""
        return self.mini_batches_per_rollout * self.num_iterations


def resolve_batch(
    *,
    num_processes: int,
    per_device_train_batch_size: int,
    num_generations: int | None,
    responses_per_step: int | None = None,
    gradient_accumulation_steps: int = 1,
    generation_batch_size: int | None = None,
    steps_per_generation: int | None = None,
    num_iterations: int = 1,
) -> Batch:
    """The batch of a recipe on ``num_processes`` processes, or a one-line :class:`BatchError` when it cannot run."""
    for name, value in (
        ("num_processes", num_processes),
        ("per_device_train_batch_size", per_device_train_batch_size),
        ("gradient_accumulation_steps", gradient_accumulation_steps),
        ("num_iterations", num_iterations),
    ):
        if value < 1:
            raise BatchError(f"trainer.{name}={value}: must be >= 1")
    if num_generations is None or num_generations < 2:  # GRPOConfig types it int | None
        raise BatchError(f"trainer.num_generations={num_generations}: GRPO needs >= 2 responses per prompt")
    micro_all = per_device_train_batch_size * num_processes  # responses in one micro-batch of every process
    if responses_per_step is not None:
        if responses_per_step < 1 or responses_per_step % micro_all:
            raise BatchError(
                f"trainer.responses_per_step={responses_per_step}: cannot be split over {num_processes} process(es) "
                f"of per_device_train_batch_size={per_device_train_batch_size} (needs a multiple of "
                f"{per_device_train_batch_size} x {num_processes} = {micro_all}); pick a process count or micro-batch "
                "that divides it"
            )
        derived = responses_per_step // micro_all
        if gradient_accumulation_steps not in (1, derived):
            raise BatchError(
                f"trainer.gradient_accumulation_steps={gradient_accumulation_steps}: responses_per_step="
                f"{responses_per_step} on {num_processes} process(es) gives {derived}; leave it out, it is derived"
            )
        gradient_accumulation_steps = derived
    if generation_batch_size is not None and steps_per_generation is not None:
        raise BatchError("trainer: set generation_batch_size or steps_per_generation, not both")
    if generation_batch_size is None:
        generation_batch_size = micro_all * (steps_per_generation or gradient_accumulation_steps)
    elif generation_batch_size % micro_all:
        raise BatchError(
            f"trainer.generation_batch_size={generation_batch_size}: must divide by per_device_train_batch_size "
            f"x processes = {per_device_train_batch_size} x {num_processes} = {micro_all}"
        )
    if generation_batch_size % num_generations:
        raise BatchError(
            f"trainer: a rollout of {generation_batch_size} responses does not split into whole groups of "
            f"num_generations={num_generations}"
        )
    batch = Batch(
        num_processes=num_processes,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_generations=num_generations,
        generation_batch_size=generation_batch_size,
        num_iterations=num_iterations,
    )
    if generation_batch_size % batch.responses_per_step:
        raise BatchError(
            f"trainer: a rollout of {generation_batch_size} responses is not a whole number of optimizer steps of "
            f"{batch.responses_per_step} responses (per_device_train_batch_size x processes x accumulation); an "
            "optimizer step cannot straddle two rollouts"
        )
    return batch


# --------------------------------------------------------------------------------------------------------------
# Which rows of a rollout each process trains on, optimizer step by optimizer step


def rollout_schedule(
    keep: torch.Tensor,
    *,
    responses_per_step: int,
    micro_batch: int,
    num_iterations: int,
    num_processes: int,
    process_index: int,
    seed: int,
) -> list[list[list[int]]]:
    """The micro-batches this process runs, grouped by optimizer step, as row indices into the whole rollout.

    As the reference (docs/method.md#uniform-groups): the rows of dropped groups
    (``keep`` False) are removed and the kept rows compacted, in an order shuffled once per rollout (``seed``,
    the same on every process) and replayed each epoch; they are cut into mini-batches of ``responses_per_step``
    rows, the last one possibly short, so fewer kept rows make fewer optimizer steps and none make none. The rows
    of a mini-batch are dealt to the processes in turn (balanced within one row), and every process runs the
    same number of micro-batches per step (collectives under DDP and ZeRO-3 must match): a process with fewer
    rows gets empty micro-batches (``[]``), which it runs as a zero-weight pass.
    """
    kept = torch.nonzero(keep.bool().flatten()).flatten()
    generator = torch.Generator().manual_seed(seed)
    order = kept[torch.randperm(len(kept), generator=generator)].tolist()
    steps = []
    for start in range(0, len(order), responses_per_step):
        rows = order[start : start + responses_per_step]
        mine = rows[process_index::num_processes]
        count = math.ceil(math.ceil(len(rows) / num_processes) / micro_batch)
        micros = [mine[i * micro_batch : (i + 1) * micro_batch] for i in range(count)]
        steps.append(micros)
    return [micros for _ in range(num_iterations) for micros in steps]


@dataclass(frozen=True)
class BatchPlan(Batch):
    """A recipe's :class:`archer.training.batch.Batch` plus the lengths that bound the tokens of an optimizer step."""

    max_prompt_length: int | None
    max_completion_length: int

    @property
    def max_sequence_length(self) -> int | None:
        return None if self.max_prompt_length is None else self.max_prompt_length + self.max_completion_length

    @property
    def tokens_per_optimizer_step(self) -> int:
        """Upper bound: every response at full length (prompt included when its bound is known)."""
        return self.responses_per_step * (self.max_sequence_length or self.max_completion_length)


def plan_batches(
    *,
    num_processes: int,
    per_device_train_batch_size: int,
    num_generations: int,
    max_completion_length: int,
    responses_per_step: int | None = None,
    gradient_accumulation_steps: int = 1,
    generation_batch_size: int | None = None,
    steps_per_generation: int | None = None,
    num_iterations: int = 1,
    max_prompt_length: int | None = None,
) -> BatchPlan:
    """Resolve the batch as the trainer does (:func:`archer.training.batch.resolve_batch`), and reject what cannot run."""
    if max_completion_length < 1:
        raise UserError(f"trainer.max_completion_length={max_completion_length}: must be >= 1")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise UserError(f"max prompt length {max_prompt_length}: must be >= 1")
    batch = resolve_batch(
        num_processes=num_processes,
        per_device_train_batch_size=per_device_train_batch_size,
        num_generations=num_generations,
        responses_per_step=responses_per_step,
        gradient_accumulation_steps=gradient_accumulation_steps,
        generation_batch_size=generation_batch_size,
        steps_per_generation=steps_per_generation,
        num_iterations=num_iterations,
    )
    return BatchPlan(
        **dataclasses.asdict(batch), max_prompt_length=max_prompt_length, max_completion_length=max_completion_length
    )


def plan_recipe(recipe: Recipe, num_processes: int | None = None) -> BatchPlan:
    """The batch plan of a recipe on ``num_processes`` training processes (default: this launch's world size)."""
    args = recipe.trainer
    raw = raw_trainer(recipe)
    return plan_batches(
        num_processes=num_processes or int(os.environ.get("WORLD_SIZE", "1")),
        per_device_train_batch_size=args.per_device_train_batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        # ArcherConfig has resolved these for its own world size: re-derive from what the recipe sets.
        responses_per_step=raw.get("responses_per_step"),
        gradient_accumulation_steps=raw.get("gradient_accumulation_steps", 1),
        generation_batch_size=raw.get("generation_batch_size"),
        steps_per_generation=raw.get("steps_per_generation"),
        num_iterations=args.num_iterations,
        max_prompt_length=max_prompt_length(args),
    )


def raw_trainer(recipe: Recipe) -> dict[str, Any]:
    """The trainer block as the recipe file states it (before ArcherConfig resolves it for this world size)."""
    return (getattr(recipe, "raw", None) or {}).get("trainer") or {}


def max_prompt_length(args: Any) -> int | None:
    """TRL 1.16 has no prompt-length option: a recipe bounds prompts through vllm_max_model_length (prompt +
    completion), and the filtering step drops longer prompts."""
    if args.vllm_max_model_length is None:
        return None
    bound = args.vllm_max_model_length - args.max_completion_length
    if bound < 1:
        raise UserError(
            f"trainer.vllm_max_model_length={args.vllm_max_model_length}: leaves no room for a prompt next to "
            f"max_completion_length={args.max_completion_length}"
        )
    return bound
