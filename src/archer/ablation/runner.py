"""``archer ablate``: run tiny recipes over seeds from shared warm starts, then compare them with intervals.

Layout of the output folder (``--out``, default ``outputs/ablate``)::

    warm_starts/seed<S>-<key>/      one SFT warm start per seed (and per model/task/SFT settings: <key>)
    <recipe>/seed<S>/               one training run folder per recipe and seed (its ``sft/`` copied from above)
    <recipe>/seed<S>.log            that run's log
    ablation.md / ablation.json     the comparison (tables) and every per-run value behind it
    learning_curves.png             mean curves over seeds with 95 % bands, one colour per recipe

Seed ``s`` sets ``sft.seed = s`` and ``trainer.seed = 42 + s`` (seed 0 of ``recipes/tiny/archer.yaml`` is exactly
``make train``). Every recipe of a seed starting from the same warm start is what makes the per-seed differences
(the paired comparison) meaningful. Runs go in parallel, one process per job (``--workers``, default: the CPU count),
each with ``cores / workers`` torch threads. Everything is resumable: a finished warm start or run is reused
(after checking it was made by the same settings), an unfinished run resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from archer.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("outputs/ablate")
WARM_DIR = "warm_starts"
SEED_OFFSET = 42  # trainer.seed = SEED_OFFSET + seed: seed 0 of recipes/tiny/archer.yaml is `make train`
TAIL = 0.1  # "final" training metrics: the mean over the last 10 % of logged rollouts (one metrics line each)

# Student-t 97.5 % quantiles by degrees of freedom (two-sided 95 % intervals); 1.96 beyond the table.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}  # fmt: skip


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


@dataclass(frozen=True)
class Run:
    """One recipe on one seed."""

    name: str
    seed: int
    recipe_path: str
    overrides: tuple[str, ...]
    out_dir: Path
    warm_dir: Path

    @property
    def log(self) -> Path:
        return self.out_dir.with_suffix(".log")

    @property
    def done(self) -> bool:
        return (self.out_dir / "train_results.json").is_file()


@dataclass
class Plan:
    """Every run of an ablation and the warm starts they share, validated before anything is written."""

    out: Path
    names: list[str]
    seeds: list[int]
    runs: list[Run]
    warm_starts: dict[Path, Run] = field(default_factory=dict)  # warm-start folder -> the first run that needs it
    threads: int = 1


@dataclass(frozen=True)
class Variant:
    """A recipe file plus overrides, under a name (the recipe's stem for ``archer ablate``)."""

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()


def variants_from_recipes(recipes: Sequence[str], overrides: Sequence[str] = ()) -> list[Variant]:
    """One variant per recipe file, named after its stem, each with the common ``overrides``."""
    return [Variant(Path(r).stem, str(r), tuple(overrides)) for r in recipes]


def plan_ablation(
    variants: Sequence[Variant], seeds: int, out: str | os.PathLike = DEFAULT_OUT, workers: int = 1
) -> Plan:
    """Load and check every variant for every seed (a UserError names the first problem; nothing is written)."""
    from archer.recipe import load_recipe

    if not variants:
        raise UserError("archer ablate: name at least one recipe, e.g. recipes/tiny/archer.yaml")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be >= 1 (seeds 0..N-1 are run)")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    names = [v.name for v in variants]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"recipe name {duplicate!r} appears twice: runs are named after the recipe file's stem")
    out = Path(out)
    threads = max(1, (os.cpu_count() or 1) // workers)
    plan = Plan(out=out, names=names, seeds=list(range(seeds)), runs=[], threads=threads)
    for variant in variants:
        base = load_recipe(variant.recipe, list(variant.overrides))
        if not base.model.is_tiny:
            raise UserError(
                f"{variant.recipe}: model.name_or_path is {base.model.name_or_path!r}; archer ablate runs tiny "
                "recipes (CPU processes sharing warm starts); launch GPU recipes with `archer train`"
            )
        for seed in plan.seeds:
            run_dir = out / variant.name / f"seed{seed}"
            run_overrides = (
                *variant.overrides,
                f"sft.seed={seed}",
                f"trainer.seed={SEED_OFFSET + seed}",
                f"trainer.output_dir={run_dir}",
            )
            recipe = load_recipe(variant.recipe, list(run_overrides))
            resolved = recipe.resolved()
            warm = out / WARM_DIR / f"seed{seed}-{_warm_key(resolved)}"
            run = Run(variant.name, seed, variant.recipe, run_overrides, run_dir, warm)
            _check_reusable(run, resolved)
            plan.runs.append(run)
            plan.warm_starts.setdefault(warm, run)
    return plan


def _warm_key(resolved: dict[str, Any]) -> str:
    """What the warm start depends on: the model shape, the task, the held-out size and the SFT settings."""
    data = resolved["data"]
    parts = {
        "model": resolved["model"]["tiny"],
        "task": data["task"],
        "heldout": data["heldout_examples"],
        "sft": resolved["sft"],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _plain(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value, sort_keys=True))


# Settings that change where a run writes or what it prints, not what it learns: ignored when reusing a run.
NOT_COMPARED = {"output_dir", "logging_dir", "disable_tqdm", "run_name"}


def _check_reusable(run: Run, resolved: dict[str, Any]) -> None:
    """A run folder left by an earlier invocation must hold the same resolved recipe, or it cannot be reused."""
    config = run.out_dir / "config.yaml"
    if not config.is_file():
        return
    old = yaml.safe_load(config.read_text()) or {}
    new = _plain(resolved)
    changed = sorted(
        f"{block}.{key}"
        for block in set(old) | set(new)
        for key in set(old.get(block) or {}) | set(new.get(block) or {})
        if key not in NOT_COMPARED and (old.get(block) or {}).get(key) != (new.get(block) or {}).get(key)
    )
    if changed:
        raise UserError(
            f"{run.out_dir} was trained with other settings ({', '.join(changed[:3])}...): "
            "give another --out or delete that folder"
        )


# --- running ----------------------------------------------------------------------------------------------------


def _child_setup(log: Path, threads: int) -> None:
    """In a job's process: output to its log file, no progress bars, ``threads`` torch threads."""
    os.environ["TQDM_DISABLE"] = "1"
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )
    import torch

    torch.set_num_threads(threads)


def load_run_recipe(run: Run):
    from archer.recipe import load_recipe

    return load_recipe(run.recipe_path, list(run.overrides))


def warm_start_job(run: Run, threads: int, sft_callback=None) -> str:
    """Build and SFT the tiny model for ``run``'s seed into its warm-start folder (atomically: tmp, then rename)."""
    _child_setup(run.warm_dir.with_suffix(".log"), threads)
    from archer.training.pipeline import SFT_RESULTS, warm_start

    tmp = run.warm_dir.with_name(run.warm_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    warm_start(load_run_recipe(run), tmp, sft_callback)
    if not (tmp / SFT_RESULTS).is_file():
        raise RuntimeError(f"warm start {tmp} wrote no {SFT_RESULTS}")
    tmp.rename(run.warm_dir)
    return str(run.warm_dir)


def train_job(run: Run, threads: int) -> str:
    """Copy the seed's warm start into the run folder and train (resuming from a checkpoint if one is there)."""
    _child_setup(run.log, threads)
    from archer.commands.train import quiet_third_party
    from archer.training import run_folder
    from archer.training.pipeline import SFT_DIR, run_training

    sft = run.out_dir / SFT_DIR
    if not sft.is_dir():
        if run_folder.read_run_id(run.out_dir) is None:
            run_folder.start_run(run.out_dir)  # run.json first: the folder is this run's, not a stranger's
        shutil.copytree(run.warm_dir, run.out_dir / (SFT_DIR + ".tmp"), dirs_exist_ok=True)
        (run.out_dir / (SFT_DIR + ".tmp")).rename(sft)
    quiet_third_party()
    run_training(load_run_recipe(run))
    return str(run.out_dir)


def execute(plan: Plan, workers: int) -> list[str]:
    """Run what is missing (warm starts first, each seed's runs as soon as its warm start exists), with a bar.

    Returns one line per failed job (its log names the cause); finished jobs are kept either way.
    """
    from tqdm.auto import tqdm

    pending_warm = [run for warm, run in plan.warm_starts.items() if not (warm / "sft_results.json").is_file()]
    todo = [run for run in plan.runs if not run.done]
    ready = [run for run in todo if run.warm_dir not in {r.warm_dir for r in pending_warm}]
    waiting = [run for run in todo if run not in ready]
    failures: list[str] = []
    if not pending_warm and not todo:
        logger.info("every run of %s is already done", plan.out)
        return failures
    logger.info(
        "%d warm start(s) and %d run(s) to do (%d already done), %d worker(s) x %d thread(s); logs beside each run",
        len(pending_warm), len(todo), len(plan.runs) - len(todo), workers, plan.threads,
    )  # fmt: skip
    context = get_context("spawn")
    running: dict[Future, tuple[str, Run]] = {}
    with (
        ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool,
        tqdm(total=len(pending_warm) + len(todo), desc="ablation", unit="job", dynamic_ncols=True) as bar,
    ):
        for run in pending_warm:
            running[pool.submit(warm_start_job, run, plan.threads)] = ("warm start", run)
        for run in ready:
            running[pool.submit(train_job, run, plan.threads)] = ("run", run)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, run = running.pop(future)
                label = f"{run.warm_dir.name}" if kind == "warm start" else f"{run.name}/seed{run.seed}"
                error = future.exception()
                if error is not None:
                    log = run.warm_dir.with_suffix(".log") if kind == "warm start" else run.log
                    failures.append(f"{kind} {label} failed ({type(error).__name__}: {error}); see {log}")
                bar.update(1)
                bar.set_postfix_str(f"{label} done", refresh=True)
                if kind == "warm start":
                    for dependant in [r for r in waiting if r.warm_dir == run.warm_dir]:
                        waiting.remove(dependant)
                        if error is None:
                            running[pool.submit(train_job, dependant, plan.threads)] = ("run", dependant)
                        else:
                            failures.append(f"run {dependant.name}/seed{dependant.seed} skipped: no warm start")
                            bar.update(1)
    return failures


# --- summarising ------------------------------------------------------------------------------------------------


def t975(n: int) -> float:
    """The Student-t 97.5 % quantile with ``n - 1`` degrees of freedom (for a 95 % interval of a mean of n)."""
    df = n - 1
    if df < 1:
        return math.nan
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k < df) if df < 30 else None
    return _T975[below] if below is not None else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (nan with fewer than two values)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) < 2:
        return values[0], math.nan
    return statistics.mean(values), t975(len(values)) * statistics.stdev(values) / math.sqrt(len(values))


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
            diffs = {s: per_run[name][s][key] - per_run[first][s][key] for s in seeds}
            paired[name][key] = {
                "per_seed": diffs,
                "mean_ci": mean_ci(list(diffs.values())),
                "wins": sum(d > 0 for d in diffs.values()),
                "losses": sum(d < 0 for d in diffs.values()),
            }
    return {"command": command, "names": plan.names, "seeds": plan.seeds, "per_run": per_run, "table": table,
            "paired": paired}  # fmt: skip


def _cell(mean: float, half: float, digits: int) -> str:
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
        cells = [_cell(*summary["table"][n][metric.key], digits) for n in names]
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
                    else f"{v[prefix + '_after'] - v[prefix + '_gain']:.1f} → {v[prefix + '_after']:.1f} "
                    f"({v[prefix + '_gain']:+.1f})"
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
                    + f" | {_cell(*entry['mean_ci'], 1)} | {entry['wins']} / {entry['losses']} |"
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


README_BEGIN = "<!-- ablate:begin (generated by `make ablate`; edit the command, not the table) -->"
README_END = "<!-- ablate:end -->"


def update_readme(readme: Path, markdown: str) -> None:
    """Replace the text between the ablate markers of ``readme`` with ``markdown``."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise UserError(f"{readme}: no {README_BEGIN!r} ... {README_END!r} block to regenerate")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{markdown}{README_END}{tail}")


def write_outputs(plan: Plan, summary: dict[str, Any]) -> tuple[Path, Path, Path | None]:
    """ablation.md, ablation.json and learning_curves.png in the output folder."""
    plan.out.mkdir(parents=True, exist_ok=True)
    md = plan.out / "ablation.md"
    md.write_text(render_markdown(summary))
    js = plan.out / "ablation.json"
    js.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    png = plot_curves(plan, plan.out / "learning_curves.png")
    return md, js, png


def run_ablation(
    variants: Sequence[Variant],
    seeds: int,
    out: str | os.PathLike = DEFAULT_OUT,
    workers: int | None = None,
    command: str = "archer ablate",
) -> tuple[dict[str, Any], list[str]]:
    """Plan, run what is missing, summarise and write the outputs. Returns the summary and the failures."""
    workers = workers or os.cpu_count() or 1
    plan = plan_ablation(variants, seeds, out, workers)
    started = time.perf_counter()
    with _exclusive(plan.out):
        failures = execute(plan, workers)
        logger.info("ablation jobs took %.1f min", (time.perf_counter() - started) / 60)
        summary = summarize(plan, command)
        summary["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_outputs(plan, summary)
    return summary, failures


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold ``<out>/.lock`` for the whole ablation: two invocations on one folder would build the same runs."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--out {out}: another `archer ablate` is running on this folder") from None
        yield


__all__ = [
    "Plan",
    "Run",
    "Variant",
    "execute",
    "mean_ci",
    "plan_ablation",
    "render_markdown",
    "run_ablation",
    "summarize",
    "update_readme",
    "variants_from_recipes",
]
