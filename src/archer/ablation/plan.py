"""Planning an ablation: every recipe on every seed, the warm starts they share, checked before anything runs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archer.errors import UserError

DEFAULT_OUT = Path("outputs/ablate")
WARM_DIR = "warm_starts"
SEED_OFFSET = 42  # trainer.seed = SEED_OFFSET + seed: seed 0 of recipes/tiny/archer.yaml is `make train`


@dataclass(frozen=True)
class AblationRun:
    """One recipe on one seed."""

    name: str
    seed: int
    recipe_path: str
    overrides: tuple[str, ...]
    out_dir: Path
    warm_dir: Path

    @property
    def log(self) -> Path:
        return self.out_dir.with_suffix(".log")

    @property
    def done(self) -> bool:
        return (self.out_dir / "train_results.json").is_file()


@dataclass
class Plan:
    """Every run of an ablation and the warm starts they share, validated before anything is written."""

    out: Path
    names: list[str]
    seeds: list[int]
    runs: list[AblationRun]
    warm_starts: dict[Path, AblationRun] = field(
        default_factory=dict
    )  # warm-start folder -> the first run that needs it
    threads: int = 1


@dataclass(frozen=True)
class Variant:
    """A recipe file plus overrides, under a name (the recipe's stem for ``archer ablate``)."""

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()


def variants_from_recipes(recipes: Sequence[str], overrides: Sequence[str] = ()) -> list[Variant]:
    """One variant per recipe file, named after its stem, each with the common ``overrides``."""
    return [Variant(Path(r).stem, str(r), tuple(overrides)) for r in recipes]


def plan_ablation(
    variants: Sequence[Variant], seeds: int, out: str | os.PathLike = DEFAULT_OUT, workers: int = 1
) -> Plan:
    """Load and check every variant for every seed (a UserError names the first problem; nothing is written)."""
    from archer.recipe import load_recipe

    if not variants:
        raise UserError("archer ablate: name at least one recipe, e.g. recipes/tiny/archer.yaml")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be >= 1 (seeds 0..N-1 are run)")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    names = [v.name for v in variants]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"recipe name {duplicate!r} appears twice: runs are named after the recipe file's stem")
    out = Path(out)
    threads = max(1, (os.cpu_count() or 1) // workers)
    plan = Plan(out=out, names=names, seeds=list(range(seeds)), runs=[], threads=threads)
    for variant in variants:
        base = load_recipe(variant.recipe, list(variant.overrides))
        if not base.model.is_tiny:
            raise UserError(
                f"{variant.recipe}: model.name_or_path is {base.model.name_or_path!r}; archer ablate runs tiny "
                "recipes (CPU processes sharing warm starts); launch GPU recipes with `archer train`"
            )
        for seed in plan.seeds:
            run_dir = out / variant.name / f"seed{seed}"
            run_overrides = (
                *variant.overrides,
                f"sft.seed={seed}",
                f"trainer.seed={SEED_OFFSET + seed}",
                f"trainer.output_dir={run_dir}",
            )
            recipe = load_recipe(variant.recipe, list(run_overrides))
            resolved = recipe.resolved()
            warm = out / WARM_DIR / f"seed{seed}-{_warm_key(resolved)}"
            run = AblationRun(variant.name, seed, variant.recipe, run_overrides, run_dir, warm)
            _check_reusable(run, resolved)
            plan.runs.append(run)
            plan.warm_starts.setdefault(warm, run)
    return plan


def _warm_key(resolved: dict[str, Any]) -> str:
    """What the warm start depends on: the model shape, the task, the held-out size and the SFT settings."""
    data = resolved["data"]
    parts = {
        "model": resolved["model"]["tiny"],
        "task": data["task"],
        "heldout": data["heldout_examples"],
        "sft": resolved["sft"],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _as_yaml_data(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value, sort_keys=True))


# Settings that change where a run writes or what it prints, not what it learns: ignored when reusing a run.
NOT_COMPARED = {"output_dir", "logging_dir", "disable_tqdm", "run_name"}


def _check_reusable(run: AblationRun, resolved: dict[str, Any]) -> None:
    """A run folder left by an earlier invocation must hold the same resolved recipe, or it cannot be reused."""
    config = run.out_dir / "config.yaml"
    if not config.is_file():
        return
    old = yaml.safe_load(config.read_text()) or {}
    new = _as_yaml_data(resolved)
    changed = sorted(
        f"{block}.{key}"
        for block in set(old) | set(new)
        for key in set(old.get(block) or {}) | set(new.get(block) or {})
        if key not in NOT_COMPARED and (old.get(block) or {}).get(key) != (new.get(block) or {}).get(key)
    )
    if changed:
        raise UserError(
            f"{run.out_dir} was trained with other settings ({', '.join(changed[:3])}...): "
            "give another --out or delete that folder"
        )
