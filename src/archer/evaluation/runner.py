"""``archer eval``: load a suite's tasks, generate k samples per problem, grade, and write one fresh run folder.

Only the suite's own lighteval task module is imported (never lighteval's 600+ built-in tasks, one of which
downloads at import), and generation bypasses lighteval's sample cache, so every run decodes its own checkpoint.

Each task is saved as soon as it is graded (archer.evaluation.results: ``<folder>.partial/``). A run that was
killed or preempted is finished by the next ``archer eval`` whose run key (:func:`run_key`: the model's weights,
the suite, its tasks and their data, the backend's protocol) is the same: the tasks already saved are skipped.
Every task's samples depend only on its own seed, not on the tasks run before it, so the finished results are the
same as an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from archer.errors import UserError
from archer.evaluation.backends import check_options, load_backend, select_backend
from archer.evaluation.backends.base import Backend, BackendOptions, Sampling
from archer.evaluation.data import load_rows
from archer.evaluation.grading import GradingOptions, grade
from archer.evaluation.metrics import aggregate
from archer.evaluation.results import (
    SCHEMA_VERSION,
    average_rows,
    find_unfinished,
    finish_run,
    finished_tasks,
    read_progress,
    save_task,
    start_partial,
    timestamp,
    update_progress,
)
from archer.evaluation.suite import Suite, TaskSpec, load_suite
from archer.files import looks_local, read_model_config
from archer.network import check_hub_source, network_errors
from archer.training.run_folder import newest_run
from archer.versions import versions

logger = logging.getLogger(__name__)

RUNS_ROOT = Path("outputs")


@dataclass(frozen=True)
class ModelRef:
    name_or_path: str
    local: bool

    @property
    def short_name(self) -> str:
        return Path(self.name_or_path.rstrip("/")).name


@dataclass(frozen=True)
class EvalRequest:
    model: str | None = field(default=None, metadata={"help": "run folder, model folder or Hub id; None: newest run"})
    suite: str = field(default="tiny", metadata={"help": "suite YAML or a packaged suite's name (paper, quick, tiny)"})
    backend: str = field(default="auto", metadata={"help": "auto, transformers, vllm or openai"})
    output_dir: str | None = field(default=None, metadata={"help": "where the run folder goes (default: see docs)"})
    limit: int | None = field(default=None, metadata={"help": "at most N problems per task (smoke runs)"})
    tasks: tuple[str, ...] | None = field(default=None, metadata={"help": "run only these tasks of the suite"})
    data: dict[str, str] = field(default_factory=dict, metadata={"help": "task -> local data path"})
    backend_options: BackendOptions = field(default_factory=BackendOptions)
    runs_root: Path = field(default=RUNS_ROOT, metadata={"help": "where run folders (and outputs/eval) live"})


def resolve_model(model: str | None, runs_root: Path = RUNS_ROOT) -> ModelRef:
    """A local folder (must exist and hold a model) or a Hub id ``org/name``.

    A path whose parent folder exists locally (``outputs/typo``) or that starts with ``.``, ``/`` or ``~`` is
    taken as local, so a mistyped run folder is reported instead of being looked up on the Hub.
    """
    if model is None:
        path = newest_run(runs_root, trained=True)
        logger.info("no --model given: evaluating the newest run, %s", path)
        return ModelRef(str(path), True)
    path = Path(model).expanduser()
    if looks_local(model) or model.count("/") != 1:
        if not path.is_dir():
            raise UserError(f"--model {model}: no such model folder")
        read_model_config(path, f"--model {model}")
        return ModelRef(str(path), True)
    return ModelRef(model, False)


def load_task_module(path: Path) -> ModuleType:
    """Import a lighteval task module (``TASKS_TABLE``) from its file, and nothing else of lighteval's tasks."""
    if not path.is_file():
        raise UserError(f"task module {path} does not exist")
    name = f"archer_eval_tasks_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # no loader for the file's suffix
        raise UserError(f"task module {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "TASKS_TABLE"):
        raise UserError(f"task module {path} has no TASKS_TABLE")
    sys.modules[name] = module
    return module


def encode_prompts(tokenizer: Any, queries: Sequence[str], style: str) -> tuple[list[str], list[list[int]]]:
    """``chat``: the model's chat template with a generation prompt; ``raw``: the text as is (as TRL feeds it)."""
    if style == "raw":
        return list(queries), tokenizer(list(queries))["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("prompt_style 'chat': the model's tokenizer has no chat template; use prompt_style: raw")
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in queries
    ]
    return texts, tokenizer(texts, add_special_tokens=False)["input_ids"]


def score_task(
    spec: TaskSpec,
    docs: Sequence[Any],
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    grading: GradingOptions | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Grade k completions per doc; returns the task metrics (percent) and one details row per problem."""
    from tqdm.auto import tqdm

    scores, details = [], []
    for doc, prompt, texts in tqdm(
        list(zip(docs, prompts, completions, strict=True)), desc=f"grading {spec.short_name}", unit="problem"
    ):
        graded = grade(doc.specific, texts, grading)
        problem_scores = [g.score for g in graded]
        scores.append(problem_scores)
        gold = doc.specific.get("gold", f"{len(doc.specific.get('tests', []))} tests")
        details.append(
            {
                "problem_id": doc.specific.get("problem_id"),
                "prompt": prompt,
                "gold": gold,
                "completions": list(texts),
                "extracted": [g.extracted for g in graded],
                "scores": problem_scores,
                **aggregate([problem_scores], spec.pass_k),
            }
        )
    return aggregate(scores, spec.pass_k), details


@dataclass(frozen=True)
class PreparedTask:
    spec: TaskSpec
    docs: list[Any]
    dataset: str  # where the rows came from: Hub id, local path or "generated"
    revision: str | None = None  # the Hub dataset's revision, None when unpinned or not from the Hub
    limited: bool = False  # a limit (--limit or the suite's) left some of the task's problems out


def _prepare(suite: Suite, request: EvalRequest, model: ModelRef) -> list[PreparedTask]:
    """Task configs and docs for every task of the suite; fails before anything is loaded or written."""
    module = load_task_module(suite.module)
    configs = {config.name: config for config in module.TASKS_TABLE}
    generators = getattr(module, "LOCAL_DATASETS", {})
    unknown = [t for t in request.data if f"archer:{t.removeprefix('archer:')}" not in configs]
    if unknown:
        raise UserError(
            f"--data {unknown[0]}: unknown task; valid: {', '.join(c.removeprefix('archer:') for c in configs)}"
        )
    data = {f"archer:{t.removeprefix('archer:')}": path for t, path in request.data.items()}
    prepared = []
    for spec in selected_tasks(suite, request.tasks):
        if spec.task not in configs:
            valid = ", ".join(name.removeprefix("archer:") for name in configs)
            raise UserError(f"{suite.path}: unknown task {spec.short_name!r} (not in {suite.module}); valid: {valid}")
        limit = request.limit or spec.limit
        spec = replace(spec, limit=limit, data=data.get(spec.task, spec.data))
        config = configs[spec.task]
        local_model = model.name_or_path if model.local else None
        if spec.data is None and config.name not in generators:  # from the Hub: reachable, or cached when offline
            try:
                check_hub_source(
                    config.hf_repo, "dataset", f"task {spec.short_name}", spec.revision or config.hf_revision
                )
            except UserError as err:
                raise UserError(
                    f"{err}; a local copy: --data {spec.short_name}=PATH or `data:` in the suite"
                ) from None
        rows = load_rows(config, spec.data, generators, local_model, spec.revision)
        limited = spec.limit is not None and len(rows) > spec.limit
        rows = rows[: spec.limit]
        docs = [doc for row in rows if (doc := config.prompt_function(row, config.name)) is not None]
        from_hub = spec.data is None and config.name not in generators
        dataset = spec.data or (config.hf_repo if from_hub else "generated")
        revision = (spec.revision or config.hf_revision) if from_hub else None
        prepared.append(PreparedTask(spec, docs, dataset, revision, limited))
    if any(_has_code(task.docs) for task in prepared):
        from archer.sandbox.runner import ensure_sandbox

        ensure_sandbox()  # code is graded only in the bubblewrap sandbox: fail before generating anything
    return prepared


def selected_tasks(suite: Suite, names: Sequence[str] | None) -> tuple[TaskSpec, ...]:
    """The suite's tasks, or those of them named by ``--tasks`` (in the suite's order); a typo is one line."""
    if names is None:
        return suite.tasks
    valid = [spec.short_name for spec in suite.tasks]
    wanted = [name.removeprefix("archer:") for name in names]
    if not wanted or (unknown := [name for name in wanted if name not in valid]):
        bad = f"{unknown[0]!r} is not a task of suite {suite.name}" if wanted else "no task named"
        raise UserError(f"--tasks: {bad}; its tasks: {', '.join(valid)}")
    return tuple(spec for spec in suite.tasks if spec.short_name in wanted)


def _has_code(docs: Sequence[Any]) -> bool:
    return any(doc.specific.get("grader") == "code" for doc in docs)


def grading_options(spec: TaskSpec, tokenizer: Any) -> GradingOptions:
    """The task's grading settings; ``require_think_close: auto`` asks the chat template the prompts used."""
    from archer.rewards import resolve_require_think_close

    template = tokenizer if spec.prompt_style == "chat" else None  # raw prompts: no template opened anything
    close = resolve_require_think_close(spec.require_think_close, template)
    return GradingOptions(close, spec.code_timeout_s, spec.code_budget_s, spec.code_memory_mb)


def grading_record(options: GradingOptions, docs: Sequence[Any]) -> dict[str, Any]:
    """What results.json says about grading: the resolved reasoning rule, and the code limits on code tasks."""
    record: dict[str, Any] = {"require_think_close": options.require_think_close}
    if _has_code(docs):
        record.update(code_timeout_s=options.code_timeout_s, code_budget_s=options.code_budget_s)
    return record


def output_location(model: ModelRef, suite: Suite, request: EvalRequest, now: datetime) -> tuple[Path, str]:
    """(parent folder, folder name) of a new run: ``<model>/eval/<timestamp>`` for a local model,
    ``<output-dir>/<suite>-<timestamp>`` or ``outputs/eval/<model>-<suite>-<timestamp>`` otherwise."""
    stamp = timestamp(now)
    if request.output_dir is not None:
        return Path(request.output_dir), f"{suite.name}-{stamp}"
    if model.local:
        return Path(model.name_or_path) / "eval", stamp
    return request.runs_root / "eval", f"{model.short_name}-{suite.name}-{stamp}"


# Backend options that change neither the samples nor the results file (a requeued job may reach its server at
# another address, or use other limits)
_KEY_IGNORES = (
    "base_url",
    "api_key_env",
    "max_concurrency",
    "max_retries",
    "request_timeout_s",
    "gpu_memory_utilization",
)


def run_key(
    model: ModelRef, suite: Suite, prepared: Sequence[PreparedTask], backend: str, options: BackendOptions
) -> str:
    """What makes two ``archer eval`` runs the same run: the model (a local one by its weight and config files'
    sizes and times, so a retrained model is a new run), the suite and every task's settings, data and problems,
    and the backend with the options that shape its samples. 16 hex digits of a SHA-256."""
    if model.local:
        folder = Path(model.name_or_path).resolve()
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
        identity: Any = [str(folder), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]
    else:
        identity = model.name_or_path
    problems = [
        hashlib.sha256(json.dumps([doc.query for doc in task.docs], ensure_ascii=False).encode()).hexdigest()
        for task in prepared
    ]
    value = {
        "model": identity,
        "suite": [suite.name, str(Path(suite.path).resolve()), suite.seed, suite.averages],
        "tasks": [
            [asdict(task.spec), task.dataset, task.revision, digest]
            for task, digest in zip(prepared, problems, strict=True)
        ],
        "backend": [backend, {k: v for k, v in asdict(options).items() if k not in _KEY_IGNORES}],
    }
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_task(task: PreparedTask, backend: Backend) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate and grade one task; returns its ``tasks`` entry of results.json and its details rows."""
    spec, docs = task.spec, task.docs
    prompts, ids = encode_prompts(backend.tokenizer, [doc.query for doc in docs], spec.prompt_style)
    t_gen = time.perf_counter()
    sampling = Sampling(spec.k, spec.temperature, spec.top_p, spec.max_new_tokens)
    completions = backend.generate(ids, sampling, desc=spec.short_name, texts=prompts)
    generation_s = time.perf_counter() - t_gen
    grading = grading_options(spec, backend.tokenizer)
    metrics, details = score_task(spec, docs, prompts, completions, grading)
    entry = {
        "task": spec.task,
        "dataset": task.dataset,
        "revision": task.revision,
        **spec.protocol(),
        "grading": grading_record(grading, docs),
        "limit": spec.limit,
        "limited": task.limited,
        "num_problems": len(docs),
        "num_samples": len(docs) * spec.k,
        "metrics": metrics,
        "generation_s": round(generation_s, 3),
        "details": f"details/{spec.short_name}.jsonl",
    }
    logger.info("%s: %s", spec.short_name, ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
    return entry, details


def evaluate(request: EvalRequest) -> tuple[Path, dict[str, Any]]:
    """Run a suite on a model; returns the run folder and the results dict (as in ``results.json``).

    An unfinished run with the same :func:`run_key` (killed, preempted) is finished instead of starting over."""
    started, t0 = datetime.now(UTC), time.perf_counter()
    model = resolve_model(request.model, request.runs_root)
    if not model.local:  # one request, or none offline: an absent network or a wrong id is one line, at once
        check_hub_source(model.name_or_path, "model", f"--model {model.name_or_path}")
    suite = load_suite(request.suite)
    backend_name = select_backend(request.backend, request.backend_options.base_url)
    check_options(backend_name, request.backend_options)
    prepared = _prepare(suite, request, model)
    options = replace(request.backend_options, seed=suite.seed)
    parent, stem = output_location(model, suite, request, started)
    key = run_key(model, suite, prepared, backend_name, options)
    partial = find_unfinished(parent, key) if parent.is_dir() else None
    done = finished_tasks(partial) if partial is not None else {}
    progress = read_progress(partial) if partial is not None else {}
    todo = [task for task in prepared if task.spec.short_name not in done]
    if partial is not None:
        logger.info(
            "resuming the unfinished run %s (run key %s): %d of %d tasks done%s",
            partial,
            key,
            len(prepared) - len(todo),
            len(prepared),
            f", {', '.join(t.spec.short_name for t in todo)} to do" if todo else "",
        )
    spent = float(progress.get("elapsed_s", 0.0))
    protocol = progress.get("protocol")
    if todo:
        logger.info("backend: %s (model %s, suite %s)", backend_name, model.name_or_path, suite.name)
        with network_errors(f"--model {model.name_or_path}", None if model.local else model.name_or_path):
            backend = load_backend(backend_name, model.name_or_path, options)
        try:
            protocol = {"backend": backend_name, "seed": suite.seed, **backend.protocol()}
            for task in todo:
                entry, rows = _run_task(task, backend)
                if partial is None:
                    partial = start_partial(
                        parent, stem, {"key": key, "started_at": started.isoformat(timespec="seconds")}
                    )
                    progress = read_progress(partial)
                save_task(partial, task.spec.short_name, entry, rows)
                done[task.spec.short_name] = entry
                update_progress(partial, protocol=protocol, elapsed_s=spent + time.perf_counter() - t0)
                logger.info("%s saved (%d of %d tasks): %s", task.spec.short_name, len(done), len(prepared), partial)
        finally:
            backend.close()
    assert partial is not None  # a suite has at least one task: it was run now or found saved
    tasks = {task.spec.short_name: done[task.spec.short_name] for task in prepared}
    results = {
        "schema_version": SCHEMA_VERSION,
        "model": model.name_or_path,
        "local_model": model.local,
        "suite": suite.name,
        "suite_file": str(suite.path),
        "suite_description": suite.description,
        "limit": request.limit,
        "tasks_selected": list(tasks) if request.tasks is not None else None,
        "protocol": protocol,
        "tasks": tasks,
        "averages": average_rows(
            tasks, {row: members for row, members in suite.averages.items() if set(members) <= set(tasks)}
        ),
        "versions": versions(),
        "started_at": progress.get("started_at", started.isoformat(timespec="seconds")),
        "wall_time_s": round(spent + time.perf_counter() - t0, 3),
    }
    out_dir = finish_run(partial, results)
    return out_dir, results
