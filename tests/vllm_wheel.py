"""Names read from the pinned vLLM wheel's Python source (a zip; never installed, never imported), for tests that
hold a fake to the real thing.

The wheel is looked for where ``make api-check`` caches it (``$ARCHER_WHEEL_CACHE``, else
``~/.cache/archer/wheels``; CI runs that target before the tests); ``make api-check`` or
``pip download --no-deps vllm==0.30.0 -d ~/.cache/archer/wheels`` fills it. Tests skip when it is absent.
"""

from __future__ import annotations

import ast
import os
import zipfile
from functools import cache
from pathlib import Path

VLLM_VERSION = "0.30.0"


def find_wheel() -> Path | None:
    given = os.environ.get("ARCHER_WHEEL_CACHE")
    place = (
        Path(given) if given else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "archer/wheels"
    )
    found = sorted(place.glob(f"vllm-{VLLM_VERSION}-*.whl")) if place.is_dir() else []
    return found[0] if found else None


@cache
def _module(path: str) -> ast.Module:
    wheel = find_wheel()
    assert wheel is not None, "no vLLM wheel"
    with zipfile.ZipFile(wheel) as archive:
        return ast.parse(archive.read(path))


def _class(path: str, name: str) -> ast.ClassDef:
    for node in ast.walk(_module(path)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"no class {name} in {path} of the vLLM wheel")


def class_fields(path: str, name: str) -> set[str]:
    """Annotated class-level names (dataclass, pydantic, msgspec and TypedDict fields) of class ``name``."""
    node = _class(path, name)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def init_params(path: str, name: str) -> set[str]:
    """Parameter names of ``name.__init__``."""
    for node in _class(path, name).body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args
            return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs} - {"self"}
    raise AssertionError(f"{name} in {path} has no __init__")


def method_params(path: str, name: str, method: str) -> set[str]:
    for node in _class(path, name).body:
        if isinstance(node, ast.FunctionDef) and node.name == method:
            args = node.args
            return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs} - {"self"}
    raise AssertionError(f"{name} in {path} has no {method}")
