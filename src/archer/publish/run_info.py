"""What a model card reads from a run folder: the resolved recipe, training results, plots, and eval results.

A run folder is what ``archer train`` writes: ``config.yaml`` (the resolved recipe), ``train_results.json``,
``plots/*.png``, the model, and ``eval/<timestamp>/results.json`` for each ``archer eval`` of it. Everything but
the model itself is optional; a file that is there but unreadable is one :class:`UserError` line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import UserError
from archer.files import looks_local, parse_yaml, read_text_file

logger = logging.getLogger(__name__)

TINY_MODEL = "tiny"  # recipe.TINY: the embedded model built by archer.tiny


@dataclass(frozen=True)
class TaskScores:
    """One benchmark's scores. Metric values are percentages (archer.evaluation.metrics)."""

    name: str
    metrics: dict[str, float]
    k: int | None = None
    num_problems: int | None = None
    dataset: str | None = None  # Hub id of the benchmark's dataset, when the results name it
    revision: str | None = None  # the dataset's Hub commit, when pinned
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, max_new_tokens, prompt_style
    limited: bool | None = None  # a limit left problems out (True), or not (False); None: the file does not say
    limit: int | None = None


@dataclass(frozen=True)
class EvalResults:
    """The part of an ``archer eval`` results file that a card shows."""

    path: Path
    model: str | None
    suite: str | None
    protocol: dict[str, Any]
    tasks: list[TaskScores]
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int | None = None  # archer's results.json; None for another tool's file
    limit: int | None = None  # --limit


SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "prompt_style")


def read_eval_results(path: str | os.PathLike) -> EvalResults:
    """Read an eval results JSON, tolerating schema drift: the only place that knows its layout.

    Expected: ``{"model", "suite", "protocol": {...}, "tasks": {name: {"metrics": {"avg@k": float, ...}, "k",
    "num_problems", "limited", ...}}, "versions": {...}}``. ``tasks`` may also be a list of objects with a ``name``
    (or ``task``), and a task's metrics may sit at its top level; non-numeric values are skipped.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read eval results ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: eval results must be a JSON object with a 'tasks' entry")
    tasks_raw = raw.get("tasks") or raw.get("results") or {}
    if isinstance(tasks_raw, list):
        tasks_raw = {str(t.get("name") or t.get("task")): t for t in tasks_raw if isinstance(t, dict)}
    tasks = []
    for name, entry in tasks_raw.items() if isinstance(tasks_raw, dict) else ():
        if not isinstance(entry, dict):
            continue
        source = entry["metrics"] if isinstance(entry.get("metrics"), dict) else entry
        metrics = {
            str(key): number
            for key, value in source.items()
            if key not in ("k", "n", "num_problems", "num_samples", "limit", *SAMPLING_FIELDS)
            and (number := _metric_value(value)) is not None
        }
        if metrics:
            dataset = entry.get("dataset") or entry.get("hf_repo") or entry.get("dataset_id")
            revision = entry.get("revision")
            limited = entry.get("limited")
            tasks.append(
                TaskScores(
                    name=str(name),
                    metrics=metrics,
                    k=_int_or_none(entry.get("k") or entry.get("n")),
                    num_problems=_int_or_none(entry.get("num_problems")),
                    dataset=dataset if isinstance(dataset, str) else None,
                    revision=revision if isinstance(revision, str) else None,
                    sampling={k: entry[k] for k in SAMPLING_FIELDS if isinstance(entry.get(k), str | int | float)},
                    limited=limited if isinstance(limited, bool) else None,
                    limit=_int_or_none(entry.get("limit")),
                )
            )
    protocol = raw["protocol"] if isinstance(raw.get("protocol"), dict) else {}
    versions = raw["versions"] if isinstance(raw.get("versions"), dict) else {}
    model, suite = raw.get("model"), raw.get("suite")
    return EvalResults(
        path=path,
        model=str(model) if model is not None else None,
        suite=str(suite) if suite is not None else None,
        protocol={k: v for k, v in protocol.items() if isinstance(v, str | int | float | bool)},
        tasks=tasks,
        versions={str(k): str(v) for k, v in versions.items() if v is not None},
        schema_version=_int_or_none(raw.get("schema_version")),
        limit=_int_or_none(raw.get("limit")),
    )


def _metric_value(value: Any) -> float | None:
    """A finite number, or the ``value`` of a ``{"value": ..., "stderr": ...}`` entry; None for anything else."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def not_whole(results: EvalResults, task: TaskScores) -> str | None:
    """Why a task's scores are not those of its whole benchmark (a card leaves them out), or None when they are.

    archer eval records whether a limit (``--limit`` or the suite's ``limit``) left problems out; its results files
    of schema 1 did not, so they cannot show it. Another tool's file is taken as whole unless it names a limit.
    """
    if results.schema_version == 1:
        return "written before archer eval recorded --limit (schema 1): re-run archer eval to report it"
    if task.limited or (task.limited is None and (task.limit is not None or results.limit is not None)):
        limit = task.limit or results.limit
        return f"limited to {limit} problems (--limit or the suite's limit): a smoke run"
    return None


@dataclass(frozen=True)
class Scores:
    """One task's scores from one evaluation, and the eval folder they came from."""

    task: TaskScores
    results: EvalResults
    folder: str  # the eval folder relative to the run folder (eval/<timestamp>), or the results file given

    @property
    def suite(self) -> str | None:
        return self.results.suite

    @property
    def key(self) -> tuple[str, str]:
        return (self.suite or "", self.task.name)


@dataclass
class EvalScores:
    """The newest whole-benchmark scores of each (suite, task), and the evaluations left out (and why)."""

    scores: dict[tuple[str, str], Scores] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "<folder> <task>: <why>"

    def add(self, results: EvalResults, folder: str) -> None:
        for task in results.tasks:
            reason = not_whole(results, task)
            if reason is not None:
                self.skipped.append(f"{folder} {task.name}: {reason}")
                continue
            entry = Scores(task, results, folder)
            self.scores[entry.key] = entry  # files come oldest first: the newest whole one wins

    def __bool__(self) -> bool:
        return bool(self.scores)


def _folder(path: Path, root: Path) -> str:
    try:
        return path.parent.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def find_eval_results(
    run_dir: Path, base_model: str | None, root: Path | None = None
) -> tuple[EvalScores, EvalScores]:
    """The run's model's and its base model's whole-benchmark scores among ``<run>/eval/*/results.json``.

    A results file whose ``model`` names the base model counts as the base's; every other one as the run's. Folder
    names are timestamps, so sorted order is oldest first and the newest evaluation of a task wins. ``root``: the
    folder the eval folders are named relative to (default ``run_dir``).
    """
    root = run_dir if root is None else root
    own, base = EvalScores(), EvalScores()
    for path in sorted((run_dir / "eval").glob("*/results.json")):
        try:
            results = read_eval_results(path)
        except UserError as err:
            logger.warning("skipping %s", err)
            continue
        target = base if base_model is not None and results.model == base_model else own
        target.add(results, _folder(path, root))
    return own, base


@dataclass(frozen=True)
class RunFolder:
    """What a card needs from a run folder."""

    path: Path
    config: dict[str, Any]
    train_results: dict[str, Any]
    plots: list[str]
    has_chat_template: bool

    @property
    def model_name_or_path(self) -> str | None:
        value = (self.config.get("model") or {}).get("name_or_path")
        return str(value) if value is not None else None

    @property
    def is_tiny(self) -> bool:
        return self.model_name_or_path == TINY_MODEL

    @property
    def base_model(self) -> str | None:
        """The Hub id RL started from; None for the tiny model or a local folder."""
        name = self.model_name_or_path
        if name is None or name == TINY_MODEL or looks_local(name) or name.count("/") != 1:
            return None
        return name

    @property
    def datasets(self) -> list[str]:
        value = (self.config.get("data") or {}).get("dataset")
        values = value if isinstance(value, list) else [value] if value else []
        return [str(v) for v in values]

    @property
    def rewards(self) -> list[str]:
        return [str(r) for r in (self.config.get("data") or {}).get("rewards") or []]


def _read_mapping(path: Path, kind: str) -> dict[str, Any]:
    """A JSON or YAML file holding a mapping; {} when absent; a one-line UserError when unreadable."""
    if not path.is_file():
        return {}
    text = read_text_file(path, f"{kind} file", max_bytes=16 << 20)
    try:
        value = parse_yaml(text, str(path)) if kind == "YAML" else json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid {kind} ({' '.join(str(err).split())})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(value).__name__}")
    return value


def load_run(run_dir: str | os.PathLike) -> RunFolder:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"MODEL={run_dir}: not a folder; give a run folder written by `archer train`")
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "config.json").is_file():
        raise UserError(
            f"MODEL={run_dir}: neither a run folder (config.yaml) nor a model (config.json); "
            "give a folder written by `archer train`"
        )
    config = _read_mapping(run_dir / "config.yaml", "YAML")
    if not config:
        logger.warning("%s has no config.yaml: the card will lack training details", run_dir)
    train_results = _read_mapping(run_dir / "train_results.json", "JSON")
    plots = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "plots").glob("*.png"))
    has_chat_template = (run_dir / "chat_template.jinja").is_file() or "chat_template" in _read_mapping(
        run_dir / "tokenizer_config.json", "JSON"
    )
    return RunFolder(run_dir, config, train_results, plots, has_chat_template)
