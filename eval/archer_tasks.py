"""Archer's benchmark tasks for lighteval: AIME24/25, AMC23, MATH-500, Minerva, OlympiadBench, LiveCodeBench v5 / v6,
tiny arithmetic.

Prompts follow the R1-distill style (reason step by step; math answers in ``\\boxed{}``, code in a ```python
block). Completions are graded by the project's own rewards (``archer.rewards``: Math-Verify for math, the
bubblewrap sandbox for code, every test at evaluation), through ``archer.evaluation.lighteval_metric``.

Run them with ``archer eval`` (``make eval``), which loads this module alone and decodes with transformers, vLLM's
own API or an OpenAI-compatible server (``eval/README.md``), e.g.::

    make eval MODEL=outputs/<run> SUITE=eval/suites/paper.yaml
    make eval MODEL=outputs/<run> SUITE=eval/suites/paper.yaml ARGS="--base-url http://127.0.0.1:8000/v1"

lighteval's own ``lighteval vllm ... --custom-tasks`` cannot run with the pinned set (lighteval 0.13's vLLM model
accepts only vLLM 0.10.0-0.10.1 and calls APIs vLLM 0.30 removed); its transformers route can, with this module
imported from the installed package: ``lighteval accelerate "model_name=<model>,..." "archer:aime24|0" --custom-tasks
archer.tasks``. There each task reports ``avg@k`` and ``pass@k`` at its own k (below). ``archer:arithmetic`` is
generated locally and runs only through ``archer eval``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from archer.evaluation.lighteval_metric import sampling_metric

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Solve the programming problem below in Python. Think it through step by step, then give your complete "
    "solution as one ```python code block."
)

# LiveCodeBench versions as release-date windows [start, end) on ``contest_date``, as the paper uses them.
LCB_WINDOWS: dict[str, tuple[str, str]] = {"v5": ("2024-08-01", "2025-02-01"), "v6": ("2025-02-01", "2025-05-01")}


def _math_doc(problem: str, gold: str | list[str], problem_id: Any, task_name: str | None) -> Doc:
    """A math problem with the R1-distill instruction, graded by the math reward against ``gold`` (a list: any)."""
    return Doc(
        task_name=task_name or "",
        query=f"{problem.strip()}\n{MATH_INSTRUCTION}",
        choices=gold if isinstance(gold, list) else [gold],
        gold_index=0,
        specific={"grader": "math", "gold": gold, "problem_id": str(problem_id)},
    )


def _answer_text(answer: Any) -> str:
    """A gold answer as text; a number stored as a float (27.0) is written as the integer it is."""
    return str(int(answer)) if isinstance(answer, float) and answer.is_integer() else str(answer)


def _text_id(text: str) -> str:
    """A stable id for rows that carry none (Minerva): the first 12 hex digits of the problem's SHA-1."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def math_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """AIME / MATH-500 row (``problem``, ``answer``) -> Doc graded by the math reward."""
    problem_id = line.get("unique_id") or line.get("id") or line.get("url")
    return _math_doc(line["problem"], _answer_text(line["answer"]), problem_id, task_name)


def question_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """AMC23 (``id``, ``question``, ``answer``, ``url``) or Minerva (``question``, ``answer``) row -> Doc."""
    problem_id = line.get("id") if line.get("id") is not None else _text_id(line["question"])
    return _math_doc(line["question"], _answer_text(line["answer"]), problem_id, task_name)


def olympiadbench_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """OlympiadBench row (``id``, ``question``, ``final_answer``: a list of accepted answers) -> Doc."""
    answers = [_answer_text(a) for a in line["final_answer"]]
    return _math_doc(line["question"], answers[0] if len(answers) == 1 else answers, line["id"], task_name)


def lcb_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """LiveCodeBench ``code_generation_lite`` row -> Doc graded on all public and private tests in the sandbox."""
    from archer.rewards import decode_lcb_tests

    query = f"{CODE_INSTRUCTION}\n\n{line['question_content'].strip()}\n\n"
    if starter := (line.get("starter_code") or "").strip():
        query += f"Complete this starter code, keeping its signature:\n```python\n{starter}\n```\n"
    else:
        query += "Your program must read its input from standard input and write its answer to standard output.\n"
    # Some rows have an empty private_test_cases string: they are graded on their public tests.
    tests = decode_lcb_tests(line.get("public_test_cases") or "") + decode_lcb_tests(
        line.get("private_test_cases") or ""
    )
    return Doc(
        task_name=task_name or "",
        query=query,
        choices=[""],
        gold_index=0,
        specific={
            "grader": "code",
            "tests": tests,
            "fn_name": json.loads(line.get("metadata") or "{}").get("func_name"),
            "problem_id": line["question_id"],
        },
    )


def arithmetic_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """The embedded default's task: the raw training prompt, graded against the training solution."""
    return Doc(
        task_name=task_name or "",
        query=line["prompt"],
        choices=[line["solution"]],
        gold_index=0,
        specific={"grader": "math", "gold": line["solution"], "problem_id": line["prompt"]},
    )


def in_lcb_window(version: str) -> Callable[[dict[str, Any]], bool]:
    start, end = LCB_WINDOWS[version]

    def keep(line: dict[str, Any]) -> bool:
        return start <= str(line["contest_date"])[:10] < end

    keep.__name__ = f"lcb_{version}_window"
    return keep


def arithmetic_heldout(model_path: str | None = None) -> list[dict[str, Any]]:
    """The held-out problems the trainer scored for this run: the task's reserved set, built from the run's
    ``config.yaml`` (``data.task`` settings, first ``data.heldout_examples``); without one, the default task's."""
    from pathlib import Path

    import yaml

    from archer.data.arithmetic import ArithmeticTask

    config = Path(model_path or "") / "config.yaml"
    data = (yaml.safe_load(config.read_text()) or {}).get("data", {}) if model_path and config.is_file() else {}
    task = ArithmeticTask(**(data.get("task") or {}))
    return [{"prompt": p.prompt, "solution": p.solution} for p in task.heldout(data.get("heldout_examples") or None)]


def _task(
    name: str,
    prompt_function: Callable[[dict[str, Any], str], Doc],
    hf_repo: str,
    hf_subset: str,
    split: str,
    k: int,
    **kwargs: Any,
) -> LightevalTaskConfig:
    return LightevalTaskConfig(
        name=f"archer:{name}",
        prompt_function=prompt_function,
        hf_repo=hf_repo,
        hf_subset=hf_subset,
        hf_avail_splits=[split],
        evaluation_splits=[split],
        metrics=[sampling_metric(k)],
        generation_size=32768,
        stop_sequence=[],  # stop at EOS only
        version=0,
        **kwargs,
    )


# k below is the paper's sample count, used when lighteval's CLI runs these tasks; suites set their own. Dataset
# revisions are pinned in the suites (eval/suites/paper.yaml). Where each dataset and its columns come from:
# - AIME24, AIME25, MATH-500: lighteval 0.13.0's own tasks (lighteval/tasks/tasks/aime.py, math_500.py).
# - AMC23: math-ai/amc23, split test, columns id / question / answer / url, 40 problems (the paper's pass@64 of
#   97.5 = 39/40); a lighteval task module of this schema (name amc23, hf_repo math-ai/amc23) and many RLVR eval
#   scripts use it. rllm's DeepScaleR example reads AMC from opencompass/LiveMathBench instead (not AMC 2023).
# - Minerva: math-ai/minervamath, split test, columns question / answer, 272 problems, as rllm's DeepScaleR example
#   (examples/deepscaler/prepare_math_data.py) loads it.
# - OlympiadBench: Hothan/OlympiadBench, config OE_TO_maths_en_COMP (open-ended, text-only, English maths),
#   split train, columns id / question / final_answer (a list), as lighteval 0.13.0's olympiade_bench.py names it
#   and rllm's DeepScaleR example loads it. Public manifests of the pinned revision count 674 rows; the paper's
#   pass@4 values fit 675 problems (DeepScaleR's own test file), so one problem may differ.
TASKS_TABLE = [
    _task("aime24", math_prompt, "HuggingFaceH4/aime_2024", "default", "train", k=64),
    _task("aime25", math_prompt, "yentinglin/aime_2025", "default", "train", k=64),
    _task("amc23", question_prompt, "math-ai/amc23", "default", "test", k=64),
    _task("math_500", math_prompt, "HuggingFaceH4/MATH-500", "default", "test", k=4),
    _task("minerva", question_prompt, "math-ai/minervamath", "default", "test", k=8),
    _task("olympiadbench", olympiadbench_prompt, "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", k=4),
    *[
        _task(
            f"lcb_{version}",
            lcb_prompt,
            "lighteval/code_generation_lite",
            "release_v6",
            "test",
            k=k,
            hf_filter=in_lcb_window(version),
        )
        for version, k in (("v5", 8), ("v6", 16))
    ],
    _task("arithmetic", arithmetic_prompt, "archer/arithmetic-heldout", "default", "test", k=8),
]

# Tasks whose rows are built locally instead of downloaded, from the evaluated model's folder (``archer eval``).
LOCAL_DATASETS = {"archer:arithmetic": arithmetic_heldout}
