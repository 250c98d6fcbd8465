"""archer.planning (model shape, memory, checkpoint size) and the batch plan: parameter counts against transformers, batch arithmetic against TRL, memory estimate, errors."""

from __future__ import annotations

import json

import pytest
import torch
from paths import ROOT
from transformers import AutoConfig, AutoModelForCausalLM
from trl import GRPOConfig

from archer.errors import UserError
from archer.planning.dry_run import describe
from archer.planning.memory import GIB, estimate_memory, vllm_sequences_in_cache
from archer.planning.model_shape import MODEL_CONFIGS, ModelShape, config_file_for, load_model_shape
from archer.recipe import load_recipe_for_plan
from archer.training.batch import plan_batches

SHIPPED = ["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen3-4B"]

SMALL_CONFIGS = [
    # qwen2 with tied embeddings and GQA
    {"model_type": "qwen2", "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
     "num_attention_heads": 6, "num_key_value_heads": 2, "tie_word_embeddings": True},
    # qwen2, untied, multi-head attention (no num_key_value_heads key)
    {"model_type": "qwen2", "vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
     "num_attention_heads": 4, "tie_word_embeddings": False},
    # qwen3 with head_dim different from hidden / heads, q/k norms, and an attention bias
    {"model_type": "qwen3", "vocab_size": 89, "hidden_size": 40, "intermediate_size": 72, "num_hidden_layers": 2,
     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "attention_bias": True,
     "tie_word_embeddings": False},
    # llama with a bias on q, k, v and o
    {"model_type": "llama", "vocab_size": 77, "hidden_size": 32, "intermediate_size": 56, "num_hidden_layers": 2,
     "num_attention_heads": 4, "num_key_value_heads": 1, "attention_bias": True, "tie_word_embeddings": False},
    # mistral
    {"model_type": "mistral", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
     "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False},
]  # fmt: skip


def _transformers_count(config: dict) -> int:
    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_count_exactly_what_transformers_builds(name):
    config = json.loads(config_file_for(name).read_text())
    assert load_model_shape(name).num_parameters == _transformers_count(config)


def test_shipped_sizes_are_the_published_ones():
    assert round(load_model_shape(SHIPPED[0]).num_parameters / 1e9, 2) == 1.78
    assert round(load_model_shape(SHIPPED[1]).num_parameters / 1e9, 2) == 4.02


@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=lambda c: f"{c['model_type']}-tied{c['tie_word_embeddings']}")
def test_parameter_count_matches_transformers(config):
    assert ModelShape.from_config(config).num_parameters == _transformers_count(config)


def test_kv_cache_per_token():
    shape = load_model_shape(SHIPPED[0])  # 28 layers, 2 KV heads of 128
    assert shape.kv_cache_bytes_per_token() == 2 * 28 * 2 * 128 * 2


def test_model_config_errors(tmp_path):
    with pytest.raises(UserError, match="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"):
        config_file_for("org/unknown-model")  # the message lists the models shipped
    with pytest.raises(UserError, match="has no config.json"):
        config_file_for(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(SMALL_CONFIGS[0]))
    assert load_model_shape(str(tmp_path)).num_parameters == _transformers_count(SMALL_CONFIGS[0])
    with pytest.raises(UserError, match="model_type 'gpt2'"):
        ModelShape.from_config({"model_type": "gpt2"})
    with pytest.raises(UserError, match="missing key 'hidden_size'"):
        ModelShape.from_config({"model_type": "qwen2", "vocab_size": 3})
    assert sorted(p.name for p in MODEL_CONFIGS.glob("*.json")) == sorted(
        n.replace("/", "--") + ".json" for n in SHIPPED
    )


def test_paper_batch_arithmetic_on_one_node():
    plan = plan_batches(
        num_processes=8,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=16,
        num_generations=16,
        generation_batch_size=1024,
        num_iterations=3,
        max_prompt_length=2048,
        max_completion_length=32768,
    )
    assert plan.prompts_per_rollout == 64
    assert plan.responses_per_step == 512
    assert plan.steps_per_generation == 32
    assert plan.optimizer_steps_per_rollout == 6
    assert plan.tokens_per_optimizer_step == 512 * (2048 + 32768)


@pytest.mark.parametrize(
    ("per_device", "accumulation", "generation_batch_size", "steps_per_generation"),
    [(4, 2, None, None), (2, 4, 48, None), (6, 1, None, 3), (3, 3, None, 6)],
)
def test_resolution_agrees_with_trl(tmp_path, per_device, accumulation, generation_batch_size, steps_per_generation):
    trl = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        generation_batch_size=generation_batch_size,
        steps_per_generation=steps_per_generation,
        num_generations=3 if per_device % 2 else 2,
        bf16=False,
        use_cpu=True,
        report_to="none",
    )
    plan = plan_batches(
        num_processes=trl.world_size,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        num_generations=trl.num_generations,
        generation_batch_size=generation_batch_size,
        steps_per_generation=steps_per_generation,
        max_completion_length=trl.max_completion_length,
    )
    assert (plan.generation_batch_size, plan.steps_per_generation) == (
        trl.generation_batch_size,
        trl.steps_per_generation,
    )


def test_the_paper_batch_is_stated_once_and_holds_on_any_node_count():
    common = dict(per_device_train_batch_size=4, num_generations=16, generation_batch_size=1024, num_iterations=3,
                  max_completion_length=64, responses_per_step=512)  # fmt: skip
    for processes, accumulation in ((8, 16), (16, 8)):
        plan = plan_batches(num_processes=processes, **common)
        assert plan.gradient_accumulation_steps == accumulation
        assert (plan.responses_per_step, plan.optimizer_steps_per_rollout) == (512, 6)
    plan = plan_batches(num_processes=2, per_device_train_batch_size=8, num_generations=8, max_completion_length=64)
    assert plan.max_sequence_length is None
    assert plan.tokens_per_optimizer_step == 16 * 64  # completions only when the prompt bound is unknown


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"generation_batch_size": 1024, "steps_per_generation": 4}, "not both"),
        ({"generation_batch_size": 1000}, "must divide by per_device_train_batch_size"),
        ({"num_generations": 1}, "needs >= 2"),
        ({"num_generations": 24, "steps_per_generation": 1}, "whole groups"),
        ({"steps_per_generation": 3, "gradient_accumulation_steps": 2}, "straddle"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0"),
        ({"max_prompt_length": 0}, "prompt length"),
    ],
)
def test_impossible_batches_fail_clearly(kwargs, message):
    settings = dict(
        num_processes=8,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=16,
        num_generations=16,
        max_completion_length=128,
    )
    with pytest.raises(UserError, match=message):
        plan_batches(**{**settings, **kwargs})


def test_zero_stages_shard_what_they_should():
    shape = load_model_shape(SHIPPED[0])
    p = shape.num_parameters
    common = dict(micro_batch=1, sequence_length=1024)
    ddp = estimate_memory(shape, world_size=8, zero_stage=0, **common).items
    zero2 = estimate_memory(shape, world_size=8, zero_stage=2, **common).items
    zero3 = estimate_memory(shape, world_size=8, zero_stage=3, **common).items
    assert ddp["weights"] + ddp["gradients"] + ddp["optimizer states"] == 16 * p  # ZeRO paper: 2 + 2 + 12 bytes
    assert zero2["weights"] == ddp["weights"] and zero2["optimizer states"] == ddp["optimizer states"] / 8
    assert zero3["weights"] == ddp["weights"] / 8 and zero3["gradients"] == ddp["gradients"] / 8
    assert "weights gathered (ZeRO-3)" in zero3 and "weights gathered (ZeRO-3)" not in zero2
    fp32 = estimate_memory(shape, world_size=1, zero_stage=0, dtype_bytes=4, **common).items
    assert fp32["weights"] + fp32["gradients"] + fp32["optimizer states"] == 16 * p  # 4 + 4 + 8
    with pytest.raises(UserError, match="ZeRO stage 1"):
        estimate_memory(shape, world_size=8, zero_stage=1, **common)


def test_activations_grow_with_tokens_and_checkpointing_saves_memory():
    shape = load_model_shape(SHIPPED[0])

    def activations(**kwargs):
        return estimate_memory(shape, world_size=8, zero_stage=3, **kwargs).items["activations"]

    base = activations(micro_batch=1, sequence_length=4096)
    assert activations(micro_batch=2, sequence_length=4096) == pytest.approx(2 * base)
    assert activations(micro_batch=1, sequence_length=8192) == pytest.approx(2 * base)
    assert activations(micro_batch=1, sequence_length=4096, gradient_checkpointing=False) > 3 * base


def test_reference_model_and_vllm_sleep_mode():
    shape = load_model_shape(SHIPPED[0])
    common = dict(world_size=8, zero_stage=3, micro_batch=4, sequence_length=34816, gpu_memory_gib=80)
    plain = estimate_memory(shape, **common)
    with_ref = estimate_memory(shape, reference_model=True, **common)
    assert with_ref.total - plain.total == pytest.approx(shape.num_parameters * 2 / 8)
    awake = estimate_memory(shape, vllm_colocate_fraction=0.3, **common)
    asleep = estimate_memory(shape, vllm_colocate_fraction=0.3, vllm_sleep_mode=True, **common)
    vllm = 0.3 * 80 * GIB
    assert awake.total == pytest.approx(plain.total + vllm)
    activations = plain.items["activations"]
    assert asleep.total == pytest.approx(plain.total - activations + max(activations, vllm))
    assert not estimate_memory(shape, **{**common, "gpu_memory_gib": 8}).fits
    assert any("one at a time" in line for line in asleep.format())


def test_vllm_kv_cache_capacity():
    shape = load_model_shape(SHIPPED[0])
    per_sequence = shape.kv_cache_bytes_per_token() * 34816
    weights = shape.num_parameters * 2
    reserved = weights + 1 * GIB + 10 * per_sequence
    assert vllm_sequences_in_cache(
        shape, reserved_bytes=reserved, tensor_parallel=1, max_model_length=34816
    ) == pytest.approx(10)
    with pytest.raises(UserError, match="cannot hold the weights"):
        vllm_sequences_in_cache(shape, reserved_bytes=weights, tensor_parallel=1, max_model_length=34816)
    # tensor parallelism splits both the weights and the cache over the GPUs of one engine
    assert vllm_sequences_in_cache(
        shape, reserved_bytes=reserved, tensor_parallel=2, max_model_length=34816
    ) > vllm_sequences_in_cache(shape, reserved_bytes=reserved, tensor_parallel=1, max_model_length=34816)


def test_dry_run_prints_the_checkpoint_size_save_time_and_signal_to_request():
    recipe = load_recipe_for_plan(ROOT / "recipes" / "DeepSeek-R1-Distill-Qwen-1.5B" / "archer" / "code.yaml")
    text = describe(recipe, num_processes=8)  # ZeRO-3, bf16: 14 bytes per parameter
    assert (
        "checkpoint: ~23.2 GiB per save (16-bit weights; fp32 master weights and Adam moments in DeepSpeed's " in text
    )
    assert "at 200 MB/s (--write-mb-s) a save takes ~124 s" in text
    assert "request --signal=B:USR1@<one rollout's seconds + 184>" in text
    text = describe(recipe, num_processes=8, zero_stage=0, write_mb_s=1000, rollout_s=1400)  # DDP: fp32, 12 bytes
    assert "checkpoint: ~19.9 GiB per save (32-bit weights + Adam moments); at 1000 MB/s" in text
    assert "a save takes ~21 s" in text
    assert "request --signal=B:USR1@1490 (1400 s rollout + 21 s save + 60 s margin)" in text
