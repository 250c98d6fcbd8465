"""Results of one ``archer eval`` run: ``results.json``, ``results.md`` and ``details/<task>.jsonl``.

``results.json`` (schema_version 2; 1 lacked the ``limit`` / ``limited`` / ``tasks_selected`` entries)::

    {"schema_version": 2,
     "model": str (run folder, model folder or Hub id), "local_model": bool,
     "suite": str (its name), "suite_file": str, "suite_description": str,
     "limit": int | null (--limit), "tasks_selected": [<task>...] | null (--tasks; null: every task of the suite),
     "protocol": {"backend": "transformers" | "vllm" | "openai", "seed": int,
                  transformers: "dtype", "batch_size"; vllm: "dtype", "tensor_parallel_size", "data_parallel_size";
                  openai: "served_model", "server" (its owned_by), "prompt_format", "max_concurrency"},
     "tasks": {<task>: {"task": "archer:<task>", "dataset": Hub id | local path | "generated",
                        "revision": Hub commit of the dataset | null (unpinned, local or generated),
                        "k", "temperature", "top_p", "max_new_tokens", "prompt_style",
                        "grading": {"require_think_close": bool, code tasks: "code_timeout_s", "code_budget_s"},
                        "limit": int | null (--limit, else the suite's), "limited": bool (the limit left problems
                        out: a smoke run, which model cards never report),
                        "num_problems", "num_samples", "metrics": {"avg@k": %, "pass@k": %, "pass@j": %...},
                        "generation_s", "details": "details/<task>.jsonl"}},
     "averages": {<row, e.g. "math avg">: {"metric": "avg@k", "tasks": [<task>...], "value": %}} (rows whose
                  tasks all ran),
     "versions": {package: version},
     "started_at": ISO-8601 UTC, "wall_time_s": float}

Each details line is one problem: ``problem_id``, ``prompt`` (as the model saw it), ``gold``, ``completions``,
``extracted`` (boxed answer or code block per completion), ``scores`` and the problem's metrics.

A run is written as it goes, in ``<folder>.partial/``: each task, once generated and graded, gets its details file
and then its ``tasks/<task>.json`` entry (each written whole: temporary file, fsync, rename), and ``progress.json``
holds the run key (archer.evaluation.runner.run_key: model weights, suite, tasks and their data, backend protocol).
A later ``archer eval`` with the same key finds the folder, skips the tasks it holds and finishes the run; at the
end ``results.json`` and ``results.md`` are written and the folder is renamed to ``<folder>``. A kill therefore
loses at most the task in progress, and the finished folder is the same as an uninterrupted run's (but for
``started_at``, which is the first launch's, and the timings).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from archer.files import atomic_write_json, atomic_write_text, read_json_object

SCHEMA_VERSION = 2
PARTIAL = ".partial"  # suffix of a run folder being written
PROGRESS_FILE = "progress.json"  # in a partial folder: the run key, when it started, time spent so far
TASKS_DIR = "tasks"  # in a partial folder: one results.json ``tasks`` entry per finished task


def fresh_dir(parent: Path, stem: str) -> Path:
    """``parent/stem``, or ``stem-2``, ``stem-3``... when taken: a run never writes into another run's folder."""
    candidate, n = parent / stem, 1
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        n += 1
        candidate = parent / f"{stem}-{n}"
    return candidate


def timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%d-%H%M%S")


def average_rows(tasks: Mapping[str, Any], averages: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Each row: the mean over its tasks of each one's avg@k (k its own), as the paper's "math avg" column."""
    rows = {}
    for name, members in averages.items():
        values = [tasks[t]["metrics"][f"avg@{tasks[t]['k']}"] for t in members]
        rows[name] = {"metric": "avg@k", "tasks": list(members), "value": sum(values) / len(values)}
    return rows


def markdown_table(results: Mapping[str, Any]) -> str:
    lines = [
        f"Model: `{results['model']}` | suite: `{results['suite']}` | backend: {results['protocol']['backend']}",
        "",
        "| task | k | problems | avg@k | pass@k | T | top_p | max new tokens | other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, task in results["tasks"].items():
        k, m = task["k"], task["metrics"]
        other = ", ".join(f"{key} {value:.1f}" for key, value in m.items() if key not in (f"avg@{k}", f"pass@{k}"))
        lines.append(
            f"| {name} | {k} | {task['num_problems']} | {m[f'avg@{k}']:.1f} | {m[f'pass@{k}']:.1f} | "
            f"{task['temperature']} | {task['top_p']} | {task['max_new_tokens']} | {other or '-'} |"
        )
    for name, row in (results.get("averages") or {}).items():
        lines.append(
            f"| {name} | - | - | {row['value']:.1f} | - | - | - | - | mean avg@k of {', '.join(row['tasks'])} |"
        )
    if limited := [name for name, task in results["tasks"].items() if task.get("limited")]:
        lines += [
            "",
            f"Limited to the first {results['tasks'][limited[0]]['limit']} problems: {', '.join(limited)} "
            "(a smoke run: model cards never report it).",
        ]
    return "\n".join(lines) + "\n"


def find_unfinished(parent: Path, key: str) -> Path | None:
    """The partial run folder under ``parent`` whose run key is ``key`` (None: none)."""
    for progress in sorted(parent.glob(f"*{PARTIAL}/{PROGRESS_FILE}")):
        value = read_json_object(progress)
        if value is not None and value.get("key") == key:
            return progress.parent
    return None


def start_partial(parent: Path, stem: str, progress: Mapping[str, Any]) -> Path:
    """Create ``parent/<stem>.partial`` (``stem`` made unique as by :func:`fresh_dir`) with its progress file."""
    final = fresh_dir(parent, stem)
    partial = final.with_name(final.name + PARTIAL)
    (partial / "details").mkdir(parents=True)
    (partial / TASKS_DIR).mkdir()
    atomic_write_json(partial / PROGRESS_FILE, dict(progress))
    return partial


def read_progress(partial: Path) -> dict[str, Any]:
    return read_json_object(partial / PROGRESS_FILE) or {}


def update_progress(partial: Path, **values: Any) -> None:
    atomic_write_json(partial / PROGRESS_FILE, {**read_progress(partial), **values})


def save_task(partial: Path, name: str, entry: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> None:
    """One finished task: its details, then its entry (an entry is only there when its details are whole)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(partial / "details" / f"{name}.jsonl", text)
    atomic_write_json(partial / TASKS_DIR / f"{name}.json", entry)


def finished_tasks(partial: Path) -> dict[str, dict[str, Any]]:
    """The ``tasks`` entries a partial folder holds, by task name (an unreadable one counts as not done)."""
    done = {}
    for path in sorted((partial / TASKS_DIR).glob("*.json")):
        entry = read_json_object(path)
        if entry is not None and (partial / "details" / f"{path.stem}.jsonl").is_file():
            done[path.stem] = entry
    return done


def finish_run(partial: Path, results: Mapping[str, Any]) -> Path:
    """Write results.json and results.md into the partial folder, rename it to its final name, drop the progress
    files. A kill before the rename leaves the partial folder (the next run finishes it); after it, a finished one."""
    atomic_write_text(partial / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(partial / "results.md", markdown_table(results))
    final = partial.with_name(partial.name.removesuffix(PARTIAL))
    if final.exists():
        final = fresh_dir(final.parent, final.name)
    os.rename(partial, final)
    shutil.rmtree(final / TASKS_DIR, ignore_errors=True)
    (final / PROGRESS_FILE).unlink(missing_ok=True)
    return final
