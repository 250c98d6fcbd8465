"""The training pipeline behind ``archer train``: recipe -> (tiny warm start) -> Archer RL -> run folder.

Runs the same under ``python -m``, ``accelerate launch`` (DDP) and DeepSpeed ZeRO-3: the main process builds
and warm-starts the tiny model while the others wait, every process trains, the main process writes the run
folder's summary files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from archer.errors import UserError
from archer.files import YAML_LOADER, atomic_write_json, atomic_write_text
from archer.recipe import Recipe, check_cpu_run
from archer.training import run_folder
from archer.versions import versions

if TYPE_CHECKING:
    import datasets
    from accelerate import PartialState
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen2ForCausalLM

    from archer.data.arithmetic import ArithmeticTask
    from archer.training.preemption import StopSignals
    from archer.training.trainer import ArcherTrainer

logger = logging.getLogger(__name__)

SFT_DIR = "sft"  # the warm-started tiny model: the RL starting point and the KL reference
SFT_RESULTS = "sft_results.json"


def run_training(recipe: Recipe, resume: bool = True) -> dict[str, Any]:
    """Train as the recipe says; returns the summary also written to ``train_results.json``.

    ``resume``: continue the run in ``trainer.output_dir`` from its newest complete checkpoint (a complete run
    trains nothing); False moves an existing folder aside first (archer.training.run_folder).

    Raises ``archer.training.preemption.TrainingStopped`` when SIGTERM or SIGUSR1 stopped the run (after saving a
    checkpoint at the end of the rollout in progress) and ``DiskFull`` when the disk filled while writing.
    """
    from accelerate import PartialState

    from archer.training.preemption import StopSignals

    check_cpu_run(recipe)  # vLLM rollouts on a machine without CUDA: what vLLM's CPU build cannot do, before any write
    state = PartialState()
    if recipe.model.cpu_threads:
        import torch

        torch.set_num_threads(recipe.model.cpu_threads)
    # SIGTERM / SIGUSR1 (preemption, time limit) are recorded from here on and acted on at a rollout's end
    with StopSignals(main=state.is_main_process) as signals:
        return _run_training(recipe, resume, state, signals)


def _run_training(recipe: Recipe, resume: bool, state: PartialState, signals: StopSignals) -> dict[str, Any]:
    from archer.training.preemption import (
        AFTER_TRAINING,
        StopOnSignalCallback,
        TrainingStopped,
        guard_saves,
        reporting_full_disk,
    )

    args = recipe.trainer
    out = Path(args.output_dir)
    if state.is_main_process and not resume and (aside := run_folder.move_aside(out)) is not None:
        logger.info("--no-resume: moved the previous run in %s to %s", out, aside)
    state.wait_for_everyone()
    point = run_folder.resume_point(out, args.max_steps, log=state.is_main_process)
    state.wait_for_everyone()  # every process has decided before the main one writes
    if point.complete:
        signals.phase = AFTER_TRAINING
        summary = _complete_run(recipe, out, point, state) if state.is_main_process else {}
        state.wait_for_everyone()
        return summary
    if state.is_main_process:
        if point.run_id is None:
            run_folder.start_run(out)
        _write_config(recipe, out, resuming=point.checkpoint is not None)
    state.wait_for_everyone()
    run_id = run_folder.read_run_id(out)
    checkpoint = point.checkpoint.path if point.checkpoint else None
    if checkpoint is not None and state.is_main_process:
        logger.info("resuming from %s", checkpoint)

    started = time.perf_counter()
    model_path, sft_summary = _prepare_model(recipe, out, state)
    train_dataset = _train_dataset(recipe)
    trainer = _build_trainer(recipe, model_path, train_dataset, run_id)
    stop = StopOnSignalCallback(signals)  # a signal: stop every process after the same rollout, with a checkpoint
    trainer.add_callback(stop)
    guard_saves(trainer, out, run_id)  # a full disk while saving: the previous checkpoint stays the newest
    with reporting_full_disk(out, run_id, trainer):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.stopped is not None:
        state.wait_for_everyone()  # every process has written its part of the checkpoint
        name, step = stop.stopped
        raise TrainingStopped(
            f"stopped by {name} after rollout {step} of {trainer.state.max_steps}: {out / f'checkpoint-{step}'} "
            "saved; run the same command to resume from it",
            main_process=state.is_main_process,
        )
    signals.phase = AFTER_TRAINING
    with reporting_full_disk(out, run_id, trainer):
        trainer.save_model(str(out))
        state.wait_for_everyone()

        summary = {}
        if state.is_main_process:
            from archer.training.plots import plot_run

            plot_run(out)
            runtime = {
                "deepspeed": trainer.deepspeed_precision(),
                "optimizer_steps": trainer.optimizer_steps_taken(),
                "train_runtime_s": round(time.perf_counter() - started, 1),
                "rl_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
            }
            summary = _write_results(recipe, out, run_id, trainer.state.global_step, runtime, sft_summary, state)
    state.wait_for_everyone()
    return summary


def _write_results(
    recipe: Recipe,
    out: Path,
    run_id: str | None,
    global_step: int,
    runtime: dict[str, Any],
    sft_summary: dict[str, Any],
    state: PartialState,
) -> dict[str, Any]:
    """train_results.json (with the held-out score of the final model for tiny recipes), then the model card."""
    from archer.publish.card import write_card

    runtime = dict(runtime)
    compute = {"device": _device_name(), "processes": state.num_processes}
    if runtime.get("deepspeed"):  # the live engine's precision (archer.training.trainer.deepspeed_precision)
        compute["deepspeed"] = runtime["deepspeed"]
    runtime.pop("deepspeed", None)
    summary = {
        "run_id": run_id,
        "global_step": global_step,  # rollouts
        **runtime,
        "objective": recipe.trainer.objective,
        "model": recipe.model.name_or_path,
        "dataset": recipe.data.dataset,
        "compute": compute,
        "versions": versions(),
        **sft_summary,
    }
    if recipe.model.is_tiny and recipe.data.heldout_examples:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with local_model_context():  # loading and generate() alike: no ZeRO-3 collectives on one process
            model = AutoModelForCausalLM.from_pretrained(str(out), dtype="float32")
            summary.update(_heldout(recipe, model, AutoTokenizer.from_pretrained(str(out)), "after", out))
    atomic_write_json(out / run_folder.TRAIN_RESULTS, summary)
    write_card(out)
    return summary


def _complete_run(recipe: Recipe, out: Path, point: run_folder.ResumePoint, state: PartialState) -> dict[str, Any]:
    """A run that reached max_steps: train nothing, write only the end-of-run products a kill left missing."""
    from archer.publish.card import write_card

    written = []
    summary = point.results
    if summary is None:  # killed after the last checkpoint, before train_results.json: redo what follows it
        if not run_folder.model_is_complete(out):
            if point.checkpoint is None:
                raise UserError(f"{out}: the final model is missing or torn and no checkpoint holds it: --no-resume")
            restored = run_folder.restore_model(point.checkpoint.path, out)
            written.append(f"{', '.join(restored)} (from {point.checkpoint.path.name})")
        if not any((out / "plots").glob("*.png")):
            from archer.training.plots import plot_run

            plot_run(out)
            written.append("plots")
        summary = _write_results(recipe, out, point.run_id, point.step, {}, _sft_summary(out), state)
        written += [run_folder.TRAIN_RESULTS, "README.md"]
    elif not (out / "README.md").is_file():
        write_card(out)
        written.append("README.md")
    changed = _config_changes(out, recipe)
    logger.info(
        "%s: run complete (step %d, max_steps %d): nothing to train; %s%s",
        out,
        point.step,
        recipe.trainer.max_steps,
        f"wrote the missing {', '.join(written)}" if written else "nothing rewritten",
        f"; note: the recipe differs from its config.yaml ({', '.join(changed)}): --no-resume starts a new run"
        if changed
        else "",
    )
    return {**summary, "already_complete": True}


def _write_config(recipe: Recipe, out: Path, resuming: bool) -> None:
    """recipe.yaml (as given) and config.yaml (resolved); on resume, say which values changed since."""
    if resuming and (changed := _config_changes(out, recipe)):
        logger.warning("resuming with changed settings: %s", ", ".join(changed))
    atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe.raw, sort_keys=False))
    atomic_write_text(out / "config.yaml", yaml.safe_dump(recipe.resolved(), sort_keys=False))


def _config_changes(out: Path, recipe: Recipe, limit: int = 5) -> list[str]:
    """``block.key`` of the resolved values that differ from the run's config.yaml (at most ``limit``)."""
    try:
        old = yaml.load((out / "config.yaml").read_text(), Loader=YAML_LOADER) or {}
    except (OSError, yaml.YAMLError):
        return []
    new = yaml.load(yaml.safe_dump(recipe.resolved()), Loader=YAML_LOADER)  # same types as the stored copy
    changed = [
        f"{block}.{key}"
        for block in sorted(set(old) | set(new))
        for key in sorted(set(old.get(block) or {}) | set(new.get(block) or {}))
        if (old.get(block) or {}).get(key) != (new.get(block) or {}).get(key) and key != "output_dir"
    ]
    return changed[:limit] + ([f"{len(changed) - limit} more"] if len(changed) > limit else [])


@contextlib.contextmanager
def local_model_context():
    """Build / load a model on one process as a plain module, even when the run uses DeepSpeed ZeRO-3.

    Under ZeRO-3, transformers partitions every model it builds across processes (zero.Init); a model that only
    the main process touches (the tiny warm start, held-out scoring) would then wait forever for the others.
    """
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref  # private: transformers is pinned exactly
    deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


def _prepare_model(recipe: Recipe, out: Path, state: PartialState) -> tuple[str, dict[str, Any]]:
    """The path RL starts from. For the tiny model: build + SFT once (main process first), reused on resume."""
    if not recipe.model.is_tiny:
        return recipe.model.name_or_path, {}

    sft_dir = out / SFT_DIR
    with state.main_process_first():
        if state.is_main_process and not (sft_dir / SFT_RESULTS).exists():
            with local_model_context():
                warm_start(recipe, sft_dir)
    return str(sft_dir), _sft_summary(out)


def _sft_summary(out: Path) -> dict[str, Any]:
    path = out / SFT_DIR / SFT_RESULTS
    return json.loads(path.read_text()) if path.is_file() else {}


def warm_start(
    recipe: Recipe, sft_dir: Path, sft_callback: Callable[[int, Qwen2ForCausalLM], None] | None = None
) -> None:
    """Build the tiny model, SFT it on the task, save it, and score it on the held-out set.

    ``sft_callback(steps_done, model)`` runs after every SFT step (the calibration bench probes the model with it)."""
    from archer import tiny

    task = _task(recipe)
    model_cfg = tiny.TinyModelConfig(**recipe.model.tiny)
    sft_cfg = recipe.sft if recipe.sft is not None else tiny.SFTConfig()
    model, tokenizer, stats = tiny.prepare_tiny_model(sft_dir, model_cfg, sft_cfg, task, callback=sft_callback)
    # The recipe beside the weights: `archer eval` reads the task (and so the held-out set) from it.
    atomic_write_text(sft_dir / "config.yaml", yaml.safe_dump(recipe.resolved(), sort_keys=False))
    summary = {"sft": stats}
    if recipe.data.heldout_examples:
        summary.update(_heldout(recipe, model, tokenizer, "before", sft_dir))
    atomic_write_json(sft_dir / SFT_RESULTS, summary)  # last: its presence means the warm start is complete


def _task(recipe: Recipe) -> ArithmeticTask:
    from archer.data.arithmetic import ArithmeticTask

    return ArithmeticTask(**recipe.data.task)


def _train_dataset(recipe: Recipe) -> datasets.Dataset:
    data = recipe.data
    if data.is_builtin:
        n = data.num_examples or 20_000
        return _task(recipe).dataset(n, seed=data.seed)
    from archer.data.loaders import load_training_dataset

    return load_training_dataset(data)


def reward_funcs(recipe: Recipe, tokenizer: Any = None) -> list:
    """The recipe's reward functions, with its grading settings bound (``require_think_close: auto`` reads the
    tokenizer's chat template as the trainer renders it, with ``trainer.chat_template_kwargs``)."""
    from archer.rewards import get_reward_func, resolve_require_think_close

    data = recipe.data
    template_kwargs = getattr(recipe.trainer, "chat_template_kwargs", None)
    require_close = resolve_require_think_close(data.require_think_close, tokenizer, template_kwargs)
    logger.info("rewards: a completion without </think> %s", "scores 0" if require_close else "is graded whole")
    funcs = []
    for name in data.rewards:
        func = get_reward_func(name)
        settings: dict[str, Any] = {"require_think_close": require_close}
        if name == "code":
            settings.update(
                max_tests=data.max_tests,
                timeout_s=data.code_timeout_s,
                script_timeout_s=data.code_script_timeout_s,
                memory_mb=data.code_memory_mb,
                compare=data.code_compare,
                budget_s=data.code_budget_s,
            )
        funcs.append(functools.update_wrapper(functools.partial(func, **settings), func))
    return funcs


def _build_trainer(
    recipe: Recipe,
    model_path: str,
    train_dataset: datasets.Dataset,
    run_id: str | None,
    trainer_class: Callable[..., Any] | None = None,
) -> ArcherTrainer:
    """The recipe's trainer, built as ``archer train`` builds it (precision plan, callbacks), not yet trained.

    ``trainer_class``: another GRPOTrainer class to build with the same arguments (bench/gpu/proof.py builds TRL's
    stock GRPOTrainer as its reference this way); training always uses ArcherTrainer."""
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from archer.training.callbacks import ConciseProgressCallback, MetricsFileCallback, RunIdCallback
    from archer.training.trainer import ArcherTrainer

    args = recipe.trainer
    model = recipe.model
    init_kwargs = dict(args.model_init_kwargs or {})
    init_kwargs["dtype"] = _load_dtype(recipe)
    if model.attn_implementation:
        init_kwargs["attn_implementation"] = model.attn_implementation
    if model.revision:
        init_kwargs["revision"] = model.revision
    args.model_init_kwargs = init_kwargs
    args.trust_remote_code = model.trust_remote_code
    if recipe.data.reward_weights is not None:
        args.reward_weights = recipe.data.reward_weights

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model.revision)
    if model.chat_template:
        tokenizer.chat_template = model.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if recipe.data.max_prompt_tokens and not recipe.data.is_builtin:
        from archer.data.loaders import drop_long_prompts

        train_dataset = drop_long_prompts(
            train_dataset, tokenizer, recipe.data.max_prompt_tokens, args.chat_template_kwargs, recipe.data.dataset
        )

    callbacks = [MetricsFileCallback(args.output_dir), RunIdCallback(run_id)]
    if args.push_checkpoints:
        from archer.publish.hub import CheckpointPusher

        callbacks.append(
            CheckpointPusher(
                args.hub_model_id, branch_prefix=args.checkpoint_revision_prefix, private=bool(args.hub_private_repo)
            )
        )
    trainer = (trainer_class or ArcherTrainer)(
        model=model_path,
        reward_funcs=reward_funcs(recipe, tokenizer),
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    for default in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(default)
    if not args.disable_tqdm:
        trainer.add_callback(ConciseProgressCallback())
    return trainer


def _load_dtype(recipe: Recipe) -> str:
    """float32 unless DeepSpeed's mixed precision keeps fp32 master weights (archer.planning.precision); logs each part
    as this launch's DeepSpeed config says (the engine's own account is logged at the first rollout)."""
    from archer.planning.precision import deepspeed_config_of, deepspeed_mixed_precision, precision_of

    args = recipe.trainer
    precision = precision_of(
        recipe,
        deepspeed_mixed=deepspeed_mixed_precision(args),
        deepspeed_config=deepspeed_config_of(args),
        processes=args.world_size,
    )
    logger.info("precision:\n%s", "\n".join(precision.lines()))
    return precision.load_dtype


def _heldout(
    recipe: Recipe, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, when: str, model_dir: Path
) -> dict[str, Any]:
    """Accuracy on the task's reserved held-out problems (never drawn for training): greedy, and sampled as
    `make eval` samples (the tiny suite: avg@k at the paper's temperature), on the model saved in ``model_dir``."""
    from archer import tiny

    result = tiny.evaluate_heldout(model, tokenizer, _task(recipe), n=recipe.data.heldout_examples)
    sampled = tiny.sampled_heldout(model_dir)
    logger.info(
        "held-out accuracy %s RL: greedy %.1f%%, avg@%d (T %g) %.1f%%; %.0f%% of greedy answers show their working",
        when,
        100 * result.accuracy,
        sampled.k,
        sampled.temperature,
        100 * sampled.accuracy,
        100 * result.worked_frac,
    )
    return {
        f"heldout_accuracy_{when}": result.accuracy,
        f"heldout_worked_frac_{when}": result.worked_frac,
        f"heldout_sampled_accuracy_{when}": sampled.accuracy,
        f"heldout_sampled_pass_at_k_{when}": sampled.pass_at_k,
        "heldout_sampled_protocol": sampled.protocol,
    }


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()})"
