"""The ``archer`` command: one sub-command per stage, each living in its own module.

Sub-command modules expose ``add_arguments(parser)`` and ``run(args) -> int``; they are imported lazily so that
``archer --help`` stays fast and a stage's heavy imports (torch, trl, lighteval) load only when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from archer.errors import UserError, one_line

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "archer.commands.train",
        "train a model from a YAML recipe (SFT warm-start + Archer RL for tiny recipes)",
    ),
    "eval": (
        "archer.commands.evaluate",
        "evaluate a model on a benchmark suite (lighteval tasks; transformers, vLLM or an OpenAI-compatible server)",
    ),
    "filter": (
        "archer.commands.filter",
        "keep the training problems a model sometimes, but not always, solves (the paper's pass-rate filter; "
        "sharded, resumable, data-parallel vLLM engines)",
    ),
    "card": ("archer.commands.card", "render the model card (README.md) of a run folder"),
    "push": ("archer.commands.push", "render the card and push a run folder to the Hugging Face Hub"),
    "ablate": (
        "archer.commands.ablate",
        "run tiny recipes over seeds from shared warm starts and compare them (tables, curves, paired differences)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="archer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"archer {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
