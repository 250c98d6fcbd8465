"""Summarising an ablation: per-run values, tables with intervals, paired differences, learning curves."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.ablation.plan import Plan
from archer.ablation.stats import mean_ci, t975
from archer.errors import UserError

TAIL = 0.1  # "final" training metrics: the mean over the last 10 % of logged rollouts (one metrics line each)


@dataclass(frozen=True)
class Metric:
    """One row of the comparison: where its per-run value comes from and how it is shown."""

    key: str
    label: str
    source: str  # "results": a train_results.json key (fraction -> percent); "tail" / "mean": metrics.jsonl key
    name: str
    percent: bool = True


METRICS = (
    Metric("avg8_after", "held-out avg@8 after RL (%)", "results", "heldout_sampled_accuracy_after"),
    Metric("avg8_gain", "held-out avg@8 gain (points)", "gain", "heldout_sampled_accuracy"),
    Metric("greedy_after", "held-out greedy after RL (%)", "results", "heldout_accuracy_after"),
    Metric("greedy_gain", "held-out greedy gain (points)", "gain", "heldout_accuracy"),
    Metric("avg8_before", "held-out avg@8 after SFT (%)", "results", "heldout_sampled_accuracy_before"),
    Metric("greedy_before", "held-out greedy after SFT (%)", "results", "heldout_accuracy_before"),
    Metric("worked_after", "greedy answers showing working (%)", "results", "heldout_worked_frac_after"),
    Metric("reward", "reward, last 10 % of rollouts", "tail", "reward", percent=False),
    Metric("entropy", "token entropy, last 10 % of rollouts", "tail", "entropy/mean", percent=False),
    Metric("length", "response length (tokens), last 10 % of rollouts", "tail", "completions/mean_length", False),
    Metric("r_clip_low", "reasoning tokens clipped low (%)", "mean", "reasoning/clip_low_frac"),
    Metric("r_clip_high", "reasoning tokens clipped high (%)", "mean", "reasoning/clip_high_frac"),
    Metric("k_clip_low", "knowledge tokens clipped low (%)", "mean", "knowledge/clip_low_frac"),
    Metric("k_clip_high", "knowledge tokens clipped high (%)", "mean", "knowledge/clip_high_frac"),
    Metric("rl_minutes", "RL wall time (min)", "minutes", "rl_runtime_s", percent=False),
)
PAIRED = ("avg8_after", "greedy_after")  # metrics compared seed by seed against the first recipe
CURVES = (
    ("reward", "reward"),
    ("entropy/mean", "token entropy"),
    ("completions/mean_length", "response length (tokens)"),
    ("reasoning/clip_high_frac", "reasoning tokens clipped high"),
    ("knowledge/clip_high_frac", "knowledge tokens clipped high"),
    ("reasoning/clip_low_frac", "reasoning tokens clipped low"),
)


def run_values(run_dir: Path) -> dict[str, float | None]:
    """Every metric of METRICS for one finished run folder (None where the run did not record it)."""
    from archer.training.plots import read_metrics

    results = json.loads((run_dir / "train_results.json").read_text())
    records = read_metrics(run_dir / "metrics.jsonl")
    values: dict[str, float | None] = {}
    for metric in METRICS:
        value: float | None = None
        if metric.source == "results":
            value = results.get(metric.name)
        elif metric.source == "gain":
            before, after = results.get(f"{metric.name}_before"), results.get(f"{metric.name}_after")
            value = after - before if before is not None and after is not None else None
        elif metric.source == "minutes":
            value = results[metric.name] / 60 if results.get(metric.name) is not None else None
        else:
            series = [r[metric.name] for r in records if isinstance(r.get(metric.name), int | float)]
            if series:
                tail = series[-max(1, round(TAIL * len(series))) :] if metric.source == "tail" else series
                value = statistics.mean(tail)
        if value is not None and metric.percent:
            value = 100 * value
        values[metric.key] = value
    return values


def summarize(plan: Plan, command: str) -> dict[str, Any]:
    """Per-run values, mean ± 95 % interval per recipe and metric, and paired differences against the first."""
    per_run = {
        name: {run.seed: run_values(run.out_dir) for run in plan.runs if run.name == name and run.done}
        for name in plan.names
    }
    table = {
        name: {m.key: mean_ci([v[m.key] for v in per_run[name].values()]) for m in METRICS} for name in plan.names
    }
    first = plan.names[0]
    paired: dict[str, dict[str, Any]] = {}
    for name in plan.names[1:]:
        paired[name] = {}
        for key in PAIRED:
            seeds = sorted(set(per_run[name]) & set(per_run[first]))
            pairs = {s: (per_run[name][s][key], per_run[first][s][key]) for s in seeds}
            diffs = {s: a - b for s, (a, b) in pairs.items() if a is not None and b is not None}  # None: not recorded
            paired[name][key] = {
                "per_seed": diffs,
                "mean_ci": mean_ci(list(diffs.values())),
                "wins": sum(d > 0 for d in diffs.values()),
                "losses": sum(d < 0 for d in diffs.values()),
            }
    return {"command": command, "names": plan.names, "seeds": plan.seeds, "per_run": per_run, "table": table,
            "paired": paired}  # fmt: skip


def _cell(ci: Sequence[float], digits: int) -> str:
    mean, half = ci  # mean_ci's (mean, half-width)
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def render_markdown(summary: dict[str, Any]) -> str:
    """The comparison as markdown: the command, the metrics table, per-seed avg@8 and the paired differences."""
    names, seeds = summary["names"], summary["seeds"]
    n_done = {name: len(summary["per_run"][name]) for name in names}
    lines = [
        f"`{summary['command']}`: {len(seeds)} seed(s); each seed's warm start is shared by every objective; "
        "mean ± 95 % t-interval over seeds.",
        "",
        "| metric | " + " | ".join(f"{n} (n={n_done[n]})" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for metric in METRICS:
        digits = 1 if metric.percent or metric.key.endswith("gain") else 2 if metric.key != "entropy" else 3
        cells = [_cell(summary["table"][n][metric.key], digits) for n in names]
        lines.append(f"| {metric.label} | " + " | ".join(cells) + " |")
    for prefix, label in (("avg8", "avg@8 (T 0.8)"), ("greedy", "greedy")):
        lines += ["", f"Held-out {label} (%) per seed, after SFT → after RL:", ""]
        lines += ["| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for seed in seeds:
            cells = []
            for name in names:
                v = summary["per_run"][name].get(seed) or summary["per_run"][name].get(str(seed))
                cells.append(
                    "–"
                    if v is None
                    else f"{v[prefix + '_before']:.1f} → {v[prefix + '_after']:.1f} ({v[prefix + '_gain']:+.1f})"
                )
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if summary["paired"]:
        first = names[0]
        lines += ["", f"Paired differences against {first} (same seed, same warm start), points:", ""]
        lines += ["| objective − " + first + " | metric | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | mean ± 95 % | better / worse |", "|---" * (len(seeds) + 4) + "|"]  # fmt: skip
        for name, by_metric in summary["paired"].items():
            for key, entry in by_metric.items():
                per_seed = {int(s): d for s, d in entry["per_seed"].items()}
                cells = [f"{per_seed[s]:+.1f}" if s in per_seed else "–" for s in seeds]
                label = "avg@8" if key == "avg8_after" else "greedy"
                lines.append(
                    f"| {name} | {label} | " + " | ".join(cells)
                    + f" | {_cell(entry['mean_ci'], 1)} | {entry['wins']} / {entry['losses']} |"
                )  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_curves(plan: Plan, path: Path, window: int = 10) -> Path | None:
    """One PNG: each curve of CURVES, mean over seeds (moving average of ``window`` rollouts) with a 95 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from archer.training.plots import read_metrics

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), dpi=100)
    drawn = False
    for i, name in enumerate(plan.names):
        runs = [read_metrics(r.out_dir / "metrics.jsonl") for r in plan.runs if r.name == name and r.done]
        for ax, (key, title) in zip(axes.flat, CURVES, strict=True):
            series = [
                np.array([(r["step"], r[key]) for r in recs if isinstance(r.get(key), int | float)]) for recs in runs
            ]
            series = [s for s in series if len(s)]
            if not series:
                continue
            n = min(len(s) for s in series)
            steps = series[0][:n, 0]
            kernel = np.ones(min(window, n)) / min(window, n)
            smooth = np.stack([np.convolve(s[:n, 1], kernel, mode="same") for s in series])
            mean = smooth.mean(0)
            ax.plot(steps, mean, color=f"C{i}", label=name, linewidth=1.3)
            if len(series) > 1:
                half = t975(len(series)) * smooth.std(0, ddof=1) / math.sqrt(len(series))
                ax.fill_between(steps, mean - half, mean + half, color=f"C{i}", alpha=0.2, linewidth=0)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("rollout (trainer step)", fontsize=8)
            ax.grid(alpha=0.3)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"mean over {len(plan.seeds)} seed(s), 95 % band; moving average of {window} rollouts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


BLOCK_BEGIN = "<!-- ablate:begin (generated by `make ablate`; edit the command, not the table) -->"
BLOCK_END = "<!-- ablate:end -->"


def update_block(doc: Path, markdown: str) -> None:
    """Replace the text between the ablate markers of the markdown file ``doc`` (docs/ablations.md) with ``markdown``."""
    text = doc.read_text()
    if BLOCK_BEGIN not in text or BLOCK_END not in text:
        raise UserError(f"{doc}: no {BLOCK_BEGIN!r} ... {BLOCK_END!r} block to regenerate")
    head, rest = text.split(BLOCK_BEGIN, 1)
    _, tail = rest.split(BLOCK_END, 1)
    doc.write_text(f"{head}{BLOCK_BEGIN}\n{markdown}{BLOCK_END}{tail}")


def write_outputs(plan: Plan, summary: dict[str, Any]) -> tuple[Path, Path, Path | None]:
    """ablation.md, ablation.json and learning_curves.png in the output folder."""
    plan.out.mkdir(parents=True, exist_ok=True)
    md = plan.out / "ablation.md"
    md.write_text(render_markdown(summary))
    js = plan.out / "ablation.json"
    js.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    png = plot_curves(plan, plan.out / "learning_curves.png")
    return md, js, png
