"""Tracking: the paper recipes' tracker (TensorBoard) writes its logs offline into the run folder."""

from __future__ import annotations

import pytest
import yaml
from paths import ROOT

from archer.cli import main

PAPER_RECIPES = sorted((ROOT / "recipes").glob("*/*/*.yaml"))


def test_paper_recipes_log_to_tensorboard():
    assert PAPER_RECIPES
    for path in PAPER_RECIPES:
        assert yaml.safe_load(path.read_text())["trainer"]["report_to"] == "tensorboard", path


@pytest.mark.slow
def test_a_tiny_run_writes_tensorboard_logs(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = workdir / "run"
    overrides = [f"trainer.output_dir={out}", "trainer.report_to=tensorboard", "trainer.max_steps=2"]
    assert main(["train", "tiny/smoke", *overrides]) == 0  # offline: conftest sets HF_HUB_OFFLINE=1
    (events,) = (out / "runs").glob("*/events.out.tfevents.*")
    logs = EventAccumulator(str(events.parent))
    logs.Reload()
    scalars = set(logs.Tags()["scalars"])
    assert {"train/reward", "train/entropy/mean", "train/reasoning/frac", "train/optimizer_steps"} <= scalars
    assert [event.step for event in logs.Scalars("train/reward")] == [1, 2]  # one point per rollout
