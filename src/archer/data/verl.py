"""verl's RL data format: rows made for verl (0.4) train here as they are.

A verl row, as verl's own preprocessing scripts write it (and the authors' ArcherCodeR file holds)::

    {"data_source": "code",
     "prompt": [{"role": "user", "content": "..."}],
     "ability": "code",
     "reward_model": {"style": "rule", "ground_truth": "..."},
     "extra_info": {"index": 17, ...}}

What each field becomes:

- ``prompt``: the chat messages, used as they are (``data.system_prompt`` adds a system message to rows without
  one); a plain string becomes one user message;
- ``reward_model.ground_truth``, for a math row: the answer, as ``solution`` (a list of accepted answers, or its
  JSON text: the first one);
- for a code row: a JSON string (or the object itself) of either ``{"inputs": [stdin, ...], "outputs": [stdout,
  ...]}``, stdin/stdout tests (a list-valued expected output is joined with ", ", as the authors' grader does), or
  ``{"functional": script}``, one Python script of asserts that calls the solution (``check(Solution().f)``),
  run once after the solution and passing when it exits 0; or LiveCodeBench's test list. They become ``tests``
  (JSON text of ``archer.rewards`` tests) and ``fn_name``;
- ``data_source`` is kept; ``ability`` and ``extra_info`` are dropped.

Which reward a row is for: the recipe's, when it names one; with both ``math`` and ``code``, code rows are those
whose ``data_source`` is one the authors' reward routes to code (or whose ground truth holds tests), math rows the
others, and each reward skips the other kind's rows.

A row that cannot be graded is a mistake in the data: a missing ground truth, one that is not JSON (code), one with
an empty test list or no tests at all, a prompt that is no chat. Each is one ``UserError`` line naming the source
and the row. Rows whose stdin is not text are dropped and counted: the authors' grader feeds stdin as text and
fails such a test every time, so its group never carries a gradient there either.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import datasets

from archer.errors import UserError
from archer.rewards.livecodebench import normalize_tests

logger = logging.getLogger(__name__)

VERL = "verl"  # the loader name a recipe gives (data.loader: verl)
COLUMNS = ("prompt", "reward_model")  # what makes a dataset verl's
# The data sources the authors' reward grades as code (it routes the rest to math, or refuses them).
CODE_SOURCES = ("code", "livecodebench", "livecodebench_v5", "livecodebench_v6", "humanevalplus")
_SHAPE = "a JSON string of {'inputs': [...], 'outputs': [...]} or {'functional': '<assert script>'}"


def is_verl(columns: Sequence[str]) -> bool:
    """Whether a dataset with these columns is in verl's RL format."""
    return set(COLUMNS) <= set(columns)


def _prompt(value: Any, system_prompt: str | None, where: str) -> list[dict[str, str]]:
    if isinstance(value, str) and value.strip():
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, (list, tuple)) and value:
        messages = []
        for k, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) or not message.get("role"):
                raise UserError(f"{where}: prompt message {k} must be a dict with 'role' and 'content' text")
            messages.append({"role": str(message["role"]), "content": message["content"]})
    else:
        raise UserError(f"{where}: prompt must be a non-empty list of chat messages (or text), got {value!r:.60}")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _ground_truth(row: dict[str, Any]) -> Any:
    reward_model = row.get("reward_model")
    return reward_model.get("ground_truth") if isinstance(reward_model, dict) else None


def _decoded(truth: Any, where: str) -> Any:
    """A code ground truth as data (it is JSON text in verl's files)."""
    if isinstance(truth, bytes):
        truth = truth.decode("utf-8", errors="replace")
    if not isinstance(truth, str):
        return truth
    try:
        return json.loads(truth)
    except ValueError as err:
        raise UserError(
            f"{where}: reward_model.ground_truth is not JSON ({' '.join(str(err).split())[:80]}); a code row needs "
            f"{_SHAPE}"
        ) from None


def _as_text(value: Any) -> str:
    if isinstance(value, list):  # the authors' grader joins a list-valued expected output with ", "
        return ", ".join(map(str, value))
    return value if isinstance(value, str) else str(value)


def code_tests(truth: Any, where: str) -> tuple[list[dict[str, str]], str | None] | None:
    """(tests, fn_name) of one code row's ground truth; None when a stdin is not text (the row is dropped).

    Raises UserError naming ``where`` for a missing, non-JSON or empty ground truth."""
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        raise UserError(f"{where}: reward_model.ground_truth is missing; a code row needs {_SHAPE}")
    value = _decoded(truth, where)
    if isinstance(value, dict) and "functional" in value:
        script = value["functional"]
        if not isinstance(script, str) or not script.strip():
            raise UserError(f"{where}: reward_model.ground_truth has an empty 'functional' script: no test to run")
        return [{"input": script, "output": "", "testtype": "script"}], None
    if isinstance(value, dict) and ("inputs" in value or "outputs" in value):
        inputs, outputs = value.get("inputs"), value.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise UserError(f"{where}: reward_model.ground_truth needs both 'inputs' and 'outputs' as lists")
        if len(inputs) != len(outputs):
            raise UserError(
                f"{where}: reward_model.ground_truth has {len(inputs)} inputs but {len(outputs)} outputs; each test "
                "is one stdin and its expected stdout"
            )
        if not inputs:
            raise UserError(f"{where}: reward_model.ground_truth has an empty test list: any code would pass")
        if not all(isinstance(stdin, str) for stdin in inputs):
            return None
        pairs = zip(inputs, outputs, strict=True)
        tests = [{"input": stdin, "output": _as_text(out), "testtype": "stdin"} for stdin, out in pairs]
        return tests, None
    if isinstance(value, list):  # LiveCodeBench's list of {"input", "output", "testtype", "metadata"}
        if not value:
            raise UserError(f"{where}: reward_model.ground_truth has an empty test list: any code would pass")
        metadata = value[0].get("metadata") if isinstance(value[0], dict) else None
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                metadata = None
        fn_name = metadata.get("func_name") if isinstance(metadata, dict) else None
        try:
            return normalize_tests(value, fn_name), fn_name
        except UserError as err:
            raise UserError(f"{where}: reward_model.ground_truth: {err}") from None
    raise UserError(f"{where}: reward_model.ground_truth holds no tests; a code row needs {_SHAPE}")


def math_answer(truth: Any, where: str) -> str:
    """The answer a math row's ground truth gives (the first one of a list)."""
    if isinstance(truth, str) and truth.lstrip().startswith("["):
        with contextlib.suppress(ValueError):  # else an answer that starts with a bracket, e.g. an interval
            truth = json.loads(truth)
    if isinstance(truth, (list, tuple)):
        truth = truth[0] if truth else None
    answer = "" if truth is None else str(truth).strip()
    if not answer:
        raise UserError(f"{where}: reward_model.ground_truth is missing; a math row needs the answer")
    return answer


def _is_code(row: dict[str, Any]) -> bool:
    if str(row.get("data_source") or "") in CODE_SOURCES:
        return True
    truth = _ground_truth(row)
    if isinstance(truth, str) and truth.lstrip().startswith("{"):
        try:
            truth = json.loads(truth)
        except ValueError:
            return False
    return isinstance(truth, dict) and bool({"inputs", "outputs", "functional"} & set(truth))


def convert_verl(
    dataset: datasets.Dataset, rewards: Sequence[str], *, system_prompt: str | None = None, source: str = "dataset"
) -> datasets.Dataset:
    """verl rows -> ``prompt`` + ``data_source`` + ``solution`` (math) | ``tests`` and ``fn_name`` (code)."""
    missing = [c for c in COLUMNS if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{source}: loader 'verl' needs column {missing[0]!r} (verl's RL format: prompt, data_source, "
            f"reward_model.ground_truth, extra_info); the dataset has {', '.join(dataset.column_names)}"
        )
    kinds = {name for name in rewards if name in ("math", "code")}
    if not kinds:
        raise UserError(f"{source}: loader 'verl' feeds the math and code rewards; the recipe names {list(rewards)}")
    columns = (
        ["prompt", "data_source"]
        + (["solution"] if "math" in kinds else [])
        + (["tests", "fn_name"] if "code" in kinds else [])
    )

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        where = f"{source}: row {index}"
        out: dict[str, Any] = {name: None for name in columns}
        out["prompt"] = _prompt(row.get("prompt"), system_prompt, where)
        out["data_source"] = str(row.get("data_source") or "")
        code = "code" in kinds and ("math" not in kinds or _is_code(row))
        truth = _ground_truth(row)
        if code:
            converted = code_tests(truth, where)
            if converted is None:
                out["prompt"] = None  # dropped below: a stdin that is not text
                return out
            tests, out["fn_name"] = converted
            out["tests"] = json.dumps(tests)
        else:
            out["solution"] = math_answer(truth, where)
        return out

    features = datasets.Features(
        {
            "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "data_source": datasets.Value("string"),
            **({"solution": datasets.Value("string")} if "math" in kinds else {}),
            **(
                {"tests": datasets.Value("large_string"), "fn_name": datasets.Value("string")}
                if "code" in kinds
                else {}
            ),
        }
    )
    converted = dataset.map(
        convert,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=features,
        desc="verl rows",
    )
    kept = converted.filter(lambda row: row["prompt"] is not None, desc="verl rows with text stdin")
    dropped = len(converted) - len(kept)
    if dropped:
        logger.info("%s: %d of %d rows dropped (a test's stdin is not text)", source, dropped, len(converted))
    if not len(kept):
        raise UserError(f"{source}: loader 'verl' found no usable row in {len(dataset)}")
    return kept
