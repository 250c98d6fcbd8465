"""``archer card [RUN_DIR]``: render a run folder's model card into ``RUN_DIR/README.md`` (nothing is pushed)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", default=None, help="run folder (default: the newest under outputs/)")
    parser.add_argument("--repo", default=None, help="Hub repo id the card will live at (used in the quick start)")
    parser.add_argument(
        "--base-results",
        default=None,
        help="eval results.json of the base model, for the comparison column (default: found in RUN_DIR/eval/)",
    )
    parser.add_argument("--template", default=None, help="Jinja template (default: model_cards/archer_model_card.md)")


def run(args: argparse.Namespace) -> int:
    from archer.publish.card import write_card
    from archer.training.run_folder import newest_run

    run_dir = args.run_dir or newest_run()
    path = write_card(run_dir, repo_id=args.repo, base_results=args.base_results, template=args.template)
    print(f"model card: {path}")
    return 0
