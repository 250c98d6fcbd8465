"""``archer push RUN_DIR --repo ORG/NAME``: render the card and publish a run folder to the Hub (``HF_ENDPOINT``)."""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", default=None, help="run folder (default: the newest under outputs/)")
    parser.add_argument("--repo", required=True, help="target repo id, <org or user>/<name>; created if needed")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo as private (new repos only)")
    parser.add_argument("--base-results", default=None, help="eval results.json of the base model, for the card")


def run(args: argparse.Namespace) -> int:
    from archer.publish.hub import push_run
    from archer.training.run_folder import newest_run

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the summary
    run_dir = args.run_dir or newest_run()
    result = push_run(run_dir, args.repo, revision=args.revision, private=args.private, base_results=args.base_results)
    state = "pushed" if result.changed else "unchanged (identical files already there, no new commit)"
    print(f"{result.repo_id}@{result.revision}: {state}, {len(result.files)} files")
    print(result.commit_url)
    return 0
