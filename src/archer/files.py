"""Files that survive a kill, and inputs that cannot stall a parse.

Writes: a whole file is written to a temporary sibling, flushed to disk and renamed over the target
(:func:`atomic_write_text`), so a reader sees the old content or the new, never half of it. The append-only
``metrics.jsonl`` gets one ``write`` per whole line followed by ``fsync`` (:func:`append_line`); a kill can still
tear the last line, which :func:`read_jsonl` drops.

Reads: YAML inputs (recipes, suites) are bounded in size and in how far their aliases expand, decoded as UTF-8,
and parsed with libyaml's C loader when PyYAML has it; every failure is one :class:`UserError` line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from archer.errors import UserError

logger = logging.getLogger(__name__)

MAX_YAML_BYTES = 1 << 20  # a recipe or suite is a few KB; 1 MiB leaves room for long chat templates
MAX_YAML_VALUES = 100_000  # values after alias expansion: bounds a "billion laughs" document
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster than the pure-Python parser


DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def looks_local(name: str) -> bool:
    """Whether a model or dataset name means a path on this machine rather than a Hub id (``org/name``): it exists,
    starts with ``/``, ``.`` or ``~``, ends like a data file, or its parent folder exists here (a mistyped
    ``outputs/run``), so that a typo is reported as a missing path instead of being looked up on the Hub."""
    path = Path(name).expanduser()
    return (
        path.exists()
        or name.startswith(("/", ".", "~"))
        or name.endswith(DATA_FILE_SUFFIXES)
        or (str(path.parent) != "." and path.parent.is_dir())
    )


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error lines."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------
# Writes


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: temporary sibling, fsync, rename (then fsync the folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one whole line with a single ``write`` and ``fsync`` it: a kill leaves at most a torn last line."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines file and how many lines were dropped as unreadable (a torn write)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records, dropped = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            dropped += 1
    return records, dropped


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------------------
# Reads


def read_text_file(path: str | os.PathLike, what: str, max_bytes: int = MAX_YAML_BYTES) -> str:
    """A small UTF-8 text file, or one UserError line: missing, a folder, too large, unreadable or not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if not path.is_file():
        raise UserError(f"{path}: {what} must be a file, not a folder")
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {what} is {size:,} bytes; at most {max_bytes:,} are read")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text with bounded alias expansion; ``where`` (file or override) prefixes every error."""
    try:
        value = yaml.load(text, Loader=YAML_LOADER)  # noqa: S506 (a safe loader: plain data only)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: not valid YAML{line}: {problem}") from None
    except RecursionError:
        raise UserError(f"{where}: YAML nested too deeply") from None
    _check_expansion(value, where)
    return value


def read_model_config(folder: str | os.PathLike, where: str) -> dict[str, Any]:
    """A local model folder's config.json as a mapping, or one UserError line."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{where}: {folder} has no config.json (not a saved model folder)")
    try:
        value = json.loads(read_text_file(config, "model config", max_bytes=16 << 20))
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: {config} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(value, dict):
        raise UserError(f"{where}: {config} must hold a JSON object, got {type(value).__name__}")
    return value


def read_yaml_file(path: str | os.PathLike, what: str) -> Any:
    return parse_yaml(read_text_file(path, what), str(path))


def _check_expansion(value: Any, where: str) -> None:
    """Count the values a document holds once its aliases are expanded; stop at MAX_YAML_VALUES.

    YAML aliases share objects, so nine nested aliases of ten items each load instantly yet stand for a billion
    values: whatever walks them later (checks, error messages, the YAML dump of the recipe) would not finish.
    """
    seen, stack = 0, [value]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise UserError(
                f"{where}: more than {MAX_YAML_VALUES:,} values once aliases are expanded (an alias bomb or a "
                "self-referencing alias?)"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file holding an object; None when it is missing, torn or not an object (a reader that must not fail)."""
    try:
        value = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
