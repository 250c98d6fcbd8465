"""YAML recipes: nested blocks, one per part of a run (open-r1's recipes are flat), parsed into typed configs with
one-line errors.

A recipe has the blocks ``model``, ``data``, ``objective``, ``trainer`` and, for the embedded tiny model, ``sft``::

    model:   {name_or_path: tiny | <hub id> | <folder>, dtype: float32, ...}
    data:    {dataset: arithmetic | <hub id> | <folder>, rewards: [math], ...}
    sft:     {steps: 2500, ...}                 # warm start of the tiny model (archer.tiny.SFTConfig)
    objective: {preset: archer, ...overrides}   # archer.objective.ObjectiveConfig fields
    trainer: {...}                              # archer.training.config.ArcherConfig (TRL GRPOConfig) fields

Every problem (a file that is missing, too large or not UTF-8, bad YAML, an unknown key, a wrong type, a value out of
range, a missing model or data path, batch arithmetic that cannot work, an output folder that cannot be one) raises
:class:`archer.errors.UserError` naming the file and the key, before anything is written to disk or any model is
built. The checks that need the whole recipe are the functions in ``RECIPE_CHECKS``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.errors import UserError, one_line
from archer.evaluation.backends.base import VLLM_CPU_HEAD_SIZES
from archer.files import looks_local, parse_yaml, read_model_config, read_yaml_file, short
from archer.schema import FRACTION, NON_NEGATIVE, POSITIVE, Limit, at_least, build_dataclass

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
        default=None,
        metadata={"help": "Column mapping in archer.data.loaders (guessed from the dataset id when unset)."},
    )
    config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_files: str | None = field(
        default=None,
        metadata={
            "help": "A file (or glob) inside the Hub dataset or local folder to read instead of its default splits, "
            "e.g. train/archercoder-1.5b-train.json."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag or commit)."})
    split: str = field(default="train", metadata={"help": "Dataset split to train on."})
    num_examples: int | None = field(
        default=None, metadata={"help": "Train prompts: generated count for built-in tasks, a cap for others."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message prepended to chat prompts."})
    rewards: list[str] = field(default_factory=lambda: ["math"], metadata={"help": "Reward functions by name."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function."})
    max_tests: int | None = field(
        default=None,
        metadata={
            "help": "Code reward: at most this many randomly drawn stdin/stdout tests per problem; functional problems "
            "run all their tests (the authors' training: 16; null: all, as LiveCodeBench)."
        },
    )
    code_timeout_s: float = field(
        default=6.0,
        metadata={
            "help": "Code reward: wall-clock limit per stdin/stdout test (LiveCodeBench: 6 s; the authors: 30 s)."
        },
    )
    code_script_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "Code reward: wall-clock limit of an assert-script test's whole run (verl's 'functional' ground "
            "truth; the authors: 60 s)."
        },
    )
    code_memory_mb: int = field(
        default=1024,
        metadata={
            "help": "Code reward: address space per process and memory budget per run, in MiB (1 GiB, as the authors)."
        },
    )
    code_compare: str = field(
        default="lines",
        metadata={
            "help": "Code reward: how stdout is compared. lines: LiveCodeBench's rule (stripped lines, numbers as "
            "decimals); whole: the authors' training rule (the whole stripped stdout equals the whole stripped "
            "expected output)."
        },
    )
    code_budget_s: float | None = field(
        default=None,
        metadata={"help": "Code reward: cap on the sum of one completion's test run times (null: none, as LCB)."},
    )
    max_prompt_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Drop training prompts longer than this many tokens once the chat template is applied, as the "
            "authors' loader does (their limit: 2048); null keeps every prompt (a filtered dataset is already short)."
        },
    )
    expect_filtered: bool = field(
        default=False,
        metadata={
            "help": "The recipe is meant to train on data pass-rate filtered for its model, as the paper's are: the "
            "dry run and the launch warn (never stop) when data.dataset is neither an `archer filter` output for "
            "model.name_or_path (its filter.json) nor a set its authors released filtered for that model "
            "(archer.data.filter_marker)."
        },
    )
    require_think_close: bool | str = field(
        default=False,
        metadata={
            "help": "What a completion without </think> scores. false (default, the paper's rule): it is graded whole, "
            "as the authors' rewards do, so an answer written in reasoning cut off at the length limit can score; "
            "true: it scores 0, a stricter choice of ours that acts as an implicit length penalty; auto: true when "
            "the model's chat template opens the reasoning (R1-distill, Qwen3 thinking mode) (archer.rewards.thinking)."
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
        for name in ("num_examples", "max_tests", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1 (got {value})")
        for name in ("code_timeout_s", "code_script_timeout_s", "code_budget_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be > 0 seconds (got {value})")
        if self.code_memory_mb < 64:
            raise ValueError(f"code_memory_mb: must be >= 64 MiB (got {self.code_memory_mb}); Python alone needs more")
        from archer.rewards.code import COMPARE_RULES

        if self.code_compare not in COMPARE_RULES:
            raise ValueError(f"code_compare: {self.code_compare!r} is not one of {', '.join(COMPARE_RULES)}")
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
    trainer: Any  # archer.training.config.ArcherConfig (holds the objective preset and overrides)
    sft: Any | None  # archer.tiny.SFTConfig
    raw: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        trainer = {k: _yaml_friendly(v) for k, v in self.trainer.to_dict().items()}
        return {
            "model": _yaml_friendly(dataclasses.asdict(self.model)),
            "data": _yaml_friendly(dataclasses.asdict(self.data)),
            "sft": _yaml_friendly(dataclasses.asdict(self.sft)) if self.sft is not None else None,
            "objective": {
                "preset": self.trainer.objective,
                **_yaml_friendly(self.trainer.objective_config().to_dict()),
            },
            "trainer": trainer,
        }


# A check takes the built recipe and raises UserError on what cannot run. load_recipe runs them all, in this order,
# before anything is written or built: add one function here for each new rule.
Check = Callable[["Recipe"], None]


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, check and build a recipe. ``overrides`` are ``block.key=value`` strings (value parsed as YAML).

    Every check runs here: nothing is written to disk and no model is built before the whole recipe is valid.
    """
    path = Path(path)
    raw = read_recipe(path, overrides)
    recipe = build_recipe(raw, path)
    for check in RECIPE_CHECKS:
        check(recipe)
    return recipe


def read_recipe(path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The recipe's blocks as plain data, overrides applied; file, encoding, YAML and block errors are one line."""
    raw = read_yaml_file(path, "recipe file")
    if raw is None:
        raise UserError(f"{path}: the recipe is empty; start from recipes/tiny/archer.yaml")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of blocks {', '.join(BLOCKS)}, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item, path)
    unknown = sorted(map(str, set(raw) - set(BLOCKS)))
    if unknown:
        raise UserError(f"{path}: unknown block {short(unknown[0])}; valid blocks: {', '.join(BLOCKS)}")
    for name in BLOCKS:
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise UserError(f"{path}: block {name!r} must be a mapping, got {type(raw[name]).__name__}")
    return raw


def build_recipe(raw: dict[str, Any], path: Path) -> Recipe:
    """Each block into its typed config: unknown keys, wrong types and out-of-range values are one line."""
    model = build_dataclass(ModelArgs, raw.get("model") or {}, path, "model")
    data = build_dataclass(DataArgs, raw.get("data") or {}, path, "data")

    from archer.objective import ObjectiveConfig
    from archer.training.config import ArcherConfig, trainer_block_problem

    objective = dict(raw.get("objective") or {})
    preset = objective.pop("preset", "archer")
    try:
        ObjectiveConfig.preset(preset, **objective)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: objective: {one_line(err)}") from None

    trainer_block = dict(raw.get("trainer") or {})
    problem = trainer_block_problem(trainer_block)  # options the objective takes over, contradicting batch keys
    if problem:
        raise UserError(f"{path}: {problem}")
    trainer_block.setdefault("output_dir", f"outputs/{path.stem}")
    trainer = build_dataclass(
        ArcherConfig,
        {**trainer_block, "objective": preset, "objective_overrides": objective},
        path,
        "trainer",
        limits=TRAINER_LIMITS,
    )

    sft = None
    if raw.get("sft") is not None:
        if not model.is_tiny:
            raise UserError(f"{path}: sft: the SFT warm start only applies to model.name_or_path: tiny")
        from archer.tiny import SFTConfig

        sft = build_dataclass(SFTConfig, raw["sft"], path, "sft")
    return Recipe(path=path, model=model, data=data, trainer=trainer, sft=sft, raw=raw)


def load_recipe_for_plan(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """:func:`archer.recipe.load_recipe` for ``--dry-run`` on any machine: a GPU recipe (bf16) parses on a CPU-only
    machine, where TrainingArguments would otherwise refuse bf16 before anything is planned."""
    import transformers.training_args as training_args

    check = training_args.is_torch_bf16_gpu_available
    training_args.is_torch_bf16_gpu_available = lambda *a, **k: True
    try:
        return load_recipe(path, overrides)
    finally:
        training_args.is_torch_bf16_gpu_available = check


# --------------------------------------------------------------------------------------------------------------
# Checks on the built recipe (RECIPE_CHECKS)


def check_length(recipe: Recipe) -> None:
    """A run has a length: max_steps >= 1, or num_train_epochs given explicitly (TRL's default would be 3 epochs)."""
    trainer = recipe.raw.get("trainer") or {}
    if recipe.trainer.max_steps == -1 and "num_train_epochs" not in trainer:
        raise UserError(
            f"{recipe.path}: trainer.max_steps: not set; give the number of optimizer steps (or num_train_epochs)"
        )


def check_model_source(recipe: Recipe) -> None:
    """The tiny model's settings build; a local model folder holds a readable config.json."""
    path, model = recipe.path, recipe.model
    if model.is_tiny:
        from archer.tiny import TinyModelConfig

        build_dataclass(TinyModelConfig, model.tiny, path, "model.tiny")
        if not recipe.data.is_builtin:
            raise UserError(f"{path}: data.dataset: the tiny model only knows the built-in tasks {BUILTIN_DATASETS}")
        return
    local = Path(model.name_or_path).expanduser()
    if not local.exists():
        if looks_local(model.name_or_path):
            raise UserError(
                f"{path}: model.name_or_path: {model.name_or_path} does not exist "
                "(give an existing folder or a Hub id org/name)"
            )
        return  # a Hub id: checked when downloaded
    if not local.is_dir():
        raise UserError(f"{path}: model.name_or_path: {local} is a file; give a model folder or a Hub id")
    read_model_config(local, f"{path}: model.name_or_path")


def check_data_source(recipe: Recipe) -> None:
    """Rewards and loader exist; built-in task settings build and keep training draws off the held-out set; local
    data paths exist."""
    from archer.data.loaders import LOADERS, SPECIAL_LOADERS
    from archer.rewards import REWARD_FUNCS

    path, data = recipe.path, recipe.data
    for name in data.rewards:
        if name not in REWARD_FUNCS:
            raise UserError(f"{path}: data.rewards: unknown reward {short(name)}; valid: {', '.join(REWARD_FUNCS)}")
    if data.loader is not None and data.loader not in (*LOADERS, *SPECIAL_LOADERS):
        raise UserError(
            f"{path}: data.loader: unknown loader {short(data.loader)}; valid: {', '.join((*LOADERS, *SPECIAL_LOADERS))}"
        )
    if data.is_builtin:
        _check_builtin_task(data, path)
    elif looks_local(data.dataset) and not Path(data.dataset).expanduser().exists():
        raise UserError(
            f"{path}: data.dataset: {data.dataset} does not exist (give an existing file or folder, or a Hub id)"
        )
    elif not looks_local(data.dataset) and not _is_hub_id(data.dataset):
        raise UserError(
            f"{path}: data.dataset: {short(data.dataset)} is neither a path here nor a Hub dataset id org/name "
            f"(built-in tasks: {', '.join(BUILTIN_DATASETS)})"
        )


def _is_hub_id(name: str) -> bool:
    """``org/name`` with the Hub's characters (huggingface_hub.utils.validate_repo_id)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1


def check_batches(recipe: Recipe) -> None:
    """The batch arithmetic of this launch's world size (the plan ``--dry-run`` prints)."""
    from archer.training.batch import plan_recipe

    try:
        plan_recipe(recipe)
    except UserError as err:
        raise UserError(f"{recipe.path}: {err}") from None


def check_output_dir(recipe: Recipe) -> None:
    """trainer.output_dir is a folder, or can become one: no file in the way, and writable."""
    out = Path(recipe.trainer.output_dir).expanduser()
    where = f"{recipe.path}: trainer.output_dir={recipe.trainer.output_dir}"
    for folder in (out, *out.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise UserError(f"{where}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{where}: {folder} is not writable")
        return


# trainer.report_to value -> (transformers' availability check, what to pip install)
TRACKER_PACKAGES = {
    "azure_ml": ("is_azureml_available", "azureml-core"),
    "comet_ml": ("is_comet_available", "comet-ml"),
    "flyte": ("is_flytekit_available", "flytekit"),
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
}


def check_trainer_build(recipe: Recipe) -> None:
    """What would otherwise fail only when the Trainer is built, after the run folder is written: ``report_to``
    against transformers' integrations (each one installed), the optimizer's package, a checkpoint push's repo id
    and token."""
    from transformers.integrations import integration_utils

    args, where = recipe.trainer, f"{recipe.path}: trainer"
    trackers = integration_utils.INTEGRATION_TO_CALLBACK
    for name in args.report_to or []:
        if name not in trackers:
            raise UserError(
                f"{where}.report_to: unknown tracker {short(name)}; valid: none, all, {', '.join(sorted(trackers))}"
            )
        check, package = TRACKER_PACKAGES.get(name, (f"is_{name}_available", name))
        available = getattr(integration_utils, check, None)
        if available is not None and not available():
            instead = "make install brings it" if name == "tensorboard" else "or report_to: tensorboard, or none"
            raise UserError(f"{where}.report_to: {name} is not installed (pip install {package}; {instead})")
    from transformers import Trainer

    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except (ImportError, ValueError) as err:
        raise UserError(f"{where}.optim={_option(args.optim)}: {one_line(err)}") from None
    if args.push_checkpoints:
        from archer.publish.hub import check_repo_id, resolve_token

        try:
            check_repo_id(args.hub_model_id)
            resolve_token()  # as the launch's CheckpointPusher: HF_TOKEN or the saved login
        except UserError as err:
            raise UserError(f"{where}.push_checkpoints: {err}") from None


def _option(value: Any) -> Any:
    return getattr(value, "value", value)


def check_vllm_rollouts(recipe: Recipe) -> None:
    """A recipe that says it runs on CPU (``trainer.use_cpu: true``) asks vLLM rollouts for nothing vLLM's CPU build
    cannot do. (A recipe run on a machine without CUDA is checked when training starts: :func:`check_cpu_run`.)"""
    if (recipe.raw.get("trainer") or {}).get("use_cpu") is True and (problem := vllm_cpu_problem(recipe)):
        raise UserError(problem)


def check_cpu_run(recipe: Recipe) -> None:
    """Before a run on CPU (no CUDA, or ``use_cpu``) starts: vLLM rollouts ask for nothing vLLM's CPU build cannot do.
    Not a load-time check: a GPU recipe still loads (and plans) on a machine without a GPU."""
    if recipe.trainer.use_cpu and (problem := vllm_cpu_problem(recipe)):
        raise UserError(problem)


def vllm_cpu_problem(recipe: Recipe) -> str | None:
    """What vLLM's CPU build cannot do of what the recipe's vLLM rollouts ask for (one line), or None."""
    args = recipe.trainer
    if not args.use_vllm:
        return None
    where = f"{recipe.path}: trainer"
    if args.vllm_mode == "server":
        return (
            f"{where}.vllm_mode=server: TRL sends the new weights to a vLLM server over NCCL, which needs CUDA GPUs; "
            "on CPU use vllm_mode: colocate"
        )
    if args.vllm_enable_sleep_mode:
        return (
            f"{where}.vllm_enable_sleep_mode: vLLM's CPU build has no sleep mode (it refuses to start the engine); "
            "set it to false on CPU"
        )
    if recipe.model.is_tiny:
        from archer.tiny import TinyModelConfig

        tiny = TinyModelConfig(**recipe.model.tiny)
        head = tiny.hidden_size // tiny.num_heads
        if head not in VLLM_CPU_HEAD_SIZES:
            return (
                f"{recipe.path}: model.tiny: head size hidden_size / num_heads = {head}: vLLM's CPU attention "
                f"takes {', '.join(map(str, VLLM_CPU_HEAD_SIZES))} (e.g. hidden_size: 64, num_heads: 2)"
            )
    return None


RECIPE_CHECKS: list[Check] = [
    check_length,
    check_model_source,
    check_data_source,
    check_batches,
    check_output_dir,
    check_trainer_build,
    check_vllm_rollouts,
]


# --------------------------------------------------------------------------------------------------------------
# Typed blocks


# Ranges of trainer fields that TRL / transformers do not check themselves (or check only after building models).
TRAINER_LIMITS: dict[str, Limit] = {
    "per_device_train_batch_size": at_least(1),
    "per_device_eval_batch_size": at_least(1),
    "gradient_accumulation_steps": at_least(1),
    "num_generations": (lambda v: v >= 2, ">= 2 (advantages compare the responses to one prompt)"),
    "num_generations_eval": (lambda v: v >= 2, ">= 2"),
    "generation_batch_size": at_least(1),
    "steps_per_generation": at_least(1),
    "num_iterations": at_least(1),
    "max_completion_length": at_least(1),
    "max_steps": (lambda v: v >= 1 or v == -1, ">= 1 (or -1 with num_train_epochs)"),
    "num_train_epochs": POSITIVE,
    "learning_rate": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    "warmup_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "temperature": POSITIVE,
    "top_p": FRACTION,
    "top_k": NON_NEGATIVE,
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repetition_penalty": POSITIVE,
    "save_steps": POSITIVE,
    "logging_steps": POSITIVE,
    "save_total_limit": at_least(1),
    "seed": NON_NEGATIVE,
    "vllm_gpu_memory_utilization": FRACTION,
    "dataloader_num_workers": NON_NEGATIVE,
    "max_rollouts_without_update": at_least(1),
}


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, value = item.partition("=")
    block, dot, name = key.partition(".")
    if not sep or not dot or not name:
        raise UserError(f"override {short(item)}: expected block.key=value, e.g. trainer.max_steps=10")
    if block not in BLOCKS:
        raise UserError(f"override {short(item)}: unknown block {short(block)}; valid blocks: {', '.join(BLOCKS)}")
    raw.setdefault(block, {})
    if raw[block] is None:
        raw[block] = {}
    if not isinstance(raw[block], dict):
        raise UserError(f"{path}: block {block!r} must be a mapping")
    raw[block][name] = parse_yaml(value, f"override {short(item)}")


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


def _yaml_friendly(value: Any) -> Any:
    """Make a value YAML/JSON friendly (enums to their value, tuples to lists, objects to strings)."""
    if isinstance(value, dict):
        return {str(k): _yaml_friendly(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_friendly(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return _yaml_friendly(value.value)
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
