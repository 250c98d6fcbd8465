"""Drop the problems a model always or never solves: sample k answers per problem, keep 0 < pass rate < 1.

A group whose k answers all score the same carries no GRPO advantage, so such problems only cost rollouts. The
paper filters its training sets this way against the base model before RL. Sampling runs on vLLM (GPU, or its CPU
build) or on transformers' ``generate`` (CPU or GPU); answers are scored by the same reward functions training uses.
Prompts are encoded once, as TRL's trainer encodes them (chat prompts through the chat template, whose BOS, if any,
is the only one; plain prompts with the tokenizer's special tokens), and both samplers get those token ids.

    python -m archer.data.filtering agentica-org/DeepScaleR-Preview-Dataset data/deepscaler-filtered \\
        --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --reward math --k 8 --max-prompt-tokens 2048 --backend vllm

The output folder (``datasets.save_to_disk``) holds the kept rows with their ``pass_rate``, in the columns
training reads (``prompt`` + ``solution`` | ``tests``, ``fn_name``): point a recipe's ``data.dataset`` at it. Its
``filter_stats.json`` records how many problems were never solved, always solved and kept.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from archer.errors import UserError

logger = logging.getLogger(__name__)

STATS_FILE = "filter_stats.json"
BACKENDS = ("transformers", "vllm")

# token-id prompts -> k completions per prompt
Sampler = Callable[[list[list[int]], int], list[list[str]]]


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
    seed: int = field(default=0, metadata={"help": "Sampling seed (vLLM: prompt i gets seed + i * k)."})

    def __post_init__(self) -> None:
        if self.k < 2:
            raise UserError(f"--k {self.k}: a pass rate strictly between 0 and 1 needs k >= 2 answers")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise UserError(f"--max-prompt-tokens {self.max_prompt_tokens}: must be >= 1")


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


def pass_rates(
    dataset: datasets.Dataset, prompts: list[list[int]], sample: Sampler, reward: Callable[..., list], k: int
) -> list[float]:
    """Fraction of ``k`` sampled answers that ``reward`` scores 1, per row. Rows and prompts align."""
    completions = sample(prompts, k)
    if len(completions) != len(prompts) or any(len(c) != k for c in completions):
        raise RuntimeError(
            f"the sampler returned {len(completions)} groups for {len(prompts)} prompts, not k={k} each"
        )
    flat = [c for group in completions for c in group]
    columns = {
        name: [value for value in dataset[name] for _ in range(k)]
        for name in ("solution", "tests", "fn_name", "metadata")
        if name in dataset.column_names
    }
    scores = reward(flat, **columns)
    return [sum(float(s or 0.0) for s in scores[i * k : (i + 1) * k]) / k for i in range(len(prompts))]


def select_learnable(dataset: datasets.Dataset, rates: Sequence[float]) -> tuple[datasets.Dataset, dict[str, int]]:
    """The rows with 0 < pass rate < 1 (a ``pass_rate`` column added), and the counts of each kind."""
    keep = [i for i, rate in enumerate(rates) if 0.0 < rate < 1.0]
    stats = {
        "problems": len(rates),
        "never_solved": sum(rate == 0.0 for rate in rates),
        "always_solved": sum(rate == 1.0 for rate in rates),
        "kept": len(keep),
    }
    return dataset.add_column("pass_rate", list(rates)).select(keep), stats


def filter_dataset(
    dataset: datasets.Dataset,
    tokenizer: Any,
    sample: Sampler,
    reward: Callable[..., list],
    config: FilterConfig,
    chat_template_kwargs: dict | None = None,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Drop over-long prompts, then the always / never solved problems. Returns the kept rows and the counts."""
    _, ids = encode_prompts(dataset["prompt"], tokenizer, chat_template_kwargs)
    too_long = 0
    if config.max_prompt_tokens is not None:
        fits = [i for i, prompt in enumerate(ids) if len(prompt) <= config.max_prompt_tokens]
        too_long = len(ids) - len(fits)
        dataset, ids = dataset.select(fits), [ids[i] for i in fits]
    if len(dataset) == 0:
        raise UserError(f"every prompt is longer than --max-prompt-tokens {config.max_prompt_tokens}")
    rates = pass_rates(dataset, ids, sample, reward, config.k)
    kept, stats = select_learnable(dataset, rates)
    stats = {"prompt_too_long": too_long, **stats, "k": config.k}
    logger.info(
        "%d problems: %d prompts too long, %d never solved, %d always solved, %d kept",
        stats["problems"] + too_long,
        too_long,
        stats["never_solved"],
        stats["always_solved"],
        stats["kept"],
    )
    return kept, stats


# --------------------------------------------------------------------------------------------------------------
# Samplers


def transformers_sampler(model: Any, tokenizer: Any, config: FilterConfig) -> Sampler:
    """k answers per prompt from ``model.generate`` (left-padded batches); decoded as TRL decodes completions."""
    import torch

    def sample(prompts: list[list[int]], k: int) -> list[list[str]]:
        torch.manual_seed(config.seed)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out: list[list[str]] = []
        try:
            for start in tqdm(range(0, len(prompts), config.batch_size), desc="sampling", unit="batch"):
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

    return sample


class VLLMSampler:
    """k answers per prompt from a vLLM engine (``archer.evaluation.backends.vllm_engine``: GPU, or CPU with
    vLLM's CPU build). Prompt i is sampled with seed ``config.seed + i * k`` (its answers get ``seed + j``), so no
    two answers share a seed and a prompt's answers do not depend on the others in the batch. ``close()`` stops
    the engine."""

    def __init__(
        self,
        model: str,
        config: FilterConfig,
        tensor_parallel_size: int = 1,
        max_model_length: int | None = None,
    ):
        if importlib.util.find_spec("vllm") is None:
            raise UserError("--backend vllm: vLLM is not installed (make install-gpu); use --backend transformers")
        from archer.evaluation.backends import vllm_engine

        if not vllm_engine.on_gpu() and tensor_parallel_size > 1:
            raise UserError("--tensor-parallel-size > 1 needs GPUs; vLLM on CPU runs one engine of one process")
        self.config = config
        length = max_model_length or (config.max_prompt_tokens or 2048) + config.max_new_tokens
        try:
            self.engine = vllm_engine.build_engine(
                model,
                dtype="auto",
                tensor_parallel_size=tensor_parallel_size,
                max_model_length=length,
                seed=config.seed,
            )
        except vllm_engine.EngineError as err:
            from archer.evaluation.backends.vllm import unservable

            raise UserError(unservable(model, err.reason)) from None

    def __call__(self, prompts: list[list[int]], k: int) -> list[list[str]]:
        from archer.evaluation.backends import vllm_engine
        from archer.evaluation.backends.base import problem_seeds

        c = self.config
        seeds = problem_seeds(c.seed, len(prompts), k)
        generations = vllm_engine.generate(self.engine, prompts, k, c.temperature, c.top_p, c.max_new_tokens, seeds)
        return [g.texts for g in generations]

    def close(self) -> None:
        from archer.evaluation.backends import vllm_engine

        vllm_engine.shutdown(self.engine)


# --------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m archer.data.filtering", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="Hub id, save_to_disk folder or json / jsonl / parquet file")
    parser.add_argument("output", help="folder to write the kept problems to (must not exist)")
    parser.add_argument("--model", required=True, help="the model to filter against (Hub id or folder)")
    parser.add_argument("--reward", required=True, choices=("math", "code"), help="how answers are scored")
    parser.add_argument("--loader", default=None, help="archer.data.loaders loader (guessed from the Hub id)")
    parser.add_argument("--config", default=None, help="dataset configuration name")
    parser.add_argument("--split", default="train")
    parser.add_argument("--data-files", default=None, help="one file (or glob) of the dataset repo or folder to read")
    parser.add_argument("--num-examples", type=int, default=None, help="filter only the first N problems")
    parser.add_argument("--min-tests", type=int, default=None, help="code: drop problems with fewer tests")
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--chat-template-kwargs", type=json.loads, default=None, help="JSON, e.g. thinking off")
    parser.add_argument(
        "--require-think-close",
        choices=("auto", "true", "false"),
        default="false",
        help="false (default, as the paper's recipes train): a completion without </think> is graded whole; "
        "true: it scores 0; auto: true when the chat template opens the reasoning",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="transformers")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per engine")
    defaults = FilterConfig()
    for name in ("k", "max_new_tokens", "temperature", "top_p", "max_prompt_tokens", "batch_size", "seed"):
        value = getattr(defaults, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=float if isinstance(value, float) else int,
            default=value,
            help=FilterConfig.__dataclass_fields__[name].metadata["help"],
        )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from archer.data.loaders import LOADERS, PREPARED, VERL, convert_dataset, guess_loader, read_dataset
    from archer.data.verl import convert_verl, is_verl
    from archer.rewards import get_reward_func, resolve_require_think_close

    output = Path(args.output)
    if output.exists():
        raise UserError(f"{output}: already exists; give a new folder")
    config = FilterConfig(
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        max_prompt_tokens=args.max_prompt_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    raw = read_dataset(args.dataset, args.split, args.config, args.data_files)
    if args.num_examples:
        raw = raw.select(range(min(args.num_examples, len(raw))))
    loader = args.loader or guess_loader(args.dataset)
    if loader == VERL or (loader is None and is_verl(raw.column_names)):
        dataset = convert_verl(raw, [args.reward], system_prompt=args.system_prompt, source=args.dataset)
    elif loader and loader != PREPARED:
        if LOADERS.get(loader) and LOADERS[loader].reward != args.reward:
            raise UserError(f"--reward {args.reward}: loader {loader!r} gives {LOADERS[loader].reward} problems")
        dataset = convert_dataset(
            raw, loader, system_prompt=args.system_prompt, min_tests=args.min_tests, source=args.dataset
        )
    elif "prompt" in raw.column_names:
        dataset = raw
    else:
        raise UserError(f"{args.dataset}: no loader known and no 'prompt' column; pass --loader")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    closing: VLLMSampler | None = None
    sample: Sampler
    if args.backend == "vllm":
        sample = closing = VLLMSampler(args.model, config, args.tensor_parallel_size)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
        model.eval()
        sample = transformers_sampler(model, tokenizer, config)
    setting = {"true": True, "false": False}.get(args.require_think_close, "auto")
    require_close = resolve_require_think_close(setting, tokenizer, args.chat_template_kwargs)
    reward = functools.partial(get_reward_func(args.reward), require_think_close=require_close)
    try:
        kept, stats = filter_dataset(dataset, tokenizer, sample, reward, config, args.chat_template_kwargs)
    finally:
        if closing is not None:
            closing.close()
    if len(kept) == 0:
        raise UserError(
            f"no problem has 0 < pass rate < 1 ({stats['never_solved']} never solved, {stats['always_solved']} "
            f"always solved): wrong --model or --reward, or raise --k / --max-new-tokens"
        )
    stats.update(
        dataset=args.dataset,
        model=args.model,
        reward=args.reward,
        require_think_close=require_close,
        config=asdict(config),
    )
    _save(kept, stats, output)
    return stats


def _save(dataset: datasets.Dataset, stats: dict[str, Any], output: Path) -> None:
    """Write into a temporary sibling folder, then rename: an interrupted run leaves nothing half-written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        dataset.save_to_disk(str(tmp / "data"))
        (tmp / "data" / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / "data").rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        stats = run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(
        f"{args.output}: kept {stats['kept']} of {stats['problems'] + stats['prompt_too_long']} problems "
        f"({stats['never_solved']} never solved, {stats['always_solved']} always solved, "
        f"{stats['prompt_too_long']} prompts too long)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
