"""Archer: dual-token constraints for RL from verifiable rewards, on Hugging Face tooling."""

from typing import Any

__version__ = "0.1.0"
PAPER_URL = (
    "https://arxiv.org/abs/2507.15778"  # Stabilizing Knowledge, Promoting Reasoning: Dual-Token Constraints for RLVR
)

# The names a Python user reaches for, loaded on first use so that `import archer` stays light (no torch, no TRL).
_PUBLIC = {
    "ObjectiveConfig": "archer.objective",
    "compute_objective": "archer.objective",
    "ArcherConfig": "archer.training.config",
    "ArcherTrainer": "archer.training.trainer",
}
__all__ = ["PAPER_URL", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'archer' has no attribute {name!r}")
