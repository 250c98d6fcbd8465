"""Model cards for run folders: Hub metadata (with ``model-index`` eval results) and a body rendered from a template.

The card is built from what the run folder holds (see CONTRIBUTING.md): ``config.yaml`` (resolved recipe),
``train_results.json``, ``plots/*.png`` and ``eval/<timestamp>/results.json``. Everything but the model itself is
optional: a tiny run with no eval, no plots and no base model still gets a complete card. Rendering is
deterministic (no dates), so re-rendering an unchanged run gives the same bytes and a re-push is a no-op.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

import archer
from archer.errors import UserError
from archer.files import atomic_write_text
from archer.publish.run_info import EvalResults, RunFolder, find_eval_results, load_run, read_eval_results
from archer.resources import model_card_template

logger = logging.getLogger(__name__)

TEMPLATE = model_card_template()
TAGS = ["archer", "rlvr", "grpo", "trl", "reasoning", "reinforcement-learning"]
# TRL / trainer settings shown in the card, in this order, when the resolved config has them.
TRAINER_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "responses_per_step",
    "generation_batch_size",
    "num_iterations",
    "max_prompt_length",
    "max_completion_length",
    "temperature",
    "top_p",
    "beta",
    "loss_type",
    "max_steps",
    "num_train_epochs",
    "seed",
)


SAMPLING_KEYS = {"temperature": "T", "top_p": "top_p", "top_k": "top_k", "max_new_tokens": "max new tokens"}


def _protocol_text(protocol: dict[str, Any], sampling_only: bool = False) -> str:
    """``T=0.8, top_p=1.0, max new tokens=32768`` (and the other protocol entries unless ``sampling_only``)."""
    items = [(SAMPLING_KEYS.get(key, key), value) for key, value in protocol.items()]
    if sampling_only:
        items = [(name, value) for name, value in items if name in SAMPLING_KEYS.values()]
    return ", ".join(f"{name}={value}" for name, value in items)


def eval_results_metadata(results: EvalResults, model_name: str) -> list[EvalResult]:
    """One ``model-index`` entry per task and metric; the sampling protocol goes into the metric's args and name."""
    entries = []
    for task in results.tasks:
        for metric, value in task.metrics.items():
            args = dict(results.protocol) | ({"k": task.k} if task.k is not None else {})
            entries.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Text Generation",
                    dataset_type=task.dataset or task.name,
                    dataset_name=task.name,
                    metric_type=metric,
                    metric_name=f"{metric} ({sampling})" if (sampling := _protocol_text(args, True)) else metric,
                    metric_value=round(value, 2),
                    metric_args=args or None,
                )
            )
    return entries


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return "–" if value is None else str(value)


def _eval_rows(own: EvalResults, base: EvalResults | None) -> list[dict[str, str]]:
    base_tasks = {t.name: t for t in base.tasks} if base else {}
    rows = []
    for task in own.tasks:
        for metric, value in task.metrics.items():
            base_value = base_tasks[task.name].metrics.get(metric) if task.name in base_tasks else None
            row = {"task": task.name, "metric": metric, "value": f"{value:.1f}"}
            row["problems"] = str(task.num_problems) if task.num_problems is not None else "–"
            row["base"] = f"{base_value:.1f}" if base_value is not None else "–"
            row["delta"] = f"{value - base_value:+.1f}" if base_value is not None else "–"
            rows.append(row)
    return rows


def _objective_summary(objective: dict[str, Any]) -> str | None:
    """One sentence on the token split and per-class constraints, when the config has the Archer fields."""
    needed = ("entropy_quantile", "reasoning_clip", "knowledge_clip", "reasoning_kl", "knowledge_kl")
    if not all(key in objective for key in needed):
        return None

    def clip(value: Any) -> str:
        low, high = (value, value) if isinstance(value, int | float) else value
        return f"[1-{low:g}, 1+{high:g}]"

    rho = float(objective["entropy_quantile"])
    scope = "each response" if objective.get("quantile_scope", "response") == "response" else "the micro-batch"
    return (
        f"Tokens whose entropy is above the {rho:g}-quantile of {scope} (about {100 * (1 - rho):.0f}%) are "
        f"reasoning tokens: ratio clipped to {clip(objective['reasoning_clip'])}, KL weight "
        f"{objective['reasoning_kl']:g}. The others are knowledge tokens: ratio clipped to "
        f"{clip(objective['knowledge_clip'])}, KL weight {objective['knowledge_kl']:g} toward the reference model."
    )


def _compute(train_results: dict[str, Any]) -> dict[str, str]:
    compute = train_results["compute"] if isinstance(train_results.get("compute"), dict) else {}
    out = {}
    if compute.get("device"):
        out["hardware"] = str(compute["device"])
    if compute.get("processes"):
        out["processes"] = str(compute["processes"])
    runtime = train_results.get("train_runtime_s")
    if isinstance(runtime, int | float):
        out["wall time"] = f"{runtime / 3600:.2f} h" if runtime >= 3600 else f"{runtime / 60:.1f} min"
    hours = compute.get("hours") or compute.get("gpu_hours")
    processes = compute.get("processes")
    if not isinstance(hours, int | float) and isinstance(runtime, int | float) and isinstance(processes, int):
        hours = runtime * processes / 3600  # every process holds one device for the whole run
    if isinstance(hours, int | float):
        out["device-hours"] = f"{hours:.2f}"
    return out


def build_context(run: RunFolder, repo_id: str | None, own: EvalResults | None, base: EvalResults | None) -> dict:
    """Everything the template shows, as plain strings, lists and dicts."""
    trainer = run.config.get("trainer") or {}
    objective = run.config.get("objective") or {}
    data = run.config.get("data") or {}
    results = run.train_results
    model_id = repo_id or run.path.resolve().name
    heldout = {
        key: f"{100 * results[key]:.1f}%"
        for key in (
            "heldout_accuracy_before",
            "heldout_accuracy_after",
            "heldout_sampled_accuracy_before",
            "heldout_sampled_accuracy_after",
        )
        if isinstance(results.get(key), int | float)
    }
    sampled = results.get("heldout_sampled_protocol")
    sampled = sampled if isinstance(sampled, dict) else {}
    versions = dict(results.get("versions") or {})
    for name, version in (own.versions if own else {}).items():
        versions.setdefault(name, version)
    versions.setdefault("archer-rlvr", archer.__version__)
    return {
        "model_id": model_id,
        "repo_id": repo_id,
        "load_id": repo_id or str(run.path),  # what from_pretrained takes in the quick start
        "paper_url": archer.PAPER_URL,
        "is_tiny": run.is_tiny,
        "model_source": run.model_name_or_path,
        "base_model": run.base_model,
        "datasets": run.datasets,
        "rewards": run.rewards,
        "preset": objective.get("preset"),
        "objective_summary": _objective_summary(objective),
        "objective_rows": [(k, _fmt(v)) for k, v in objective.items() if k != "preset" and v is not None],
        "trainer_rows": _trainer_rows(trainer, has_objective=bool(objective)),
        "batch_summary": _batch_summary(trainer),
        "data_rows": [(k, _fmt(v)) for k, v in data.items() if v not in (None, [], {}) and k != "dataset"],
        "global_step": results.get("global_step"),
        "optimizer_steps": results.get("optimizer_steps"),
        "is_correction": _is_correction(trainer),
        "heldout": heldout,
        "heldout_examples": data.get("heldout_examples"),
        "heldout_sampling": _protocol_text({k: v for k, v in sampled.items() if k in SAMPLING_KEYS}, True),
        "heldout_k": sampled.get("k"),
        "base_label": "SFT warm start" if run.is_tiny else (base.model if base else None),
        "eval": own,
        "eval_rows": _eval_rows(own, base) if own else [],
        "base_eval": base,
        "protocol": _protocol_text(own.protocol) if own else "",
        "plots": run.plots,
        "compute": _compute(results),
        "versions": versions,
        "chat_template": run.has_chat_template,
        "max_new_tokens": int(trainer.get("max_completion_length") or 256),
        "temperature": float(trainer.get("temperature") or 1.0),
        "example_prompt": "Compute 26+10-17." if "arithmetic" in run.datasets else _example_prompt(run.rewards),
        "archer_version": archer.__version__,
    }


def _trainer_rows(trainer: dict[str, Any], has_objective: bool) -> list[tuple[str, str]]:
    keys = [k for k in TRAINER_KEYS if trainer.get(k) is not None]
    if has_objective:  # the objective block defines the loss and its KL weights: TRL's own knobs do not apply
        keys = [k for k in keys if k not in ("beta", "loss_type")]
    if isinstance(trainer.get("max_steps"), int) and trainer["max_steps"] > 0:
        keys = [k for k in keys if k != "num_train_epochs"]  # max_steps overrides epochs in transformers
    return [(k, _fmt(trainer[k])) for k in keys]


def _is_correction(trainer: dict[str, Any]) -> str | None:
    """Whether TRL's vLLM importance-sampling correction weighed the loss (only for vLLM rollouts)."""
    if not trainer.get("use_vllm"):
        return None
    if not trainer.get("vllm_importance_sampling_correction"):
        return "off (as the paper's code)"
    mode, cap = trainer.get("vllm_importance_sampling_mode"), trainer.get("vllm_importance_sampling_clip_max")
    return f"on ({mode}, clip max {cap})"


def _batch_summary(trainer: dict[str, Any]) -> str | None:
    """How many completions and prompts one optimizer step sees on each process."""
    try:
        completions = int(trainer["per_device_train_batch_size"]) * int(trainer.get("gradient_accumulation_steps", 1))
        group = int(trainer["num_generations"])
    except (KeyError, TypeError, ValueError):
        return None
    prompts = f" ({completions // group} prompts × {group} responses)" if group and completions % group == 0 else ""
    return f"Each optimizer step sees {completions} completions{prompts} per process."


def _example_prompt(rewards: list[str]) -> str:
    if any("code" in r for r in rewards):
        return "Write a Python program that reads n and prints the n-th Fibonacci number."
    return "What is the sum of the first 100 positive odd integers? Put the final answer in \\\\boxed{}."


def card_data(run: RunFolder, repo_id: str | None, own: EvalResults | None) -> ModelCardData:
    model_name = (repo_id or run.path.resolve().name).split("/")[-1]
    hub_datasets = [d for d in run.datasets if d.count("/") == 1 and not Path(d).exists()]
    tags = TAGS + (["tiny"] if run.is_tiny else [])
    return ModelCardData(
        base_model=run.base_model,
        datasets=hub_datasets or None,
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=model_name if own and own.tasks else None,
        eval_results=eval_results_metadata(own, model_name) if own and own.tasks else None,
    )


def render_card(
    run_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_results: str | os.PathLike | None = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """The model card of a run folder (nothing written). ``base_results``: the base model's eval results JSON."""
    run = load_run(run_dir)
    own, found_base = find_eval_results(run.path, run.base_model)
    if found_base is None and run.is_tiny:  # the tiny model's base is its SFT warm start, evaluated in sft/eval/
        found_base = find_eval_results(run.path / "sft", None)[0]
    base = read_eval_results(base_results) if base_results is not None else found_base
    template = Path(template) if template is not None else TEMPLATE
    if not template.is_file():
        raise UserError(f"model card template {template} not found (pass --template FILE)")
    data = card_data(run, repo_id, own)
    context = build_context(run, repo_id, own, base)
    card = ModelCard.from_template(data, template_path=str(template), **context)
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))  # optional sections leave runs of blank lines


def write_card(run_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the card of ``run_dir`` into ``<run_dir>/README.md``; returns that path."""
    card = render_card(run_dir, **kwargs)
    path = Path(run_dir) / "README.md"
    atomic_write_text(path, str(card))  # never leave a half-written card
    logger.info("wrote %s", path)
    return path
