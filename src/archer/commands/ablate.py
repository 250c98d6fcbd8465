"""``archer ablate RECIPES... --seeds N``: tiny recipes over N seeds from shared warm starts, compared with intervals."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from archer.errors import UserError

DEFAULT_RECIPES = [f"recipes/tiny/{name}.yaml" for name in ("archer", "dapo", "grpo", "entropy_mask")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipes", nargs="*", default=None, help="tiny recipes to compare; the first is the reference of the paired "
        f"comparison (default: {' '.join(DEFAULT_RECIPES)})"
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--out", default="outputs/ablate", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=None, help="jobs run at once, one process each (default: the CPU count)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="block.key=value",
        help="override every recipe, e.g. --set trainer.max_steps=50 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--doc", default=None, help="also regenerate the ablate block of this page (make ablate: docs/ablations.md)"
    )


def run(args: argparse.Namespace) -> int:
    from archer.ablation import run_ablation, update_block, variants_from_recipes
    from archer.commands.train import quiet_third_party

    recipes = args.recipes or DEFAULT_RECIPES
    doc = Path(args.doc) if args.doc else None
    if doc is not None and not doc.is_file():
        raise UserError(f"--doc {doc}: no such file")
    command = "archer ablate " + " ".join(
        [*map(shlex.quote, recipes), f"--seeds {args.seeds}", *(f"--set {shlex.quote(o)}" for o in args.overrides)]
    )
    quiet_third_party()
    variants = variants_from_recipes(recipes, args.overrides)
    summary, failures = run_ablation(variants, args.seeds, args.out, args.workers, command=command)
    markdown = (Path(args.out) / "ablation.md").read_text()
    print(markdown)
    print(f"tables: {args.out}/ablation.md, values: {args.out}/ablation.json, curves: {args.out}/learning_curves.png")
    if doc is not None and not failures:
        update_block(doc, markdown)
        print(f"regenerated the ablate block of {doc}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0
