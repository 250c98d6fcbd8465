"""Running an ablation's jobs: warm starts and training runs in worker processes, each logging to its own file."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from archer.ablation.plan import AblationRun, Plan
from archer.errors import UserError

if TYPE_CHECKING:
    from transformers import Qwen2ForCausalLM

    from archer.recipe import Recipe

logger = logging.getLogger(__name__)


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


def load_run_recipe(run: AblationRun) -> Recipe:
    from archer.recipe import load_recipe

    return load_recipe(run.recipe_path, list(run.overrides))


def warm_start_job(
    run: AblationRun, threads: int, sft_callback: Callable[[int, Qwen2ForCausalLM], None] | None = None
) -> str:
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


def train_job(run: AblationRun, threads: int) -> str:
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
    """AblationRun what is missing (warm starts first, each seed's runs as soon as its warm start exists), with a bar.

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
    running: dict[Future, tuple[str, AblationRun]] = {}
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


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the whole ablation: two invocations on one folder would build the same runs."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--out {out}: another `archer ablate` is running on this folder") from None
        yield
