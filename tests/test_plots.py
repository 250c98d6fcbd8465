"""Training curves: one PNG per curve, x axis in rollouts (one Trainer step = one rollout)."""

from __future__ import annotations

import json

import matplotlib.axes

from archer.training.plots import plot_run


def test_curves_are_drawn_against_rollouts(tmp_path, monkeypatch):
    records = [{"step": s, "reward": s / 4, "entropy/mean": 0.5, "optimizer_steps": 6} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    labels = []
    real = matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(
        matplotlib.axes.Axes, "set_xlabel", lambda ax, text, **kw: labels.append(text) or real(ax, text)
    )
    written = plot_run(tmp_path)
    assert {p.name for p in written} == {"reward.png", "entropy.png"}
    assert labels == ["rollout (trainer step)"] * 2
