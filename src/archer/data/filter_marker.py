"""How a training set is known to be pass-rate filtered for a model (the rule the paper recipes' dry run applies).

- a folder written by ``archer filter`` holds ``filter.json`` (:data:`MARKER_FILE`): the model it was filtered
  against, k, the pass-rate thresholds and the counts. Folders written before the command existed hold
  ``filter_stats.json`` (:data:`LEGACY_MARKER_FILE`) with the same ``model`` and ``k`` keys; both count;
- a Hub dataset its authors released already filtered, listed in :data:`PREFILTERED` with the model they filtered
  it for: the paper's own code training set, ``wizardII/ArcherCodeR-Dataset`` (DeepSeek-R1-Distill-Qwen-1.5B);
- anything else (a Hub id, a data file, a folder without the marker) is not known to be filtered.

This module reads only small JSON files: the launch, the dry run and the training loader import it cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARKER_FILE = "filter.json"
LEGACY_MARKER_FILE = "filter_stats.json"

# Hub dataset (lower case) -> the model its authors filtered it for
PREFILTERED: dict[str, str] = {
    "wizardii/archercoder-dataset": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
}


def read_marker(dataset: str | Path) -> dict[str, Any] | None:
    """The filter record of a local dataset folder (``filter.json``, else the older ``filter_stats.json``), or None
    when ``dataset`` is not a folder holding a readable one."""
    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        return None
    for name in (MARKER_FILE, LEGACY_MARKER_FILE):
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("model"), str):
            return record
    return None


def filtered_for(dataset: str) -> str | None:
    """The model ``dataset`` is known to be pass-rate filtered for (module docstring), or None."""
    marker = read_marker(dataset)
    if marker is not None:
        return str(marker["model"])
    if not Path(dataset).expanduser().exists():
        return PREFILTERED.get(dataset.strip("/").lower())
    return None


def same_model(a: str, b: str) -> bool:
    """Two names of one model: the same local folder, or (not both local folders) the same Hub id, case aside."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.strip("/").lower() == b.strip("/").lower()
