"""LiveCodeBench: rows in the real code_generation_lite schema, graded in the sandbox with all their tests."""

import json

import pytest
from paths import ROOT

from archer.evaluation.grading import grade
from archer.evaluation.runner import score_task
from archer.evaluation.suite import TaskSpec

ROWS = {
    json.loads(line)["question_id"]: json.loads(line)
    for line in (ROOT / "tests" / "data" / "eval" / "lcb.jsonl").read_text().splitlines()
}


def fenced(code: str, reasoning: str = "think") -> str:
    return f"<think>{reasoning}</think>\nHere it is.\n```python\n{code}\n```\n"


STDIN_RIGHT = "n = int(input())\na = sorted(map(int, input().split()))\nprint(a[-1] + a[-2])"
STDIN_WRONG = (
    "n = int(input())\na = list(map(int, input().split()))\nprint(a[0] + a[1])"  # passes the public test only
)
FUNC_RIGHT = (
    "from typing import List\n\nclass Solution:\n    def countEven(self, nums: List[int]) -> int:\n"
    "        return sum(len(str(x)) % 2 == 0 for x in nums)"
)
FUNC_WRONG = FUNC_RIGHT.replace("== 0", "== 1")


def test_prompts_carry_all_tests_and_the_starter_code(tasks):
    stdin_doc = tasks["archer:lcb_v5"].prompt_function(ROWS["abc370_a"], "archer:lcb_v5")
    assert "standard input" in stdin_doc.query and "```python" in stdin_doc.query
    assert [t["output"] for t in stdin_doc.specific["tests"]] == ["8\n", "0\n", "110\n"]  # public, then private
    assert stdin_doc.specific["fn_name"] is None
    func_doc = tasks["archer:lcb_v6"].prompt_function(ROWS["3600"], "archer:lcb_v6")
    assert "def countEven(self, nums: List[int]) -> int:" in func_doc.query
    assert func_doc.specific["fn_name"] == "countEven" and len(func_doc.specific["tests"]) == 3


@pytest.mark.sandbox
def test_lcb_grades_correct_and_wrong_solutions(tasks):
    stdin_doc = tasks["archer:lcb_v5"].prompt_function(ROWS["abc370_a"], "archer:lcb_v5")
    func_doc = tasks["archer:lcb_v6"].prompt_function(ROWS["3600"], "archer:lcb_v6")
    got = [s.score for s in grade(stdin_doc.specific, [fenced(STDIN_RIGHT), fenced(STDIN_WRONG), "no code"])]
    assert got == [1.0, 0.0, 0.0]
    graded = grade(func_doc.specific, [fenced(FUNC_WRONG), fenced(FUNC_RIGHT), fenced(FUNC_RIGHT, "```python\n")])
    assert [s.score for s in graded] == [0.0, 1.0, 1.0]
    assert graded[1].extracted.startswith("from typing import List")


@pytest.mark.sandbox
def test_lcb_task_metrics(tasks):
    docs = [tasks["archer:lcb_v5"].prompt_function(ROWS[q], "archer:lcb_v5") for q in ("abc370_a", "3600")]
    completions = [[fenced(STDIN_RIGHT), fenced(STDIN_WRONG)], [fenced(FUNC_WRONG), fenced(FUNC_WRONG)]]
    spec = TaskSpec("archer:lcb_v5", 2, 0.8, 1.0, 64, "chat", (1,))
    metrics, details = score_task(spec, docs, ["a", "b"], completions, None)
    # problem 1: 1 of 2 correct (pass@2 = 1), problem 2: none
    assert metrics == {"avg@2": pytest.approx(25.0), "pass@1": pytest.approx(25.0), "pass@2": pytest.approx(50.0)}
    assert details[0]["gold"] == "3 tests"
