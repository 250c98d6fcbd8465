"""What a recipe will do on a given number of GPUs, printed before launching (``archer train --dry-run``).

The effective configuration, the batch arithmetic (:mod:`archer.training.batch`, the rule the trainer applies at
launch), the precision of each part (:mod:`archer.planning.precision`) and a memory estimate per GPU
(:mod:`archer.planning.memory`). A setting that cannot run (a batch that does not split into whole groups, a model
that cannot fit whatever the batch) raises :class:`UserError`; one that probably will not fit is flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archer.errors import UserError
from archer.files import short
from archer.planning.checkpoint import DEFAULT_WRITE_MB_S, checkpoint_size, preemption_lines
from archer.planning.memory import (
    DEFAULT_GPU_MEMORY_GIB,
    DTYPE_BYTES,
    GIB,
    MemoryEstimate,
    estimate_memory,
    vllm_sequences_in_cache,
)
from archer.planning.model_shape import ModelShape, config_file_for, load_model_shape
from archer.planning.precision import Precision, mixed_precision, precision_of
from archer.training.batch import BatchPlan, plan_recipe, raw_trainer

DEEPSPEED_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default zero_optimization.reduce_bucket_size (elements)


def default_deepspeed_config() -> Path:
    """The DeepSpeed config of the paper recipes' accelerate configs (recipes/accelerate/zero3.yaml and
    multi_node_zero3.yaml): what a ZeRO plan assumes unless told otherwise."""
    from archer.resources import asset

    return asset("recipes", "deepspeed", "zero3.json")


def read_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed JSON config as a dict; a missing or malformed file is one line."""
    path = Path(path).expanduser()
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(
            f"--deepspeed-config {path}: cannot read it as a DeepSpeed JSON config ({short(err)})"
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"--deepspeed-config {path}: a DeepSpeed config is a JSON object, got {type(config).__name__}")
    return config


def describe(
    recipe: Any,
    num_processes: int | None = None,
    *,
    zero_stage: int = 3,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
    deepspeed_config: str | Path | None = None,
    sources: list[str] | None = None,
    write_mb_s: float | None = None,
    rollout_s: float | None = None,
) -> str:
    """The effective config, batch arithmetic and memory per GPU of ``recipe`` (an :class:`archer.recipe.Recipe`).

    ``num_processes`` defaults to the launch's world size (``WORLD_SIZE``, 1 outside a launcher). A ZeRO plan
    reads its gradient dtypes and reduce bucket from ``deepspeed_config`` (default: the paper recipes'
    ``recipes/deepspeed/zero3.json``). ``write_mb_s`` (default 200) and ``rollout_s`` (unknown by default) size the
    checkpoint save and the grace period a Slurm job asks for (archer.planning.checkpoint). Raises UserError on
    settings that cannot run.
    """
    args = recipe.trainer
    plan = plan_recipe(recipe, num_processes)
    world = plan.num_processes
    stage = zero_stage if world > 1 else 0
    ds_config = read_deepspeed_config(deepspeed_config or default_deepspeed_config()) if stage else None
    precision = _precision(recipe, stage, ds_config, world)
    objective = args.objective_config()
    lines = [f"recipe: {recipe.path}", ""]
    # where the model and data come from, as the launch resolves them (archer.training.sources)
    lines += sources or [f"model: {recipe.model.name_or_path}", f"data: {recipe.data.dataset}"]
    lines += _effective_config(recipe, objective)
    lines += ["", f"batch arithmetic ({world} training process{'es' * (world > 1)}):"]
    lines += _format_plan(plan, args, responses_per_step_given=raw_trainer(recipe).get("responses_per_step"))
    launch = f"DeepSpeed ZeRO-{stage}" if stage else "DDP" if world > 1 else "one process"
    shape = _model_shape(recipe)
    lines += [
        "",
        f"precision ({launch}):",
        *_with_gradient_costs(precision.lines(), shape, precision, stage, world, ds_config),
    ]
    lines += _memory_lines(recipe, plan, stage, gpu_memory_gib, precision, shape, ds_config)
    lines += ["", *_checkpoint_lines(recipe, shape, stage, precision, write_mb_s, rollout_s)]
    return "\n".join(lines)


def _checkpoint_lines(
    recipe: Any, shape: ModelShape, stage: int, precision: Precision, write_mb_s: float | None, rollout_s: float | None
) -> list[str]:
    """One save's size and time, and the ``--signal`` grace period that covers a rollout and a save."""
    deepspeed_mixed = stage >= 2 and mixed_precision(recipe.trainer) is not None
    size = checkpoint_size(shape.num_parameters, DTYPE_BYTES.get(precision.load_dtype, 4), deepspeed_mixed)
    return preemption_lines(size, write_mb_s or DEFAULT_WRITE_MB_S, rollout_s)


def _precision(recipe: Any, stage: int, ds_config: dict[str, Any] | None, world: int) -> Precision:
    """What each part runs in on this launch (archer.planning.precision); ZeRO stages mean DeepSpeed with the recipe's
    bf16 / fp16 flag as its mixed precision ("auto" in recipes/deepspeed/*.json) and that config's gradient dtypes."""
    if recipe.model.is_tiny:
        checkpoint_dtype = "float32"
    else:
        config = json.loads(config_file_for(recipe.model.name_or_path).read_text())
        checkpoint_dtype = config.get("dtype") or config.get("torch_dtype")
    deepspeed_mixed = stage >= 2 and mixed_precision(recipe.trainer) is not None
    return precision_of(
        recipe,
        deepspeed_mixed=deepspeed_mixed,
        checkpoint_dtype=checkpoint_dtype,
        deepspeed_config=ds_config,
        processes=world,
    )


def _reduce_bucket_bytes(ds_config: dict[str, Any] | None, precision: Precision) -> float:
    """ZeRO's gradient reduction bucket: reduce_bucket_size elements in the communication dtype."""
    if ds_config is None:
        return 0.0
    size = (ds_config.get("zero_optimization") or {}).get("reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET)
    if not isinstance(size, (int, float)):  # "auto": transformers sets hidden_size^2, a few MB
        return 0.0
    return float(size) * DTYPE_BYTES.get(precision.grad_reduce_dtype, 2)


def _with_gradient_costs(
    lines: list[str], shape: ModelShape, precision: Precision, stage: int, world: int, ds_config: dict[str, Any] | None
) -> list[str]:
    """The precision table with what gradients wider than the weights cost per GPU on their two lines."""
    half = DTYPE_BYTES[precision.weights_dtype]
    accumulate = DTYPE_BYTES.get(precision.grad_dtype, 4)
    if not stage or accumulate <= half:
        return lines
    extra = shape.num_parameters * (accumulate - half) / (world if stage >= 2 else 1)
    costs = {
        "  gradient accumulation": f": +{extra / GIB:.2f} GiB per GPU over {precision.weights_dtype} gradients",
    }
    bucket = _reduce_bucket_bytes(ds_config, precision)
    if bucket:
        size = (ds_config or {}).get("zero_optimization", {}).get("reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET)
        same = abs(bucket - DEEPSPEED_REDUCE_BUCKET * half) < 1
        costs["  gradient reduction"] = (
            f": bucket of {size:,} x {DTYPE_BYTES.get(precision.grad_reduce_dtype, 2)} bytes = {bucket / GIB:.2f} GiB"
            + (f", as DeepSpeed's default bucket in {precision.weights_dtype}" if same else "")
        )
    return [line + next((cost for head, cost in costs.items() if line.startswith(head)), "") for line in lines]


def estimate_recipe_memory(
    recipe: Any,
    num_processes: int | None = None,
    *,
    zero_stage: int,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
    deepspeed_config: str | Path | None = None,
) -> MemoryEstimate:
    """The memory estimate per GPU that ``--dry-run`` prints, for ``zero_stage`` as given (0: no DeepSpeed; one
    process under ZeRO-3 keeps stage 3), so that a measured peak can be set beside it (bench/gpu/proof.py)."""
    plan = plan_recipe(recipe, num_processes)
    ds_config = read_deepspeed_config(deepspeed_config or default_deepspeed_config()) if zero_stage else None
    precision = _precision(recipe, zero_stage, ds_config, plan.num_processes)
    return _estimate(recipe, plan, zero_stage, gpu_memory_gib, precision, _model_shape(recipe), ds_config)


def _estimate(
    recipe: Any,
    plan: BatchPlan,
    stage: int,
    gpu_memory_gib: float,
    precision: Precision,
    shape: ModelShape,
    ds_config: dict[str, Any] | None,
) -> MemoryEstimate:
    args, world = recipe.trainer, plan.num_processes
    dtype_bytes = DTYPE_BYTES[precision.weights_dtype]  # the weights as trained (DeepSpeed: half; else fp32)
    activation_bytes = 4 if precision.compute == "float32" else 2
    return estimate_memory(
        shape,
        world_size=world,
        zero_stage=stage,
        micro_batch=plan.per_device_train_batch_size,
        sequence_length=plan.max_sequence_length or plan.max_completion_length,
        dtype_bytes=dtype_bytes,
        activation_bytes=activation_bytes,
        grad_bytes=DTYPE_BYTES.get(precision.grad_dtype, dtype_bytes),
        reduce_bucket_bytes=_reduce_bucket_bytes(ds_config, precision),
        gradient_checkpointing=bool(args.activation_checkpointing),
        reference_model=args.beta != 0.0,
        vllm_colocate_fraction=args.vllm_gpu_memory_utilization
        if args.use_vllm and args.vllm_mode == "colocate"
        else None,
        vllm_sleep_mode=bool(args.vllm_enable_sleep_mode),
        gpu_memory_gib=gpu_memory_gib,
    )


def _memory_lines(
    recipe: Any,
    plan: BatchPlan,
    stage: int,
    gpu_memory_gib: float,
    precision: Precision,
    shape: ModelShape,
    ds_config: dict[str, Any] | None,
) -> list[str]:
    args, world = recipe.trainer, plan.num_processes
    memory = _estimate(recipe, plan, stage, gpu_memory_gib, precision, shape, ds_config)
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
    prompts = f", prompts <= {data.max_prompt_tokens} tokens" if data.max_prompt_tokens else ""
    lines = [
        f"model settings: dtype {model.dtype}, attention {model.attn_implementation or 'default'}",
        f"data settings: {'file ' + str(data.data_files) + ', ' if data.data_files else ''}loader "
        f"{data.loader or 'auto'}, split {data.split}, rewards {', '.join(data.rewards)}{prompts}",
        f"objective: {args.objective} {objective.to_dict()}",
        f"optimizer: {_value(args.optim)}, lr {args.learning_rate:g}, {_value(args.lr_scheduler_type)} schedule "
        f"counted in rollouts that make an update, warm-up {args.warmup_steps:g} of them, weight decay "
        f"{args.weight_decay:g}, grad clip {args.max_grad_norm:g}, betas ({args.adam_beta1:g}, {args.adam_beta2:g}); "
        "a step whose gradient norm is not finite is skipped",
        f"sampling: temperature {args.temperature:g}, top_p {args.top_p:g}, top_k {args.top_k or 'off'}",
        f"grading: a completion without </think> {_think_close(data.require_think_close)}",
        *_reward_lines(data),
        f"groups whose rewards are all equal: {'dropped' if args.drop_uniform_groups else 'kept'}; activation "
        f"checkpointing {'on' if args.activation_checkpointing else 'off'}",
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
    stop = (
        f"; stops after {args.max_rollouts_without_update} rollouts in a row without one"
        if args.max_rollouts_without_update
        else ""
    )
    lines.append(
        f"run: max_steps {args.max_steps} rollouts (one Trainer step = one rollout, whether it makes an update or "
        f"not{stop}), output {args.output_dir}"
    )
    return lines


def _reward_lines(data: Any) -> list[str]:
    """How each reward grades (the code reward's limits and stdout rule)."""
    lines = []
    if "math" in data.rewards:
        lines.append(
            "math reward: the last \\boxed{} checked against the answer with Math-Verify (parse + verify); the "
            "authors' run: rllm's mathd / sympy graders, then a Math-Verify exact string match (docs/differences.md)"
        )
    if "code" in data.rewards:
        tests = f"at most {data.max_tests} random tests" if data.max_tests else "every test"
        rule = {
            "whole": "whole stripped stdout equal to the expected (the authors' training rule)",
            "lines": "stdout line by line, numbers as decimals (LiveCodeBench's rule)",
        }[data.code_compare]
        budget = f"{data.code_budget_s:g} s" if data.code_budget_s else "none"
        lines.append(
            f"code reward: {tests} per stdin/stdout problem (functional problems: all), {data.code_timeout_s:g} s per "
            f"stdin/stdout test, {data.code_script_timeout_s:g} s per assert script, {data.code_memory_mb} MiB "
            f"address space per run, {rule}, cap per completion {budget}"
        )
    return lines


def _think_close(setting: bool | str) -> str:
    if setting == "auto":
        return (
            "scores 0 if the model's chat template opens the reasoning, else is graded whole (require_think_close: "
            "auto)"
        )
    if setting:
        return "scores 0 (require_think_close: true; stricter than the paper, an implicit length penalty)"
    return "is graded whole, as the authors' rewards grade it (require_think_close: false)"


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
