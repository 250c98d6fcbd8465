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

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from archer.ablation.jobs import exclusive, execute
from archer.ablation.plan import DEFAULT_OUT, Variant, plan_ablation, variants_from_recipes
from archer.ablation.report import summarize, update_block, write_outputs

logger = logging.getLogger(__name__)


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
    with exclusive(plan.out):
        failures = execute(plan, workers)
        logger.info("ablation jobs took %.1f min", (time.perf_counter() - started) / 60)
        summary = summarize(plan, command)
        summary["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_outputs(plan, summary)
    return summary, failures


__all__ = ["run_ablation", "update_block", "variants_from_recipes"]
