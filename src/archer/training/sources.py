"""Where a recipe's model and data come from (the embedded model, a built-in task, a local path or the Hub), checked
the same way by ``archer train`` and ``archer train --dry-run`` before anything is written or loaded.

The rule for a name (archer.files.looks_local): a path that exists, starts with ``/``, ``.`` or ``~``, ends like a
data file, or whose parent folder exists here is local, and must exist; anything else is a Hub id, which for data
must read ``org/name``. So ``data/deepscaler-filtered`` with no ``data/`` folder here is the Hub dataset of that
name: the line printed says so, and the Hub is asked (one request, :mod:`archer.network`) whether it exists, or
offline (``HF_HUB_OFFLINE=1``) the local cache whether it holds it. The dry run and the launch refuse the same.

A recipe with ``data.expect_filtered: true`` (the paper recipes) trains on problems its model sometimes, but not
always, solves. :func:`unfiltered_data_warning` says when its data is not known to be (the rule:
:mod:`archer.data.filter_marker`): a ``warning:`` line in the dry run, a logged warning at launch, never an error
(the data may be filtered in a way no marker records).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from archer.network import check_hub_source


def _hub_line(kind: str, name: str, what: str, revision: str | None) -> str:
    parent = Path(name).parent
    here = f"not found locally: no ./{parent} folder here" if str(parent) not in (".", "") else "not found locally"
    source = check_hub_source(name, kind, f"{what} ({here.removeprefix('not found locally: ')})", revision)
    return f"Hub {kind} {name} ({here}; from {source.where})"


def check_sources(recipe: Any) -> list[str]:
    """One line for the model and one for the data, naming where each comes from; raises UserError when a Hub repo
    does not exist, is gated, or can be neither reached nor found in the local cache (offline mode included)."""
    model, data, path = recipe.model, recipe.data, recipe.path
    if model.is_tiny:
        model_line = "the embedded tiny model (built offline)"
    elif Path(model.name_or_path).expanduser().exists():
        model_line = f"local folder {model.name_or_path}"
    else:
        model_line = _hub_line("model", model.name_or_path, f"{path}: model.name_or_path", model.revision)
    if data.is_builtin:
        data_line = f"built-in task {data.dataset} (generated)"
    elif Path(data.dataset).expanduser().exists():
        kind = "folder" if Path(data.dataset).expanduser().is_dir() else "file"
        data_line = f"local {kind} {data.dataset}"
    else:
        data_line = _hub_line("dataset", data.dataset, f"{path}: data.dataset", None)
    return [f"model: {model_line}", f"data: {data_line}"]


def machine_problems(recipe: Any) -> list[str]:
    """What this machine lacks for the recipe (a dry run may plan for another machine: it prints these; the launch
    stops on the first)."""
    import importlib.util

    args, problems = recipe.trainer, []
    if args.use_vllm and importlib.util.find_spec("vllm") is None:
        problems.append(f"{recipe.path}: trainer.use_vllm: vLLM is not installed here (make install-gpu)")
    if args.bf16:
        import torch
        from transformers.utils import is_torch_bf16_available_on_device

        # transformers' own rule: a GPU with bf16, or without CUDA the CPU's bf16 (DeepSpeed's bf16 runs there too)
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            problems.append(f"{recipe.path}: trainer.bf16: this machine's GPU has no bf16 (use fp16 or float32)")
        elif not torch.cuda.is_available() and not is_torch_bf16_available_on_device("cpu"):
            problems.append(f"{recipe.path}: trainer.bf16: no GPU here, and this CPU build of torch has no bf16")
    return problems


def unfiltered_data_warning(recipe: Any) -> str | None:
    """For a recipe with ``data.expect_filtered``: one line when its training data is not known to be pass-rate
    filtered for its model (an ``archer filter`` output for another model, or no filter record at all), with the
    command that filters it; else None. The authors' released code set (``wizardII/ArcherCodeR-Dataset``) counts
    as filtered for the model they filtered it for (``archer.data.filter_marker.PREFILTERED``)."""
    from archer.data.filter_marker import filtered_for, read_marker, same_model

    data, model = recipe.data, recipe.model.name_or_path
    if not data.expect_filtered or data.is_builtin:
        return None
    against = filtered_for(data.dataset)
    if against is not None and same_model(against, model):
        return None
    source = data.dataset
    marker = read_marker(data.dataset)
    if marker is not None and isinstance(marker.get("dataset"), str):  # filtered for another model: filter its source
        source = marker["dataset"]
    which = f"{data.dataset} (filtered for {against})" if against is not None else data.dataset
    return (
        f"training data {which} is not pass-rate filtered for {model} (the paper filters: "
        f"{filter_command(recipe, source, marker)})"
    )


def filter_command(recipe: Any, source: str, marker: dict[str, Any] | None = None) -> str:
    """The ``archer filter`` command that filters ``source`` for the recipe's model, reward, prompts and lengths,
    and the override that trains on the result."""
    from archer.data.filtering import FilterConfig
    from archer.data.loaders import guess_loader

    data, trainer, defaults = recipe.data, recipe.trainer, FilterConfig()
    spec = marker or {}
    loader = spec.get("loader") if marker else data.loader
    data_files = spec.get("data_files") if marker else data.data_files
    config = spec.get("dataset_config") if marker else data.config
    from archer.files import DATA_FILE_SUFFIXES

    name = Path(source.rstrip("/")).name.lower()
    name = Path(name).stem if name.endswith(DATA_FILE_SUFFIXES) else name
    name = name.removesuffix("-dataset").removesuffix("-preview") or "data"
    output = f"data/{name}-filtered"
    reward = data.rewards[0] if data.rewards else "math"
    args = [source, output, "--model", recipe.model.name_or_path, "--reward", reward]
    if loader and loader != guess_loader(source) and loader != "prepared":
        args += ["--loader", loader]
    if config:
        args += ["--config", config]
    if data_files:
        args += ["--data-files", data_files]
    if data.system_prompt:
        args += ["--system-prompt", data.system_prompt]
    if data.max_prompt_tokens:
        args += ["--max-prompt-tokens", str(data.max_prompt_tokens)]
    if trainer.max_completion_length != defaults.max_new_tokens:
        args += ["--max-new-tokens", str(trainer.max_completion_length)]
    if trainer.temperature != defaults.temperature:
        args += ["--temperature", str(trainer.temperature)]
    if trainer.top_p != defaults.top_p:
        args += ["--top-p", str(trainer.top_p)]
    if getattr(trainer, "chat_template_kwargs", None):
        import json

        args += ["--chat-template-kwargs", json.dumps(trainer.chat_template_kwargs)]
    if data.require_think_close is not False:
        args += ["--require-think-close", str(data.require_think_close).lower()]
    return f"archer filter {shlex.join(args)}, then data.dataset={output}"
