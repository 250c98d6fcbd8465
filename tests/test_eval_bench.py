"""bench/bench_eval.py honours the bench contract (rows of figure / ours / reference / ratio / target / note)."""

import importlib.util

import pytest
from paths import ROOT

BENCH = ROOT / "bench" / "bench_eval.py"


@pytest.mark.slow
def test_quick_rows_follow_the_contract():
    spec = importlib.util.spec_from_file_location("bench_eval", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.run(quick=True)
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"figure", "ours", "reference", "ratio", "target", "note"}
        assert row["ours"].endswith("problems/s") and row["reference"].endswith("problems/s")
        assert isinstance(row["ratio"], float) and row["ratio"] > 0
        assert "identical completions: True" in row["note"]  # both sides did the same work
