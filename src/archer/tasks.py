"""Archer's lighteval tasks as an importable module: ``lighteval ... --custom-tasks archer.tasks`` from any folder.

The tasks themselves live in the packaged ``eval/archer_tasks.py`` (see ``archer.resources``); this module loads
that file once and re-exports what lighteval reads from a task module.
"""

from __future__ import annotations

from archer.evaluation.runner import load_task_module
from archer.resources import tasks_module

_module = load_task_module(tasks_module())
TASKS_TABLE = _module.TASKS_TABLE
LOCAL_DATASETS = _module.LOCAL_DATASETS

__all__ = ["LOCAL_DATASETS", "TASKS_TABLE"]
