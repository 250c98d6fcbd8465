"""bench/bench_trainer.py records and replays the objective calls of an Archer step (its share of the step)."""

import importlib.util

import pytest
from paths import ROOT

BENCH = ROOT / "bench"


@pytest.mark.slow  # builds a tiny Archer trainer and runs one step
def test_trainer_bench_records_and_replays_the_objective_calls_of_a_step(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_trainer", BENCH / "bench_trainer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench._build(tmp_path / "model", bench.MODELS["tiny (embedded default, 0.13M)"], max_positions=64)
    trainers = bench._trainers(tmp_path / "model", tmp_path / "runs", batch=8, completion_len=12, names=("archer",))
    calls = bench.objective_calls(*trainers["archer"], seed=0)
    assert len(calls) == 1  # one micro-batch per step
    args = calls[0]
    assert args["logps"].shape == args["ref_logps"].shape == args["mask"].shape and args["logps"].shape[0] == 8
    assert args["old_logps"] is None and args["cfg"].entropy_quantile == 0.8  # one step per rollout; archer preset
    assert bench.objective_seconds(calls, repeats=2) > 0
