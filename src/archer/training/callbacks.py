"""Trainer callbacks: metrics.jsonl in the run folder, the run id in checkpoints, a concise line per step (a step is
a rollout)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from archer.files import append_line, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

# (label, metrics key, format) of the concise step line
_LINE = (
    ("reward", "reward", "{:.3f}"),
    ("len", "completions/mean_length", "{:.1f}"),
    ("H", "entropy/mean", "{:.3f}"),
    ("reason", "reasoning/frac", "{:.2f}"),
    ("clip r/k", ("reasoning/clip_frac", "knowledge/clip_frac"), "{:.3f}"),
    ("kl", "knowledge/kl", "{:.2e}"),
    ("drop", "dropped_group_frac", "{:.2f}"),
    ("opt steps", "optimizer_steps", "{:.0f}"),
    ("skipped", "skipped_steps", "{:.0f}"),
    ("loss", "loss", "{:.4f}"),
)
_HIDDEN_WHEN_ZERO = {"skipped_steps"}  # shown only when a step was skipped


def clip_frac(logs: dict, cls: str) -> float | None:
    low, high = logs.get(f"{cls}/clip_low_frac"), logs.get(f"{cls}/clip_high_frac")
    return None if low is None or high is None else low + high


def format_step_line(step: int, max_steps: int, logs: dict) -> str:
    logs = {
        **logs,
        "reasoning/clip_frac": clip_frac(logs, "reasoning"),
        "knowledge/clip_frac": clip_frac(logs, "knowledge"),
    }
    parts = [f"step {step}/{max_steps}"]
    for label, key, fmt in _LINE:
        keys = key if isinstance(key, tuple) else (key,)
        values = [logs.get(k) for k in keys]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            continue
        if key in _HIDDEN_WHEN_ZERO and not any(values):
            continue
        parts.append(f"{label} " + "/".join(fmt.format(v) for v in values))
    return " | ".join(parts)


class MetricsFileCallback(TrainerCallback):
    """Appends every training log to ``<output_dir>/metrics.jsonl``, one fsync'd line per log.

    On (re)start, rewrites the file (atomically) without the lines logged after the checkpoint being resumed and
    without a line torn by a kill, so that every logged step (rollout) appears exactly once."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / METRICS_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        records, torn = read_jsonl(self.path)
        kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= state.global_step]
        if torn:
            logger.warning("%s: dropped %d torn line(s) (a write cut by a kill)", self.path, torn)
        if torn or len(kept) != len(records):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, json.dumps(record))


class RunIdCallback(TrainerCallback, ExportableState):
    """Stores the run's id in every checkpoint's ``trainer_state.json`` (the Trainer saves the ``state()`` of such
    callbacks there), so a restart resumes only from checkpoints of the run that owns the folder (archer.training.run_folder).
    """

    def __init__(self, run_id: str | None) -> None:  # as run_folder.read_run_id returns it
        self.run_id = run_id

    def state(self) -> dict:
        return {"args": {"run_id": self.run_id}, "attributes": {}}


class RolloutCounter(TrainerCallback, ExportableState):
    """How many rollouts made an update, and how many in a row made none; saved in every checkpoint's
    ``trainer_state.json`` (restored by ``ArcherTrainer`` on resume). The learning-rate schedule reads ``updated``:
    as in the authors' loop, a rollout whose groups were all dropped does not move the schedule."""

    def __init__(self) -> None:
        self.updated = 0  # rollouts with at least one optimizer step (made or skipped as non-finite)
        self.without_update = 0  # consecutive rollouts, up to now, whose groups were all dropped

    def state(self) -> dict:
        return {"args": {}, "attributes": {"updated": self.updated, "without_update": self.without_update}}


class ConciseProgressCallback(ProgressCallback):
    """The usual tqdm bar, with a short readable line per logged step instead of the raw dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        line = format_step_line(state.global_step, state.max_steps, logs)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            logger.info(line)
