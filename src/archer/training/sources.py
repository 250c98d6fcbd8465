"""Where a recipe's model and data come from (the embedded model, a built-in task, a local path or the Hub), checked
the same way by ``archer train`` and ``archer train --dry-run`` before anything is written or loaded.

The rule for a name (archer.files.looks_local): a path that exists, starts with ``/``, ``.`` or ``~``, ends like a
data file, or whose parent folder exists here is local, and must exist; anything else is a Hub id, which for data
must read ``org/name``. So ``data/deepscaler-filtered`` with no ``data/`` folder here is the Hub dataset of that
name: the line printed says so, and the Hub is asked (one request, :mod:`archer.network`) whether it exists, or
offline (``HF_HUB_OFFLINE=1``) the local cache whether it holds it. The dry run and the launch refuse the same.
"""

from __future__ import annotations

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
