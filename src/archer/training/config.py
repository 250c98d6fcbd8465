"""ArcherConfig: TRL's GRPOConfig plus the Archer objective and the paper's batch; the trainer options it refuses."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig

from archer.objective import ObjectiveConfig
from archer.training.batch import Batch, resolve_batch

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
    "importance_sampling_level": "",  # the objective's ratios are per token (docs/method.md, step 4)
    "use_bias_correction_kl": "objective.knowledge_kl and objective.reasoning_kl (k3 KL, docs/method.md step 7)",
    "off_policy_mask_threshold": "",
    "entropy_coef": "",  # docs/method.md: no entropy bonus
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

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")  # trainer.vllm_dtype


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
        if key in DEPRECATED_NAMES:
            return (
                f"trainer.{key}: deprecated in transformers 5 (removed in v6); write trainer.{DEPRECATED_NAMES[key]}"
            )
    if "responses_per_step" in block and "gradient_accumulation_steps" in block:
        return (
            "trainer: set responses_per_step or gradient_accumulation_steps, not both (the accumulation is derived "
            "from responses_per_step and the process count at launch)"
        )
    return None


# transformers 5 renamed these; its TrainingArguments warns (FutureWarning) whenever the old name carries a value.
DEPRECATED_NAMES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def preset_and_overrides(objective: ObjectiveConfig) -> tuple[str, dict[str, Any]]:
    """An ObjectiveConfig as the preset it differs least from and the fields that differ (a max_completion_length
    of None is left to the trainer's): what a recipe's objective block would say."""
    fields = dataclasses.asdict(objective)
    if fields["max_completion_length"] is None:
        del fields["max_completion_length"]
    candidates = []
    for name in ObjectiveConfig.PRESETS:
        preset = dataclasses.asdict(ObjectiveConfig.preset(name))
        candidates.append((name, {key: value for key, value in fields.items() if preset[key] != value}))
    return min(candidates, key=lambda candidate: len(candidate[1]))  # ties: the first preset, archer


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

    objective: str | ObjectiveConfig = field(
        default="archer",
        metadata={
            "help": "Objective preset (archer | grpo | dapo | entropy_mask), or an ObjectiveConfig (kept as the "
            "nearest preset and the fields that differ from it, so the saved arguments stay plain JSON)."
        },
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
            "help": "Drop groups whose responses all got the same reward before the update (docs/method.md#uniform-groups): they carry "
            "no policy gradient, and dropping also removes their KL term and their weight in the loss."
        },
    )
    max_rollouts_without_update: int | None = field(
        default=20,
        metadata={
            "help": "Stop the run with one line after this many rollouts in a row made no update (every group's "
            "rewards were equal, so every group was dropped): the data is too hard or too easy for the model. Such "
            "rollouts still count toward max_steps but not toward the learning-rate schedule. null: never stop."
        },
    )
    # The colocated vLLM engine's settings that TRL 1.16 does not pass (archer.training.vllm_rollouts)
    vllm_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the colocated vLLM engine: auto (vLLM's choice: the checkpoint's dtype, a float32 "
            "checkpoint served in bfloat16, or float16 without bfloat16), float32, bfloat16 or float16. float32 "
            "gives a float32 policy's log-probs (recipes/tiny/archer-vllm.yaml). A server's dtype is its --dtype."
        },
    )
    vllm_enforce_eager: bool = field(
        default=False,
        metadata={
            "help": "Run the colocated vLLM engine eagerly: no CUDA graphs on GPUs (slower decoding), no "
            "torch.compile on CPU (the engine starts in seconds instead of 20-40 s)."
        },
    )
    vllm_kv_cache_gib: float | None = field(
        default=None,
        metadata={
            "help": "KV cache of the colocated vLLM engine in GiB, instead of what vllm_gpu_memory_utilization "
            "leaves for it. On CPU that fraction is of the host's RAM, minus what the training process already "
            "uses: a fixed size runs the same on any machine."
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
        self._check_vllm_engine()
        if isinstance(self.objective, ObjectiveConfig):
            if self.objective_overrides:
                raise ValueError("objective_overrides: give either an ObjectiveConfig as objective, or overrides")
            self.objective, self.objective_overrides = preset_and_overrides(self.objective)
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
        for old, new in DEPRECATED_NAMES.items():  # TRL's default (gradient_checkpointing=True) under its new name
            if getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
        super().__post_init__()
        if self.world_size != world:
            batch = self._resolve_batch(self.world_size, given_accumulation, None)
        self.batch = batch
        self.responses_per_step = batch.responses_per_step
        self.gradient_accumulation_steps = 1  # the Trainer's step is one rollout; ArcherTrainer accumulates

    def _check_vllm_engine(self) -> None:
        if self.vllm_dtype not in VLLM_DTYPES:
            raise ValueError(f"vllm_dtype {self.vllm_dtype!r} is not one of {', '.join(VLLM_DTYPES)}")
        if self.vllm_kv_cache_gib is not None and not self.vllm_kv_cache_gib > 0:
            raise ValueError(f"vllm_kv_cache_gib={self.vllm_kv_cache_gib}: must be > 0 (or null)")
        if self.use_vllm and self.vllm_mode != "colocate":
            unset = {"vllm_dtype": "auto", "vllm_enforce_eager": False, "vllm_kv_cache_gib": None}
            for name, default in unset.items():
                if getattr(self, name) != default:
                    raise ValueError(
                        f"{name} applies to the colocated engine; a vLLM server takes its own settings (vllm serve "
                        "--dtype, --enforce-eager, --kv-cache-memory-bytes)"
                    )

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
        assert isinstance(self.objective, str)  # __post_init__ turned an ObjectiveConfig into overrides
        overrides = {"max_completion_length": self.max_completion_length, **self.objective_overrides}
        return ObjectiveConfig.preset(self.objective, **overrides)
