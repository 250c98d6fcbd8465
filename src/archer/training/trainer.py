"""ArcherTrainer: TRL's GRPOTrainer with the Archer objective as its loss and the reference's step semantics.

TRL samples, scores and computes advantages; this class

1. decides which groups to drop (all rewards equal), on the whole rollout;
2. trains on each rollout as the reference does (ARCHER.md, "How the authors' run treats the batch"): the kept
   rows are compacted and cut into mini-batches of ``responses_per_step``, each mini-batch is one optimizer step,
   the rollout is replayed ``num_iterations`` times, and every kept response weighs 1 / ``responses_per_step``.
   Fewer kept rows make fewer optimizer steps; a rollout whose groups are all uniform makes none;
3. replaces the loss with :func:`archer.objective.compute_objective`.

Step semantics: one Trainer step (``global_step``, ``max_steps``, ``warmup_steps``, ``save_steps``,
``logging_steps``) is one rollout, a "step" of the paper and of verl; the learning-rate schedule is a function of
the rollouts done, as verl steps its scheduler once per rollout. ``metrics.jsonl`` has one line per rollout, with
``optimizer_steps`` (how many this rollout made) and ``grad_norm`` (their mean). TRL is pinned exactly
(``constraints-cpu.txt``): ``_compute_loss`` and ``_generate_and_score_completions`` are private hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from trl import GRPOConfig, GRPOTrainer

from archer.objective import ObjectiveConfig, compute_objective
from archer.training.batch import Batch, resolve_batch, rollout_schedule

logger = logging.getLogger(__name__)

KEEP_KEY = "archer_keep"  # (B,) float, evaluation only: 0 for responses of a group whose rewards are all equal

# GRPOConfig (and TrainingArguments) fields whose meaning the objective block takes over: TRL reads them only in its
# own loss (GRPOTrainer._compute_loss, which ArcherTrainer replaces) or the objective derives them. Found by going
# through every field of TRL 1.16's GRPOConfig; tests/test_trainer.py holds the list to GRPOConfig. A recipe that
# sets one is refused with the objective key that does the job (an empty entry: the objective has no such knob).
OBJECTIVE_OWNS: dict[str, str] = {
    "loss_type": "objective.aggregation (or objective.preset: grpo / dapo)",
    "epsilon": "objective.knowledge_clip and objective.reasoning_clip",
    "epsilon_high": "objective.knowledge_clip and objective.reasoning_clip as [low, high]",
    "delta": "objective.dual_clip",
    "beta": "objective.knowledge_kl and objective.reasoning_kl",
    "top_entropy_quantile": "objective.entropy_quantile with objective.pg_on_reasoning_only (preset entropy_mask)",
    "importance_sampling_level": "",  # the objective's ratios are per token (ARCHER.md step 4)
    "use_bias_correction_kl": "objective.knowledge_kl and objective.reasoning_kl (k3 KL, ARCHER.md step 7)",
    "off_policy_mask_threshold": "",
    "entropy_coef": "",  # ARCHER.md: no entropy bonus
    "use_adaptive_entropy": "",
    "entropy_coef_min": "",
    "entropy_coef_max": "",
    "entropy_coef_delta": "",
    "entropy_target": "",
    "sapo_temperature_neg": "objective.preset",  # TRL's SAPO / VESPO losses are not presets here
    "sapo_temperature_pos": "objective.preset",
    "vespo_k_pos": "objective.preset",
    "vespo_lambda_pos": "objective.preset",
    "vespo_k_neg": "objective.preset",
    "vespo_lambda_neg": "objective.preset",
    "average_tokens_across_devices": "objective.aggregation (each micro-batch is weighted by its responses)",
}


def objective_owned_key_error(key: str) -> str:
    """The one-line refusal of a trainer option the objective takes over."""
    where = OBJECTIVE_OWNS[key]
    if where:
        return f"trainer.{key}: the objective decides this; set {where} in the 'objective:' block instead"
    return f"trainer.{key}: TRL's loss option has no effect here and the objective has no such setting; remove it"


def trainer_block_problem(block: dict[str, Any]) -> str | None:
    """A recipe's trainer block sets a key that would be ignored or that contradicts another, or None."""
    for key in block:
        if key in OBJECTIVE_OWNS:
            return objective_owned_key_error(key)
        if key in ("objective", "objective_overrides"):
            return f"trainer.{key}: set the objective in the 'objective:' block (preset and overrides)"
    if "responses_per_step" in block and "gradient_accumulation_steps" in block:
        return (
            "trainer: set responses_per_step or gradient_accumulation_steps, not both (the accumulation is derived "
            "from responses_per_step and the process count at launch)"
        )
    return None


@dataclass
class ArcherConfig(GRPOConfig):
    """GRPOConfig plus the Archer objective and the paper's batch.

    TRL's own loss options (``OBJECTIVE_OWNS``) are refused: the objective block decides clipping, KL and
    aggregation, and ``beta`` is derived from its KL weights so that TRL loads the reference model and computes its
    log-probs exactly when the objective needs them. One Trainer step is one rollout (see the module docstring):
    ``max_steps`` and ``warmup_steps`` count rollouts. The accumulation is derived from ``responses_per_step`` and
    the process count (:mod:`archer.training.batch`); the Trainer itself runs with ``gradient_accumulation_steps=1`` (its
    step is a rollout, and ArcherTrainer accumulates), while ``to_dict()`` reports the derived accumulation.
    """

    objective: str = field(
        default="archer", metadata={"help": "Objective preset: archer | grpo | dapo | entropy_mask."}
    )
    objective_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "ObjectiveConfig fields overriding the preset's values."}
    )
    responses_per_step: int | None = field(
        default=None,
        metadata={
            "help": "The paper's mini-batch: responses per optimizer step, all processes together (the paper: 512). "
            "gradient_accumulation_steps is then derived as responses_per_step / (per_device_train_batch_size x "
            "processes). None: per_device_train_batch_size x processes x gradient_accumulation_steps."
        },
    )
    drop_uniform_groups: bool = field(
        default=True,
        metadata={
            "help": "Drop groups whose responses all got the same reward before the update (ARCHER.md): they carry "
            "no policy gradient, and dropping also removes their KL term and their weight in the loss."
        },
    )
    push_checkpoints: bool = field(
        default=False,
        metadata={"help": "Push each saved checkpoint to the Hub repo hub_model_id, on its own revision branch."},
    )
    checkpoint_revision_prefix: str = field(
        default="", metadata={"help": "Prefix of the checkpoint branches: <prefix>step-<N>."}
    )

    def __post_init__(self) -> None:
        if self.push_checkpoints and not self.hub_model_id:
            raise ValueError(
                "push_checkpoints needs hub_model_id (the Hub repo, org/name, that receives the branches)"
            )
        objective = self.objective_config()  # validates preset and overrides
        derived_beta = max(objective.knowledge_kl, objective.reasoning_kl)
        defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        for key in OBJECTIVE_OWNS:
            if getattr(self, key) != defaults[key] and not (key == "beta" and self.beta == derived_beta):
                raise ValueError(objective_owned_key_error(key))
        self.beta = derived_beta
        if self.bf16 is None:  # TRL's default is bf16 everywhere; on a machine without bf16 support use float32
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not torch.cuda.is_available():
            # Without CUDA, say so explicitly: accelerate then runs several launched processes as MULTI_CPU (gloo)
            # instead of as independent single-process runs.
            self.use_cpu = True
            self.dataloader_pin_memory = False  # nothing to pin to; silences a warning per epoch
        # The batch rule (archer.training.batch) fixes the rollout before TRL derives its own sizes from it.
        given_accumulation = self.gradient_accumulation_steps
        world = int(os.environ.get("WORLD_SIZE", "1"))
        batch = self._resolve_batch(world, given_accumulation, self.steps_per_generation)
        self.generation_batch_size, self.steps_per_generation = batch.generation_batch_size, None
        super().__post_init__()
        if self.world_size != world:
            batch = self._resolve_batch(self.world_size, given_accumulation, None)
        self.batch = batch
        self.responses_per_step = batch.responses_per_step
        self.gradient_accumulation_steps = 1  # the Trainer's step is one rollout; ArcherTrainer accumulates

    def _resolve_batch(self, world: int, accumulation: int, steps_per_generation: int | None) -> Batch:
        return resolve_batch(
            num_processes=world,
            per_device_train_batch_size=self.per_device_train_batch_size,
            num_generations=self.num_generations,
            responses_per_step=self.responses_per_step,
            gradient_accumulation_steps=accumulation,
            generation_batch_size=self.generation_batch_size,
            steps_per_generation=steps_per_generation,
            num_iterations=self.num_iterations,
        )

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        batch = getattr(self, "batch", None)
        if batch is not None:  # micro-batches per process per optimizer step, as a reader of the recipe means it
            values["gradient_accumulation_steps"] = batch.gradient_accumulation_steps
        return values

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig.preset(
            self.objective, max_completion_length=self.max_completion_length, **self.objective_overrides
        )


# Rollout tensors with one row per response: prompt tensors are left-padded, the others right-padded.
_PROMPT_KEYS = ("prompt_ids", "prompt_mask")
_ROW_KEYS = ("advantages", "completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps")
_ROW_KEYS += ("importance_sampling_ratio", "tool_mask")
_UNUSED_KEYS = ("num_items_in_batch", "sampling_per_token_logps")


class ArcherTrainer(GRPOTrainer):
    """GRPOTrainer whose loss is the Archer objective (or one of its baseline presets)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
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
        logger.info("objective: %s", self.objective_config)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """TRL writes a generic card at every checkpoint; ours (archer.publish.card) is rendered at the end of the run."""

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on every parameter, as the reference's AdamW (ARCHER.md); transformers exempts biases and
        norm weights by default."""
        return [name for name, _ in model.named_parameters()]

    # --- one Trainer step is one rollout --------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        sampler.repeat_count = 1  # TRL repeats a rollout's prompts once per micro-step; here a step takes it whole
        return sampler

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if isinstance(scheduler, LambdaLR) and not getattr(scheduler, "archer_counts_rollouts", False):
            # Every schedule of transformers' get_scheduler is a LambdaLR: make it a function of the rollouts done,
            # so that it reads the same whoever steps it (the Trainer once per rollout, DeepSpeed's engine once
            # per optimizer step) and however many optimizer steps a rollout makes.
            scheduler.lr_lambdas = [_at_rollout(fn, self) for fn in scheduler.lr_lambdas]
            scheduler.archer_counts_rollouts = True
        return scheduler

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Sample and score one rollout, then train on its kept rows: zero or more optimizer steps."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        self._set_rollout_learning_rate()
        rollout = self._generate_and_score_completions(inputs)
        keep = self._rollout_keep
        self._rollout_keep = None
        rows = self._gather_rollout(rollout)
        if keep is None or not self.args.drop_uniform_groups:
            keep = torch.ones(rows["advantages"].size(0), dtype=torch.bool)
        schedule = rollout_schedule(
            keep,
            responses_per_step=self.args.responses_per_step,
            micro_batch=self.args.per_device_train_batch_size,
            num_iterations=self.args.num_iterations,
            num_processes=self.accelerator.num_processes,
            process_index=self.accelerator.process_index,
            seed=self.args.seed + self.state.global_step,
        )
        step_losses = []
        for micros in schedule:
            loss = sum(self._backward(model, rows, index, sync=i == len(micros) - 1) for i, index in enumerate(micros))
            self._metrics["train"]["grad_norm"].append(self._optimizer_step(model))
            step_losses.append(loss)
        self.accelerator.gradient_state._set_sync_gradients(True)
        self._metrics["train"]["optimizer_steps"].append(float(len(schedule)))
        self._flush_objective_metrics()
        mean = torch.stack(step_losses).mean() if step_losses else torch.zeros(())
        return mean.to(self.args.device)

    def _set_rollout_learning_rate(self) -> None:
        """Set the optimizer's learning rate from the schedule at the current rollout, before its first step."""
        scheduler = self.lr_scheduler
        while scheduler is not None and not isinstance(scheduler, LambdaLR):
            scheduler = getattr(scheduler, "scheduler", None)
        if scheduler is None or not getattr(scheduler, "archer_counts_rollouts", False):
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

    def _backward(self, model, rows: dict[str, torch.Tensor], index: list[int], sync: bool) -> torch.Tensor:
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

    def _optimizer_step(self, model) -> float:
        """Clip, step and zero the gradients; returns the gradient norm before clipping."""
        if self.is_deepspeed_enabled:  # the engine clipped, stepped and zeroed in backward() at the boundary
            return float(self.accelerator.deepspeed_engine_wrapped.get_global_grad_norm() or 0.0)
        grad_norm = self._clip_grad_norm(model) if self.args.max_grad_norm > 0 else None
        grad_norm = self._get_grad_norm(model, grad_norm=grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no gradient left: the Trainer's own step after ours is a no-op
        return float(grad_norm)

    def optimizer_steps_taken(self) -> int:
        """Optimizer steps since the start of the run (resumes included): the optimizer's own count."""
        if self.is_deepspeed_enabled:
            return int(self.accelerator.deepspeed_engine_wrapped.engine.global_steps)
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
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        keep, self._pending_keep = self._pending_keep, None
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
        #   reference's one-response micro-batches (ARCHER.md), a micro-batch-size artefact otherwise; we keep the
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


def _at_rollout(fn, trainer: ArcherTrainer):
    """A schedule factor that reads the rollouts done (the Trainer's global_step) instead of its own step count."""

    def factor(_steps: int) -> float:
        return fn(trainer.state.global_step)

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
