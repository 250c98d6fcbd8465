"""Preemption and time limits: a signal makes a run checkpoint where it is and exit for a requeue; a full disk while
saving leaves the previous checkpoint the newest.

- :class:`StopSignals` catches SIGTERM (a scheduler's preemption or time limit, ``kill``) and SIGUSR1 (what Slurm's
  ``--signal=B:USR1@<seconds>`` sends, forwarded by slurm/train.slurm) for the length of a run. A handler only
  records the first signal and says what will happen; a later one is logged and changes nothing, so no signal
  ever interrupts a save.
- :class:`StopOnSignalCallback` acts at the step boundary, which is the end of a rollout (one Trainer step is one
  rollout): every process all-reduces its flag there, so a signal that reached one process only stops all of them
  after the same rollout. The Trainer then saves ``checkpoint-<step>`` (model, optimizer, scheduler, RNG states,
  trainer state with the run id; ``metrics.jsonl`` is fsync'd line by line) and leaves its loop; the pipeline
  waits for every process and raises :class:`TrainingStopped`: ``archer train`` exits with :data:`EXIT_STOPPED`.
  A rollout is never cut: its optimizer steps would be half applied with no way to save the rest of its batch.
- :func:`guard_saves` wraps the Trainer's checkpoint save: it logs each save's size and time (what a grace period
  must cover), and turns a full disk into :class:`DiskFull` (exit :data:`EXIT_DISK_FULL`) after removing the
  partial folder, so that the previous complete checkpoint stays the newest.

A torn save is avoided by the checkpoint's own order (``trainer_state.json`` is written last, after every process's
RNG file: :func:`guard_saves` puts a barrier between them; archer.training.run_folder skips a folder without it or with
a file shorter than its header says): a SIGKILL in the middle of the save (the end of the grace period) leaves the
previous checkpoint the newest.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from archer.errors import UserError
from archer.planning.checkpoint import format_size

logger = logging.getLogger(__name__)

EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): stopped by a signal after a checkpoint; run the same command again
EXIT_DISK_FULL = 74  # EX_IOERR: the disk filled while writing; the previous checkpoint is the newest
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# What a signal leads to, by phase of the run (the handler's log line)
BEFORE_TRAINING = "the run stops before its first rollout (nothing new to save) and exits 75"
TRAINING = "the rollout in progress finishes, then a checkpoint is saved and the run exits 75"
AFTER_TRAINING = "training is over: the end-of-run files are finished (exit 0)"


class TrainingStopped(Exception):
    """The run stopped on a signal after saving a checkpoint (or before training anything)."""

    exit_code = EXIT_STOPPED

    def __init__(self, message: str, main_process: bool = True) -> None:
        super().__init__(message)
        self.main_process = main_process


class DiskFull(UserError):
    """The disk filled while the run was writing: one line naming the folder and the space needed."""

    exit_code = EXIT_DISK_FULL


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGUSR1 are recorded instead of ending the process.

    ``phase`` (one of the phrases above) is what the log line promises; ``main``: whether this process logs (the
    others log at debug level, so that a signal sent to every process gives one line)."""

    def __init__(self, main: bool = True) -> None:
        self.main = main
        self.received: str | None = None
        self.phase = BEFORE_TRAINING
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def install(self) -> None:
        """(Re)install the handlers: also called when training starts, in case a library replaced them meanwhile."""
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not the main thread: signals keep their handlers")
            return
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            if previous != self._handle:
                if sig in self._previous:
                    logger.debug("signal %s: replaced handler %r reinstalled", sig, previous)
                else:
                    self._previous[sig] = previous

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        log = logger.info if self.main else logger.debug
        if self.received is None:
            self.received = name
            log("%s received: %s", name, self.phase)
        else:
            log("%s received again: already stopping (%s); a save in progress is not interrupted", name, self.phase)


def count_over_processes(flags: list[bool], device: Any) -> list[int]:
    """For each flag, how many processes have it set: one all-reduce when the run spans several processes (every
    process must call it at the same point), none otherwise."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [int(flag) for flag in flags]
    counts = torch.tensor([int(flag) for flag in flags], dtype=torch.int64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return [int(c) for c in counts.tolist()]


def agree(received: str | None, device: Any) -> tuple[int, str | None]:
    """(how many processes received a signal, its name: SIGTERM if any process got that one) from each process's
    ``received``, the same on every process."""
    names = [s.name for s in SIGNALS]
    counts = count_over_processes([received == name for name in names], device)
    got = [name for name, count in zip(names, counts, strict=True) if count]
    return sum(counts), got[0] if got else None


class StopOnSignalCallback(TrainerCallback):
    """At each rollout's end (and after an in-training evaluation), stop every process together if any of them got
    a signal: save a checkpoint and leave the training loop. ``stopped``: (signal name, step) once it acted."""

    def __init__(self, signals: StopSignals) -> None:
        self.signals = signals
        self.stopped: tuple[str, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.signals.install()
        count, name = agree(self.signals.received, args.device)
        if count:
            raise TrainingStopped(
                f"stopped by {name} before the first rollout of this launch (step {state.global_step}): nothing "
                "new to save; run the same command to resume",
                main_process=state.is_world_process_zero,
            )
        self.signals.phase = TRAINING

    def on_step_end(self, args, state, control, **kwargs):
        return self._check(args, state, control)

    def on_evaluate(self, args, state, control, **kwargs):
        return self._check(args, state, control)  # a signal during an evaluation: save right after it

    def _check(self, args, state, control):
        if self.stopped is not None:
            return control
        count, name = agree(self.signals.received, args.device)
        if not count:
            return control
        self.stopped = (name or "a signal", state.global_step)
        control.should_save = True
        control.should_training_stop = True
        if control.should_evaluate:
            control.should_evaluate = False
            if state.is_world_process_zero:
                logger.info("stopping: the evaluation due at step %d is skipped", state.global_step)
        if state.is_world_process_zero:
            world = args.world_size
            who = f" ({name} reached {count} of {world} processes)" if world > 1 else ""
            logger.info(
                "stopping after rollout %d of %d%s: saving checkpoint-%d",
                state.global_step,
                state.max_steps,
                who,
                state.global_step,
            )
        return control


# --------------------------------------------------------------------------------------------------------------
# Saves: their cost, and a full disk

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull", "quotaexceeded")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it came from) says the disk or the quota is full. torch and safetensors
    report a failed write as RuntimeError / SafetensorError: their text is read too."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def estimated_checkpoint_bytes(trainer: Any) -> float:
    """One checkpoint of this trainer's model, as the dry run estimates it (archer.planning.checkpoint)."""
    from archer.planning.checkpoint import checkpoint_size
    from archer.planning.precision import deepspeed_mixed_precision

    params = list(trainer.model.parameters())
    count = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    mixed = bool(trainer.is_deepspeed_enabled and deepspeed_mixed_precision(trainer.args))
    width = params[0].element_size() if params else 4
    return checkpoint_size(count, width, deepspeed_mixed=mixed).total


def space_needed(out: Path, run_id: str | None, trainer: Any = None) -> float:
    """Bytes one checkpoint takes: the newest complete one's size, else the estimate."""
    from archer.training import run_folder

    newest = run_folder.newest_checkpoint(out, run_id, log=False) if run_id else None
    if newest is not None:
        return float(folder_bytes(newest.path))
    return estimated_checkpoint_bytes(trainer) if trainer is not None else 0.0


def disk_full_message(
    out: Path, writing: Path | str, run_id: str | None, trainer: Any = None, removed: str = ""
) -> str:
    """One line: what was being written, the space one checkpoint needs and what is free, what stays the newest."""
    from archer.training import run_folder

    newest = run_folder.newest_checkpoint(out, run_id, log=False) if run_id else None
    needed = space_needed(out, run_id, trainer)
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        free = 0
    keeps = f"{newest.path.name} stays the newest" if newest else "no checkpoint yet"
    return (
        f"disk full writing {writing}: a checkpoint needs ~{format_size(needed)}, {format_size(free)} free there"
        f"{removed}; {keeps}: free space and run the same command to resume"
    )


def guard_saves(trainer: Any, out: Path, run_id: str | None) -> None:
    """Wrap ``trainer._save_checkpoint`` (one instance): log each save's size and time; on a full disk, remove the
    partial folder and raise :class:`DiskFull` (the other processes exit with the same status). Also make every
    process's RNG file precede ``trainer_state.json``.

    Without DeepSpeed no collective runs inside a save, so every process meets in one all-reduce after it and all
    learn whether any of them failed (a process other than the main one writes its RNG state). Under DeepSpeed the
    save is itself collective: the process that failed raises and the launcher stops the others.
    """
    original = trainer._save_checkpoint
    save_rng_state = trainer._save_rng_state

    def save_rng_state_then_wait(output_dir):
        # Every process writes its RNG state, then the main one writes trainer_state.json, the file that makes the
        # checkpoint count: wait for all the RNG files first, so a kill between the two cannot leave a checkpoint
        # that looks complete without one of them. A failed write still reaches the barrier (no process is left
        # waiting in it), then raises.
        failure = None
        try:
            save_rng_state(output_dir)
        except Exception as err:  # noqa: BLE001 - re-raised after the barrier
            failure = err
        trainer.accelerator.wait_for_everyone()
        if failure is not None:
            raise failure

    trainer._save_rng_state = save_rng_state_then_wait

    def save_checkpoint(model, trial):
        folder = Path(trainer._get_output_dir(trial)) / f"checkpoint-{trainer.state.global_step}"
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            original(model, trial)
        except Exception as err:  # noqa: BLE001 - anything not a full disk is re-raised below
            if not is_disk_full(err):
                raise
            failure = err
        failed = 1 if failure is not None else 0
        if not trainer.is_deepspeed_enabled:
            (failed,) = count_over_processes([failure is not None], trainer.args.device)
        main = trainer.is_world_process_zero()
        if failed:
            removed = ""
            if main and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed = f"; the partial {folder.name} is removed"
            if main or (failure is not None and trainer.is_deepspeed_enabled):
                raise DiskFull(disk_full_message(out, folder, run_id, trainer, removed)) from failure
            raise SystemExit(EXIT_DISK_FULL)  # the main process says why
        if main:
            elapsed = time.perf_counter() - started
            size = folder_bytes(folder) if folder.is_dir() else 0
            logger.info("saved %s: %s in %.1f s", folder.name, format_size(size), elapsed)

    trainer._save_checkpoint = save_checkpoint


@contextlib.contextmanager
def reporting_full_disk(out: Path, run_id: str | None, trainer: Any = None) -> Iterator[None]:
    """A full disk anywhere in the block (a save, a metrics line, the final model) becomes one :class:`DiskFull`
    line, on a line of its own (the progress bar is closed first)."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, DiskFull) and not is_disk_full(err):
            raise
        for callback in trainer.callback_handler.callbacks if trainer is not None else ():
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
                callback.training_bar = None
        if isinstance(err, DiskFull):
            raise
        writing = getattr(err, "filename", None) or out
        raise DiskFull(disk_full_message(out, writing, run_id, trainer)) from err
