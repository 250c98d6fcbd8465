"""What a recipe will do on a given number of GPUs: batch arithmetic and a ZeRO memory estimate, before launching.

``archer train --dry-run RECIPE`` prints :func:`describe`. Everything here works on plain numbers and on the
model's ``config.json`` (no weights, no network): the configs of the models our recipes train ship under
``archer/data/model_configs/``. A setting that cannot run (a batch that does not split into whole groups, a model
that cannot fit whatever the batch) raises :class:`UserError`; one that probably will not fit is flagged.

The batch arithmetic is :mod:`archer.batch`'s, the rule the trainer applies at launch: a rollout of
``generation_batch_size`` responses, mini-batches of ``responses_per_step`` responses (one optimizer step each),
``num_iterations`` epochs, the accumulation derived from the process count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.batch import Batch, resolve_batch
from archer.errors import UserError
from archer.precision import Precision, mixed_precision, precision_of

logger = logging.getLogger(__name__)

GIB = 1024**3
MODEL_CONFIGS = Path(__file__).parent / "data" / "model_configs"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_GPU_MEMORY_GIB = 80.0
# Resident CUDA context, NCCL buffers, allocator fragmentation: a flat allowance per GPU.
OVERHEAD_GIB = 3.0


# --------------------------------------------------------------------------------------------------------------
# The model's shape, from config.json


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


# --------------------------------------------------------------------------------------------------------------
# Batch arithmetic


@dataclass(frozen=True)
class BatchPlan(Batch):
    """A recipe's :class:`archer.batch.Batch` plus the lengths that bound the tokens of an optimizer step."""

    max_prompt_length: int | None
    max_completion_length: int

    @property
    def responses_per_optimizer_step(self) -> int:
        return self.responses_per_step

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
    """Resolve the batch as the trainer does (:func:`archer.batch.resolve_batch`), and reject what cannot run."""
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


# --------------------------------------------------------------------------------------------------------------
# Memory per GPU


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by item (an estimate: the order of magnitude and what dominates, not an allocator trace)."""

    items: dict[str, float]
    gpu_memory_bytes: float
    alternating: tuple[str, ...] = ()  # items never resident together (vLLM asleep while training): count the largest

    @property
    def total(self) -> float:
        always = sum(v for k, v in self.items.items() if k not in self.alternating)
        return always + max((self.items[k] for k in self.alternating), default=0.0)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_bytes

    def format(self) -> list[str]:
        width = max(len(k) for k in self.items)
        lines = [
            f"  {k:<{width}}  {v / GIB:8.2f} GiB" + ("  (one at a time)" if k in self.alternating else "")
            for k, v in self.items.items()
        ]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(
            f"  {'total':<{width}}  {self.total / GIB:8.2f} GiB of {self.gpu_memory_bytes / GIB:.0f} ({verdict})"
        )
        return lines


def estimate_memory(
    shape: ModelShape,
    *,
    world_size: int,
    zero_stage: int,
    micro_batch: int,
    sequence_length: int,
    dtype_bytes: int = 2,
    activation_bytes: int | None = None,
    gradient_checkpointing: bool = True,
    reference_model: bool = False,
    vllm_colocate_fraction: float | None = None,
    vllm_sleep_mode: bool = False,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> MemoryEstimate:
    """Memory per GPU of one training process.

    Model states follow the ZeRO paper's mixed-precision Adam accounting: weights and gradients in the training
    dtype (``dtype_bytes``), plus 12 bytes per parameter (fp32 master copy, Adam m and v) when the weights are
    16-bit, 8 (m, v) when they are fp32 (their own master copy). Activations are in ``activation_bytes`` (the
    compute dtype; default ``dtype_bytes``). Stage 0 (DDP) replicates all of it; stage 2 shards gradients and optimizer state over
    ``world_size``; stage 3 also shards the weights and gathers about two blocks (the running layer and the
    prefetched one) at a time. Activations: with gradient checkpointing one hidden state per layer is kept and one
    layer is recomputed at a time, without it every layer's intermediates live until backward (attention through
    SDPA / flash kernels: no seq^2 term). TRL computes log-probs and entropies in chunks, so the logits are not
    counted. A colocated vLLM engine reserves its ``gpu_memory_utilization`` share of the GPU; in sleep mode (TRL
    uses level 2: weights and KV cache released) it is never resident together with the activations.
    """
    if zero_stage not in (0, 2, 3):
        raise UserError(f"ZeRO stage {zero_stage}: plan for 0 (DDP), 2 or 3")
    p = shape.num_parameters
    shard_states = world_size if zero_stage >= 2 else 1
    shard_weights = world_size if zero_stage == 3 else 1
    optimizer_bytes = 12 if dtype_bytes < 4 else 8
    items: dict[str, float] = {"weights": p * dtype_bytes / shard_weights}
    if zero_stage == 3:
        largest_block = max(shape.layer_parameters, shape.embedding_parameters)
        items["weights gathered (ZeRO-3)"] = 2 * largest_block * dtype_bytes
    items["gradients"] = p * dtype_bytes / shard_states
    items["optimizer states"] = p * optimizer_bytes / shard_states
    if reference_model:
        items["reference model"] = p * dtype_bytes / shard_weights
    tokens = micro_batch * sequence_length
    h = shape.hidden_size
    act = activation_bytes or dtype_bytes
    per_layer = tokens * (4 * h + shape.q_dim + 2 * shape.kv_dim + 3 * shape.intermediate_size) * act
    if gradient_checkpointing:
        items["activations"] = shape.num_layers * tokens * h * act + 2 * per_layer
    else:
        items["activations"] = shape.num_layers * per_layer
    items["CUDA context, buffers"] = OVERHEAD_GIB * GIB
    alternating: tuple[str, ...] = ()
    if vllm_colocate_fraction:
        items["vLLM (colocate)"] = vllm_colocate_fraction * gpu_memory_gib * GIB
        if vllm_sleep_mode:
            alternating = ("activations", "vLLM (colocate)")
    return MemoryEstimate(items=items, gpu_memory_bytes=gpu_memory_gib * GIB, alternating=alternating)


def vllm_sequences_in_cache(
    shape: ModelShape, *, reserved_bytes: float, tensor_parallel: int, max_model_length: int, dtype_bytes: int = 2
) -> float:
    """How many full-length sequences a vLLM engine's KV cache holds, given the memory reserved for it.

    Raises UserError when the weights alone do not fit the reservation or not one full-length sequence fits (vLLM
    refuses to start in both cases).
    """
    weights = shape.num_parameters * dtype_bytes / tensor_parallel
    activations = 1.0 * GIB  # vLLM's profiling pass and CUDA graphs: about a GiB on these model sizes
    cache = reserved_bytes - weights - activations
    per_sequence = shape.kv_cache_bytes_per_token(dtype_bytes) * max_model_length / tensor_parallel
    if cache <= 0 or cache < per_sequence:
        raise UserError(
            f"vLLM: {reserved_bytes / GIB:.1f} GiB reserved cannot hold the weights ({weights / GIB:.1f} GiB) and the "
            f"KV cache of one {max_model_length}-token sequence ({per_sequence / GIB:.2f} GiB); raise "
            "vllm_gpu_memory_utilization or vllm_tensor_parallel_size, or lower vllm_max_model_length"
        )
    return cache / per_sequence


# --------------------------------------------------------------------------------------------------------------
# The dry-run report of a recipe


def describe(
    recipe: Any,
    num_processes: int | None = None,
    *,
    zero_stage: int = 3,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> str:
    """The effective config, batch arithmetic and memory per GPU of ``recipe`` (an :class:`archer.recipe.Recipe`).

    ``num_processes`` defaults to the launch's world size (``WORLD_SIZE``, 1 outside a launcher). Raises
    UserError on settings that cannot run.
    """
    args = recipe.trainer
    plan = plan_recipe(recipe, num_processes)
    world = plan.num_processes
    stage = zero_stage if world > 1 else 0
    precision = _precision(recipe, stage)
    objective = args.objective_config()
    lines = [f"recipe: {recipe.path}", ""]
    lines += _effective_config(recipe, objective)
    lines += ["", f"batch arithmetic ({world} training process{'es' * (world > 1)}):"]
    lines += _format_plan(plan, args, responses_per_step_given=_raw_trainer(recipe).get("responses_per_step"))
    launch = f"DeepSpeed ZeRO-{stage}" if stage else "DDP" if world > 1 else "one process"
    lines += ["", f"precision ({launch}):", *precision.lines()]
    lines += _memory_lines(recipe, plan, stage, gpu_memory_gib, precision)
    return "\n".join(lines)


def plan_recipe(recipe: Any, num_processes: int | None = None) -> BatchPlan:
    """The batch plan of a recipe on ``num_processes`` training processes (default: this launch's world size)."""
    args = recipe.trainer
    raw = _raw_trainer(recipe)
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
        max_prompt_length=_max_prompt_length(args),
    )


def _raw_trainer(recipe: Any) -> dict[str, Any]:
    return (getattr(recipe, "raw", None) or {}).get("trainer") or {}


def _precision(recipe: Any, stage: int) -> Precision:
    """What each part runs in on this launch (archer.precision); ZeRO stages mean DeepSpeed with the recipe's
    bf16 / fp16 flag as its mixed precision (the accelerate configs under recipes/accelerate/)."""
    if recipe.model.is_tiny:
        checkpoint_dtype = "float32"
    else:
        config = json.loads(config_file_for(recipe.model.name_or_path).read_text())
        checkpoint_dtype = config.get("dtype") or config.get("torch_dtype")
    deepspeed_mixed = stage >= 2 and mixed_precision(recipe.trainer) is not None
    return precision_of(recipe, deepspeed_mixed=deepspeed_mixed, checkpoint_dtype=checkpoint_dtype)


def load_recipe_for_plan(path: str | os.PathLike, overrides: list[str] | None = None) -> Any:
    """:func:`archer.recipe.load_recipe` for ``--dry-run`` on any machine: a GPU recipe (bf16) parses on a CPU-only
    machine, where TrainingArguments would otherwise refuse bf16 before anything is planned."""
    import transformers.training_args as training_args

    from archer.recipe import load_recipe

    check = training_args.is_torch_bf16_gpu_available
    training_args.is_torch_bf16_gpu_available = lambda *a, **k: True
    try:
        return load_recipe(path, overrides)
    finally:
        training_args.is_torch_bf16_gpu_available = check


def _memory_lines(recipe: Any, plan: BatchPlan, stage: int, gpu_memory_gib: float, precision: Precision) -> list[str]:
    args, world = recipe.trainer, plan.num_processes
    shape = _model_shape(recipe)
    dtype_bytes = DTYPE_BYTES.get(precision.load_dtype, 2)  # the weights as trained (DeepSpeed: half; else fp32)
    activation_bytes = 4 if precision.compute == "float32" else 2
    memory = estimate_memory(
        shape,
        world_size=world,
        zero_stage=stage,
        micro_batch=plan.per_device_train_batch_size,
        sequence_length=plan.max_sequence_length or plan.max_completion_length,
        dtype_bytes=dtype_bytes,
        activation_bytes=activation_bytes,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        reference_model=args.beta != 0.0,
        vllm_colocate_fraction=args.vllm_gpu_memory_utilization
        if args.use_vllm and args.vllm_mode == "colocate"
        else None,
        vllm_sleep_mode=bool(args.vllm_enable_sleep_mode),
        gpu_memory_gib=gpu_memory_gib,
    )
    states = sum(v for k, v in memory.items.items() if k in ("weights", "gradients", "optimizer states"))
    if states > memory.gpu_memory_bytes:
        raise UserError(
            f"{recipe.model.name_or_path}: {shape.num_parameters / 1e9:.2f}B parameters need "
            f"{states / GIB:.0f} GiB per GPU for weights, gradients and Adam states with ZeRO stage {stage} on "
            f"{world} GPU(s), more than {gpu_memory_gib:.0f} GiB: use more GPUs or ZeRO-3"
        )
    name = {3: "ZeRO-3", 2: "ZeRO-2"}.get(stage, "no sharding: one process or DDP")
    lines = [
        "",
        f"model: {shape.model_type}, {_count(shape.num_parameters)} parameters ({shape.num_parameters:,})",
        f"memory per GPU, estimate ({name}, {world} GPU(s), micro-batch {plan.per_device_train_batch_size}):",
        *memory.format(),
    ]
    if not memory.fits:
        lines.append("  -> lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the")
        lines.append("     mini-batch), turn on activation_checkpointing, or lower vllm_gpu_memory_utilization")
    if args.use_vllm:
        vllm_bytes = DTYPE_BYTES.get(precision.rollout_dtype, 2)
        lines += _vllm_lines(shape, args, vllm_bytes, gpu_memory_gib, plan.max_prompt_length)
    return lines


def _max_prompt_length(args: Any) -> int | None:
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


def _model_shape(recipe: Any) -> ModelShape:
    if recipe.model.is_tiny:  # built offline: its config comes from the same builder training uses
        from archer.data.arithmetic import ArithmeticTask
        from archer.tiny import TinyModelConfig, build_tokenizer
        from archer.tiny.model import qwen2_config

        tokenizer = build_tokenizer(task=ArithmeticTask(**recipe.data.task))
        config = qwen2_config(tokenizer, TinyModelConfig(**recipe.model.tiny))
        return ModelShape.from_config(config.to_dict(), source="the tiny model")
    return load_model_shape(recipe.model.name_or_path)


def _effective_config(recipe: Any, objective: Any) -> list[str]:
    args, data, model = recipe.trainer, recipe.data, recipe.model
    lines = [
        f"model: {model.name_or_path} (dtype {model.dtype}, attention {model.attn_implementation or 'default'})",
        f"data: {data.dataset} (loader {data.loader or 'auto'}, split {data.split}, rewards {', '.join(data.rewards)})",
        f"objective: {args.objective} {objective.to_dict()}",
        f"optimizer: {_value(args.optim)}, lr {args.learning_rate:g}, {_value(args.lr_scheduler_type)} schedule "
        f"counted in rollouts, warm-up {args.warmup_steps:g} rollouts, weight decay {args.weight_decay:g}, grad clip "
        f"{args.max_grad_norm:g}, betas ({args.adam_beta1:g}, {args.adam_beta2:g})",
        f"sampling: temperature {args.temperature:g}, top_p {args.top_p:g}, top_k {args.top_k or 'off'}",
        f"grading: a completion without </think> {_think_close(data.require_think_close)}",
        f"groups whose rewards are all equal: {'dropped' if args.drop_uniform_groups else 'kept'}; gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}",
    ]
    if args.use_vllm:
        where = (
            f"colocate, {args.vllm_gpu_memory_utilization:g} of each GPU, TP {args.vllm_tensor_parallel_size}"
            if args.vllm_mode == "colocate"
            else f"server {args.vllm_server_base_url or f'{args.vllm_server_host}:{args.vllm_server_port}'}"
        )
        lines.append(f"rollouts: vLLM ({where}), max model length {args.vllm_max_model_length or 'from the model'}")
        if args.vllm_importance_sampling_correction:
            lines.append(
                f"vLLM importance-sampling correction: on ({args.vllm_importance_sampling_mode}, clip max "
                f"{args.vllm_importance_sampling_clip_max:g}), multiplied into the policy-gradient term"
            )
        else:
            lines.append("vLLM importance-sampling correction: off (as the reference: the mismatch is only logged)")
    else:
        lines.append("rollouts: transformers generate()")
    lines.append(
        f"run: max_steps {args.max_steps} rollouts (one Trainer step = one rollout), output {args.output_dir}"
    )
    return lines


def _think_close(setting: bool | str) -> str:
    if setting == "auto":
        return "scores 0 if the model's chat template opens the reasoning (require_think_close: auto)"
    return "scores 0 (require_think_close: true)" if setting else "is graded whole (require_think_close: false)"


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _value(option: Any) -> Any:
    return getattr(option, "value", option)


def _format_plan(plan: BatchPlan, args: Any, responses_per_step_given: int | None = None) -> list[str]:
    steps = plan.optimizer_steps_per_rollout
    derived = " (derived from responses_per_step)" if responses_per_step_given else ""
    lines = [
        f"  prompts per rollout            {plan.prompts_per_rollout} x {plan.num_generations} responses = "
        f"{plan.generation_batch_size} responses",
        f"  responses per optimizer step   {plan.per_device_train_batch_size} per device x {plan.num_processes} "
        f"x {plan.gradient_accumulation_steps} accumulation{derived} = {plan.responses_per_step}",
        f"  optimizer steps per rollout    {plan.generation_batch_size} / {plan.responses_per_step} x "
        f"{plan.num_iterations} epochs = {steps} (fewer when groups are dropped; none when all are)",
    ]
    if plan.max_prompt_length:
        per_response = f"{plan.max_prompt_length} prompt + {plan.max_completion_length} completion"
    else:
        per_response = f"{plan.max_completion_length} completion; prompts unbounded (no vllm_max_model_length)"
    lines.append(
        f"  tokens per optimizer step      <= {plan.tokens_per_optimizer_step:,} "
        f"({plan.responses_per_step} x {per_response})"
    )
    if args.max_steps and args.max_steps > 0:
        lines.append(
            f"  run                            {args.max_steps} rollouts = at most {args.max_steps * steps} "
            "optimizer steps"
        )
    if steps == 1:
        lines.append("  note: one optimizer step per rollout: ratios stay 1 and no clip range ever acts")
    return lines


def _vllm_lines(
    shape: ModelShape, args: Any, dtype_bytes: int, gpu_memory_gib: float, prompt_bound: int | None
) -> list[str]:
    length = args.vllm_max_model_length or (prompt_bound or 0) + args.max_completion_length
    if args.vllm_mode == "colocate":
        reserved = args.vllm_gpu_memory_utilization * gpu_memory_gib * GIB * args.vllm_tensor_parallel_size
        seqs = vllm_sequences_in_cache(
            shape,
            reserved_bytes=reserved,
            tensor_parallel=args.vllm_tensor_parallel_size,
            max_model_length=length,
            dtype_bytes=dtype_bytes,
        )
        return [f"vLLM KV cache: about {seqs:.0f} full-length ({length}-token) sequences at once per engine"]
    return [
        "vLLM server: runs on GPUs of its own (make serve-vllm); the training processes above exclude them",
    ]
