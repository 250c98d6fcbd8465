"""Training-curve plots from a run's metrics.jsonl (PNG, headless)."""

from __future__ import annotations

import logging
from pathlib import Path

from archer.files import read_jsonl

logger = logging.getLogger(__name__)

# One Trainer step (the "step" of metrics.jsonl) is one rollout, which makes several optimizer steps or none.
X_LABEL = "rollout (trainer step)"
# file name -> (title, [(metrics key, legend label)])
PLOTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "reward.png": ("Reward (mean over responses)", [("reward", "reward")]),
    "completion_length.png": ("Response length (tokens)", [("completions/mean_length", "mean length")]),
    "entropy.png": (
        "Token entropy",
        [("entropy/mean", "mean entropy"), ("entropy/threshold", "reasoning threshold (rho-quantile)")],
    ),
    "clip_fractions.png": (
        "Clipped-token fraction per class",
        [
            ("reasoning/clip_low_frac", "reasoning, low"),
            ("reasoning/clip_high_frac", "reasoning, high"),
            ("knowledge/clip_low_frac", "knowledge, low"),
            ("knowledge/clip_high_frac", "knowledge, high"),
        ],
    ),
}


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (none when absent; a line torn by a kill is skipped)."""
    return read_jsonl(path)[0]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write one PNG per curve into ``<run_dir>/plots``; returns the files written (none without metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        logger.warning("no metrics in %s: no plots", run_dir)
        return []
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, series) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
        drawn = False
        for key, label in series:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), label=label, linewidth=1.4)
                drawn = True
        if drawn:
            ax.set_title(title)
            ax.set_xlabel(X_LABEL)
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / name)
            written.append(out_dir / name)
        plt.close(fig)
    return written
