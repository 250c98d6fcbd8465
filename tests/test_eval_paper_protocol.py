"""The paper's evaluation protocol: all six math benchmarks and their average row, pinned dataset revisions named
in results.json, the reasoning rule and the code limits as suite keys. Generation is faked (a fixed list of
completions per task) and the Hub is faked from the files under tests/data/eval, so this runs offline in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import ROOT

from archer.cli import main
from archer.errors import UserError
from archer.evaluation import runner
from archer.evaluation.grading import GradingOptions, grade
from archer.evaluation.results import average_rows, markdown_table
from archer.evaluation.runner import EvalRequest, evaluate, grading_options
from archer.evaluation.suite import load_suite

MODULE = ROOT / "eval" / "archer_tasks.py"
DATA = ROOT / "tests" / "data" / "eval"
MATH_TASKS = ("aime24", "aime25", "amc23", "math_500", "minerva", "olympiadbench")


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def doc(tasks, task: str, row: dict):
    config = tasks[f"archer:{task}"]
    return config.prompt_function(row, config.name)


def test_new_benchmarks_read_their_public_schemas(tasks):
    assert (tasks["archer:amc23"].hf_repo, list(tasks["archer:amc23"].evaluation_splits)) == (
        "math-ai/amc23",
        ["test"],
    )
    assert tasks["archer:minerva"].hf_repo == "math-ai/minervamath"
    olympiad = tasks["archer:olympiadbench"]
    assert (olympiad.hf_repo, olympiad.hf_subset, list(olympiad.evaluation_splits)) == (
        "Hothan/OlympiadBench",
        "OE_TO_maths_en_COMP",
        ["train"],
    )
    amc = [doc(tasks, "amc23", r) for r in rows("amc23")]
    assert [d.specific["gold"] for d in amc] == ["2", "27", "10"]  # math-ai/amc23 stores answers as floats
    assert amc[1].specific["problem_id"] == "1" and amc[1].query.startswith("What is the sum of the digits")
    minerva = [doc(tasks, "minerva", r) for r in rows("minerva")]
    assert [d.specific["gold"] for d in minerva] == ["5800", "\\frac{1}{4}", "30"]
    assert len({d.specific["problem_id"] for d in minerva}) == 3  # no id column: a stable hash of the question
    olympiad_docs = [doc(tasks, "olympiadbench", r) for r in rows("olympiadbench")]
    assert [d.specific["gold"] for d in olympiad_docs] == ["$3$", "$\\frac{1}{2}$", ["$3$", "$x=3$"]]
    for d in amc + minerva + olympiad_docs:
        assert d.query.endswith("Please reason step by step, and put your final answer within \\boxed{}.")


def test_graded_like_the_training_reward(tasks):
    amc = doc(tasks, "amc23", rows("amc23")[1])
    assert [s.score for s in grade(amc.specific, ["\\boxed{27}", "\\boxed{27.0}", "\\boxed{26}"])] == [1, 1, 0]
    minerva = doc(tasks, "minerva", rows("minerva")[1])
    assert [s.score for s in grade(minerva.specific, ["\\boxed{0.25}", "\\boxed{1/2}"])] == [1, 0]
    several = doc(tasks, "olympiadbench", rows("olympiadbench")[2])  # any listed answer counts
    graded = grade(several.specific, ["\\boxed{3}", "\\boxed{x=3}", "\\boxed{2}"])
    assert [s.score for s in graded] == [1, 1, 0] and graded[1].extracted == "x=3"


def test_lighteval_runs_them_with_the_papers_k(monkeypatch):
    from lighteval.tasks.registry import Registry

    monkeypatch.setattr(Registry, "_load_from_files", staticmethod(lambda files, prefix: {}))
    monkeypatch.setattr(Registry, "_load_from_subdirs", staticmethod(lambda subdirs: {}))
    names = "archer:amc23|0,archer:minerva|0,archer:olympiadbench|0"
    loaded = Registry(tasks=names, custom_tasks=str(MODULE)).load_tasks()
    assert [max(loaded[f"{n}"].num_samples) for n in names.split(",")] == [64, 8, 4]


def test_lcb_row_without_private_tests_grades_on_its_public_ones(tasks):
    from archer.rewards import decode_lcb_tests

    assert decode_lcb_tests("") == [] and decode_lcb_tests("  ") == []
    row = dict(next(r for r in rows("lcb") if r["question_id"] == "abc370_a"), private_test_cases="")
    specific = doc(tasks, "lcb_v5", row).specific
    assert specific["tests"] == decode_lcb_tests(row["public_test_cases"]) and specific["tests"]


def test_paper_suite_lists_the_papers_benchmarks_revisions_and_rules(tasks):
    suite = load_suite(ROOT / "eval" / "suites" / "paper.yaml", set(tasks))
    by_task = {t.short_name: t for t in suite.tasks}  # the tasks and their k: test_eval_suite.py
    assert set(by_task) >= set(MATH_TASKS)
    assert suite.averages == {"math avg": MATH_TASKS}
    for name in MATH_TASKS:  # every math dataset pinned to a full commit sha
        revision = by_task[name].revision
        assert revision is not None and len(revision) == 40 and int(revision, 16) >= 0
    for task in suite.tasks:
        assert (task.require_think_close, task.code_timeout_s, task.code_budget_s) == (False, 6, None)
    quick = load_suite(ROOT / "eval" / "suites" / "quick.yaml", set(tasks))
    assert {t.short_name: t.revision for t in quick.tasks} == {n: t.revision for n, t in by_task.items()}
    assert {t.require_think_close for t in quick.tasks} == {False}  # the authors' rule, by default


def test_suite_mistakes_are_one_line_errors(tmp_path, tasks):
    from archer.errors import UserError

    for text, message in [
        ("defaults: {revision: abc}\ntasks: [aime24]", "defaults.revision: names one task's data"),
        (
            "tasks: [{task: aime24, require_think_close: maybe}]",
            "require_think_close: expected bool or 'auto', got 'maybe'",
        ),
        ("tasks: [{task: lcb_v5, code_budget_s: 0}]", "code_budget_s=0.0: must be > 0"),
        ("tasks: [aime24, amc23]\naverages: {avg: [aime24, minerva]}", "'minerva' is not a task of this suite"),
        ("tasks: [aime24, amc23]\naverages: {avg: [aime24]}", "expected a list of two or more task names"),
    ]:
        path = tmp_path / "suite.yaml"
        path.write_text(text)
        with pytest.raises(UserError) as err:
            load_suite(path, set(tasks))
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_math_avg_row_is_the_mean_of_each_tasks_avg_at_k():
    k = {"aime24": 64, "aime25": 64, "amc23": 64, "math_500": 4, "minerva": 8, "olympiadbench": 4, "lcb_v5": 8}
    # The paper's Archer-Math-1.5B row (docs/method.md#reported-results): math avg 59.1 from these six avg@K values.
    avg = {"aime24": 48.7, "aime25": 33.8, "amc23": 86.0, "math_500": 90.8, "minerva": 35.7, "olympiadbench": 59.3}
    results_tasks = {
        name: {"k": k[name], "metrics": {f"avg@{k[name]}": avg.get(name, 29.4), f"pass@{k[name]}": 50.0}} for name in k
    }
    rows_ = average_rows(results_tasks, {"math avg": MATH_TASKS})
    assert rows_["math avg"]["value"] == pytest.approx(59.05) and rows_["math avg"]["tasks"] == list(MATH_TASKS)
    for task in results_tasks.values():
        task.update(num_problems=1, temperature=0.8, top_p=1.0, max_new_tokens=32768)
    table = markdown_table(
        {"model": "m", "suite": "paper", "protocol": {"backend": "vllm"}, "tasks": results_tasks, "averages": rows_}
    )
    row = "| math avg | - | - | 59.1 | - | - | - | - | mean avg@k of aime24, aime25, amc23, math_500, minerva, olympiadbench |"
    assert row in table.splitlines()  # the paper's 59.1


def test_code_limits_reach_the_code_reward(monkeypatch, tmp_path, tasks):
    import archer.rewards

    seen = {}

    def fake_code_reward(completions, **kwargs):
        seen.update(kwargs)
        return [1.0] * len(completions)

    monkeypatch.setattr(archer.rewards, "code_reward", fake_code_reward)
    path = tmp_path / "suite.yaml"
    path.write_text("tasks: [lcb_v5, {task: lcb_v6, code_timeout_s: 4, code_budget_s: 30, require_think_close: true}]")
    default, custom = load_suite(path, set(tasks)).tasks
    spec = {"grader": "code", "tests": [{"input": "1", "output": "1", "testtype": "stdin"}], "fn_name": None}
    grade(spec, ["x"], grading_options(default, None))
    assert (seen["timeout_s"], seen["budget_s"], seen["require_think_close"]) == (6.0, None, False)
    grade(spec, ["x"], grading_options(custom, None))
    assert (seen["timeout_s"], seen["budget_s"], seen["require_think_close"]) == (4.0, 30.0, True)
    assert grading_options(custom, None) == GradingOptions(True, 4.0, 30.0, None)


# --------------------------------------------------------------------------------------------------------------
# A whole `archer eval` run with faked generation and a faked Hub: what results.json records.


class FakeBackend:
    name = "transformers"

    def __init__(self, tokenizer, completions: dict[str, list[str]]):
        self.tokenizer, self._completions = tokenizer, completions

    def generate(self, prompts, sampling, desc, texts=None):
        completions = self._completions[desc]  # desc: the task's short name
        assert len(completions) == sampling.k
        return [list(completions) for _ in prompts]

    def protocol(self):
        return {"dtype": "auto", "batch_size": 16}

    def close(self):
        pass


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    import datasets

    from archer.tiny import build_tokenizer

    calls = []

    def load_dataset(repo, subset=None, split=None, revision=None, **_):
        calls.append((repo, subset, split, revision))
        name = {"math-ai/amc23": "amc23", "Hothan/OlympiadBench": "olympiadbench"}[repo]
        return datasets.Dataset.from_list(rows(name))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (ROOT / "tests" / "data" / "chat_templates" / "deepseek_r1_distill.jinja").read_text()
    completions = {
        "amc23": ["So 3 + r = 5 + r - 2.\n</think>\nAdd \\boxed{2}.", "It might be \\boxed{2}, but wait"],  # row 0
        "olympiadbench": ["Roots 3 and -1.</think> \\boxed{3}", "</think> \\boxed{-1}"],  # row 0
    }
    monkeypatch.setattr(runner, "select_backend", lambda *args, **kwargs: "transformers")
    monkeypatch.setattr(runner, "check_hub_source", lambda *a, **k: None)  # a faked Hub: nothing to reach
    monkeypatch.setattr(runner, "load_backend", lambda *a: FakeBackend(tokenizer, completions))

    def run(close: str, **request) -> tuple[dict, Path, list]:
        suite = tmp_path / f"fake-{close}.yaml"
        suite.write_text(
            f"name: fake\nmodule: {MODULE}\n"
            f"defaults: {{k: 2, max_new_tokens: 8, require_think_close: {close}}}\n"
            "tasks:\n  - {task: amc23, limit: 1, revision: 80815d37005feb82cd7f8fbc6901d5d3eff43057}\n"
            "  - {task: olympiadbench, limit: 1}\n"
            "averages: {math avg: [amc23, olympiadbench]}\n"
        )
        request = EvalRequest(model="org/model", suite=str(suite), runs_root=tmp_path / "runs", **request)
        out, results = evaluate(request)
        assert json.loads((out / "results.json").read_text()) == results
        return results, out, calls

    return run


def test_results_name_the_data_and_the_reasoning_rule(fake_run):
    results, out, calls = fake_run("auto")  # the R1-distill template opens <think>: auto requires the close
    assert calls == [
        ("math-ai/amc23", "default", "test", "80815d37005feb82cd7f8fbc6901d5d3eff43057"),
        ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", None),
    ]
    amc, olympiad = results["tasks"]["amc23"], results["tasks"]["olympiadbench"]
    assert (amc["dataset"], amc["revision"]) == ("math-ai/amc23", "80815d37005feb82cd7f8fbc6901d5d3eff43057")
    assert olympiad["revision"] is None  # unpinned: results say so
    assert amc["grading"] == {"require_think_close": True}
    details = [json.loads(line) for line in (out / amc["details"]).read_text().splitlines()]
    assert details[0]["scores"] == [1.0, 0.0] and details[0]["extracted"] == ["2", None]
    assert (amc["metrics"]["avg@2"], olympiad["metrics"]["avg@2"]) == (50.0, 50.0)
    assert results["averages"] == {"math avg": {"metric": "avg@k", "tasks": ["amc23", "olympiadbench"], "value": 50.0}}
    assert "| math avg | - | - | 50.0 |" in (out / "results.md").read_text()


def test_a_non_thinking_suite_grades_the_whole_completion(fake_run):
    results, _, _ = fake_run("false")
    assert results["tasks"]["amc23"]["grading"] == {"require_think_close": False}
    assert results["tasks"]["amc23"]["metrics"]["avg@2"] == 100.0  # the unclosed guess counts without the rule
    assert results["averages"]["math avg"]["value"] == 75.0


def test_results_record_the_limit_and_which_tasks_ran(fake_run):
    results, _, _ = fake_run("auto")
    assert results["schema_version"] == 2 and results["limit"] is None and results["tasks_selected"] is None
    amc = results["tasks"]["amc23"]
    assert (amc["limit"], amc["limited"], amc["num_problems"]) == (1, True, 1)  # the suite's limit: a smoke run

    results, _, _ = fake_run("auto", tasks=("olympiadbench",))
    assert list(results["tasks"]) == ["olympiadbench"] and results["tasks_selected"] == ["olympiadbench"]
    assert results["averages"] == {}  # the math avg row needs amc23 too


def test_a_task_outside_the_suite_is_one_line_before_any_data_loads(fake_run, capsys):
    with pytest.raises(UserError, match=r"--tasks: 'minerva' is not a task of suite fake; its tasks: amc23, olymp"):
        fake_run("auto", tasks=("amc23", "minerva"))
    with pytest.raises(UserError, match="--tasks: no task named"):
        fake_run("auto", tasks=())


def test_cli_tasks_flag_typo_is_one_line_exit_2(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    argv = ["eval", "--model", str(model), "--suite", "paper", "--tasks", "aime24,minervaa", "--data", "aime24=x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tasks: 'minervaa' is not a task of suite paper; its tasks: aime24, aime25")
    assert err.count("\n") == 1 and not (model / "eval").exists()
