"""Trainer callbacks: metrics.jsonl in the run folder and a concise one-line-per-step log (a step is a rollout)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

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
    ("loss", "loss", "{:.4f}"),
)


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
        parts.append(f"{label} " + "/".join(fmt.format(v) for v in values))
    return " | ".join(parts)


class MetricsFileCallback(TrainerCallback):
    """Appends every training log to ``<output_dir>/metrics.jsonl``. On resume, drops lines logged after the
    checkpoint being resumed, so that every logged step (rollout) appears exactly once."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / METRICS_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line and json.loads(line)["step"] <= state.global_step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


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
