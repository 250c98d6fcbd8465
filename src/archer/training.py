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
from pathlib import Path
from typing import Any

import yaml

from archer.recipe import Recipe

logger = logging.getLogger(__name__)

SFT_DIR = "sft"  # the warm-started tiny model: the RL starting point and the KL reference
SFT_RESULTS = "sft_results.json"
TRAIN_RESULTS = "train_results.json"


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint-<step> folder (one holding trainer_state.json), or None."""
    done = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def run_training(recipe: Recipe, resume: bool = True) -> dict[str, Any]:
    """Train as the recipe says; returns the summary also written to ``train_results.json``."""
    from accelerate import PartialState

    state = PartialState()
    if recipe.model.cpu_threads:
        import torch

        torch.set_num_threads(recipe.model.cpu_threads)
    args = recipe.trainer
    out = Path(args.output_dir)
    checkpoint = last_checkpoint(out) if resume else None
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
        (out / "config.yaml").write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False))
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)

    started = time.perf_counter()
    model_path, sft_summary = _prepare_model(recipe, out, state)
    train_dataset = _train_dataset(recipe)
    trainer = _build_trainer(recipe, model_path, train_dataset)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(out))
    state.wait_for_everyone()

    summary: dict[str, Any] = {}
    if state.is_main_process:
        from archer.card import write_card
        from archer.plots import plot_run

        plot_run(out)
        summary = {
            "global_step": trainer.state.global_step,  # rollouts
            "optimizer_steps": trainer.optimizer_steps_taken(),
            "train_runtime_s": round(time.perf_counter() - started, 1),
            "rl_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
            "objective": args.objective,
            "model": recipe.model.name_or_path,
            "dataset": recipe.data.dataset,
            "compute": {"device": _device_name(), "processes": state.num_processes},
            "versions": versions(),
            **sft_summary,
        }
        if recipe.model.is_tiny and recipe.data.heldout_examples:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with local_model_context():  # loading and generate() alike: no ZeRO-3 collectives on one process
                model = AutoModelForCausalLM.from_pretrained(str(out), dtype="float32")
                summary.update(_heldout(recipe, model, AutoTokenizer.from_pretrained(str(out)), "after"))
        (out / TRAIN_RESULTS).write_text(json.dumps(summary, indent=2) + "\n")
        write_card(out)
    state.wait_for_everyone()
    return summary


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


def _prepare_model(recipe: Recipe, out: Path, state) -> tuple[str, dict[str, Any]]:
    """The path RL starts from. For the tiny model: build + SFT once (main process first), reused on resume."""
    if not recipe.model.is_tiny:
        return recipe.model.name_or_path, {}

    sft_dir = out / SFT_DIR
    with state.main_process_first():
        if state.is_main_process and not (sft_dir / SFT_RESULTS).exists():
            with local_model_context():
                _warm_start(recipe, sft_dir)
    return str(sft_dir), json.loads((sft_dir / SFT_RESULTS).read_text())


def _warm_start(recipe: Recipe, sft_dir: Path) -> None:
    """Build the tiny model, SFT it on the task, save it, and score it on the held-out set."""
    from archer import tiny

    task = _task(recipe)
    model_cfg = tiny.TinyModelConfig(**recipe.model.tiny)
    sft_cfg = recipe.sft if recipe.sft is not None else tiny.SFTConfig()
    model, tokenizer, stats = tiny.prepare_tiny_model(sft_dir, model_cfg, sft_cfg, task)
    summary = {"sft": stats}
    if recipe.data.heldout_examples:
        summary.update(_heldout(recipe, model, tokenizer, "before"))
    (sft_dir / SFT_RESULTS).write_text(json.dumps(summary, indent=2) + "\n")


def _task(recipe: Recipe):
    from archer.data.arithmetic import ArithmeticTask

    return ArithmeticTask(**recipe.data.task)


def _train_dataset(recipe: Recipe):
    data = recipe.data
    if data.is_builtin:
        n = data.num_examples or 20_000
        return _task(recipe).dataset(n, seed=data.seed)
    from archer.data.hub import load_training_dataset

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
            settings.update(max_tests=data.max_tests, timeout_s=data.code_timeout_s, budget_s=data.code_budget_s)
        funcs.append(functools.update_wrapper(functools.partial(func, **settings), func))
    return funcs


def _build_trainer(recipe: Recipe, model_path: str, train_dataset):
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from archer.callbacks import ConciseProgressCallback, MetricsFileCallback
    from archer.trainer import ArcherTrainer

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

    callbacks = [MetricsFileCallback(args.output_dir)]
    if args.push_checkpoints:
        from archer.hub import CheckpointPusher

        callbacks.append(
            CheckpointPusher(
                args.hub_model_id, branch_prefix=args.checkpoint_revision_prefix, private=bool(args.hub_private_repo)
            )
        )
    trainer = ArcherTrainer(
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
    """float32 unless DeepSpeed's mixed precision keeps fp32 master weights (archer.precision); logs each part."""
    from archer.precision import deepspeed_mixed_precision, precision_of

    precision = precision_of(recipe, deepspeed_mixed=deepspeed_mixed_precision(recipe.trainer))
    logger.info("precision:\n%s", "\n".join(precision.lines()))
    return precision.load_dtype


def _heldout(recipe: Recipe, model, tokenizer, when: str) -> dict[str, float]:
    """Greedy accuracy on the task's reserved held-out problems (never drawn for training)."""
    from archer import tiny

    result = tiny.evaluate_heldout(model, tokenizer, _task(recipe), n=recipe.data.heldout_examples)
    logger.info(
        "held-out accuracy %s RL: %.1f%% (%.0f%% of answers show their working)",
        when,
        100 * result.accuracy,
        100 * result.worked_frac,
    )
    return {f"heldout_accuracy_{when}": result.accuracy, f"heldout_worked_frac_{when}": result.worked_frac}


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()})"


def versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers
    import trl

    import archer

    return {
        "archer": archer.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
