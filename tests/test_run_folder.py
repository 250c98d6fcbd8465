"""archer.training.run_folder, restarts that continue exactly: a complete run trains nothing, --no-resume never
mixes two runs, a torn file is skipped instead of crashing resume, and the run folder's files are written whole."""

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import ROOT

from archer.errors import UserError
from archer.files import append_line, atomic_write_text, read_jsonl
from archer.training import run_folder
from archer.training.callbacks import MetricsFileCallback

SMOKE = ROOT / "recipes" / "tiny" / "smoke.yaml"  # 4 steps (rollouts), a checkpoint every 2


def train(run: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "archer.cli", "train", str(SMOKE), f"trainer.output_dir={run}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (content hash, mtime in ns) of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The smoke recipe trained to its end (4 steps, checkpoints 2 and 4); tests work on copies."""
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def kill_after_train_results(run: Path) -> None:
    """The folder as a kill right after the last checkpoint leaves it: no final model, plots, results or card."""
    for name in ("model.safetensors", "train_results.json", "README.md"):
        (run / name).unlink()
    shutil.rmtree(run / "plots")


# --------------------------------------------------------------------------------------------------------------
# End to end (the smoke recipe on the tiny model)


@pytest.mark.slow
def test_a_complete_run_finishes_at_once_and_rewrites_nothing(run):
    before = snapshot(run)
    proc = train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run complete (step 4, max_steps 4): nothing to train; nothing rewritten" in proc.stderr
    assert "already complete" in proc.stdout
    assert snapshot(run) == before  # not one byte or timestamp changed: no step 5, no new model


@pytest.mark.slow
def test_killed_after_the_last_checkpoint_writes_only_the_missing_products(run):
    kill_after_train_results(run)
    kept = snapshot(run)
    proc = train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to train; wrote the missing model.safetensors (from checkpoint-4), plots" in proc.stderr
    assert {k: v for k, v in snapshot(run).items() if k in kept} == kept  # checkpoints, metrics, sft, config
    assert (run / "model.safetensors").read_bytes() == (run / "checkpoint-4" / "model.safetensors").read_bytes()
    results = json.loads((run / "train_results.json").read_text())
    assert results["global_step"] == 4 and "heldout_accuracy_after" in results
    assert results["run_id"] == json.loads((run / "run.json").read_text())["run_id"]
    assert (run / "README.md").is_file() and any((run / "plots").glob("*.png"))
    assert steps(run) == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_torn_checkpoint_and_metrics_line_fall_back_to_the_previous_checkpoint(run):
    kill_after_train_results(run)  # killed while writing checkpoint-4 ...
    state = run / "checkpoint-4" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:100])  # ... mid trainer_state.json
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')  # and a metrics line cut by a kill
    proc = train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [line for line in proc.stderr.splitlines() if "skipping" in line]
    assert len(skipped) == 1 and "checkpoint-4: trainer_state.json is torn (not valid JSON)" in skipped[0]
    assert f"resuming from {run / 'checkpoint-2'}" in proc.stderr
    assert "dropped 1 torn line(s)" in proc.stderr
    assert steps(run) == [1, 2, 3, 4]  # steps 3 and 4 trained again, each logged once
    assert json.loads(state.read_text())["global_step"] == 4
    assert json.loads((run / "train_results.json").read_text())["global_step"] == 4


@pytest.mark.slow
def test_no_resume_moves_the_old_run_aside_and_a_kill_resumes_only_the_new_run(run):
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    total = 12  # rollouts
    args = [f"trainer.max_steps={total}", "trainer.save_steps=4"]
    cmd = [sys.executable, "-m", "archer.cli", "train", str(SMOKE), f"trainer.output_dir={run}", *args]
    proc = subprocess.Popen(
        [*cmd, "--no-resume"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    aside = run.with_name("run.old-1")
    deadline = time.time() + 600
    while not (aside.exists() and (run / "checkpoint-4" / "trainer_state.json").exists()):
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(steps(run))
    assert 4 <= killed_at < total, "the kill must land mid-run"
    new_id = json.loads((run / "run.json").read_text())["run_id"]
    assert new_id != old_id and json.loads((aside / "run.json").read_text())["run_id"] == old_id
    assert json.loads((aside / "train_results.json").read_text())["global_step"] == 4  # the old run, untouched

    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    newest = run_folder.newest_checkpoint(run, new_id)
    assert "resuming from" in resumed.stderr and "skipping" not in resumed.stderr
    assert steps(run) == list(range(1, total + 1))  # no step lost or repeated, none from the old run
    state = json.loads((newest.path / "trainer_state.json").read_text())
    assert newest.step == total and state["stateful_callbacks"]["RunIdCallback"]["args"]["run_id"] == new_id
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, total + 1))
    assert json.loads((run / "train_results.json").read_text())["global_step"] == total


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["another run's checkpoints", "no run.json"])
def test_a_folder_of_another_run_is_refused_before_any_work(run, capsys, damage):
    from archer.cli import main

    if damage == "no run.json":
        (run / "run.json").unlink()
        expected = "holds files but no run.json"
    else:
        (run / "run.json").write_text(json.dumps({"run_id": "someone-else"}))
        expected = "checkpoint-4 belongs to another run"
    before = snapshot(run)
    assert main(["train", str(SMOKE), f"trainer.output_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err and "--no-resume" in err
    assert snapshot(run) == before


# --------------------------------------------------------------------------------------------------------------
# Units: checkpoint checks, metrics file, atomic writes


def fake_checkpoint(out: Path, step: int, run_id: str = "r1", max_steps: int = 4) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    state = {
        "global_step": step,
        "max_steps": max_steps,
        "stateful_callbacks": {"RunIdCallback": {"args": {"run_id": run_id}, "attributes": {}}},
    }
    (path / "trainer_state.json").write_text(json.dumps(state))
    return path


def test_resume_point_skips_incomplete_checkpoints_and_detects_completion(tmp_path, caplog):
    out = tmp_path / "run"
    assert run_folder.resume_point(out, 4).run_id is None  # a new folder
    run_id = run_folder.start_run(out)
    for step in (2, 4, 6):
        fake_checkpoint(out, step, run_id)
    model = out / "checkpoint-6" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-3])  # weights cut short
    (out / "checkpoint-4" / "trainer_state.json").unlink()  # killed before the state was written
    point = run_folder.resume_point(out, 4)
    assert point.checkpoint.step == 2 and not point.complete
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "model.safetensors: truncated (74 bytes, the header needs 77)",
        "no trainer_state.json (the save was interrupted)",
    ]
    assert run_folder.resume_point(out, 2).complete
    (out / "train_results.json").write_text(json.dumps({"run_id": run_id, "global_step": 4}))
    assert run_folder.resume_point(out, 4).complete  # the end-of-run summary counts as well
    (out / "train_results.json").write_text(json.dumps({"run_id": "other", "global_step": 4}))
    assert not run_folder.resume_point(out, 4).complete


def test_another_runs_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    run_folder.start_run(out)
    fake_checkpoint(out, 2, run_id="old-run")
    with pytest.raises(UserError, match="checkpoint-2 belongs to another run"):
        run_folder.resume_point(out, 4)


def test_move_aside_keeps_every_old_run(tmp_path):
    out = tmp_path / "run"
    assert run_folder.move_aside(out) is None
    out.mkdir()
    assert run_folder.move_aside(out) is None  # empty: nothing to keep
    for n in (1, 2):
        out.mkdir(exist_ok=True)
        (out / "run.json").write_text(str(n))
        assert run_folder.move_aside(out) == tmp_path / f"run.old-{n}"
        assert (tmp_path / f"run.old-{n}" / "run.json").read_text() == str(n)
    assert not out.exists()


def test_truncated_torch_files_are_detected(tmp_path):
    import torch

    path = tmp_path / "optimizer.pt"
    torch.save({"x": torch.zeros(100)}, path)
    assert run_folder.file_problem(path) is None
    path.write_bytes(path.read_bytes()[:-50])
    assert run_folder.file_problem(path) == "not a complete torch file (truncated?)"


class _State:
    def __init__(self, global_step):
        self.global_step, self.is_world_process_zero = global_step, True


def test_metrics_file_drops_a_torn_line_and_steps_past_the_checkpoint(tmp_path):
    callback = MetricsFileCallback(tmp_path)
    for step in (1, 2, 3):
        callback.on_log(None, _State(step), None, logs={"loss": 0.5, "note": "text is not a metric"})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    assert read_jsonl(tmp_path / "metrics.jsonl") == ([{"step": s, "loss": 0.5} for s in (1, 2, 3)], 1)
    callback.on_train_begin(None, _State(2), None)  # resumed from checkpoint-2
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(
        json.dumps({"step": s, "loss": 0.5}) + "\n" for s in (1, 2)
    )


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "train_results.json"
    atomic_write_text(path, "old\n")

    def crash(*args):
        raise KeyboardInterrupt  # a signal between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["train_results.json"]
    append_line(tmp_path / "m.jsonl", '{"step": 1}')
    append_line(tmp_path / "m.jsonl", '{"step": 2}\n')
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
