"""Every recipe in the repo passes the dry run offline; the paper recipes hold the paper's numbers; the launch
configs and scripts agree with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from hubserver import seed_cache
from paths import ROOT

from archer.errors import UserError
from archer.planning.dry_run import describe
from archer.recipe import load_recipe_for_plan
from archer.training.batch import plan_recipe

RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")
GPU_RECIPES = [p for p in RECIPES if "tiny" not in p.parts]
PAPER_RECIPES = [p for p in GPU_RECIPES if "DeepSeek-R1-Distill-Qwen-1.5B" in p.parts]
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT / "recipes"))


def test_the_recipes_are_there():
    names = {_id(p) for p in GPU_RECIPES}
    for run in ("archer/math", "archer/code", "dapo/math", "dapo/code"):
        assert f"DeepSeek-R1-Distill-Qwen-1.5B/{run}.yaml" in names
    assert any(name.startswith("Qwen3-4B") for name in names)


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_every_recipe_passes_the_dry_run(path):
    recipe = load_recipe_for_plan(path)
    world = 1 if recipe.model.is_tiny else 8
    text = describe(recipe, num_processes=world)
    assert "batch arithmetic" in text and "optimizer steps per rollout" in text
    assert "DOES NOT FIT" not in text
    assert "memory per GPU" in text


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=_id)
def test_paper_recipes_hold_the_paper_numbers(path):
    recipe = load_recipe_for_plan(path)
    args = recipe.trainer
    for processes in (8, 16):  # the paper's run: 2 x 8 GPUs
        plan = plan_recipe(recipe, num_processes=processes)
        assert (plan.prompts_per_rollout, plan.num_generations, plan.generation_batch_size) == (64, 16, 1024)
        assert plan.responses_per_step == 512  # mini-batch of 32 prompts
        assert plan.num_iterations == 3 and plan.optimizer_steps_per_rollout == 6
    assert plan.max_prompt_length == 2048 and plan.max_completion_length == 32768
    assert args.learning_rate == 1e-6 and args.weight_decay == 0.1 and args.max_grad_norm == 1.0
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.999)
    # a Trainer step is a rollout, as verl's step: 10 warm-up rollouts, 520 / 320 of them in all
    assert args.lr_scheduler_type.value == "constant_with_warmup" and args.warmup_steps == 10
    assert (args.temperature, args.top_p, args.top_k) == (1.0, 1.0, 0)
    assert args.drop_uniform_groups
    assert not args.vllm_importance_sampling_correction  # the reference applies none
    assert args.max_steps == (320 if path.stem == "code" else 520)
    assert args.objective == path.parent.name  # archer/ or dapo/
    if path.stem == "code":
        assert recipe.data.rewards == ["code"] and recipe.data.max_tests == 16
    else:
        assert recipe.data.rewards == ["math"]


@pytest.mark.parametrize(("gpus", "accumulation"), [(1, 128), (8, 16), (16, 8), (32, 4), (64, 2)])
def test_scaling_out_keeps_the_mini_batch(gpus, accumulation):
    recipe = load_recipe_for_plan(PAPER_RECIPES[0])
    plan = plan_recipe(recipe, num_processes=gpus)
    assert plan.gradient_accumulation_steps == accumulation  # derived from the process count, nothing to override
    assert plan.responses_per_step == 512 and plan.optimizer_steps_per_rollout == 6
    assert "fits" in describe(recipe, num_processes=gpus)


@pytest.mark.parametrize("processes", [8, 16])
def test_paper_dry_run_shows_the_reference_batch_precision_and_no_is_correction(processes):
    for path in PAPER_RECIPES:
        text = describe(load_recipe_for_plan(path), num_processes=processes)
        accumulation = 128 // processes
        assert (
            f"4 per device x {processes} x {accumulation} accumulation (derived from responses_per_step) = 512" in text
        )
        assert "1024 / 512 x 3 epochs = 6" in text
        assert "vLLM importance-sampling correction: off" in text
        assert "</think> is graded whole, as the authors' rewards grade it (require_think_close: false)" in text
        assert "master copy (AdamW updates)    float32" in text and "compute                        bfloat16" in text
        # the authors' FSDP run reduces and accumulates gradients in fp32: so does recipes/deepspeed/zero3.json
        assert "gradient accumulation          float32 (DeepSpeed data_types.grad_accum_dtype): +" in text
        assert "gradient reduction             float32 (DeepSpeed communication_data_type): bucket of" in text
        shard = 1_777_088_000 * 2 / processes / 1024**3
        assert f"+{shard:.2f} GiB per GPU over bfloat16 gradients" in text
        assert "schedule counted in rollouts that make an update, warm-up 10 of them" in text
        assert "a step whose gradient norm is not finite is skipped" in text
        assert "stops after 20 rollouts in a row without one" in text
        if "code" in path.stem:  # the authors' training file and their code reward's limits and rule
            assert "\ndata: wizardII/ArcherCodeR-Dataset\n" in text
            assert "data settings: file train/archercoder-1.5b-train.json, loader verl" in text
            assert "prompts <= 2048 tokens" in text
            assert (
                "code reward: at most 16 random tests per stdin/stdout problem (functional problems: all), 30 s per "
                "stdin/stdout test, 60 s per assert script, 1024 MiB address space per run, whole stripped stdout "
                "equal to the expected (the authors' training rule)"
            ) in text
        else:
            assert "math reward: the last \\boxed{} checked against the answer with Math-Verify" in text
    ddp = describe(load_recipe_for_plan(PAPER_RECIPES[0]), num_processes=processes, zero_stage=0)
    assert "precision (DDP)" in ddp and "weights (forward / backward)   float32" in ddp
    assert "compute                        bfloat16 autocast" in ddp


def test_impossible_settings_fail_clearly():
    with pytest.raises(UserError, match=r"responses_per_step=512: cannot be split over 6 process\(es\)"):
        describe(load_recipe_for_plan(PAPER_RECIPES[0]), num_processes=6)
    with pytest.raises(UserError, match="leaves no room for a prompt"):  # caught when the recipe loads
        load_recipe_for_plan(PAPER_RECIPES[0], ["trainer.vllm_max_model_length=1000"])
    starved = load_recipe_for_plan(PAPER_RECIPES[0], ["trainer.vllm_gpu_memory_utilization=0.05"])
    with pytest.raises(UserError, match="vLLM: 4.0 GiB reserved cannot hold"):
        describe(starved, num_processes=8)
    qwen3 = load_recipe_for_plan(next(p for p in GPU_RECIPES if "Qwen3-4B" in p.parts))
    with pytest.raises(UserError, match="4.02B parameters need 60 GiB per GPU"):
        describe(qwen3, num_processes=1, gpu_memory_gib=40)


def test_accelerate_configs_parse_and_match_the_recipes():
    configs = {p.stem: load_config_from_file(str(p)) for p in ACCELERATE}
    for name in ("zero3", "multi_node_zero3", "ddp"):
        config = configs[name]
        assert not config.use_cpu
        world = config.num_processes
        for path in GPU_RECIPES:  # the recipes' batch arithmetic works at each config's size
            assert plan_recipe(load_recipe_for_plan(path), world).responses_per_step == 512
    assert configs["ddp"].mixed_precision == "bf16"
    assert configs["zero3"].num_machines == 1 and configs["multi_node_zero3"].num_machines > 1
    for name in ("zero3", "multi_node_zero3", "cpu_zero3"):  # DeepSpeed's settings live in a JSON file
        deepspeed = configs[name].deepspeed_config
        # accelerate refuses these beside a DeepSpeed config file
        assert not {"zero_stage", "offload_optimizer_device", "zero3_save_16bit_model"} & set(deepspeed)
        assert configs[name].mixed_precision in (None, "no")
        ds = json.loads((ROOT / deepspeed["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] == "auto"  # the recipe's bf16
        assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["communication_data_type"] == "fp32"
    assert configs["zero3"].deepspeed_config["deepspeed_config_file"] == "recipes/deepspeed/zero3.json"
    assert "double" not in (ROOT / "recipes" / "accelerate" / "zero3.yaml").read_text()  # nothing to set by hand
    for path in (ROOT / "recipes" / "deepspeed").glob("*.json"):
        json.loads(path.read_text())


def test_a_float32_checkpoint_is_planned_as_vllm_serves_it(tmp_path):
    # vLLM's dtype "auto" (TRL 1.16 passes no other) serves a float32 checkpoint in bfloat16: so does the plan
    recipe = load_recipe_for_plan(ROOT / "recipes" / "tiny" / "archer.yaml", ["trainer.use_vllm=true"])
    text = describe(recipe, num_processes=1)
    assert "rollout engine                 vLLM, bfloat16 (vLLM's dtype auto casts a float32 checkpoint down" in text
    assert "vLLM, float32" not in text


def test_a_dry_run_reads_the_deepspeed_config_it_is_given(tmp_path):
    recipe = load_recipe_for_plan(PAPER_RECIPES[0])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}}))
    text = describe(recipe, num_processes=16, deepspeed_config=plain)
    assert "gradient accumulation          bfloat16 (DeepSpeed data_types.grad_accum_dtype: unset)" in text
    assert "gradient reduction             bfloat16 (DeepSpeed communication_data_type: unset)" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="--deepspeed-config .*bad.json: cannot read it as a DeepSpeed JSON config"):
        describe(recipe, num_processes=16, deepspeed_config=bad)


def _fake_bin(tmp_path: Path, commands: dict[str, str]) -> dict[str, str]:
    """A PATH whose commands print how they were called (and python is the real one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in commands.items():
        script = bin_dir / name
        script.write_text(f"#!/usr/bin/env bash\n{body}\n")
        script.chmod(0o755)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable, "VENV": "/nonexistent"}


def test_serve_vllm_script_reads_the_recipe(tmp_path):
    env = _fake_bin(tmp_path, {"trl": 'echo "trl $*"'})
    env.update(CUDA_VISIBLE_DEVICES="4,5,6,7", VLLM_PORT="8123")
    out = subprocess.run(
        ["bash", "slurm/serve_vllm.sh", str(PAPER_RECIPES[0]), "--enforce_eager", "true"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    command = out.strip().splitlines()[-1].split()
    assert command[:4] == ["trl", "vllm-serve", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"]
    flags = dict(zip(command[4::2], command[5::2], strict=False))
    assert flags["--data_parallel_size"] == "4" and flags["--tensor_parallel_size"] == "1"
    assert flags["--max_model_len"] == "34816" and flags["--port"] == "8123"
    assert flags["--enforce_eager"] == "true"
    env["VLLM_TP"] = "8"
    failed = subprocess.run(["bash", "slurm/serve_vllm.sh", str(PAPER_RECIPES[0])], cwd=ROOT, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert failed.returncode == 2 and "needs 8 GPUs; 4 visible" in failed.stderr


def _slurm(tmp_path: Path, nodes: list[str], extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # `archer` logs its call and runs the real dry run, so a batch that cannot run stops the script as it would
    archer = f'echo "archer $*" >> "$LOG"; [[ "$2" == --dry-run ]] || exit 0; exec {sys.executable} -m archer.cli "$@"'
    env = _fake_bin(
        tmp_path,
        {
            "scontrol": "printf '%s\\n' " + " ".join(nodes),
            "srun": 'args="$*"; echo "srun ${args//$\'\\n\'/ }" >> "$LOG"',  # one line per call
            "archer": archer,
        },
    )
    env.update(SLURM_JOB_NODELIST=",".join(nodes), SLURM_JOB_ID="7", LOG=str(tmp_path / "calls"), **extra_env)
    # offline, as the tests run: the dry run finds the recipe's model and data in a cache, as a cluster's would
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    config = (ROOT / "src" / "archer" / "data" / "model_configs").glob("*DeepSeek-R1-Distill-Qwen-1.5B*.json")
    seed_cache(
        tmp_path / "hf" / "hub",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        {"config.json": next(config).read_bytes()},
    )
    for dataset in (
        "agentica-org/DeepScaleR-Preview-Dataset",
        "agentica-org/DeepCoder-Preview-Dataset",
        "wizardII/ArcherCodeR-Dataset",
    ):
        seed_cache(tmp_path / "hf" / "hub", dataset, {"README.md": b"x"}, "dataset")
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.run(
        ["bash", str(ROOT / "slurm" / "train.slurm"), str(PAPER_RECIPES[0]), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_slurm_script_plans_the_real_world_size_and_places_the_vllm_server(tmp_path):
    result = _slurm(tmp_path, ["n1", "n2", "n3", "n4"], {})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"archer train --dry-run --num-processes 32 {PAPER_RECIPES[0]}"  # no accumulation override
    assert "4 per device x 32 x 4 accumulation (derived from responses_per_step) = 512" in result.stdout
    assert calls[1].startswith("srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --nodelist=n1,n2,n3,n4")
    assert " 4 32 n1 29500 " in calls[1]

    (tmp_path / "calls").unlink()
    result = _slurm(tmp_path, ["n1", "n2", "n3"], {"VLLM_SERVER": "1"}, "trainer.max_steps=12")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    server = next(c for c in calls if "serve_vllm.sh" in c)
    assert "--nodelist=n3" in server
    dry_run = next(c for c in calls if c.startswith("archer"))
    assert "--num-processes 16 " in dry_run and "trainer.vllm_mode=server" in dry_run
    assert "trainer.vllm_server_host=n3" in dry_run and "trainer.max_steps=12" in dry_run
    assert "4 per device x 16 x 8 accumulation" in result.stdout

    result = _slurm(tmp_path, ["n1", "n2", "n3"], {})  # 24 GPUs: 512 responses do not split evenly
    assert result.returncode == 2 and "responses_per_step=512: cannot be split over 24" in result.stderr
    assert not any(c.startswith("srun") for c in (tmp_path / "calls").read_text().splitlines()[-1:])


def test_tiny_recipe_plans_the_model_training_builds():
    from archer.data.arithmetic import ArithmeticTask
    from archer.tiny import TinyModelConfig, build_model, build_tokenizer

    recipe = load_recipe_for_plan(ROOT / "recipes" / "tiny" / "archer.yaml")
    tokenizer = build_tokenizer(task=ArithmeticTask(**recipe.data.task))
    model = build_model(tokenizer, TinyModelConfig(**recipe.model.tiny))
    assert f"parameters ({model.num_parameters():,})" in describe(recipe, num_processes=1)


def test_slurm_log_path_needs_no_folder_made_first():
    """Slurm opens --output before the script runs (its `mkdir -p logs` comes too late for the job's own log)."""
    lines = (ROOT / "slurm" / "train.slurm").read_text().splitlines()
    (output,) = [line.split("=", 1)[1] for line in lines if line.startswith("#SBATCH --output=")]
    assert "/" not in output


@pytest.mark.parametrize("path", GPU_RECIPES, ids=_id)
def test_paper_recipes_warn_when_their_data_is_not_filtered_for_their_model(path, tmp_path):
    """The rule (archer.data.filter_marker): a folder whose filter.json names the recipe's model, or the authors'
    released code set for the model they filtered it for, is filtered; anything else gets one warning line with
    the command that filters it."""
    from archer.training.sources import unfiltered_data_warning

    recipe = load_recipe_for_plan(path)
    model = recipe.model.name_or_path
    assert recipe.data.expect_filtered
    warning = unfiltered_data_warning(recipe)
    if recipe.data.dataset == "wizardII/ArcherCodeR-Dataset":  # the paper's code recipes: the authors' own file
        assert warning is None
    else:
        assert warning is not None and warning.startswith(
            f"training data agentica-org/DeepScaleR-Preview-Dataset is not pass-rate filtered for {model} (the paper "
            f"filters: archer filter agentica-org/DeepScaleR-Preview-Dataset data/deepscaler-filtered --model {model} "
            "--reward math --max-prompt-tokens 2048"
        )
        assert warning.endswith(", then data.dataset=data/deepscaler-filtered)")
        assert ("--max-new-tokens 8192" in warning) == ("Qwen3-4B" in path.parts)
        assert ("enable_thinking" in warning) == ("Qwen3-4B" in path.parts)

    folder = tmp_path / "filtered"
    folder.mkdir()
    source = "agentica-org/DeepCoder-Preview-Dataset"
    for marker, expected in (("filter.json", model), ("filter_stats.json", model), ("filter.json", "other/model")):
        for name in ("filter.json", "filter_stats.json"):
            (folder / name).unlink(missing_ok=True)
        (folder / marker).write_text(json.dumps({"model": expected, "k": 8, "dataset": source, "loader": "deepcoder"}))
        warning = unfiltered_data_warning(load_recipe_for_plan(path, [f"data.dataset={folder}"]))
        if expected == model:
            assert warning is None, marker
        else:  # filtered for another model: filter its source for this one
            assert warning is not None and warning.startswith(
                f"training data {folder} (filtered for other/model) is not pass-rate filtered for {model} (the paper "
                f"filters: archer filter {source} data/deepcoder-filtered --model {model}"
            )
    (folder / "filter.json").unlink()
    assert unfiltered_data_warning(load_recipe_for_plan(path, [f"data.dataset={folder}"])) is not None  # no marker
    assert unfiltered_data_warning(load_recipe_for_plan(path, ["data.expect_filtered=false"])) is None
    if "Qwen3-4B" in path.parts:  # the authors' set is filtered for the 1.5B, not for this model
        other = load_recipe_for_plan(path, ["data.dataset=wizardII/ArcherCodeR-Dataset"])
        assert "(filtered for deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B)" in (unfiltered_data_warning(other) or "")


def test_tiny_recipes_expect_no_filtering():
    from archer.training.sources import unfiltered_data_warning

    for path in RECIPES:
        if "tiny" in path.parts:
            assert unfiltered_data_warning(load_recipe_for_plan(path)) is None
