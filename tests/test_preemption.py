"""archer.training.preemption: a signal makes a run save a checkpoint after the rollout in progress and exit 75, on one
process and on two (DDP: the signal sent to the launcher's process group, or to one rank only), through
slurm/train.slurm's forwarding and requeue; a second signal or a SIGKILL during that save never tears a checkpoint;
a full disk while saving leaves the previous checkpoint the newest. Real processes throughout (tests/faults.py
injects the slow save, the slow build and the full disk)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import ROOT

from archer.training import run_folder

SMOKE = ROOT / "recipes" / "tiny" / "smoke.yaml"  # tiny model; here 40 rollouts of ~0.3 s
FAULTS = ROOT / "tests" / "faults.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
TOTAL = 40


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """The smoke recipe's warm start (sft/), made once; every run folder below starts from a copy of it."""
    from archer.recipe import load_recipe
    from archer.training.pipeline import warm_start

    sft = tmp_path_factory.mktemp("warm") / "sft"
    warm_start(load_recipe(SMOKE, []), sft)
    return sft


def new_run(tmp_path: Path, warm: Path) -> Path:
    run = tmp_path / "run"
    run_folder.start_run(run)
    shutil.copytree(warm, run / "sft")
    return run


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}


class Launch:
    """``archer train`` on the smoke recipe in its own session, output in files."""

    def __init__(self, run: Path, *args: str, fault: str = "none", processes: int = 1) -> None:
        self.run = run
        train = [str(SMOKE), f"trainer.output_dir={run}", f"trainer.max_steps={TOTAL}", *args]
        if processes == 1:
            cmd = [sys.executable, str(FAULTS), fault, "train", *train]
        else:
            config = ROOT / "recipes" / "accelerate" / "cpu_ddp.yaml"
            port = str(_free_port())
            cmd = [str(ACCELERATE), "launch", "--config_file", str(config), "--main_process_port", port, str(FAULTS)]
            cmd += [fault, "train", *train]
        n = len(list(run.parent.glob("launch-*.out")))
        self.out, self.err = run.parent / f"launch-{n}.out", run.parent / f"launch-{n}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=out, stderr=err, start_new_session=True)

    def wait_until(self, condition, what: str, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"ended before {what}: {self.err.read_text()[-3000:]}"
            assert time.time() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.05)

    def finish(self, timeout: float = 600) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        return code, self.out.read_text(), self.err.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def run_id(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["run_id"]


def resume(run: Path, *args: str, processes: int = 1) -> tuple[int, str, str]:
    return Launch(run, *args, processes=processes).finish()


def assert_stopped_with_a_checkpoint(run: Path, out: str, signal_name: str) -> int:
    """The run stopped after rollout n < TOTAL with checkpoint-n complete (its log history, the run id) and no
    end-of-run product written; returns n."""
    n = max(steps(run))
    assert 1 <= n < TOTAL and steps(run) == list(range(1, n + 1))
    assert f"stopped by {signal_name} after rollout {n} of {TOTAL}: {run / f'checkpoint-{n}'} saved" in out
    newest = run_folder.newest_checkpoint(run, run_id(run))
    assert newest is not None and newest.step == n
    state = json.loads((newest.path / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, n + 1))
    assert not (run / "model.safetensors").exists() and not (run / "train_results.json").exists()
    return n


def assert_resumed_exactly(run: Path, code: int, err: str, checkpoint: int) -> None:
    assert code == 0, err[-3000:]
    assert f"resuming from {run / f'checkpoint-{checkpoint}'}" in err
    assert steps(run) == list(range(1, TOTAL + 1))  # no rollout lost or repeated
    assert json.loads((run / "train_results.json").read_text())["global_step"] == TOTAL


# --------------------------------------------------------------------------------------------------------------
# One process


@pytest.mark.slow
def test_sigterm_saves_the_rollout_in_progress_and_the_restart_resumes_it(tmp_path, warm):
    run = new_run(tmp_path, warm)
    launch = Launch(run, "trainer.save_steps=100")  # no periodic checkpoint: only the signal's
    launch.wait_until(lambda: len(steps(run)) >= 2, "two rollouts")
    sent = time.perf_counter()
    launch.proc.send_signal(signal.SIGTERM)
    code, out, err = launch.finish()
    took = time.perf_counter() - sent
    assert code == 75, err[-3000:]
    n = assert_stopped_with_a_checkpoint(run, out, "SIGTERM")
    assert "SIGTERM received: the rollout in progress finishes, then a checkpoint is saved" in err
    assert f"stopping after rollout {n} of {TOTAL}: saving checkpoint-{n}" in err and f"saved checkpoint-{n}:" in err
    assert took < 60, f"{took:.1f} s from the signal to the exit"
    code, _, err = resume(run, "trainer.save_steps=100")
    assert_resumed_exactly(run, code, err, checkpoint=n)


@pytest.mark.slow
def test_a_second_signal_during_the_save_does_not_interrupt_it(tmp_path, warm):
    run = new_run(tmp_path, warm)
    marker = tmp_path / "saving"
    launch = Launch(run, "trainer.save_steps=100", fault=f"slow-save:4:{marker}")
    launch.wait_until(lambda: len(steps(run)) >= 2, "two rollouts")
    launch.proc.send_signal(signal.SIGUSR1)
    launch.wait_until(lambda: list(tmp_path.glob("saving-checkpoint-*")), "the save")
    launch.proc.send_signal(signal.SIGTERM)  # mid-save, before trainer_state.json
    code, out, err = launch.finish()
    assert code == 75, err[-3000:]
    assert "SIGTERM received again: already stopping" in err
    assert_stopped_with_a_checkpoint(run, out, "SIGUSR1")


@pytest.mark.slow
def test_a_sigkill_during_the_save_leaves_the_previous_checkpoint_the_newest(tmp_path, warm):
    run = new_run(tmp_path, warm)
    marker = tmp_path / "saving"
    launch = Launch(run, "trainer.save_steps=2", fault=f"slow-save:3:{marker}")
    launch.wait_until(lambda: (run / "checkpoint-2" / "trainer_state.json").exists(), "checkpoint-2")
    before = set(tmp_path.glob("saving-checkpoint-*"))
    launch.proc.send_signal(signal.SIGTERM)
    launch.wait_until(lambda: set(tmp_path.glob("saving-checkpoint-*")) - before, "the next save")
    (started,) = set(tmp_path.glob("saving-checkpoint-*")) - before
    torn = int(started.name.removeprefix("saving-checkpoint-").split(".")[0])
    previous = run_folder.newest_checkpoint(run, run_id(run)).step
    os.killpg(launch.proc.pid, signal.SIGKILL)  # the end of the grace period, mid-save
    launch.proc.wait()
    assert not (run / f"checkpoint-{torn}" / "trainer_state.json").exists() and previous < torn
    code, _, err = resume(run, "trainer.save_steps=2")
    assert f"skipping {run / f'checkpoint-{torn}'}: no trainer_state.json (the save was interrupted)" in err
    assert_resumed_exactly(run, code, err, checkpoint=previous)


@pytest.mark.slow
def test_a_signal_while_the_trainer_is_built_stops_before_the_first_rollout(tmp_path, warm):
    run = new_run(tmp_path, warm)
    marker = tmp_path / "building"
    launch = Launch(run, fault=f"slow-build:3:{marker}")
    launch.wait_until(lambda: Path(f"{marker}.0").exists(), "the build")
    launch.proc.send_signal(signal.SIGTERM)
    code, out, err = launch.finish()
    assert code == 75, err[-3000:]
    assert "SIGTERM received: the run stops before its first rollout (nothing new to save)" in err
    assert "stopped by SIGTERM before the first rollout of this launch (step 0): nothing new to save" in out
    assert steps(run) == [] and not list(run.glob("checkpoint-*"))


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_a_restart_resumes(tmp_path, warm):
    run = new_run(tmp_path, warm)
    code, out, err = Launch(run, "trainer.save_steps=2", fault="enospc:4").finish()
    assert code == 74, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert re.match(rf"error: disk full writing {run / 'checkpoint-4'}: a checkpoint needs ~1\.\d MiB, ", errors[0])
    assert errors[0].endswith(
        " free there; the partial checkpoint-4 is removed; checkpoint-2 stays the newest: free space and run the "
        "same command to resume"
    )
    assert not (run / "checkpoint-4").exists() and run_folder.newest_checkpoint(run, run_id(run)).step == 2
    assert steps(run) == [1, 2, 3, 4]  # logged before the save: dropped on restart, then logged again
    code, _, err = resume(run, "trainer.save_steps=2")
    assert_resumed_exactly(run, code, err, checkpoint=2)


# --------------------------------------------------------------------------------------------------------------
# Two processes (DDP on CPU, gloo)


def _ranks(launcher: int) -> dict[int, int]:
    """RANK -> pid of the launcher's worker processes."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = next((int(e[5:]) for e in environ if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = int(stat.parent.name)
    return ranks


@pytest.mark.slow
def test_ddp_ranks_agree_when_the_signal_reaches_one_rank_only(tmp_path, warm):
    run = new_run(tmp_path, warm)
    launch = Launch(run, "trainer.save_steps=100", processes=2)
    launch.wait_until(lambda: len(steps(run)) >= 2, "two rollouts")
    os.kill(_ranks(launch.proc.pid)[1], signal.SIGUSR1)  # not rank 0, which writes the checkpoint
    code, out, err = launch.finish()
    assert code != 0  # the launcher reports its children's status 75 as a failure
    assert "exitcode  : 75" in err or "exitcode: 75" in err, err[-3000:]
    n = assert_stopped_with_a_checkpoint(run, out, "SIGUSR1")
    assert f"stopping after rollout {n} of {TOTAL} (SIGUSR1 reached 1 of 2 processes)" in err
    assert {p.name for p in (run / f"checkpoint-{n}").glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }


@pytest.mark.slow
def test_slurm_script_forwards_the_signal_to_every_rank_and_requeues(tmp_path, warm):
    """slurm/train.slurm with the real accelerate launch (2 CPU processes) under a fake srun that forwards
    signals to its task as srun does, and a fake scontrol; USR1 to the batch script only (--signal=B:USR1)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\nif [[ $1 == show ]]; then echo localhost; else echo "scontrol $*" >> "$CALLS"; fi\n'
    )
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"  # drop srun's options, run the task, forward the signals srun forwards
        'while [[ $1 == --* ]]; do shift; done\nSLURM_PROCID=0 "$@" &\nchild=$!\n'
        'for s in USR1 TERM INT; do trap "kill -s $s $child" $s; done\n'
        "while :; do wait $child; kill -0 $child 2>/dev/null || break; done\nwait $child\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    run = new_run(tmp_path, warm)
    script_env = {
        **env(),
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "localhost",
        "GPUS_PER_NODE": "2",
        "ACCELERATE_CONFIG": str(ROOT / "recipes" / "accelerate" / "cpu_ddp.yaml"),
        "VENV": str(tmp_path / "no-venv"),
    }

    def sbatch() -> subprocess.Popen:
        script_env["MASTER_PORT"] = str(_free_port())
        cmd = ["bash", str(ROOT / "slurm" / "train.slurm"), str(SMOKE), f"trainer.output_dir={run}"]
        cmd += [f"trainer.max_steps={TOTAL}", "trainer.save_steps=100"]
        with open(tmp_path / "job.log", "a") as log:  # --open-mode=append: one log across requeues
            return subprocess.Popen(cmd, cwd=tmp_path, env=script_env, stdout=log, stderr=subprocess.STDOUT)

    job = sbatch()
    deadline = time.time() + 600
    while len(steps(run)) < 2:
        assert job.poll() is None and time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # the batch shell only
    assert job.wait(600) != 0
    log = (tmp_path / "job.log").read_text()
    assert "slurm: SIGUSR1 at " in log and "requeueing job 42 to resume" in log
    assert (tmp_path / "calls").read_text().splitlines() == ["scontrol requeue 42"]
    n = assert_stopped_with_a_checkpoint(run, log, "SIGUSR1")
    assert f"stopping after rollout {n} of {TOTAL} (SIGUSR1 reached 2 of 2 processes)" in log

    job = sbatch()  # the requeued job
    assert job.wait(900) == 0, (tmp_path / "job.log").read_text()[-3000:]
    log = (tmp_path / "job.log").read_text()
    assert_resumed_exactly(run, 0, log, checkpoint=n)
    assert (tmp_path / "calls").read_text().splitlines() == ["scontrol requeue 42"]  # not requeued again


# --------------------------------------------------------------------------------------------------------------
# Units


def test_signals_are_recorded_once_and_the_handlers_restored(caplog):
    from archer.training.preemption import StopSignals

    caplog.set_level("INFO", logger="archer.training.preemption")
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert signals.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["SIGUSR1 received", "SIGTERM received again"]


def test_the_callback_saves_and_stops_at_the_step_end_and_skips_a_due_evaluation():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from archer.training.preemption import StopOnSignalCallback, StopSignals

    signals = StopSignals()
    callback = StopOnSignalCallback(signals)
    args, state = TrainingArguments(output_dir="unused", report_to=[]), TrainerState(global_step=3, max_steps=9)
    control = callback.on_step_end(args, state, TrainerControl())
    assert not control.should_save and not control.should_training_stop and callback.stopped is None
    signals.received = "SIGTERM"
    control = callback.on_step_end(args, state, TrainerControl(should_evaluate=True))
    assert control.should_save and control.should_training_stop and not control.should_evaluate
    assert callback.stopped == ("SIGTERM", 3)


def test_a_full_disk_is_recognised_in_every_form_the_writers_raise():
    from archer.training.preemption import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from err
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def test_train_help_lists_every_exit_status(capsys):
    from archer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for line in ("  0   trained", "  2   bad input", "  74  the disk filled", "  75  stopped by SIGTERM or SIGUSR1"):
        assert line in text
