"""ArcherTrainer: TRL's GRPOTrainer with the Archer objective as its loss and the reference's step semantics.

TRL samples, scores and computes advantages; this class

1. decides which groups to drop (all rewards equal), on the whole rollout;
2. trains on each rollout as the reference does (docs/method.md#uniform-groups): the kept
   rows are compacted and cut into mini-batches of ``responses_per_step``, each mini-batch is one optimizer step,
   the rollout is replayed ``num_iterations`` times, and every kept response weighs 1 / ``responses_per_step``.
   Fewer kept rows make fewer optimizer steps; a rollout whose groups are all uniform makes none;
3. replaces the loss with :func:`archer.objective.compute_objective`.

Step semantics: one Trainer step (``global_step``, ``max_steps``, ``save_steps``, ``logging_steps``) is one
rollout, a "step" of the paper and of verl, whether or not it made an update. The learning-rate schedule (and so
``warmup_steps``) counts the rollouts that made an update, as the authors' loop steps its scheduler once per
trained rollout and skips a rollout whose groups were all dropped before the scheduler moves; after
``max_rollouts_without_update`` such rollouts in a row the run stops with one line. An optimizer step whose
gradient norm is not finite is skipped (gradients zeroed, no update), logged and counted, as the authors' actor
does. ``metrics.jsonl`` has one line per rollout, with ``optimizer_steps`` (how many this rollout made),
``skipped_steps`` (how many it skipped for a non-finite gradient norm) and ``grad_norm`` (the mean of the finite
ones). TRL is pinned exactly (``constraints-cpu.txt``): ``_compute_loss`` and ``_generate_and_score_completions``
are private hooks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any, cast

import torch
from datasets import Dataset
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from archer.errors import UserError
from archer.objective import compute_objective
from archer.training.batch import rollout_schedule
from archer.training.callbacks import RolloutCounter
from archer.training.config import ArcherConfig
from archer.training.vllm_rollouts import archer_vllm_generation

logger = logging.getLogger(__name__)

KEEP_KEY = "archer_keep"  # (B,) float, evaluation only: 0 for responses of a group whose rewards are all equal

# Rollout tensors with one row per response: prompt tensors are left-padded, the others right-padded.
_PROMPT_KEYS = ("prompt_ids", "prompt_mask")
_ROW_KEYS = (
    "advantages",
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "importance_sampling_ratio",
    "tool_mask",
)
_UNUSED_KEYS = ("num_items_in_batch", "sampling_per_token_logps")
_COUNTS_ROLLOUTS = "archer_counts_rollouts"  # set on a LambdaLR whose factors read the rollouts done


class ArcherTrainer(GRPOTrainer):
    """GRPOTrainer whose loss is the Archer objective (or one of its baseline presets)."""

    args: ArcherConfig  # checked in __init__
    model: torch.nn.Module  # GRPOTrainer always has one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with archer_vllm_generation(self):  # vLLM rollouts: the recipe's engine dtype, a sync that works on CPU
            super().__init__(*args, **kwargs)
        if not isinstance(self.args, ArcherConfig):
            raise TypeError("ArcherTrainer needs an ArcherConfig")
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            raise TypeError("ArcherTrainer needs a map-style training dataset (one rollout is one Trainer step)")
        self.objective_config = self.args.objective_config()
        self._pending_keep: torch.Tensor | None = None  # the whole rollout's keep mask, set while scoring
        self._rollout_keep: torch.Tensor | None = None
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0
        self._schedule_position = 0  # trained rollouts before the current one: what the LR schedule reads
        self._engine_skips = 0  # DeepSpeed's count of skipped steps at the start of the current rollout
        self._engine_logged = False
        self._last_uniform: tuple[int, int] = (0, 0)  # (groups, all-equal groups) of the last scored rollout
        self.add_callback(RolloutCounter())
        logger.info("objective: %s", self.objective_config)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """TRL writes a generic card at every checkpoint; ours (archer.publish.card) is rendered at the end of the run."""

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Weight decay on every parameter, as the reference's AdamW (docs/method.md#weight-decay); transformers exempts biases and
        norm weights by default."""
        return [name for name, _ in model.named_parameters()]

    # --- one Trainer step is one rollout --------------------------------------------------------------------
    def _get_train_sampler(self, dataset: Dataset | None = None) -> RepeatSampler:
        sampler = super()._get_train_sampler(dataset)
        assert isinstance(sampler, RepeatSampler)  # what GRPOTrainer returns, typed as any Sampler
        sampler.repeat_count = 1  # TRL repeats a rollout's prompts once per micro-step; here a step takes it whole
        return sampler

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> LRScheduler:
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if isinstance(scheduler, LambdaLR) and not getattr(scheduler, "archer_counts_rollouts", False):
            # Every schedule of transformers' get_scheduler is a LambdaLR: make it a function of the rollouts that
            # made an update before the current one, so that it reads the same whoever steps it (the Trainer once
            # per rollout, DeepSpeed's engine once per optimizer step) and however many optimizer steps a rollout
            # makes, and stands still through rollouts whose groups were all dropped (the authors' loop).
            scheduler.lr_lambdas = [_at_rollout(fn, self) for fn in scheduler.lr_lambdas]
            setattr(scheduler, _COUNTS_ROLLOUTS, True)
        return scheduler

    def rollout_counter(self) -> RolloutCounter:
        """The run's counts of rollouts with and without an update (restored from a checkpoint on resume)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RolloutCounter))

    def _load_callback_state(self) -> None:
        """Restore the rollout counts from the checkpoint whatever ``restore_callback_states_from_checkpoint`` says:
        the schedule depends on them."""
        super()._load_callback_state()
        # TrainerState annotates this as a list of callbacks; it holds {callback name: saved state}.
        states = cast(dict[str, Any], self.state.stateful_callbacks)
        stored = states.get(RolloutCounter.__name__)
        counter = self.rollout_counter()
        if isinstance(stored, dict) and not self.args.restore_callback_states_from_checkpoint:
            for name, value in (stored.get("attributes") or {}).items():
                setattr(counter, name, value)
        if stored is None:  # a checkpoint written before the counts existed: every rollout had counted
            counter.updated = self.state.global_step
            states[RolloutCounter.__name__] = counter.state()

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Sample and score one rollout, then train on its kept rows: zero or more optimizer steps."""
        model.train()
        if self.optimizer is not None and hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        counter = self.rollout_counter()
        self._set_rollout_learning_rate(counter.updated)
        if self.is_deepspeed_enabled:
            engine = self.accelerator.deepspeed_engine_wrapped.engine
            if not self._engine_logged and self.accelerator.is_main_process:
                live = self.deepspeed_precision() or {}
                logger.info(
                    "DeepSpeed engine: ZeRO-%s, weights %s, gradients accumulated in %s and reduced in %s",
                    live.get("zero_stage"),
                    live.get("weights"),
                    live.get("gradient_accumulation"),
                    live.get("gradient_communication"),
                )
            self._engine_logged = True
            self._engine_skips = int(engine.skipped_steps)
        rollout = self._generate_and_score_completions(inputs)
        keep = self._rollout_keep
        self._rollout_keep = None
        rows = self._gather_rollout(rollout)
        if keep is None or not self.args.drop_uniform_groups:
            keep = torch.ones(rows["advantages"].size(0), dtype=torch.bool)
        schedule = rollout_schedule(
            keep,
            responses_per_step=self.args.batch.responses_per_step,
            micro_batch=self.args.per_device_train_batch_size,
            num_iterations=self.args.num_iterations,
            num_processes=self.accelerator.num_processes,
            process_index=self.accelerator.process_index,
            seed=self.args.seed + self.state.global_step,
        )
        step_losses, skipped = [], 0
        for micros in schedule:
            loss = sum(self._backward(model, rows, index, sync=i == len(micros) - 1) for i, index in enumerate(micros))
            assert isinstance(loss, torch.Tensor)  # every optimizer step has at least one micro-batch
            grad_norm, applied = self._optimizer_step(model)
            if applied:
                self._metrics["train"]["grad_norm"].append(grad_norm)
            else:
                skipped += 1
            step_losses.append(loss)
        self.accelerator.gradient_state._set_sync_gradients(True)
        self._metrics["train"]["optimizer_steps"].append(float(len(schedule) - skipped))
        self._metrics["train"]["skipped_steps"].append(float(skipped))
        self._flush_objective_metrics()
        self._count_rollout(counter, updated=bool(schedule))
        mean = torch.stack(step_losses).mean() if step_losses else torch.zeros(())
        return mean.to(self.args.device)

    def _count_rollout(self, counter: RolloutCounter, updated: bool) -> None:
        """Count the rollout for the schedule; stop the run after too many rollouts in a row without an update."""
        if updated:
            counter.updated += 1
            counter.without_update = 0
            return
        counter.without_update += 1
        limit = self.args.max_rollouts_without_update
        if limit is not None and counter.without_update >= limit:
            groups, uniform = self._last_uniform
            raise UserError(
                f"trainer.max_rollouts_without_update={limit}: {counter.without_update} rollout"
                f"{'s' * (counter.without_update != 1)} in a row made no update (last one: {uniform} of {groups} groups had all-equal rewards); the data is too hard or too "
                "easy for the model: filter it (archer.data.filtering), check the reward, or raise the limit"
            )

    def _set_rollout_learning_rate(self, updated_rollouts: int) -> None:
        """Set the optimizer's learning rate from the schedule at the current rollout, before its first step: the
        schedule's position is the number of earlier rollouts that made an update."""
        self._schedule_position = updated_rollouts
        scheduler = self.lr_scheduler
        while scheduler is not None and not isinstance(scheduler, LambdaLR):
            scheduler = getattr(scheduler, "scheduler", None)
        if scheduler is None or not getattr(scheduler, _COUNTS_ROLLOUTS, False):
            return
        factors = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        rates = [base * fn(scheduler.last_epoch) for base, fn in factors]
        for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = rates  # what the Trainer logs as learning_rate

    def _gather_rollout(self, rollout: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The whole rollout's rows on every process (the kept rows are then dealt out evenly, as verl does)."""
        unknown = sorted(set(rollout) - set(_PROMPT_KEYS + _ROW_KEYS + _UNUSED_KEYS))
        if unknown:
            raise NotImplementedError(f"ArcherTrainer trains on text rollouts only; got {', '.join(unknown)}")
        rows = {}
        for key in _PROMPT_KEYS + _ROW_KEYS:
            if key not in rollout:
                continue
            value = rollout[key]
            if self.accelerator.num_processes > 1:
                if value.dim() > 1:
                    value = self.accelerator.pad_across_processes(value, dim=1, pad_first=key in _PROMPT_KEYS)
                value = self.accelerator.gather(value)
            rows[key] = value
        return rows

    def _backward(
        self, model: torch.nn.Module, rows: dict[str, torch.Tensor], index: list[int], sync: bool
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch (rows ``index``; none: a zero-weight pass that keeps this
        process in step with the others). ``sync`` marks the last micro-batch of an optimizer step."""
        micro = _micro_batch(rows, index)
        self.accelerator.gradient_state._set_sync_gradients(sync)  # DeepSpeed: the accumulation boundary
        no_sync = not sync and not self.is_deepspeed_enabled
        with self.accelerator.no_sync(model) if no_sync else contextlib.nullcontext():
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, micro)
            self.accelerator.backward(loss)
        return loss.detach()

    def _optimizer_step(self, model: torch.nn.Module) -> tuple[float, bool]:
        """Clip, step and zero the gradients; returns the gradient norm before clipping and whether the step was
        applied. A step whose gradient norm is not finite is skipped: gradients zeroed, no update (the authors'
        actor does the same). The norm is taken after the gradients were averaged over the processes, so every
        process makes the same decision."""
        if self.is_deepspeed_enabled:
            # The engine clipped, stepped and zeroed in backward() at the boundary; DeepSpeed's ZeRO optimizers
            # skip a step whose gradient norm is not finite themselves, and count it in engine.skipped_steps.
            engine = self.accelerator.deepspeed_engine_wrapped.engine
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
            skips = int(engine.skipped_steps)
            applied = skips == self._engine_skips and math.isfinite(grad_norm)
            self._engine_skips = skips
            if not applied:
                self._warn_skipped(grad_norm)
            return grad_norm, applied
        clipped = self._clip_grad_norm(model) if self.args.max_grad_norm > 0 else None
        grad_norm = float(self._get_grad_norm(model, grad_norm=clipped))
        applied = math.isfinite(grad_norm)
        assert self.optimizer is not None  # the Trainer creates it before the first step
        if applied:
            self.optimizer.step()
        else:
            self._warn_skipped(grad_norm)
        self.optimizer.zero_grad(set_to_none=True)  # no gradient left: the Trainer's own step after ours is a no-op
        return grad_norm, applied

    def _warn_skipped(self, grad_norm: float) -> None:
        logger.warning(
            "rollout %d: gradient norm %s is not finite: optimizer step skipped, gradients zeroed",
            self.state.global_step + 1,
            grad_norm,
        )

    def deepspeed_precision(self) -> dict[str, Any] | None:
        """What the live DeepSpeed engine runs in (None without DeepSpeed), read off the engine and its ZeRO
        optimizer, not off the config: the weights' dtype, the dtype gradients are accumulated in over the
        micro-batches (ZeRO-3's partitioned gradient buffer) and the one they are reduced across processes in."""
        if not self.is_deepspeed_enabled or self.accelerator.deepspeed_engine_wrapped is None:
            return None
        engine = self.accelerator.deepspeed_engine_wrapped.engine
        optimizer = engine.optimizer
        weights, accumulation = engine.get_data_types()
        buffer = getattr(optimizer, "grad_partitions_flat_buffer", None)  # ZeRO-3: where gradients accumulate
        if buffer is not None:
            accumulation = buffer.dtype
        communication = getattr(optimizer, "communication_data_type", None) or engine.communication_data_type
        return {
            "zero_stage": int(engine.zero_optimization_stage()),
            "weights": _dtype_name(weights),
            "gradient_accumulation": _dtype_name(accumulation),
            "gradient_communication": _dtype_name(communication),
        }

    def optimizer_steps_taken(self) -> int:
        """Optimizer steps since the start of the run (resumes included): the optimizer's own count."""
        if self.is_deepspeed_enabled:
            return int(self.accelerator.deepspeed_engine_wrapped.engine.global_steps)
        assert self.optimizer is not None  # the Trainer creates it before the first step
        return max((int(state["step"]) for state in self.optimizer.state.values() if "step" in state), default=0)

    # --- dropping groups whose rewards are all equal ------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # rewards_per_func holds every process's rows (groups may straddle processes): decide per group here,
        # where the whole rollout is visible.
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1).view(-1, group)
        uniform = (rewards.max(dim=1).values - rewards.min(dim=1).values).abs() <= 1e-6
        self._pending_keep = (~uniform).repeat_interleave(group).cpu()
        self._last_uniform = (int(uniform.numel()), int(uniform.sum()))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        keep, self._pending_keep = self._pending_keep, None
        assert keep is not None  # set by _calculate_rewards, which the scoring above calls
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dropped_group_frac"].append(1.0 - keep.float().mean().item())
        if mode == "train":
            self._rollout_keep = keep
        else:
            local = output["completion_ids"].size(0)
            start = self.accelerator.process_index * local
            output[KEEP_KEY] = keep[start : start + local].float().to(output["completion_ids"].device)
        return output

    # --- the loss -------------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
        )
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        if self.args.drop_uniform_groups and KEEP_KEY in inputs:
            mask = mask * inputs[KEEP_KEY].unsqueeze(1).to(mask.dtype)
        out = compute_objective(
            logps,
            inputs.get("old_per_token_logps"),
            inputs.get("ref_per_token_logps"),
            inputs["advantages"],
            entropies,
            mask,
            self.objective_config,
            # TRL's importance-sampling correction for vLLM rollouts (present only when that correction is on)
            token_weights=inputs.get("importance_sampling_ratio"),
        )
        loss = out.loss
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss
        if not self.model.training:
            self._log_objective_metrics("eval", out.metrics)
            return loss
        # Weighting, as the reference (verl 0.4: dp_actor.update_policy and core_algos.agg_loss). verl cuts each
        # GPU's share of the compacted rollout into mini-batches of m = M / world rows (M: the nominal mini-batch,
        # 512) and multiplies each micro-batch's aggregated loss by len(micro) / m before backward; FSDP then
        # averages the gradients over the world. A micro-batch's loss therefore weighs rows / M, whatever the
        # number of kept rows, and a short last mini-batch is not renormalised. Here: out.loss x rows x world / M,
        # with the same averaging by DDP / DeepSpeed and no further division by the accumulation steps.
        # - seq-mean-token-mean (Archer, GRPO): out.loss = mean over the micro-batch's responses of L_i, so the
        #   micro-batch adds sum_i L_i / M: every kept response weighs exactly 1 / M.
        # - token-mean (DAPO): out.loss = sum of token terms / tokens of the micro-batch, weighing rows / M as a
        #   whole, so a token weighs rows / (tokens of its micro-batch x M), as in verl (it depends on how
        #   responses fall into micro-batches, in verl too).
        # - seq-mean-token-sum-norm (Dr. GRPO): out.loss = mean_i S_i / L (S_i the response's token sum, L =
        #   max_completion_length), so a response weighs 1 / (L x M). verl 0.4's agg_loss sums the rows instead of
        #   averaging them, which times len(micro) / m gives len(micro) / (L x M) per response: the same with the
        #   reference's one-response micro-batches (docs/method.md#micro-batch), a micro-batch-size artefact otherwise; we keep the
        #   definition that does not depend on the micro-batch.
        rows = (mask.sum(-1) > 0).sum()
        loss = loss * (rows * self.accelerator.num_processes / self.args.responses_per_step)
        self._add_objective_metrics(out.metrics, counted=bool(rows))
        return loss

    def _add_objective_metrics(self, metrics: dict[str, float], counted: bool) -> None:
        """Sum a training micro-batch's metrics; ``_flush_objective_metrics`` averages them once per rollout."""
        for name, value in metrics.items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + (value if counted else 0.0)
        self._metric_count += int(counted)

    def _flush_objective_metrics(self) -> None:
        """Mean of each metric over every process's non-empty micro-batches of the rollout (one collective call;
        every process ran the same micro-batches, so the names agree)."""
        if not self._metric_sums:
            return
        names = sorted(self._metric_sums)
        values = [self._metric_sums[n] for n in names] + [float(self._metric_count)]
        totals = self.accelerator.reduce(
            torch.tensor(values, dtype=torch.float64, device=self.accelerator.device), reduction="sum"
        ).tolist()
        self._metric_sums, self._metric_count = {}, 0
        if totals[-1] > 0:
            for name, total in zip(names, totals[:-1], strict=True):
                self._metrics["train"][name].append(total / totals[-1])

    def _log_objective_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        """Average each metric over processes in one collective call and queue it for the next log line."""
        names = sorted(metrics)
        values = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        for name, value in zip(names, values.tolist(), strict=True):
            self._metrics[mode][name].append(value)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _at_rollout(fn: Callable[[int], float], trainer: ArcherTrainer) -> Callable[[int], float]:
    """A schedule factor that reads the rollouts that made an update before the current one instead of its own
    step count."""

    def factor(_steps: int) -> float:
        return fn(trainer._schedule_position)

    return factor


def _micro_batch(rows: dict[str, torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
    """Rows ``index`` of the rollout, their padding trimmed; no index: one row with nothing to train on."""
    device = rows["completion_ids"].device
    micro = {key: value[torch.tensor(index or [0], device=device)] for key, value in rows.items()}
    if not index:
        micro["completion_mask"] = torch.zeros_like(micro["completion_mask"])
    valid = micro["completion_mask"].sum(0).nonzero()
    width = int(valid.max()) + 1 if len(valid) else 1
    start = int(micro["prompt_mask"].sum(0).nonzero().min())
    for key, value in micro.items():
        if key in _PROMPT_KEYS:
            micro[key] = value[:, start:]
        elif value.dim() > 1 and value.size(1) > 1:  # completion-aligned (an IS ratio may be one per sequence)
            micro[key] = value[:, :width]
    return micro
