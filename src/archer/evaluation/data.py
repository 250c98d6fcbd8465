"""Benchmark rows for a task: a local file or dataset folder when given, else the Hub (or a local generator)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archer.errors import UserError

logger = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


def _read_local(path: Path, split: str, subset: str | None) -> Rows:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of rows")
        return rows

    import datasets

    if path.suffix == ".parquet":
        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                if len(loaded) != 1:
                    raise UserError(f"{path}: no split {split!r}; has {', '.join(loaded)}")
                split = next(iter(loaded))
            loaded = loaded[split]
        return list(loaded)
    if path.is_dir():  # a snapshot of the Hub repo (its config, if it has several), or a folder of data files
        errors = []
        for name in dict.fromkeys((subset, None)):
            try:
                return list(datasets.load_dataset(str(path), name=name, split=split))
            except Exception as err:  # no such config or split, unreadable files: all fixable by the user
                errors.append(f"{type(err).__name__}: {err}".splitlines()[0])
        raise UserError(f"{path}: cannot load split {split!r} ({errors[-1]})")
    raise UserError(f"{path}: unsupported data file; use .jsonl, .json, .parquet or a dataset folder")


def load_rows(
    config: Any,
    data: str | None = None,
    generators: dict[str, Callable[[str | None], Rows]] | None = None,
    model_path: str | None = None,
    revision: str | None = None,
) -> Rows:
    """Rows of a lighteval task config's evaluation split, filtered by its ``hf_filter``, in dataset order.

    Source: ``data`` (a local file or folder) if given, else the task module's generator (called with the local
    model folder), else the Hub at ``revision`` (else the config's ``hf_revision``, else the newest commit).
    """
    split = config.evaluation_splits[0]
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise UserError(f"task {config.name}: data path {path} does not exist")
        rows = _read_local(path, split, None if config.hf_subset == "default" else config.hf_subset)
        source = str(path)
    elif generators and config.name in generators:
        rows, source = generators[config.name](model_path), "generated locally"
    else:
        import datasets

        revision = revision or config.hf_revision
        try:
            ds = datasets.load_dataset(config.hf_repo, config.hf_subset, split=split, revision=revision)
        except Exception as err:  # offline, gated, renamed: all the user can fix is where the data comes from
            from archer.network import describe_failure

            short = config.name.removeprefix("archer:")
            why = describe_failure(err, f"task {short}", config.hf_repo, "dataset") or type(err).__name__
            raise UserError(
                f"task {config.name}: cannot load {config.hf_repo} ({why.removeprefix(f'task {short}: ')}); "
                f"give a local copy with --data {short}=PATH or `data:` in the suite"
            ) from None
        rows, source = list(ds), f"{config.hf_repo} ({config.hf_subset}, {split}, revision {revision or 'newest'})"
    if config.hf_filter is not None:
        rows = [row for row in rows if config.hf_filter(row)]
    if not rows:
        raise UserError(f"task {config.name}: no rows in {source}")
    logger.info("%s: %d problems from %s", config.name, len(rows), source)
    return rows
