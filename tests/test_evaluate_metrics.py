"""The graders as `evaluate` metric modules (metrics/archer_math, metrics/archer_code): loaded offline from the
repo with evaluate.load, scored by exactly the training rewards, with evaluate's conventions."""

from __future__ import annotations

import doctest
import json
import socket
import sys

import pytest
from paths import ROOT

from archer.sandbox.runner import sandbox_available

evaluate = pytest.importorskip("evaluate", reason="evaluate is installed by `make install` (setup.cfg)")


@pytest.fixture
def load(monkeypatch):
    """evaluate.load("metrics/<name>") from the repo root, as the README shows it, with no network at all."""

    def no_network(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access to {address}")
        return real_connect(self, address, *args)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(ROOT)
    return lambda name: evaluate.load(f"metrics/{name}")


def run_examples(metric) -> None:
    """The examples of the module's inputs description (what the Hub page and the README show) hold."""
    module = sys.modules[type(metric).__module__]
    test = doctest.DocTestParser().get_doctest(
        module._KWARGS_DESCRIPTION, {"evaluate": evaluate}, type(metric).__name__, module.__file__, 0
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_math_metric_scores_like_the_training_reward(load):
    from archer.rewards import math_reward

    metric = load("archer_math")
    # evaluate's conventions: description, citation, inputs description, features, docstring
    assert type(metric).__name__ == "ArcherMath" and "Math-Verify" in metric.description
    assert "2507.15778" in metric.citation and "pass_k" in metric.inputs_description
    assert [set(f) for f in metric.features] == [{"predictions", "references"}] * 2  # one gold, or accepted golds
    assert "avg@k" in type(metric).__doc__

    predictions = [
        ["<think>4xy=100</think> so \\boxed{25}", "\\boxed{24}", "it is 25", "<think>\\boxed{7}</think>\\boxed{25}"],
        ["<think>\\boxed{401}</think> done", "\\boxed{400}", "", "\\boxed{401"],  # boxed only inside reasoning
        ["\\boxed{\\dfrac{7}{8}}", "\\boxed{0.875}", "\\boxed{7/8}", "\\boxed{\\frac{8}{7}}"],  # symbolic check
    ]
    references = ["25", "401", "\\frac{7}{8}"]
    out = metric.compute(predictions=predictions, references=references, pass_k=[1, 2])
    for texts, gold, scores in zip(predictions, references, out["scores"], strict=True):
        assert scores == [float(r or 0.0) for r in math_reward(texts, solution=[gold] * len(texts))]
    assert out["scores"] == [[1.0, 0.0, 0.0, 1.0], [0.0] * 4, [1.0, 1.0, 1.0, 0.0]]
    assert out["extracted"][0] == ["25", "24", None, "25"]
    # c = 2, 0, 3 of n = 4: avg@4 = 5/12; pass@2 = (1 - 1/6 + 0 + 1) / 3; pass@4 = 2/3 (unbiased, not "any of 2")
    assert out["k"] == 4 and out["avg@4"] == pytest.approx(5 / 12) and out["pass@1"] == pytest.approx(5 / 12)
    assert out["pass@2"] == pytest.approx((5 / 6 + 1) / 3) and out["pass@4"] == pytest.approx(2 / 3)
    run_examples(metric)


def test_math_metric_reasoning_rule_and_accepted_answers(load):
    """The paper's rule as a compute keyword (the prompt opened <think>: no </think>, no answer), and several
    accepted answers per problem, both exactly as archer eval grades them."""
    from archer.evaluation.grading import GradingOptions, grade

    metric = load("archer_math")
    predictions = [["x = 2 so \\boxed{2}", "reasoning...</think> \\boxed{-2}", "\\boxed{3}"]]
    for close, expected in ((False, [1.0, 1.0, 0.0]), (True, [0.0, 1.0, 0.0])):
        out = metric.compute(predictions=predictions, references=[["2", "-2"]], require_think_close=close)
        spec = {"grader": "math", "gold": ["2", "-2"]}
        assert out["scores"] == [expected] == [[s.score for s in grade(spec, predictions[0], GradingOptions(close))]]


def test_math_metric_rejects_what_it_cannot_score(load):
    metric = load("archer_math")
    with pytest.raises(ValueError, match="same number k"):
        metric.compute(predictions=[["\\boxed{1}"], ["\\boxed{1}", "\\boxed{2}"]], references=["1", "1"])
    with pytest.raises(ValueError, match="pass_k: 3"):
        metric.compute(predictions=[["\\boxed{1}", "x"]], references=["1"], pass_k=[3])
    with pytest.raises(ValueError, match="unknown keyword 'timeout'; valid: pass_k, "):  # grading options only
        metric.compute(predictions=[["\\boxed{1}"]], references=["1"], timeout=3)
    with pytest.raises(ValueError):  # one string per problem instead of a list of completions
        metric.compute(predictions=["\\boxed{1}"], references=["1"])


@pytest.mark.sandbox
@pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")
def test_code_metric_runs_every_test_in_the_sandbox(load):
    from archer.rewards import code_reward

    metric = load("archer_code")
    assert type(metric).__name__ == "ArcherCode" and "bubblewrap" in metric.description
    stdin = json.dumps([{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6\n"}])
    functional = json.dumps([{"input": "[1, 2, 3]", "output": "6", "testtype": "functional"}])
    adds = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    first_only = "```python\nprint(5)\n```"
    total = "```python\nclass Solution:\n    def total(self, xs):\n        return sum(xs)\n```"
    leak = "```python\nimport socket\nsocket.create_connection(('1.1.1.1', 53))\nprint(5)\n```"
    predictions = [[adds, first_only, leak], [total, "<think>```python\nx\n```", "no code at all"]]
    references = [{"tests": stdin, "fn_name": ""}, {"tests": functional, "fn_name": "total"}]
    out = metric.compute(predictions=predictions, references=references, code_timeout_s=10, code_memory_mb=512)
    assert out["scores"] == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    tests = [[json.loads(stdin)] * 3, [json.loads(functional)] * 3]
    names = [None, "total"]
    for texts, row_tests, name, scores in zip(predictions, tests, names, out["scores"], strict=True):
        assert scores == [float(r or 0.0) for r in code_reward(texts, tests=row_tests, fn_name=name)]
    assert out["avg@3"] == pytest.approx(1 / 3) and out["pass@3"] == pytest.approx(1.0)
    # references as plain test text (stdin tests) take the first feature format
    plain = metric.compute(predictions=[[adds, first_only]], references=[stdin], pass_k=[1])
    assert plain["scores"] == [[1.0, 0.0]] and plain["pass@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"references\[0\]"):
        metric.compute(predictions=[[adds]], references=[{"tests": functional, "fn_name": ""}])
    run_examples(metric)


@pytest.mark.parametrize("name", ["archer_math", "archer_code"])
def test_metric_folders_are_hub_metric_repos(name):
    """What `evaluate-cli create` lays out for a Hub metric (a gradio Space): script, card, app, requirements."""
    from huggingface_hub import SpaceCard

    folder = ROOT / "metrics" / name
    card = SpaceCard.load(folder / "README.md")
    assert card.data.sdk == "gradio" and (folder / card.data.app_file).is_file()
    assert {"evaluate", "metric"} <= set(card.data.tags) and card.data.description
    assert (folder / f"{name}.py").is_file() and "archer-rlvr" in (folder / "requirements.txt").read_text()
    assert "## Citation" in card.text and "evaluate.load(" in card.text
