"""bench/bench_eval.py and bench/bench_rollout.py honour the bench contract (rows of figure / ours / reference /
ratio / target / note), in their --quick modes (seconds of work, plus vLLM's start-up)."""

import importlib.util

import pytest
from paths import ROOT

COLUMNS = {"figure", "ours", "reference", "ratio", "target", "note"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eval_bench_quick_rows_follow_the_contract():
    rows = _load("bench_eval").run(quick=True)
    assert len(rows) == 4
    for row in rows:
        assert set(row) == COLUMNS
        assert isinstance(row["ratio"], float) and row["ratio"] > 0
    for row in rows[:3]:
        assert row["ours"].endswith("problems/s") and row["reference"].endswith("problems/s")
    for row in rows[:2]:
        assert "identical completions: True" in row["note"]  # both sides did the same work
    assert "--backend vllm" in rows[2]["figure"] and "import" in rows[3]["note"]


@pytest.mark.slow
def test_rollout_bench_quick_rows_follow_the_contract():
    rows = _load("bench_rollout").run(quick=True)
    assert [row["figure"].split(",")[0] for row in rows] == [
        "rollout generation",
        "start-up: import vllm + in-process eager engine vs transformers from_pretrained (tiny)",
    ]
    for row in rows:
        assert set(row) == COLUMNS
        assert isinstance(row["ratio"], float) and row["ratio"] > 0
    assert rows[0]["ours"].endswith("tokens/s)") and "tokens generated vLLM" in rows[0]["note"]
