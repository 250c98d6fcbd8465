"""Loaders for the public training sets: each maps a Hub dataset's columns onto what the rewards read.

Every loader turns one row into a *problem* (plain text) plus its gold: ``solution`` (math: the answer that
``math_reward`` checks) or ``tests`` + ``fn_name`` (code: what ``code_reward`` runs). The problem then becomes a chat
prompt with the instruction the reward expects (``\\boxed{}`` or a ```python block), and an optional system message.
Rows a loader cannot use (no answer, no tests) are dropped and counted in the log.

The column layouts are those of the datasets' Hub pages (2026-11). A local folder (``save_to_disk``) or a
``.json`` / ``.jsonl`` / ``.parquet`` file works too: with a loader name, or with the columns ``prompt`` and
``solution`` / ``tests`` already there, as prepared data. The output folder of ``archer filter`` (it holds
``filter.json``) is always read as prepared data, whatever ``data.loader`` and ``data.data_files`` say: the loader
was applied when it was filtered, so a paper recipe trains on it with only ``data.dataset`` changed.

Datasets made for verl (``prompt`` chat + ``reward_model.ground_truth``, e.g. the authors' code set
``wizardII/ArcherCodeR-Dataset``) keep their own prompts: ``data.loader: verl`` (:mod:`archer.data.verl`), also
chosen by itself for a dataset with those columns and no loader of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from archer.data.verl import convert_verl, is_verl
from archer.errors import UserError

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Solve the problem in Python 3. Think it through, then give the complete solution in one ```python code block "
    "at the end of your answer."
)
STDIN_HINT = "The program reads the input from standard input and writes the answer to standard output."
FUNCTION_HINT = "Write the function `{fn_name}` (a method of class Solution if the problem gives one)."

# DAPO-Math-17k wraps each problem in an "Answer:" instruction that our \boxed{} reward does not read.
_DAPO_PREFIX = re.compile(r"^\s*Solve the following math problem step by step\..*?to the problem\.\s*", re.S)
_DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$")
_BOXED_SUFFIX = re.compile(r"\s*Let'?s think step by step and output the final answer within \\boxed\{\}\.?\s*$")

Row = dict[str, Any]


@dataclass(frozen=True)
class Loader:
    """How to read one public dataset: ``convert(row)`` gives ``{"problem", "solution"}`` (math) or
    ``{"problem", "tests", "fn_name"}`` (code), or None for a row that cannot be used."""

    name: str
    reward: str  # math | code
    hub_ids: tuple[str, ...]
    columns: tuple[str, ...]  # the columns convert() reads
    convert: Callable[[Row], Row | None]
    about: str


# --------------------------------------------------------------------------------------------------------------
# Math


def _deepscaler(row: Row) -> Row | None:
    return _math(row["problem"], row["answer"])


def _dapo_math(row: Row) -> Row | None:
    prompt = row["prompt"]
    if isinstance(prompt, list):  # the original release: a one-message chat, gold in reward_model
        text = next((m.get("content", "") for m in prompt if m.get("role") == "user"), "")
        answer = (row.get("reward_model") or {}).get("ground_truth")
    else:  # processed copies: the problem as text, the answer in "solution"
        text, answer = prompt, row.get("solution")
    return _math(_DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text)), answer)


def _skywork_or1(row: Row) -> Row | None:
    text = next((m.get("content", "") for m in row["prompt"] if m.get("role") == "user"), "")
    answer = (row.get("reward_model") or {}).get("ground_truth")
    if isinstance(answer, str) and answer.lstrip().startswith("["):
        with contextlib.suppress(ValueError):  # a JSON list of accepted answers: train on the first
            answer = json.loads(answer)
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    return _math(text, answer)


def _math(problem: Any, answer: Any) -> Row | None:
    problem = _BOXED_SUFFIX.sub("", str(problem or "")).strip()
    answer = "" if answer is None else str(answer).strip()
    if not problem or not answer:
        return None
    return {"problem": problem, "solution": answer}


# --------------------------------------------------------------------------------------------------------------
# Code


def _deepcoder(row: Row) -> Row | None:
    fn_name = None
    metadata = row.get("metadata")
    if isinstance(metadata, str) and metadata.strip():
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = None
    if isinstance(metadata, dict):
        fn_name = metadata.get("func_name") or metadata.get("fn_name")
    return _code(row["problem"], row["tests"], fn_name)


def _code(problem: Any, raw_tests: Any, fn_name: str | None) -> Row | None:
    problem = str(problem or "").strip()
    normalized = normalize_code_tests(raw_tests, fn_name)
    if not problem or normalized is None:
        return None
    tests, fn_name = normalized
    return {"problem": problem, "tests": json.dumps(tests), "fn_name": fn_name}


def normalize_code_tests(raw: Any, fn_name: str | None = None) -> tuple[list[dict[str, str]], str | None] | None:
    """Tests in the reward's form (``input`` / ``output`` text, ``testtype`` stdin | functional) and the function
    name, from the layouts the public code sets use; None when there are no usable tests.

    - APPS / TACO: ``{"inputs": [...], "outputs": [...], "fn_name": ...}``; a call-based output wraps the return
      value in a one-element list (APPS's convention), unwrapped here;
    - LiveCodeBench: ``[{"input", "output", "testtype"}]`` with a functional input of one JSON value per line;
    - PrimeIntellect: ``[{"type": "stdin_stdout" | "function_call", "input", "output", "fn_name"}]`` with
      call arguments and results as lists (APPS's convention again);
    - Codeforces: ``[{"input", "output"}]``.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if isinstance(raw, dict) and "inputs" in raw and "outputs" in raw:
        fn_name = raw.get("fn_name") or fn_name
        if len(raw["inputs"]) != len(raw["outputs"]):
            return None
        raw = [
            {"input": i, "output": o, "testtype": "functional" if fn_name else "stdin", "wrapped": True}
            for i, o in zip(raw["inputs"], raw["outputs"], strict=True)
        ]
    if not isinstance(raw, list):
        return None
    tests = []
    for test in raw:
        if not isinstance(test, dict) or "input" not in test or "output" not in test:
            return None
        fn_name = test.get("fn_name") or fn_name
        kind = test.get("testtype") or {"function_call": "functional", "stdin_stdout": "stdin"}.get(
            test.get("type", "")
        )
        kind = kind or ("functional" if fn_name else "stdin")
        if kind == "functional":
            if not fn_name:
                return None
            wrapped = test.get("wrapped") or test.get("type") == "function_call"
            tests.append({"input": _call_arguments(test["input"]), "output": _call_result(test["output"], wrapped)})
        else:
            tests.append({"input": _lines(test["input"]), "output": _lines(test["output"])})
        tests[-1]["testtype"] = kind
    return (tests, fn_name) if tests else None


def _call_arguments(value: Any) -> str:
    """One JSON value per line, one line per argument (what the reward's harness reads)."""
    if isinstance(value, str):
        return value
    return "\n".join(json.dumps(arg) for arg in (value if isinstance(value, list) else [value]))


def _call_result(value: Any, wrapped: bool) -> str:
    if isinstance(value, str) and not wrapped:
        return value
    if wrapped and isinstance(value, list) and len(value) == 1:
        value = value[0]
    return json.dumps(value)


def _lines(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


# --------------------------------------------------------------------------------------------------------------
# Registry


LOADERS: dict[str, Loader] = {
    loader.name: loader
    for loader in (
        Loader(
            "deepscaler",
            "math",
            ("agentica-org/DeepScaleR-Preview-Dataset",),
            ("problem", "answer"),
            _deepscaler,
            "DeepScaleR-Preview (40k: AIME, AMC, Omni-MATH, STILL); one of the paper's math sources",
        ),
        Loader(
            "dapo_math",
            "math",
            ("BytedTsinghua-SIA/DAPO-Math-17k", "open-r1/DAPO-Math-17k-Processed"),
            ("prompt",),
            _dapo_math,
            "DAPO-Math-17k, its 'Answer:' instruction stripped; one of the paper's math sources",
        ),
        Loader(
            "skywork_or1",
            "math",
            ("Skywork/Skywork-OR1-RL-Data",),
            ("prompt", "reward_model"),
            _skywork_or1,
            "Skywork-OR1-RL-Data, split 'math'; one of the paper's math sources",
        ),
        Loader(
            "deepcoder",
            "code",
            ("agentica-org/DeepCoder-Preview-Dataset",),
            ("problem", "tests"),
            _deepcoder,
            "DeepCoder-Preview (configs primeintellect, taco, codeforces, lcbv5); the paper's code sources",
        ),
    )
}
PREPARED = "prepared"  # rows that already hold prompt + solution | tests
VERL = "verl"  # verl's RL format, read by archer.data.verl (prompts kept as they are)
VERL_HUB_IDS = ("wizardII/ArcherCodeR-Dataset",)  # the authors' code training set
SPECIAL_LOADERS = (PREPARED, VERL)


def guess_loader(dataset: str) -> str | None:
    """The loader registered for a Hub id (case-insensitive), or None."""
    wanted = dataset.strip("/").lower()
    for loader in LOADERS.values():
        if any(wanted == hub_id.lower() for hub_id in loader.hub_ids):
            return loader.name
    if any(wanted == hub_id.lower() for hub_id in VERL_HUB_IDS):
        return VERL
    return None


def build_prompt(problem: str, reward: str, fn_name: str | None = None, system_prompt: str | None = None) -> list:
    """The chat prompt for one problem: the instruction its reward needs, after an optional system message."""
    if reward == "math":
        text = f"{problem}\n\n{MATH_INSTRUCTION}"
    else:
        hint = FUNCTION_HINT.format(fn_name=fn_name) if fn_name else STDIN_HINT
        text = f"{problem}\n\n{hint} {CODE_INSTRUCTION}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": text}]


def convert_dataset(
    dataset: datasets.Dataset,
    loader: str,
    *,
    system_prompt: str | None = None,
    min_tests: int | None = None,
    source: str = "dataset",
) -> datasets.Dataset:
    """Rows of a public dataset -> ``prompt`` (chat) + ``problem`` + ``solution`` | ``tests``, ``fn_name``."""
    if loader not in LOADERS:
        raise UserError(f"data.loader: unknown loader {loader!r}; valid: {', '.join(sorted(LOADERS))}")
    spec = LOADERS[loader]
    missing = [c for c in spec.columns if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{source}: loader {loader!r} needs column {missing[0]!r}; the dataset has {', '.join(dataset.column_names)}"
        )
    rows = []
    for row in dataset:
        converted = spec.convert(row)
        if converted is None:
            continue
        if min_tests and spec.reward == "code" and len(json.loads(converted["tests"])) < min_tests:
            continue
        prompt = build_prompt(converted["problem"], spec.reward, converted.get("fn_name"), system_prompt)
        rows.append({"prompt": prompt, **converted})
    dropped = len(dataset) - len(rows)
    if dropped:
        logger.info("%s: %d of %d rows dropped (no usable answer / tests)", source, dropped, len(dataset))
    if not rows:
        raise UserError(f"{source}: loader {loader!r} found no usable row in {len(dataset)}")
    return datasets.Dataset.from_list(rows)


def _file_kind(name: str) -> str:
    suffix = Path(name).suffix
    return {".jsonl": "json"}.get(suffix, suffix.lstrip("."))


def read_dataset(
    dataset: str,
    split: str = "train",
    config: str | None = None,
    data_files: str | None = None,
    revision: str | None = None,
) -> datasets.Dataset:
    """A Hub dataset, a ``save_to_disk`` folder or a json (records or JSON lines) / jsonl / parquet / csv file, as
    one split. ``data_files`` reads that file (or glob) of a Hub dataset or local folder instead of its splits."""
    path = Path(dataset).expanduser()
    try:
        if path.is_dir() and data_files:
            return datasets.load_dataset(_file_kind(data_files), data_files=str(path / data_files), split="train")
        if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        if path.is_file():
            return datasets.load_dataset(_file_kind(path.name), data_files=str(path), split="train")
        if data_files:  # one file of a Hub dataset repo
            return datasets.load_dataset(dataset, data_files=data_files, split="train", revision=revision)
        return datasets.load_dataset(dataset, name=config, split=split, revision=revision)
    except (
        FileNotFoundError,
        ValueError,
        KeyError,
        ConnectionError,
        OSError,
        datasets.exceptions.DatasetGenerationError,
    ) as err:
        where = f"{dataset} (config {config}, split {split})" if config else f"{dataset} (split {split})"
        if data_files:
            where = f"{dataset} (file {data_files})"
        raise UserError(f"data.dataset: cannot load {where}: {' '.join(str(err).split())[:300]}") from None


def load_training_dataset(data: Any) -> datasets.Dataset:
    """The training set a recipe's ``data`` block (:class:`archer.recipe.DataArgs`) names, ready for the trainer."""
    from archer.data.filter_marker import read_marker

    data_files, loader = data.data_files, data.loader or guess_loader(data.dataset)
    if (marker := read_marker(data.dataset)) is not None:  # archer filter's output: converted when it was filtered
        if loader not in (None, PREPARED) or data_files:
            logger.info(
                "%s: an archer filter output (filtered against %s): read as prepared data, not through data.loader "
                "%s / data.data_files %s", data.dataset, marker["model"], loader, data_files,
            )  # fmt: skip
        data_files, loader = None, PREPARED
    raw = read_dataset(data.dataset, data.split, data.config, data_files, data.revision)
    columns = set(raw.column_names)
    source = f"{data.dataset}/{data_files}" if data_files else data.dataset
    if loader is None and is_verl(raw.column_names) and not columns & {"solution", "tests"}:
        loader = VERL  # a dataset made for verl, with no loader of its own
    if loader == VERL:
        dataset = convert_verl(raw, data.rewards, system_prompt=data.system_prompt, source=source)
    elif loader is None or loader == PREPARED:
        dataset = _prepared(raw, data.dataset, data.system_prompt)
    else:
        dataset = convert_dataset(raw, loader, system_prompt=data.system_prompt, source=data.dataset)
    if data.num_examples is not None and data.num_examples < len(dataset):
        dataset = dataset.select(range(data.num_examples))
    logger.info("training set: %s, %d prompts", data.dataset, len(dataset))
    return dataset


def _prepared(dataset: datasets.Dataset, source: str, system_prompt: str | None) -> datasets.Dataset:
    columns = set(dataset.column_names)
    if "prompt" not in columns or not columns & {"solution", "tests"}:
        raise UserError(
            f"data.loader: no loader for {source!r} and it lacks the columns prompt + solution | tests (or verl's "
            f"prompt + reward_model); name one of {', '.join([*sorted(LOADERS), VERL])}"
        )
    if system_prompt:

        def add_system(row: Row) -> Row:
            prompt = row["prompt"]
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if prompt and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system_prompt}, *prompt]
            return {"prompt": prompt}

        dataset = dataset.map(add_system)
    return dataset


def drop_long_prompts(
    dataset: datasets.Dataset,
    tokenizer: Any,
    max_tokens: int,
    chat_template_kwargs: dict[str, Any] | None = None,
    source: str = "dataset",
) -> datasets.Dataset:
    """The rows whose prompt, rendered as the trainer renders it (chat template with the generation prompt), is at
    most ``max_tokens`` tokens, as the authors' loader keeps them (verl's ``filter_overlong_prompts``)."""
    kwargs = dict(chat_template_kwargs or {})

    def length(prompt: Any) -> int:
        if isinstance(prompt, str):
            return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, **kwargs)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    kept = dataset.filter(lambda row: length(row["prompt"]) <= max_tokens, desc=f"prompts <= {max_tokens} tokens")
    if len(kept) < len(dataset):
        logger.info("%s: %d of %d prompts longer than %d tokens dropped", source, len(dataset) - len(kept),
                    len(dataset), max_tokens)  # fmt: skip
    if not len(kept):
        raise UserError(f"data.max_prompt_tokens={max_tokens}: every prompt of {source} is longer; raise it")
    return kept
