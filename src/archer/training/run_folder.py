"""A run folder across launches: which run it holds, where a restart resumes, what a kill left behind.

A run folder belongs to one run, named by a random id in ``run.json`` (written before anything else). Every
checkpoint carries that id in its ``trainer_state.json`` (``archer.training.callbacks.RunIdCallback``), and a restart resumes
only from a checkpoint whose id matches the folder's: a folder holding another run's checkpoints, or files without a
``run.json``, is refused. ``--no-resume`` moves the old folder aside (``<folder>.old-<n>``) rather than train next to
its checkpoints; nothing is deleted.

A checkpoint counts only when it is complete and readable: ``trainer_state.json`` (the Trainer writes it last)
parses and names the folder's step, and every weights / optimizer file is as long as its header says. A torn one is
skipped with one line and the previous checkpoint is used. A run whose newest checkpoint (or ``train_results.json``)
has reached ``max_steps`` is complete: a restart trains nothing.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
import struct
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import UserError
from archer.files import atomic_write_json, read_json_object

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
TRAINER_STATE = "trainer_state.json"
TRAIN_RESULTS = "train_results.json"
RUN_ID_CALLBACK = "RunIdCallback"  # archer.training.callbacks.RunIdCallback: its state in trainer_state.json
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# Training state in a checkpoint folder: everything else there is the model (weights, config, tokenizer).
TRAINING_STATE_FILES = re.compile(
    r"(trainer_state\.json|training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|latest"
    r"|zero_to_fp32\.py|global_step\d+)"
)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    max_steps: int  # as the Trainer computed it (max_steps, or the epochs' length)


@dataclass(frozen=True)
class ResumePoint:
    """Where a launch starts: ``run_id`` None for a new run, else the newest usable checkpoint of that run."""

    run_id: str | None
    checkpoint: Checkpoint | None
    complete: bool
    results: dict[str, Any] | None  # train_results.json of this run, when present and readable

    @property
    def step(self) -> int:
        if self.checkpoint is not None:
            return self.checkpoint.step
        return int((self.results or {}).get("global_step", 0))


def move_aside(out: Path) -> Path | None:
    """Rename a non-empty ``out`` to ``<out>.old-<n>`` (the first free n); None when there was nothing to move."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    n = 1
    while (aside := out.with_name(f"{out.name}.old-{n}")).exists():
        n += 1
    out.rename(aside)
    return aside


def read_run_id(out: Path) -> str | None:
    """The folder's run id; None when it has no run.json. An unreadable run.json is a UserError."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    value = read_json_object(path)
    if value is None or not isinstance(value.get("run_id"), str):
        raise UserError(f"{path}: not a run file written by archer; move the folder aside or remove {RUN_FILE}")
    return value["run_id"]


def start_run(out: Path) -> str:
    """Create ``out`` and its run.json with a fresh run id (main process, before anything else is written)."""
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    atomic_write_json(out / RUN_FILE, {"run_id": run_id})
    return run_id


def resume_point(out: Path, max_steps: int, log: bool = True) -> ResumePoint:
    """Decide, reading only, where a launch into ``out`` starts. Deterministic, so every process agrees.

    ``max_steps`` is the recipe's (-1: the epochs decide, as recorded in the checkpoint). ``log``: say which
    checkpoints are skipped (the main process only, so the line is printed once).
    """
    run_id = read_run_id(out)
    if run_id is None:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(
                f"{out} holds files but no {RUN_FILE} (another tool's folder, or a run of an older archer): pass "
                f"--no-resume to move it aside to {out.name}.old-<n>, or choose another trainer.output_dir"
            )
        return ResumePoint(None, None, False, None)

    checkpoint = newest_checkpoint(out, run_id, log)
    results = read_json_object(out / TRAIN_RESULTS)
    if results is not None and results.get("run_id") != run_id:
        results = None
    target = max_steps if max_steps > 0 else (checkpoint.max_steps if checkpoint else None)
    complete = target is not None and (
        (checkpoint is not None and checkpoint.step >= target)
        or (results is not None and int(results.get("global_step", 0)) >= target)
    )
    return ResumePoint(run_id, checkpoint, complete, results)


def newest_checkpoint(out: Path, run_id: str, log: bool = True) -> Checkpoint | None:
    """The newest complete checkpoint of run ``run_id``; torn ones are skipped (one line each), another run's
    refused."""
    found = sorted(
        ((int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir()),
        reverse=True,
    )
    for step, path in found:
        state = read_json_object(path / TRAINER_STATE)
        problem = checkpoint_problem(path, step, state)
        if problem is not None or state is None:  # a None state always has a problem
            if log:
                logger.warning("skipping %s: %s", path, problem)
            continue
        owner = _run_id_of(state)
        if owner != run_id:
            raise UserError(
                f"{path} belongs to another run ({owner or 'no run id'}; this folder's run is {run_id}): "
                "pass --no-resume to start over in a fresh folder, or choose another trainer.output_dir"
            )
        return Checkpoint(path, step, int(state.get("max_steps") or step))
    return None


def checkpoint_problem(path: Path, step: int, state: dict[str, Any] | None) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None: it can)."""
    if not (path / TRAINER_STATE).is_file():
        return f"no {TRAINER_STATE} (the save was interrupted)"
    if state is None:
        return f"{TRAINER_STATE} is torn (not valid JSON)"
    if state.get("global_step") != step:
        return f"{TRAINER_STATE} records step {state.get('global_step')!r}, not {step}"
    if not _has_weights(path):
        return "no model weights"
    for file in sorted(path.iterdir()):
        if problem := file_problem(file):
            return f"{file.name}: {problem}"
    return None


def model_is_complete(folder: Path) -> bool:
    """A saved model folder whose config.json parses and whose weight files are whole."""
    if read_json_object(folder / "config.json") is None or not _has_weights(folder):
        return False
    return not any(file_problem(f) for f in folder.glob("*.safetensors")) and not any(
        file_problem(f) for f in folder.glob("*.bin")
    )


def restore_model(checkpoint: Path, out: Path) -> list[str]:
    """Copy a checkpoint's model files (weights, config, tokenizer) that ``out`` lacks or holds different, each by
    copy + rename; returns their names."""
    copied = []
    for file in sorted(checkpoint.iterdir()):
        if not file.is_file() or TRAINING_STATE_FILES.fullmatch(file.name):
            continue
        if (out / file.name).is_file() and filecmp.cmp(file, out / file.name, shallow=False):
            continue
        tmp = out / f".{file.name}.tmp-{os.getpid()}"
        shutil.copyfile(file, tmp)
        os.replace(tmp, out / file.name)
        copied.append(file.name)
    return copied


def file_problem(path: Path) -> str | None:
    """Truncation check of a weights / optimizer file from its own header (no tensor is read)."""
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".pth", ".bin") and path.is_file():
        return None if zipfile.is_zipfile(path) else "not a complete torch file (truncated?)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 8 + header_len > size:
                return "truncated header"
            header = json.loads(f.read(header_len))
    except (struct.error, ValueError, OSError):
        return "unreadable header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if 8 + header_len + max(ends, default=0) > size:
        return f"truncated ({size:,} bytes, the header needs {8 + header_len + max(ends):,})"
    return None


def _has_weights(folder: Path) -> bool:
    return (
        any(folder.glob("*.safetensors"))
        or any(folder.glob("pytorch_model*.bin"))
        or any(
            p.is_dir()
            for p in folder.glob("global_step*")  # DeepSpeed ZeRO shards
        )
    )


def _run_id_of(state: dict[str, Any]) -> str | None:
    entry = (state.get("stateful_callbacks") or {}).get(RUN_ID_CALLBACK)
    if isinstance(entry, list):  # the Trainer stores several callbacks of one class as a list
        entry = entry[0] if entry else None
    return ((entry or {}).get("args") or {}).get("run_id") if isinstance(entry, dict) else None


def newest_run(root: str | os.PathLike = "outputs", trained: bool = False) -> Path:
    """The most recently modified run folder under ``root`` (one holding the ``config.yaml`` that ``archer train``
    writes first); ``trained``: only runs whose model is saved (``config.json``), what ``archer eval`` can load."""
    marker = "config.json" if trained else "config.yaml"
    runs = [p.parent for p in Path(root).glob(f"*/{marker}")] if Path(root).is_dir() else []
    if not runs:
        what = "trained model" if trained else "run folder"
        raise UserError(
            f"no {what} under {root}/: run `make train` first, or name one (MODEL=<run dir>, archer eval --model)"
        )
    return max(runs, key=lambda p: p.stat().st_mtime)
