"""Which precision each part of a run uses, decided in one place for training and for the dry run.

The reference keeps fp32 master weights and computes in bf16 (FSDP mixed precision). Here:

- under DeepSpeed with its bf16 (or fp16) mode on, DeepSpeed holds the weights in bf16 and keeps fp32 master
  copies inside its optimizer: the checkpoint loads in the recipe's ``model.dtype``;
- everywhere else (one process, DDP, DeepSpeed without mixed precision) the optimizer is plain AdamW on the
  model's own parameters, so the model loads in float32 whatever ``model.dtype`` says, and ``trainer.bf16`` (or
  ``fp16``) runs the forward and backward passes under autocast. AdamW on bf16 weights would drop most updates
  at lr 1e-6: a bf16 weight near 0.02 moves only in steps of about 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Precision:
    """Precision of each part, as words for the dry run and the logs."""

    load_dtype: str  # what the policy checkpoint is loaded as
    weights: str
    master: str
    compute: str
    reference: str
    rollout: str
    rollout_dtype: str  # what vLLM holds its weights in (its dtype 'auto': the checkpoint's), or the compute dtype

    def lines(self) -> list[str]:
        return [
            f"  weights (forward / backward)   {self.weights}",
            f"  master copy (AdamW updates)    {self.master}",
            f"  compute                        {self.compute}",
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


def plan_precision(
    *,
    model_dtype: str,
    mixed: str | None,
    deepspeed_mixed: bool,
    reference_model: bool,
    use_vllm: bool,
    checkpoint_dtype: str | None = None,
) -> Precision:
    """The precision of each part.

    Args:
        model_dtype: the recipe's ``model.dtype`` ('auto', 'float32', 'bfloat16', 'float16').
        mixed: 'bf16', 'fp16' or None (the trainer's flags).
        deepspeed_mixed: DeepSpeed runs with its bf16 / fp16 mode on.
        reference_model: a reference model is loaded (a KL weight is > 0).
        use_vllm: rollouts are sampled by vLLM.
        checkpoint_dtype: the checkpoint's own dtype (config.json), which vLLM loads (dtype 'auto'), if known.
    """
    half = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed or "")
    if deepspeed_mixed:
        half = half or "bfloat16"
        load = model_dtype  # DeepSpeed casts to its own dtype anyway
        weights = f"{half} (DeepSpeed)"
        master = "float32 (DeepSpeed's optimizer keeps fp32 master weights)"
        compute = half
        reference = f"{half} (DeepSpeed, inference only)"
    else:
        load = "float32"
        weights = master = "float32 (the same tensors: AdamW updates the weights themselves)"
        compute = f"{half} autocast" if half else "float32"
        reference = f"float32 weights, {compute} compute" if half else "float32"
    if use_vllm:
        rollout_dtype = checkpoint_dtype or "bfloat16"
        rollout = f"vLLM, {rollout_dtype} (fresh weights cast from the policy each rollout)"
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
    )


def precision_of(recipe: Any, *, deepspeed_mixed: bool, checkpoint_dtype: str | None = None) -> Precision:
    """:func:`plan_precision` for a parsed recipe (:class:`archer.recipe.Recipe`)."""
    args = recipe.trainer
    return plan_precision(
        model_dtype=recipe.model.dtype,
        mixed=mixed_precision(args),
        deepspeed_mixed=deepspeed_mixed,
        reference_model=args.beta != 0.0,
        use_vllm=bool(args.use_vllm),
        checkpoint_dtype=checkpoint_dtype,
    )
