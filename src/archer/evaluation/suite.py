"""Evaluation suites: which tasks, how many samples per problem, the sampling and grading protocol (YAML)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import UserError
from archer.files import read_yaml_file
from archer.resources import asset, packaged_names, resolve_yaml, tasks_module

TASK_PREFIX = "archer:"
PROMPT_STYLES = ("chat", "raw")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# key -> (check, what is valid, default); shared by the suite's ``defaults`` block and each task entry.
PROTOCOL_KEYS: dict[str, tuple[Callable[[Any], bool], str, Any]] = {
    "k": (_positive_int, "a positive integer", 1),
    "temperature": (lambda v: _number(v) and v >= 0, "a number >= 0", 0.8),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]", 1.0),
    "max_new_tokens": (_positive_int, "a positive integer", 32768),
    "prompt_style": (lambda v: v in PROMPT_STYLES, f"one of {', '.join(PROMPT_STYLES)}", "chat"),
    "pass_k": (
        lambda v: isinstance(v, list) and all(_positive_int(x) for x in v),
        "a list of positive integers",
        [],
    ),
    "limit": (lambda v: v is None or _positive_int(v), "a positive integer or null", None),
    "data": (lambda v: v is None or isinstance(v, str), "a path (string) or null", None),
    "revision": (lambda v: v is None or (isinstance(v, str) and bool(v)), "a dataset commit sha, tag or null", None),
    "require_think_close": (lambda v: v is True or v is False or v == "auto", "auto, true or false", "auto"),
    # LiveCodeBench's protocol: 6 s per test, no cap on a completion's total (archer.rewards.code)
    "code_timeout_s": (lambda v: _number(v) and v > 0, "a number of seconds > 0", 6.0),
    "code_budget_s": (lambda v: v is None or (_number(v) and v > 0), "a number of seconds > 0 or null", None),
    "code_memory_mb": (lambda v: v is None or _positive_int(v), "a positive integer or null", None),
}
PER_DATASET_KEYS = ("data", "revision")  # name one task's data: never in ``defaults``
SUITES = ("eval", "suites")  # where the packaged suites live (archer.resources)
SUITE_KEYS = {"name", "description", "module", "seed", "defaults", "tasks", "averages"}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite with its resolved protocol."""

    task: str = field(metadata={"help": "lighteval task name, e.g. 'archer:aime24'"})
    k: int = field(metadata={"help": "samples per problem (avg@k, pass@k)"})
    temperature: float = field(metadata={"help": "sampling temperature (0: greedy, needs k = 1)"})
    top_p: float = field(metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(metadata={"help": "generation budget per sample"})
    prompt_style: str = field(metadata={"help": "'chat': the model's chat template; 'raw': the prompt as is"})
    pass_k: tuple[int, ...] = field(default=(), metadata={"help": "extra j < k for which pass@j is reported"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N problems"})
    data: str | None = field(default=None, metadata={"help": "local data file or dataset folder"})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit sha) to load"})
    require_think_close: bool | str = field(
        default="auto", metadata={"help": "a completion without </think> scores 0; auto: the chat template decides"}
    )
    code_timeout_s: float = field(default=6.0, metadata={"help": "sandbox time limit per test"})
    code_budget_s: float | None = field(
        default=None, metadata={"help": "cap on the sum of one completion's test run times (null: none)"}
    )
    code_memory_mb: int | None = field(default=None, metadata={"help": "sandbox memory limit"})

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


def _check(where: str, key: str, value: Any) -> Any:
    check, valid, _ = PROTOCOL_KEYS[key]
    if not check(value):
        raise UserError(f"{where}.{key}: expected {valid}, got {value!r}")
    return value


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

    defaults = {key: spec[2] for key, spec in PROTOCOL_KEYS.items()}
    given = _mapping(f"{path}: defaults", raw.get("defaults") or {})
    for key, value in given.items():
        if key not in PROTOCOL_KEYS:
            raise UserError(f"{path}: defaults.{key}: unknown key; valid: {', '.join(PROTOCOL_KEYS)}")
        if key in PER_DATASET_KEYS:
            raise UserError(f"{path}: defaults.{key}: names one task's data; set it in that task's entry")
        defaults[key] = _check(f"{path}: defaults", key, value)

    entries = raw.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: tasks: expected a non-empty list of {{task: NAME, k: N, ...}}, got {entries!r}")
    tasks = []
    for i, entry in enumerate(entries):
        where = f"{path}: tasks[{i}]"
        entry = _mapping(where, {"task": entry} if isinstance(entry, str) else entry)
        name = entry.get("task")
        if not isinstance(name, str):
            raise UserError(f"{where}.task: expected a task name, got {name!r}")
        full = name if name.startswith(TASK_PREFIX) else TASK_PREFIX + name
        if known_tasks is not None and full not in known_tasks:
            valid = ", ".join(sorted(t.removeprefix(TASK_PREFIX) for t in known_tasks))
            raise UserError(f"{where}.task: unknown task {name!r}; valid: {valid}")
        values = dict(defaults)
        for key, value in entry.items():
            if key == "task":
                continue
            if key not in PROTOCOL_KEYS:
                raise UserError(f"{where}.{key}: unknown key; valid: task, {', '.join(PROTOCOL_KEYS)}")
            values[key] = _check(where, key, value)
        if values["temperature"] == 0 and values["k"] > 1:
            raise UserError(f"{where}: k={values['k']} needs sampling (temperature > 0); greedy decoding needs k=1")
        if too_big := [j for j in values["pass_k"] if j > values["k"]]:
            raise UserError(f"{where}.pass_k: {too_big[0]} exceeds k={values['k']}")
        if values["data"] is not None:
            values["data"] = str((path.parent / values["data"]).resolve())
        values["pass_k"] = tuple(values["pass_k"])
        tasks.append(TaskSpec(task=full, **values))

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
