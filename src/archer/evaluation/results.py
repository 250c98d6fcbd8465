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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2


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


def write_run(out_dir: Path, results: Mapping[str, Any], details: Mapping[str, Iterable[Mapping[str, Any]]]) -> Path:
    """Write everything into ``<out_dir>.partial`` and rename it at the end: no half-written run folder."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    try:
        (partial / "details").mkdir(parents=True)
        for task, rows in details.items():
            with open(partial / "details" / f"{task}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (partial / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (partial / "results.md").write_text(markdown_table(results))
        os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir
