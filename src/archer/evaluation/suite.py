"""Evaluation suites: which tasks, how many samples per problem, the sampling and grading protocol (YAML)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from archer.errors import UserError
from archer.files import read_yaml_file
from archer.resources import asset, packaged_names, resolve_yaml, tasks_module
from archer.schema import FRACTION, NON_NEGATIVE, POSITIVE, Limit, at_least, build_dataclass, check_field

TASK_PREFIX = "archer:"
PROMPT_STYLES = ("chat", "raw")


# Ranges the field types do not say (shared by the suite's ``defaults`` block and each task entry).
TASK_LIMITS: dict[str, Limit] = {
    "k": at_least(1),
    "temperature": NON_NEGATIVE,
    "top_p": FRACTION,
    "max_new_tokens": at_least(1),
    "pass_k": (lambda v: all(j >= 1 for j in v), "a list of positive integers"),
    "limit": at_least(1),
    "code_timeout_s": POSITIVE,
    "code_budget_s": POSITIVE,
    "code_memory_mb": at_least(1),
}
PER_DATASET_KEYS = ("data", "revision")  # name one task's data: never in ``defaults``
SUITES = ("eval", "suites")  # where the packaged suites live (archer.resources)
SUITE_KEYS = {"name", "description", "module", "seed", "defaults", "tasks", "averages"}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite with its resolved protocol (the defaults are the paper's sampling)."""

    task: str = field(metadata={"help": "lighteval task name, e.g. 'archer:aime24'"})
    k: int = field(default=1, metadata={"help": "samples per problem (avg@k, pass@k)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (0: greedy, needs k = 1)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=32768, metadata={"help": "generation budget per sample"})
    prompt_style: Literal["chat", "raw"] = field(
        default="chat", metadata={"help": "'chat': the model's chat template; 'raw': the prompt as is"}
    )
    pass_k: tuple[int, ...] = field(default=(), metadata={"help": "extra j < k for which pass@j is reported"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N problems"})
    data: str | None = field(default=None, metadata={"help": "local data file or dataset folder"})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit sha) to load"})
    require_think_close: bool | Literal["auto"] = field(
        default=False,
        metadata={
            "help": "false (default, the paper's rule): a completion without </think> is graded whole, as the "
            "authors grade; true: it scores 0 (stricter, ours); auto: true when the chat template opens the reasoning"
        },
    )
    # LiveCodeBench's protocol: 6 s per test, no cap on a completion's total (archer.rewards.code)
    code_timeout_s: float = field(default=6.0, metadata={"help": "sandbox time limit per test"})
    code_budget_s: float | None = field(
        default=None, metadata={"help": "cap on the sum of one completion's test run times (null: none)"}
    )
    code_memory_mb: int | None = field(default=None, metadata={"help": "sandbox memory limit"})

    def __post_init__(self) -> None:
        if self.temperature == 0 and self.k > 1:
            raise ValueError(f"k={self.k} needs sampling (temperature > 0); greedy decoding needs k=1")
        if too_big := [j for j in self.pass_k if j > self.k]:
            raise ValueError(f"pass_k: {too_big[0]} exceeds k={self.k}")

    @property
    def short_name(self) -> str:
        return self.task.removeprefix(TASK_PREFIX)

    def protocol(self) -> dict[str, Any]:
        """The sampling protocol, as written to results.json."""
        keys = ("k", "temperature", "top_p", "max_new_tokens", "prompt_style")
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    module: Path = field(
        metadata={"help": "the lighteval task module the tasks come from (default: the packaged archer_tasks.py)"}
    )
    seed: int
    tasks: tuple[TaskSpec, ...]
    description: str = ""
    averages: dict[str, tuple[str, ...]] = field(
        default_factory=dict, metadata={"help": "row name -> tasks whose avg@k are averaged (the paper's math avg)"}
    )


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    return value


def load_suite(path: str | Path, known_tasks: Collection[str] | None = None) -> Suite:
    """Parse and validate a suite YAML, given as a file or by the name of a packaged suite (``paper``, ``tiny``...);
    every mistake is a one-line ``UserError`` naming the file and key."""
    path = resolve_yaml(path, *SUITES)
    if not path.is_file():
        names = ", ".join(packaged_names(asset(*SUITES)))
        raise UserError(f"suite file {path} does not exist (packaged suites, given by name: {names})")
    raw = _mapping(str(path), read_yaml_file(path, "suite file"))
    if unknown := sorted(set(raw) - SUITE_KEYS):
        raise UserError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(SUITE_KEYS))}")

    defaults: dict[str, Any] = {}
    for key, value in _mapping(f"{path}: defaults", raw.get("defaults") or {}).items():
        if key in PER_DATASET_KEYS:
            raise UserError(f"{path}: defaults.{key}: names one task's data; set it in that task's entry")
        if key == "task":
            raise UserError(f"{path}: defaults.task: tasks are named in the tasks list")
        defaults[key] = check_field(TaskSpec, key, value, path, "defaults", TASK_LIMITS)

    entries = raw.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: tasks: expected a non-empty list of {{task: NAME, k: N, ...}}, got {entries!r}")
    tasks = []
    for i, entry in enumerate(entries):
        where = f"tasks[{i}]"
        entry = _mapping(f"{path}: {where}", {"task": entry} if isinstance(entry, str) else entry)
        name = entry.get("task")
        if not isinstance(name, str):
            raise UserError(f"{path}: {where}.task: expected a task name, got {name!r}")
        full = name if name.startswith(TASK_PREFIX) else TASK_PREFIX + name
        if known_tasks is not None and full not in known_tasks:
            valid = ", ".join(sorted(t.removeprefix(TASK_PREFIX) for t in known_tasks))
            raise UserError(f"{path}: {where}.task: unknown task {name!r}; valid: {valid}")
        spec = build_dataclass(TaskSpec, {**defaults, **entry, "task": full}, path, where, TASK_LIMITS)
        if spec.data is not None:
            spec = dataclasses.replace(spec, data=str((path.parent / spec.data).resolve()))
        tasks.append(spec)

    if len({t.task for t in tasks}) != len(tasks):
        raise UserError(f"{path}: tasks: a task is listed twice")
    seed = raw.get("seed", 1234)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"{path}: seed: expected a non-negative integer, got {seed!r}")
    module = raw.get("module")
    if module is not None and not isinstance(module, str):
        raise UserError(f"{path}: module: expected a path to a lighteval task module, got {module!r}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        raise UserError(f"{path}: name: expected a string, got {name!r}")
    return Suite(
        name=name,
        path=path,
        module=tasks_module() if module is None else (path.parent / module).resolve(),
        seed=seed,
        tasks=tuple(tasks),
        description=str(raw.get("description", "")),
        averages=_averages(path, raw.get("averages"), {t.short_name for t in tasks}),
    )


def _averages(path: Path, raw: Any, listed: set[str]) -> dict[str, tuple[str, ...]]:
    """``averages: {row name: [task, ...]}``; every task must be one of the suite's."""
    averages = {}
    for row, names in _mapping(f"{path}: averages", raw or {}).items():
        where = f"{path}: averages.{row}"
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise UserError(f"{where}: expected a list of two or more task names, got {names!r}")
        short = tuple(n.removeprefix(TASK_PREFIX) for n in names)
        if missing := [n for n in short if n not in listed]:
            raise UserError(
                f"{where}: {missing[0]!r} is not a task of this suite; its tasks: {', '.join(sorted(listed))}"
            )
        averages[str(row)] = short
    return averages
