"""bench/bench_rewards.py's grading rows under the authors' rules honour the bench contract (figure / ours /
reference / ratio / target / note) and grade the mix as intended."""

import importlib.util
import sys
from pathlib import Path

import pytest

from archer.sandbox.runner import sandbox_available

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.skipif(not sandbox_available(), reason="bubblewrap cannot run here")
def test_authors_grading_rows_follow_the_contract(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_rewards", BENCH / "bench_rewards.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_rewards", module)
    spec.loader.exec_module(module)
    rows = module._authors_grading(num_completions=4, repeats=1)  # asserts the rewards of the mix itself
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"figure", "ours", "reference", "ratio", "target", "note"}
        assert isinstance(row["ratio"], float) and row["ratio"] > 0
    assert rows[0]["ours"].endswith("completions/s") and "worker-seconds per completion" in rows[0]["note"]
    assert "cores grade it within 5% of the step" in rows[1]["note"]
