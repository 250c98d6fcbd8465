"""The lighteval task module: loads offline through lighteval's Registry, prompts rows of each benchmark's real
schema, and scores fixed generations to exactly the hand-computed avg@k / pass@k."""

import json

import pytest
from paths import ROOT

from archer.evaluation.grading import grade
from archer.evaluation.runner import load_task_module, score_task
from archer.evaluation.suite import TaskSpec

MODULE = ROOT / "eval" / "archer_tasks.py"
DATA = ROOT / "tests" / "data" / "eval"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def spec(task: str, k: int, pass_k=()) -> TaskSpec:
    return TaskSpec(task, k, 0.8, 1.0, 64, "chat", tuple(pass_k))


def test_lighteval_registry_loads_only_our_module_offline(monkeypatch):
    from lighteval.tasks.registry import Registry

    # Offline, as `archer eval` runs: none of lighteval's built-in task files is imported.
    monkeypatch.setattr(Registry, "_load_from_files", staticmethod(lambda files, prefix: {}))
    monkeypatch.setattr(Registry, "_load_from_subdirs", staticmethod(lambda subdirs: {}))
    names = "archer:aime24|0,archer:math_500|0,archer:lcb_v6|0"
    loaded = Registry(tasks=names, custom_tasks=str(MODULE)).load_tasks()
    assert set(loaded) == set(names.split(","))
    # the metric makes lighteval draw the paper's k samples per problem
    assert max(loaded["archer:aime24|0"].num_samples) == 64
    assert max(loaded["archer:math_500|0"].num_samples) == 4
    assert max(loaded["archer:lcb_v6|0"].num_samples) == 16


def test_math_prompts_follow_r1_distill_style(tasks):
    for task, data in (("archer:aime24", "aime24"), ("archer:aime25", "aime25"), ("archer:math_500", "math500")):
        config = tasks[task]
        for row in rows(data):
            doc = config.prompt_function(row, config.name)
            assert doc.query.startswith(row["problem"].strip())
            assert doc.query.endswith("Please reason step by step, and put your final answer within \\boxed{}.")
            assert doc.specific["grader"] == "math" and doc.specific["gold"] == str(row["answer"])
    assert tasks["archer:math_500"].prompt_function(rows("math500")[0]).specific["problem_id"].startswith("test/")


def test_lcb_versions_are_release_date_windows(tasks):
    kept = {
        version: [r["question_id"] for r in rows("lcb") if tasks[f"archer:lcb_{version}"].hf_filter(r)]
        for version in ("v5", "v6")
    }
    assert kept == {"v5": ["abc370_a"], "v6": ["3600"]}


def test_arithmetic_task_is_the_trainers_heldout_set(tmp_path, tasks):
    from archer.data.arithmetic import ArithmeticTask

    module = load_task_module(MODULE)
    (tmp_path / "config.yaml").write_text(
        "data:\n  task: {max_operand: 20, heldout_seed: 99}\n  heldout_examples: 7\n"
    )
    got = module.arithmetic_heldout(str(tmp_path))
    expected = ArithmeticTask(max_operand=20, heldout_seed=99).heldout(7)
    assert got == [{"prompt": p.prompt, "solution": p.solution} for p in expected]
    assert len(module.arithmetic_heldout(None)) == ArithmeticTask().heldout_size
    doc = tasks["archer:arithmetic"].prompt_function(got[0])
    assert doc.query == got[0]["prompt"] and doc.specific["gold"] == got[0]["solution"]


def test_fixed_math_generations_score_exactly(tasks):
    config = tasks["archer:aime24"]
    docs = [config.prompt_function(r, config.name) for r in rows("aime24")[1:3]]  # golds 25 and 401
    completions = [
        # 25: right, wrong, no box, right after reasoning -> c = 2 of n = 4
        ["<think>4xy=100</think> so \\boxed{25}", "\\boxed{24}", "it is 25", "<think>\\boxed{7}</think>\\boxed{25}"],
        # 401: a box inside the reasoning only does not count -> c = 0
        ["<think>\\boxed{401}</think> done", "\\boxed{400}", "", "\\boxed{401"],
    ]
    metrics, details = score_task(spec("archer:aime24", 4, [1, 2]), docs, ["p1", "p2"], completions, None)
    assert details[0]["scores"] == [1.0, 0.0, 0.0, 1.0] and details[1]["scores"] == [0.0] * 4
    assert details[0]["extracted"] == ["25", "24", None, "25"]
    # avg@4 = (2/4 + 0) / 2; pass@2 = (1 - C(2,2)/C(4,2) + 0) / 2 = (5/6) / 2; pass@4 = (1 + 0) / 2
    assert metrics["avg@4"] == pytest.approx(25.0)
    assert metrics["pass@1"] == pytest.approx(25.0)
    assert metrics["pass@2"] == pytest.approx(100 * 5 / 12)
    assert metrics["pass@4"] == pytest.approx(50.0)
    assert details[0]["pass@2"] == pytest.approx(100 * 5 / 6)


def test_math_500_answers_are_checked_symbolically(tasks):
    config = tasks["archer:math_500"]
    doc = config.prompt_function(rows("math500")[0], config.name)  # gold \frac{7}{8}
    texts = ["\\boxed{\\dfrac{7}{8}}", "\\boxed{0.875}", "\\boxed{7/8}", "\\boxed{\\frac{8}{7}}"]
    assert [s.score for s in grade(doc.specific, texts)] == [1.0, 1.0, 1.0, 0.0]


def test_lighteval_metric_agrees_with_runner(tasks):
    from lighteval.metrics import apply_metric
    from lighteval.models.model_output import ModelResponse

    config = tasks["archer:aime25"]
    doc = config.prompt_function(rows("aime25")[0], config.name)  # gold 70
    texts = ["\\boxed{70}"] + ["\\boxed{69}"] * 63
    (out,) = apply_metric([ModelResponse(text=texts)], [doc], list(config.metrics))
    assert out == {"avg@k": pytest.approx(1 / 64), "pass@k": 1.0}  # k = 64: the task's, kept out of the names
    metrics, _ = score_task(spec("archer:aime25", 64), [doc], ["p"], [texts], None)
    assert metrics == {"avg@64": pytest.approx(100 / 64), "pass@64": 100.0}
