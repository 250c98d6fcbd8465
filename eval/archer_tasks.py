"""Archer's benchmark tasks for lighteval: AIME24, AIME25, MATH-500, LiveCodeBench v5 / v6, tiny arithmetic.

Prompts follow the R1-distill style (reason step by step; math answers in ``\\boxed{}``, code in a ```python
block). Completions are graded by the project's own rewards (``archer.rewards``: Math-Verify for math, the
bubblewrap sandbox for code, every test at evaluation), through ``archer.evaluation.lighteval_metric``.

``archer eval`` (``make eval``) loads this module alone and drives generation itself. It also works with
lighteval's own CLI, e.g.::

    lighteval vllm "model_name=<model>,generation_parameters={temperature:0.8,top_p:1.0,max_new_tokens:32768}" \\
        "archer:aime24|0" --custom-tasks eval/archer_tasks.py

(``archer:arithmetic`` is generated locally and runs only through ``archer eval``.)
"""

from __future__ import annotations

import json
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


def math_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """AIME / MATH-500 row (``problem``, ``answer``) -> Doc graded by the math reward."""
    answer = str(line["answer"])
    problem_id = line.get("unique_id") or line.get("id") or line.get("url")
    return Doc(
        task_name=task_name or "",
        query=f"{line['problem'].strip()}\n{MATH_INSTRUCTION}",
        choices=[answer],
        gold_index=0,
        specific={"grader": "math", "gold": answer, "problem_id": str(problem_id)},
    )


def lcb_prompt(line: dict[str, Any], task_name: str | None = None) -> Doc:
    """LiveCodeBench ``code_generation_lite`` row -> Doc graded on all public and private tests in the sandbox."""
    from archer.rewards import decode_lcb_tests

    query = f"{CODE_INSTRUCTION}\n\n{line['question_content'].strip()}\n\n"
    if starter := (line.get("starter_code") or "").strip():
        query += f"Complete this starter code, keeping its signature:\n```python\n{starter}\n```\n"
    else:
        query += "Your program must read its input from standard input and write its answer to standard output.\n"
    tests = json.loads(line["public_test_cases"]) + decode_lcb_tests(line["private_test_cases"])
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


def in_lcb_window(version: str):
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
    name: str, prompt_function, hf_repo: str, hf_subset: str, split: str, k: int, **kwargs
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


# k below is the paper's sample count, used when lighteval's CLI runs these tasks; suites set their own.
TASKS_TABLE = [
    _task("aime24", math_prompt, "HuggingFaceH4/aime_2024", "default", "train", k=64),
    _task("aime25", math_prompt, "yentinglin/aime_2025", "default", "train", k=64),
    _task("math_500", math_prompt, "HuggingFaceH4/MATH-500", "default", "test", k=4),
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
