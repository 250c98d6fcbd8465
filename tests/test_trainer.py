"""ArcherTrainer on the tiny model: the objective is really the loss, clipping acts when a rollout is reused,
uniform groups are dropped, and the whole pipeline (SFT -> RL -> run folder) works in one and two processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from archer.trainer import ArcherConfig, ArcherTrainer

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "tiny" / "smoke.yaml"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from archer import tiny
    from archer.data.arithmetic import ArithmeticTask

    out = tmp_path_factory.mktemp("tiny")
    tiny.prepare_tiny_model(
        out, tiny.TinyModelConfig(), tiny.SFTConfig(steps=20, batch_size=16, warmup_steps=0), ArithmeticTask()
    )
    return out


def parity_reward(completions, **kwargs):
    """Varied within a group, so advantages are non-zero: 1 when the completion has an even length."""
    return [float(len(c) % 2 == 0) for c in completions]


def constant_reward(completions, **kwargs):
    return [1.0 for _ in completions]


def make_trainer(model_dir, tmp_path, reward, **overrides):
    from transformers import AutoTokenizer

    from archer.data.arithmetic import ArithmeticTask

    settings = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        num_generations=4,
        per_device_train_batch_size=8,
        steps_per_generation=2,
        num_iterations=2,
        max_completion_length=12,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    settings.update(overrides)
    args = ArcherConfig(**settings)
    return ArcherTrainer(
        model=str(model_dir),
        reward_funcs=[reward],
        args=args,
        train_dataset=ArithmeticTask().dataset(64, seed=1),
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
    )


def train_logs(trainer):
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


def test_clip_acts_when_rollout_batch_is_reused(tiny_model_dir, tmp_path):
    logs = train_logs(make_trainer(tiny_model_dir, tmp_path, parity_reward))
    ratios = [h["knowledge/ratio_mean"] for h in logs] + [h["reasoning/ratio_mean"] for h in logs]
    assert any(abs(r - 1.0) > 1e-3 for r in ratios), ratios  # later mini-batches/epochs see a moved policy
    clipped = sum(h[f"{c}/clip_{s}_frac"] for h in logs for c in ("knowledge", "reasoning") for s in ("low", "high"))
    assert clipped > 0
    assert all(0.0 < h["reasoning/frac"] < 0.5 for h in logs)


def test_no_reuse_means_ratio_one_and_no_clip(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, parity_reward, steps_per_generation=1, num_iterations=1)
    for h in train_logs(trainer):
        assert h["knowledge/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        assert h["knowledge/clip_low_frac"] == h["knowledge/clip_high_frac"] == 0.0


def test_uniform_groups_are_dropped(tiny_model_dir, tmp_path):
    before = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    trainer = make_trainer(tiny_model_dir, tmp_path, constant_reward, weight_decay=0.0, max_steps=2)
    logs = train_logs(trainer)
    assert [h["dropped_group_frac"] for h in logs if "dropped_group_frac" in h] == [1.0]  # one rollout, 2 steps
    assert all(h["loss"] == 0.0 and h["entropy/mean"] == 0.0 for h in logs)  # no token left in the objective
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing left to learn from: no update


def test_keeping_uniform_groups_still_applies_kl(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, constant_reward, drop_uniform_groups=False, max_steps=2)
    logs = train_logs(trainer)
    assert [h["dropped_group_frac"] for h in logs if "dropped_group_frac" in h] == [1.0]  # still reported...
    assert all(h["entropy/mean"] > 0.0 and h["reasoning/frac"] > 0.0 for h in logs)  # ...but the rows stay in


def run_cli(*args, cwd, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "archer.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def read_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pipeline_writes_a_complete_run_folder(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", str(SMOKE), f"trainer.output_dir={run}", cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "config.yaml",
        "recipe.yaml",
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "train_results.json",
    ):
        assert (run / name).exists(), name
    assert read_steps(run) == [1, 2, 3, 4]
    results = json.loads((run / "train_results.json").read_text())
    assert results["global_step"] == 4
    assert 0.0 <= results["heldout_accuracy_before"] <= 1.0 and 0.0 <= results["heldout_accuracy_after"] <= 1.0
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"reward.png", "entropy.png", "clip_fractions.png"}
    assert "held-out accuracy" in proc.stdout


@pytest.mark.slow
def test_resume_after_kill_loses_and_repeats_no_step(tmp_path):
    run, steps = tmp_path / "run", 40
    overrides = [f"trainer.output_dir={run}", f"trainer.max_steps={steps}", "trainer.save_steps=4"]
    args = [sys.executable, "-m", "archer.cli", "train", str(SMOKE), *overrides]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    while not (run / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(read_steps(run))
    assert 4 <= killed_at < steps, "the kill must land mid-run"
    resumed_from = max(
        int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "trainer_state.json").exists()
    )

    resumed = run_cli("train", str(SMOKE), *overrides, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / f'checkpoint-{resumed_from}'}" in resumed.stderr
    assert read_steps(run) == list(range(1, steps + 1))  # each optimizer step logged exactly once
    state = json.loads((run / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, steps + 1))
    assert json.loads((run / "train_results.json").read_text())["global_step"] == steps


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "cpu_zero3.yaml"])
def test_two_process_smoke(tmp_path, config):
    run = tmp_path / "run"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions")}
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate" / config),
        "-m",
        "archer.cli",
        "train",
        str(SMOKE),
        f"trainer.output_dir={run}",
        "trainer.max_steps=2",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_steps(run) == [1, 2]
    results = json.loads((run / "train_results.json").read_text())
    assert results["compute"]["processes"] == 2
    assert (run / "model.safetensors").exists()
