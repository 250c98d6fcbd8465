"""YAML recipes: open-r1 style blocks, parsed into typed configs with one-line errors.

A recipe has the blocks ``model``, ``data``, ``objective``, ``trainer`` and, for the embedded tiny model, ``sft``::

    model:   {name_or_path: tiny | <hub id> | <folder>, dtype: float32, ...}
    data:    {dataset: arithmetic | <hub id> | <folder>, rewards: [math], ...}
    sft:     {steps: 2500, ...}                 # warm start of the tiny model (archer.tiny.SFTConfig)
    objective: {preset: archer, ...overrides}   # archer.objective.ObjectiveConfig fields
    trainer: {...}                              # archer.trainer.ArcherConfig (TRL GRPOConfig) fields

Every problem (unknown key, wrong type, missing file, batch arithmetic that cannot work) raises
:class:`archer.errors.UserError` naming the file and the key, before anything is written to disk.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archer.errors import UserError

BLOCKS = ("model", "data", "sft", "objective", "trainer")
TINY = "tiny"
BUILTIN_DATASETS = ("arithmetic",)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelArgs:
    name_or_path: str = field(
        default=TINY, metadata={"help": "'tiny' builds the embedded model offline; else a Hub id or a local folder."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dtype: str = field(default="auto", metadata={"help": f"Weights dtype, one of {DTYPES}."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel, e.g. 'sdpa' or 'flash_attention_2'."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})
    chat_template: str | None = field(default=None, metadata={"help": "Jinja chat template overriding the model's."})
    tiny: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "archer.tiny.TinyModelConfig fields (only for name_or_path: tiny)."}
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch intra-op threads per process (None: torch's default). A tiny model's matrices are too "
            "small to split: one thread avoids the threads' synchronisation and is faster, most of all on a busy CPU."
        },
    )

    def __post_init__(self) -> None:
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads: must be >= 1 (got {self.cpu_threads})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.tiny and not self.is_tiny:
            raise ValueError("tiny: model settings only apply when name_or_path is 'tiny'")

    @property
    def is_tiny(self) -> bool:
        return self.name_or_path == TINY


@dataclass
class DataArgs:
    dataset: str = field(
        default="arithmetic",
        metadata={"help": f"A built-in generated task {BUILTIN_DATASETS}, a Hub dataset id, or a local path."},
    )
    loader: str | None = field(
        default=None, metadata={"help": "Column mapping in archer.data.hub (guessed from the dataset id when unset)."}
    )
    config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Dataset split to train on."})
    num_examples: int | None = field(
        default=None, metadata={"help": "Train prompts: generated count for built-in tasks, a cap for others."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message prepended to chat prompts."})
    rewards: list[str] = field(default_factory=lambda: ["math"], metadata={"help": "Reward functions by name."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function."})
    max_tests: int | None = field(
        default=None, metadata={"help": "Code reward: at most this many sampled tests per problem (paper: 16)."}
    )
    code_timeout_s: float = field(
        default=6.0, metadata={"help": "Code reward: wall-clock limit per test (LiveCodeBench: 6 s)."}
    )
    code_budget_s: float | None = field(
        default=None,
        metadata={"help": "Code reward: cap on the sum of one completion's test run times (null: none, as LCB)."},
    )
    require_think_close: bool | str = field(
        default="auto",
        metadata={
            "help": "A completion without </think> scores 0 (true), or not (false); auto: true when the model's chat "
            "template opens the reasoning (R1-distill, Qwen3 thinking mode), false without one (archer.rewards.thinking)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of generated training problems."})
    task: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Built-in task settings (archer.data.arithmetic.ArithmeticTask)."}
    )
    heldout_examples: int = field(
        default=500,
        metadata={"help": "Built-in tasks: problems of the task's reserved held-out set scored before and after RL."},
    )

    def __post_init__(self) -> None:
        if not self.rewards:
            raise ValueError("rewards: name at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights: {len(self.reward_weights)} weights for {len(self.rewards)} rewards")
        for name in ("num_examples", "max_tests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1 (got {value})")
        for name in ("code_timeout_s", "code_budget_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be > 0 seconds (got {value})")
        from archer.rewards.thinking import check_setting

        check_setting(self.require_think_close, "require_think_close")
        if self.heldout_examples < 0:
            raise ValueError(f"heldout_examples: must be >= 0 (got {self.heldout_examples})")

    @property
    def is_builtin(self) -> bool:
        return self.dataset in BUILTIN_DATASETS


@dataclass
class Recipe:
    """A parsed, validated recipe. ``raw`` keeps the YAML as given, ``resolved()`` every value in force."""

    path: Path
    model: ModelArgs
    data: DataArgs
    trainer: Any  # archer.trainer.ArcherConfig (holds the objective preset and overrides)
    sft: Any | None  # archer.tiny.SFTConfig
    raw: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        trainer = {k: _plain(v) for k, v in self.trainer.to_dict().items()}
        return {
            "model": _plain(dataclasses.asdict(self.model)),
            "data": _plain(dataclasses.asdict(self.data)),
            "sft": _plain(dataclasses.asdict(self.sft)) if self.sft is not None else None,
            "objective": {"preset": self.trainer.objective, **_plain(self.trainer.objective_config().to_dict())},
            "trainer": trainer,
        }


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, check and build a recipe. ``overrides`` are ``block.key=value`` strings (value parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of blocks {', '.join(BLOCKS)}")
    for item in overrides or []:
        _apply_override(raw, item, path)
    unknown = sorted(set(raw) - set(BLOCKS))
    if unknown:
        raise UserError(f"{path}: unknown block {unknown[0]!r}; valid blocks: {', '.join(BLOCKS)}")
    for name in BLOCKS:
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise UserError(f"{path}: block {name!r} must be a mapping, got {type(raw[name]).__name__}")

    model = build_dataclass(ModelArgs, raw.get("model") or {}, path, "model")
    data = build_dataclass(DataArgs, raw.get("data") or {}, path, "data")
    _check_paths(model, data, path)

    from archer.objective import ObjectiveConfig
    from archer.trainer import ArcherConfig, trainer_block_problem

    objective = dict(raw.get("objective") or {})
    preset = objective.pop("preset", "archer")
    try:
        ObjectiveConfig.preset(preset, **objective)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: objective: {_one_line(err)}") from None

    trainer_block = dict(raw.get("trainer") or {})
    problem = trainer_block_problem(trainer_block)  # options the objective takes over, contradicting batch keys
    if problem:
        raise UserError(f"{path}: {problem}")
    trainer_block.setdefault("output_dir", f"outputs/{path.stem}")
    trainer = build_dataclass(
        ArcherConfig, {**trainer_block, "objective": preset, "objective_overrides": objective}, path, "trainer"
    )

    sft = None
    if raw.get("sft") is not None:
        if not model.is_tiny:
            raise UserError(f"{path}: sft: the SFT warm start only applies to model.name_or_path: tiny")
        from archer.tiny import SFTConfig

        sft = build_dataclass(SFTConfig, raw["sft"], path, "sft")
    if model.is_tiny and not data.is_builtin:
        raise UserError(f"{path}: data.dataset: the tiny model only knows the built-in tasks {BUILTIN_DATASETS}")
    if data.is_builtin:
        _check_builtin_task(data, path)
    return Recipe(path=path, model=model, data=data, trainer=trainer, sft=sft, raw=raw)


def build_dataclass(cls: type, block: dict[str, Any], path: Path, where: str) -> Any:
    """Build ``cls(**block)``: unknown keys and wrong types become one-line UserErrors naming ``where.key``."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in block.items():
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:4])][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"{path}: {where}.{key}: unknown key{hint}; see {cls.__module__}.{cls.__name__}")
        try:
            values[key] = _coerce(value, hints.get(key, Any))
        except TypeError as err:
            raise UserError(f"{path}: {where}.{key}: {err}") from None
    try:
        return cls(**values)
    except (ValueError, TypeError, UserError) as err:
        raise UserError(f"{path}: {where}: {_one_line(err)}") from None


def _coerce(value: Any, hint: Any) -> Any:
    """Check ``value`` against a type hint; numeric strings become numbers (YAML reads ``1e-6`` as a string)."""
    if hint is Any or value is None and _allows_none(hint):
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError(f"expected {_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise TypeError(f"expected one of {list(typing.get_args(hint))}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(hint)
            if origin is list and args:
                return [_coerce(v, args[0]) for v in value]
            return type(value)(value) if origin is None else origin(value)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
    else:
        return value  # enums and other rich types: leave to the dataclass's own checks
    raise TypeError(f"expected {_name(hint)}, got {value!r} ({type(value).__name__})")


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or type(None) in typing.get_args(hint)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, value = item.partition("=")
    block, dot, name = key.partition(".")
    if not sep or not dot or not name:
        raise UserError(f"override {item!r}: expected block.key=value, e.g. trainer.max_steps=10")
    if block not in BLOCKS:
        raise UserError(f"override {item!r}: unknown block {block!r}; valid blocks: {', '.join(BLOCKS)}")
    raw.setdefault(block, {})
    if not isinstance(raw[block], dict):
        raise UserError(f"{path}: block {block!r} must be a mapping")
    raw[block][name] = yaml.safe_load(value)


def _check_builtin_task(data: DataArgs, path: Path) -> None:
    from archer.data.arithmetic import ArithmeticTask

    task = build_dataclass(ArithmeticTask, data.task, path, "data.task")
    if data.heldout_examples > task.heldout_size:
        raise UserError(
            f"{path}: data.heldout_examples={data.heldout_examples}: at most the reserved held-out set's size, "
            f"data.task.heldout_size={task.heldout_size}"
        )
    if data.seed == task.heldout_seed:
        raise UserError(f"{path}: data.seed={data.seed}: equals data.task.heldout_seed; training draws need another")


def _check_paths(model: ModelArgs, data: DataArgs, path: Path) -> None:
    """Local paths must exist; Hub ids (org/name) are checked when loaded."""
    for where, value in (("model.name_or_path", model.name_or_path), ("data.dataset", data.dataset)):
        if _looks_local(value) and not Path(value).expanduser().exists():
            raise UserError(f"{path}: {where}: {value} does not exist (give an existing folder or a Hub id org/name)")


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".json", ".jsonl", ".parquet", ".csv"))


def _plain(value: Any) -> Any:
    """Make a value YAML/JSON friendly (enums to their value, tuples to lists, objects to strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return _plain(value.value)
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
