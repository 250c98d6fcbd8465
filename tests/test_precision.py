"""archer.planning.precision: fp32 master weights wherever the optimizer is not DeepSpeed's, read off the launch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DeepSpeedPlugin

from archer.planning.precision import (
    deepspeed_gradient_dtypes,
    deepspeed_mixed_precision,
    plan_precision,
    vllm_dtype,
)


def _args(plugin, bf16=True):
    return SimpleNamespace(deepspeed_plugin=plugin, bf16=bf16, fp16=False)


def test_only_deepspeed_mixed_precision_keeps_fp32_masters_of_half_weights():
    with_bf16 = DeepSpeedPlugin(zero_stage=3)
    with_bf16.set_mixed_precision("bf16")  # what an accelerate config with mixed_precision: bf16 does
    assert deepspeed_mixed_precision(_args(with_bf16))
    auto = DeepSpeedPlugin(hf_ds_config={"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 3}})
    assert deepspeed_mixed_precision(_args(auto, bf16=True)) and not deepspeed_mixed_precision(_args(auto, bf16=False))
    plain = DeepSpeedPlugin(hf_ds_config={"bf16": {"enabled": False}, "zero_optimization": {"stage": 3}})
    assert not deepspeed_mixed_precision(_args(plain))  # DeepSpeed in fp32 (recipes/deepspeed/zero3_cpu.json)
    assert not deepspeed_mixed_precision(_args(None))  # one process or DDP


@pytest.mark.parametrize("model_dtype", ["auto", "bfloat16", "float32"])
def test_outside_deepspeed_weights_load_in_fp32_and_bf16_is_autocast(model_dtype):
    parts = plan_precision(model_dtype=model_dtype, mixed="bf16", deepspeed_mixed=False, reference_model=True,
                           use_vllm=True, checkpoint_dtype="bfloat16")  # fmt: skip
    assert parts.load_dtype == "float32" and parts.compute == "bfloat16 autocast"
    assert parts.master.startswith("float32") and parts.rollout_dtype == "bfloat16"
    deepspeed = plan_precision(model_dtype=model_dtype, mixed="bf16", deepspeed_mixed=True, reference_model=False,
                               use_vllm=False)  # fmt: skip
    assert deepspeed.load_dtype == model_dtype and deepspeed.master.startswith("float32 (DeepSpeed")
    assert deepspeed.reference == "none (no KL term)" and "generate()" in deepspeed.rollout


def test_deepspeed_gradient_dtypes_follow_its_config():
    fp32 = {"data_types": {"grad_accum_dtype": "fp32"}, "communication_data_type": "fp32"}
    parts = plan_precision(model_dtype="bfloat16", mixed="bf16", deepspeed_mixed=True, reference_model=False,
                           use_vllm=False, deepspeed_config=fp32, processes=16)  # fmt: skip
    assert (parts.weights_dtype, parts.grad_dtype, parts.grad_reduce_dtype) == ("bfloat16", "float32", "float32")
    assert parts.gradients.startswith("float32 (DeepSpeed data_types.grad_accum_dtype)")
    unset = plan_precision(model_dtype="bfloat16", mixed="bf16", deepspeed_mixed=True, reference_model=False,
                           use_vllm=False, deepspeed_config={}, processes=16)  # fmt: skip
    assert (unset.grad_dtype, unset.grad_reduce_dtype) == ("bfloat16", "bfloat16")  # DeepSpeed's defaults
    assert deepspeed_gradient_dtypes({"data_types": {"grad_accum_dtype": "torch.float32"}}, None) == (
        "float32",
        "float32",
    )
    ddp = plan_precision(model_dtype="bfloat16", mixed="bf16", deepspeed_mixed=False, reference_model=False,
                         use_vllm=False, processes=8)  # fmt: skip
    assert (ddp.grad_dtype, ddp.grad_reduce_dtype, ddp.weights_dtype) == ("float32", "float32", "float32")


def test_vllm_serves_a_float32_checkpoint_in_half_precision():
    # TRL 1.16 starts vLLM with dtype "auto", which casts a float32 checkpoint down (bf16 from compute capability 8.0)
    assert vllm_dtype("float32") == "bfloat16" and vllm_dtype("float32", bf16_gpu=False) == "float16"
    assert vllm_dtype("bfloat16") == "bfloat16" and vllm_dtype(None) == "bfloat16"
    parts = plan_precision(model_dtype="float32", mixed="bf16", deepspeed_mixed=False, reference_model=False,
                           use_vllm=True, checkpoint_dtype="float32")  # fmt: skip
    assert parts.rollout_dtype == "bfloat16" and "float32 checkpoint" in parts.rollout
