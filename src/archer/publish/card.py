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
from archer.publish.run_info import EvalScores, RunFolder, Scores, find_eval_results, load_run, read_eval_results
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


def _sampling(scores: Scores) -> dict[str, Any]:
    """The protocol a task was sampled with: the file's protocol, then the task's own sampling settings."""
    return dict(scores.results.protocol) | {k: v for k, v in scores.task.sampling.items() if k != "prompt_style"}


def eval_results_metadata(own: EvalScores) -> list[EvalResult]:
    """One ``model-index`` entry per task and metric of a whole benchmark; the suite, k, problem count and sampling
    go into the metric's args, and the suite, problem count and sampling into its name."""
    entries = []
    for scores in own.scores.values():
        task = scores.task
        sampling = _sampling(scores)
        args = sampling | {"suite": scores.suite, "k": task.k, "problems": task.num_problems}
        args = {key: value for key, value in args.items() if value is not None}
        described = [f"{scores.suite} suite" if scores.suite else None]
        described.append(f"{task.num_problems} problems" if task.num_problems is not None else None)
        described.append(_protocol_text(sampling, True) or None)
        for metric, value in task.metrics.items():
            entries.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Text Generation",
                    dataset_type=task.dataset or task.name,
                    dataset_name=task.name,
                    dataset_revision=task.revision,
                    metric_type=metric,
                    metric_name=f"{metric} ({', '.join(d for d in described if d)})",
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


def comparable(own: Scores, base: Scores | None) -> str | None:
    """Why ``base`` cannot stand beside ``own`` in one row (another k, problem count or sampling), or None."""
    if base is None:
        return "not evaluated"
    a, b = own.task, base.task
    if a.k != b.k or a.num_problems != b.num_problems:
        return f"k={b.k} on {b.num_problems} problems against k={a.k} on {a.num_problems}"
    for key in set(a.sampling) & set(b.sampling):
        if a.sampling[key] != b.sampling[key]:
            return f"{key} {b.sampling[key]} against {a.sampling[key]}"
    return None


def _eval_rows(own: EvalScores, base: EvalScores | None) -> list[dict[str, str]]:
    rows = []
    for key, scores in own.scores.items():
        task = scores.task
        base_scores = base.scores.get(key) if base else None
        why = comparable(scores, base_scores)
        if why is not None and base_scores is not None:
            logger.warning("card: no base column for %s (suite %s): %s", task.name, scores.suite, why)
        for metric, value in task.metrics.items():
            base_value = base_scores.task.metrics.get(metric) if why is None and base_scores else None
            rows.append(
                {
                    "task": task.name,
                    "suite": scores.suite or "–",
                    "metric": metric,
                    "k": str(task.k) if task.k is not None else "–",
                    "problems": str(task.num_problems) if task.num_problems is not None else "–",
                    "value": f"{value:.1f}",
                    "base": f"{base_value:.1f}" if base_value is not None else "–",
                    "delta": f"{value - base_value:+.1f}" if base_value is not None else "–",
                    "folder": scores.folder,
                }
            )
    return rows


def _eval_sources(own: EvalScores, base: EvalScores | None, base_label: str | None) -> list[dict[str, str]]:
    """One line per eval folder the table reads: whose model, which suite and tasks, with what protocol."""
    sources: dict[str, dict[str, Any]] = {}
    used_base = [base.scores[key] for key, scores in own.scores.items() if base and key in base.scores]
    used_base = [entry for entry in used_base if comparable(own.scores[entry.key], entry) is None]
    for who, entries in (("this model", own.scores.values()), (base_label or "base model", used_base)):
        for scores in entries:
            source = sources.setdefault(
                scores.folder,
                {"folder": scores.folder, "who": who, "suite": scores.suite or "–", "tasks": [], "protocol": ""},
            )
            source["tasks"].append(scores.task.name)
            source["protocol"] = _protocol_text(_sampling(scores))
    return [dict(source, tasks=", ".join(source["tasks"])) for source in sources.values()]


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


def build_context(run: RunFolder, repo_id: str | None, own: EvalScores, base: EvalScores | None) -> dict:
    """Everything the template shows, as plain strings, lists and dicts."""
    trainer = run.config.get("trainer") or {}
    objective = run.config.get("objective") or {}
    data = run.config.get("data") or {}
    results = run.train_results
    model_id = repo_id or run.path.resolve().name
    base_label = _base_label(run, base)
    rows = _eval_rows(own, base) if own else []
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
    for scores in own.scores.values():
        for name, version in scores.results.versions.items():
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
        "base_label": base_label,
        "eval_rows": rows,
        "base_eval": any(row["base"] != "–" for row in rows),
        "eval_sources": _eval_sources(own, base, base_label) if own else [],
        "eval_skipped": sorted({line.split(" ", 1)[0] for line in own.skipped}),
        "plots": run.plots,
        "compute": _compute(results),
        "versions": versions,
        "chat_template": run.has_chat_template,
        "max_new_tokens": int(trainer.get("max_completion_length") or 256),
        "temperature": float(trainer.get("temperature") or 1.0),
        "example_prompt": "Compute 26+10-17." if "arithmetic" in run.datasets else _example_prompt(run.rewards),
        "archer_version": archer.__version__,
    }


def _base_label(run: RunFolder, base: EvalScores | None) -> str | None:
    if run.is_tiny:
        return "SFT warm start"
    models = {scores.results.model for scores in (base.scores.values() if base else ())}
    return next(iter(models)) if len(models) == 1 else None


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


def card_data(run: RunFolder, repo_id: str | None, own: EvalScores | None) -> ModelCardData:
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
        model_name=model_name if own else None,
        eval_results=eval_results_metadata(own) if own else None,
    )


def render_card(
    run_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_results: str | os.PathLike | None = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """The model card of a run folder (nothing written). ``base_results``: the base model's eval results JSON.

    Only whole benchmarks are reported: a task evaluated on part of its problems (``archer eval --limit``, a suite's
    ``limit``) is left out of the table and the model-index, and a base-model number stands beside the model's only
    when both were evaluated with the same k, problem count and sampling.
    """
    run = load_run(run_dir)
    own, base = find_eval_results(run.path, run.base_model)
    if not base and run.is_tiny:  # the tiny model's base is its SFT warm start, evaluated in sft/eval/
        base = find_eval_results(run.path / "sft", None, root=run.path)[0]
    if base_results is not None:
        base = EvalScores()
        base.add(read_eval_results(base_results), str(base_results))
    for line in own.skipped:
        logger.warning("card: leaving out %s", line)
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
