"""Which precision each part of a run uses, decided in one place for training and for the dry run.

The reference keeps fp32 master weights, computes in bf16, and reduces and accumulates gradients in fp32 (FSDP
mixed precision with ``reduce_dtype`` fp32). Here:

- under DeepSpeed with its bf16 (or fp16) mode on, DeepSpeed holds the weights in bf16 and keeps fp32 master
  copies inside its optimizer: the checkpoint loads in the recipe's ``model.dtype``. Gradients are accumulated and
  reduced in the dtypes of the DeepSpeed config's ``data_types.grad_accum_dtype`` and ``communication_data_type``
  (both the weights' half dtype when unset); the paper recipes' ``recipes/deepspeed/zero3.json`` sets both to fp32;
- everywhere else (one process, DDP, DeepSpeed without mixed precision) the optimizer is plain AdamW on the
  model's own parameters, so the model loads in float32 whatever ``model.dtype`` says, and ``trainer.bf16`` (or
  ``fp16``) runs the forward and backward passes under autocast; gradients are the fp32 weights' own. AdamW on
  bf16 weights would drop most updates at lr 1e-6: a bf16 weight near 0.02 moves only in steps of about 1e-4.

vLLM serves the policy in its own dtype: TRL 1.16 starts it with ``dtype="auto"``, which keeps a bf16 or fp16
checkpoint's dtype and serves a float32 checkpoint in bfloat16 on GPUs that have it (compute capability 8.0 and
up; float16 on older ones): ``vllm_dtype`` says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# DeepSpeed's spellings of a gradient dtype (its DtypeEnum) -> torch's name
_DTYPE_NAMES = {
    **dict.fromkeys(("fp32", "float32", "float", "torch.float32"), "float32"),
    **dict.fromkeys(("bf16", "bfloat16", "torch.bfloat16"), "bfloat16"),
    **dict.fromkeys(("fp16", "float16", "half", "torch.float16"), "float16"),
}


@dataclass(frozen=True)
class Precision:
    """Precision of each part, as words for the dry run and the logs."""

    load_dtype: str  # what the policy checkpoint is loaded as
    weights: str
    master: str
    compute: str
    reference: str
    rollout: str
    rollout_dtype: str  # what vLLM holds its weights in (vllm_dtype), or the compute dtype
    gradients: str = ""  # how gradients are accumulated over micro-batches, as words
    reduction: str = ""  # how they are reduced across processes, as words
    grad_dtype: str = "float32"  # the dtype gradients are accumulated (and held) in
    weights_dtype: str = "float32"  # the dtype the trained weights are held in (DeepSpeed's half, else fp32)
    grad_reduce_dtype: str = "float32"  # the dtype they travel in between processes

    def lines(self) -> list[str]:
        return [
            f"  weights (forward / backward)   {self.weights}",
            f"  master copy (AdamW updates)    {self.master}",
            f"  compute                        {self.compute}",
            f"  gradient accumulation          {self.gradients}",
            f"  gradient reduction             {self.reduction}",
            f"  reference model                {self.reference}",
            f"  rollout engine                 {self.rollout}",
        ]


def mixed_precision(args: Any) -> str | None:
    """'bf16', 'fp16' or None, from the trainer's bf16 / fp16 flags."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else None


def deepspeed_mixed_precision(args: Any) -> bool:
    """Whether this launch runs DeepSpeed with bf16 / fp16 on (DeepSpeed then keeps fp32 master weights)."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None:
        return False
    config = plugin.deepspeed_config or {}
    for key, flag in (("bf16", args.bf16), ("fp16", args.fp16)):
        enabled = (config.get(key) or {}).get("enabled", False)
        if enabled is True or (enabled == "auto" and flag):
            return True
    return False


def dtype_name(value: Any) -> str | None:
    """torch's name of a dtype given in any of DeepSpeed's spellings ('fp32', 'bf16', ...), or None."""
    return None if value is None else _DTYPE_NAMES.get(str(value).lower())


def deepspeed_gradient_dtypes(config: Mapping[str, Any] | None, half: str | None) -> tuple[str, str]:
    """(accumulation, reduction) dtypes of gradients under a DeepSpeed config whose weights are ``half`` (None:
    fp32 weights), as DeepSpeed 0.19 decides them: ``data_types.grad_accum_dtype`` (default: the weights' dtype)
    and ``communication_data_type`` (default: the half dtype, else float32)."""
    config = config or {}
    weights = half or "float32"
    accumulation = dtype_name((config.get("data_types") or {}).get("grad_accum_dtype")) or weights
    reduction = dtype_name(config.get("communication_data_type")) or weights
    return accumulation, reduction


def vllm_dtype(checkpoint_dtype: str | None, bf16_gpu: bool = True) -> str:
    """What vLLM's ``dtype="auto"`` (TRL 1.16 passes no other) serves a checkpoint of ``checkpoint_dtype`` in: its
    own dtype when 16-bit; a float32 checkpoint is cast down to bfloat16 on GPUs with bf16 (compute capability 8.0
    and up: A100, H100), float16 on older ones (vLLM 0.30's rule for dtype auto)."""
    if checkpoint_dtype in ("bfloat16", "float16"):
        return checkpoint_dtype
    return "bfloat16" if bf16_gpu else "float16"


def plan_precision(
    *,
    model_dtype: str,
    mixed: str | None,
    deepspeed_mixed: bool,
    reference_model: bool,
    use_vllm: bool,
    checkpoint_dtype: str | None = None,
    deepspeed_config: Mapping[str, Any] | None = None,
    processes: int = 1,
    engine_dtype: str | None = None,
) -> Precision:
    """The precision of each part.

    Args:
        model_dtype: the recipe's ``model.dtype`` ('auto', 'float32', 'bfloat16', 'float16').
        mixed: 'bf16', 'fp16' or None (the trainer's flags).
        deepspeed_mixed: DeepSpeed runs with its bf16 / fp16 mode on.
        reference_model: a reference model is loaded (a KL weight is > 0).
        use_vllm: rollouts are sampled by vLLM.
        checkpoint_dtype: the checkpoint's own dtype (config.json), from which vLLM's ``auto`` picks its dtype.
        deepspeed_config: the DeepSpeed config of the launch (its gradient dtypes), when DeepSpeed runs.
        processes: training processes (one process reduces nothing).
        engine_dtype: the dtype the recipe gives the colocated vLLM engine (``trainer.vllm_dtype``; auto: vLLM's).
    """
    half = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed or "")
    if deepspeed_mixed:
        half = half or "bfloat16"
        load = model_dtype  # DeepSpeed casts to its own dtype anyway
        weights = f"{half} (DeepSpeed)"
        master = "float32 (DeepSpeed's optimizer keeps fp32 master weights)"
        compute = half
        reference = f"{half} (DeepSpeed, inference only)"
        grad_dtype, reduce_dtype = deepspeed_gradient_dtypes(deepspeed_config, half)
        gradients = f"{grad_dtype} (DeepSpeed data_types.grad_accum_dtype{'' if grad_dtype != half else ': unset'})"
        reduction = (
            f"{reduce_dtype} (DeepSpeed communication_data_type{'' if reduce_dtype != half else ': unset'})"
            if processes > 1
            else "none (one process)"
        )
    else:
        load = "float32"
        weights = master = "float32 (the same tensors: AdamW updates the weights themselves)"
        compute = f"{half} autocast" if half else "float32"
        reference = f"float32 weights, {compute} compute" if half else "float32"
        grad_dtype = reduce_dtype = "float32"
        if deepspeed_config is not None:  # DeepSpeed without mixed precision: fp32 weights, fp32 gradients
            grad_dtype, reduce_dtype = deepspeed_gradient_dtypes(deepspeed_config, None)
        gradients = f"{grad_dtype} (the fp32 weights' own gradients)"
        reduction = f"{reduce_dtype} (as accumulated)" if processes > 1 else "none (one process)"
    if use_vllm and engine_dtype not in (None, "auto"):  # trainer.vllm_dtype, passed to the engine
        rollout_dtype = engine_dtype
        rollout = f"vLLM, {rollout_dtype} (trainer.vllm_dtype), fresh weights cast from the policy each rollout"
    elif use_vllm:
        rollout_dtype = vllm_dtype(checkpoint_dtype)
        cast = " (vLLM's dtype auto casts a float32 checkpoint down; float16 on GPUs without bf16)"
        rollout = (
            f"vLLM, {rollout_dtype}{cast if checkpoint_dtype in (None, 'float32') else ''}, fresh weights cast "
            "from the policy each rollout"
        )
    else:
        rollout_dtype = half or "float32"
        rollout = f"transformers generate() on the policy itself ({compute})"
    return Precision(
        load_dtype=load,
        weights=weights,
        master=master,
        compute=compute,
        reference=reference if reference_model else "none (no KL term)",
        rollout=rollout,
        rollout_dtype=rollout_dtype,
        gradients=gradients,
        reduction=reduction,
        grad_dtype=grad_dtype,
        grad_reduce_dtype=reduce_dtype,
        weights_dtype=(half or "bfloat16") if deepspeed_mixed else "float32",
    )


def precision_of(
    recipe: Any,
    *,
    deepspeed_mixed: bool,
    checkpoint_dtype: str | None = None,
    deepspeed_config: Mapping[str, Any] | None = None,
    processes: int = 1,
) -> Precision:
    """:func:`plan_precision` for a parsed recipe (:class:`archer.recipe.Recipe`)."""
    args = recipe.trainer
    return plan_precision(
        model_dtype=recipe.model.dtype,
        mixed=mixed_precision(args),
        deepspeed_mixed=deepspeed_mixed,
        reference_model=args.beta != 0.0,
        use_vllm=bool(args.use_vllm),
        checkpoint_dtype=checkpoint_dtype,
        deepspeed_config=deepspeed_config,
        processes=processes,
        engine_dtype=getattr(args, "vllm_dtype", None),
    )


def deepspeed_config_of(args: Any) -> dict[str, Any] | None:
    """The DeepSpeed config of this launch (None without DeepSpeed)."""
    plugin = getattr(args, "deepspeed_plugin", None)
    return None if plugin is None else dict(plugin.deepspeed_config or {})
