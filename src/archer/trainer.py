"""ArcherTrainer: TRL's GRPOTrainer with the Archer objective as its loss.

The glue is thin on purpose: TRL samples, scores and computes advantages; this class (1) marks groups whose
responses all scored the same so the objective can drop them, and (2) replaces the loss with
:func:`archer.objective.compute_objective`, logging its metrics every step. TRL is pinned exactly
(``constraints-cpu.txt``) because ``_compute_loss`` is a private hook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from archer.objective import ObjectiveConfig, compute_objective

logger = logging.getLogger(__name__)

KEEP_KEY = "archer_keep"  # (B,) float: 0 for responses of a group whose rewards are all equal


@dataclass
class ArcherConfig(GRPOConfig):
    """GRPOConfig plus the Archer objective. TRL's own loss options (loss_type, epsilon, beta...) are not used:
    the objective block decides clipping, KL and aggregation, and ``beta`` is derived from its KL weights so that
    TRL loads the reference model and computes its log-probs exactly when the objective needs them."""

    objective: str = field(
        default="archer", metadata={"help": "Objective preset: archer | grpo | dapo | entropy_mask."}
    )
    objective_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "ObjectiveConfig fields overriding the preset's values."}
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
        self.beta = max(objective.knowledge_kl, objective.reasoning_kl)
        if self.bf16 is None:  # TRL's default is bf16 everywhere; on a machine without bf16 support use float32
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not torch.cuda.is_available():
            # Without CUDA, say so explicitly: accelerate then runs several launched processes as MULTI_CPU (gloo)
            # instead of as independent single-process runs.
            self.use_cpu = True
            self.dataloader_pin_memory = False  # nothing to pin to; silences a warning per epoch
        super().__post_init__()

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig.preset(
            self.objective, max_completion_length=self.max_completion_length, **self.objective_overrides
        )


class ArcherTrainer(GRPOTrainer):
    """GRPOTrainer whose loss is the Archer objective (or one of its baseline presets)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ArcherConfig):
            raise TypeError("ArcherTrainer needs an ArcherConfig")
        self.objective_config = self.args.objective_config()
        self._pending_keep: torch.Tensor | None = None
        logger.info("objective: %s", self.objective_config)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """TRL writes a generic card at every checkpoint; ours (archer.card) is rendered at the end of the run."""

    # --- dropping groups whose rewards are all equal ------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # rewards_per_func holds every process's rows (groups may straddle processes): decide per group here,
        # where the whole batch is visible, and slice each process's share in _generate_and_score_completions.
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1).view(-1, group)
        uniform = (rewards.max(dim=1).values - rewards.min(dim=1).values).abs() <= 1e-6
        self._pending_keep = (~uniform).float().repeat_interleave(group)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        local = output["completion_ids"].size(0)
        start = self.accelerator.process_index * local
        keep = self._pending_keep[start : start + local].to(output["completion_ids"].device)
        self._pending_keep = None
        output[KEEP_KEY] = keep
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dropped_group_frac"].append(1.0 - self.accelerator.gather(keep).mean().item())
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
            # TRL's truncated importance sampling for vLLM rollouts (present only when that correction is on)
            token_weights=inputs.get("importance_sampling_ratio"),
        )
        mode = "train" if self.model.training else "eval"
        loss = out.loss
        if mode == "train":  # the HF Trainer does not rescale a custom loss for gradient accumulation
            loss = loss / self.current_gradient_accumulation_steps
        if self.aux_loss_enabled:
            scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / scale
        self._log_objective_metrics(mode, out.metrics)
        return loss

    def _log_objective_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        """Average each metric over processes in one collective call and queue it for the next log line."""
        names = sorted(metrics)
        values = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        for name, value in zip(names, values.tolist(), strict=True):
            self._metrics[mode][name].append(value)
