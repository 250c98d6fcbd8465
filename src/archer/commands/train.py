"""``archer train RECIPE``: train from a YAML recipe (``--dry-run`` only checks it and prints the plan)."""

from __future__ import annotations

import argparse
import logging

from archer.errors import UserError

DEFAULT_RECIPE = "tiny/archer"  # the packaged recipes/tiny/archer.yaml: the embedded default

EXIT_STATUSES = """\
exit status:
  0   trained to max_steps, or the run was already complete (nothing trained)
  2   bad input (recipe, overrides, a folder of another run): one 'error:' line, nothing written
  74  the disk filled while writing: one 'error:' line with the folder and the space needed; the previous
      complete checkpoint stays the newest: free space and run the same command
  75  stopped by SIGTERM or SIGUSR1 (preemption, time limit): the rollout in progress finished, its checkpoint
      was saved; run the same command to resume from it (a second signal does not interrupt the save)
  1   anything else (a traceback)
Under accelerate launch every training process exits with these; the launcher itself reports them as a failed
child (its own status is 1)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUSES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "recipe",
        nargs="?",
        default=DEFAULT_RECIPE,
        help=f"YAML recipe, or a packaged recipe's name below recipes/, e.g. tiny/smoke (default: {DEFAULT_RECIPE})",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="block.key=value", help="override recipe values, e.g. trainer.max_steps=20"
    )
    parser.add_argument("--dry-run", action="store_true", help="check the recipe, print the plan, train nothing")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start a new run: an existing output folder is moved aside to <folder>.old-<n> (default: resume it)",
    )
    parser.add_argument(
        "--num-processes", type=int, default=None, help="processes to plan for in --dry-run (default: this launch)"
    )
    parser.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 2, 3),
        default=3,
        help="DeepSpeed ZeRO stage --dry-run plans for on several processes (0: DDP; default 3)",
    )
    parser.add_argument(
        "--deepspeed-config",
        default=None,
        help="DeepSpeed JSON config --dry-run plans a ZeRO launch with (default: recipes/deepspeed/zero3.json, the "
        "paper recipes' accelerate configs' file)",
    )
    parser.add_argument(
        "--write-mb-s",
        type=float,
        default=None,
        help="--dry-run: the file system's write speed in MB/s, for the checkpoint save time and the Slurm "
        "signal grace period (default 200)",
    )
    parser.add_argument(
        "--rollout-seconds",
        type=float,
        default=None,
        help="--dry-run: seconds one rollout takes (the training log's s/it), added to the signal grace period",
    )


def run(args: argparse.Namespace) -> int:
    from archer.resources import resolve_yaml
    from archer.versions import check_trl_version

    check_trl_version()  # before the recipe builds TRL's config: a version outside the tested range is one line
    args.recipe = resolve_yaml(args.recipe, "recipes")
    from archer.training.sources import check_sources, machine_problems, unfiltered_data_warning

    # The dry run makes every check the launch makes (the same recipe build, the same sources check), except that it
    # may plan for another machine: what this one lacks (vLLM, bf16) is printed, where the launch stops.
    if args.dry_run:
        from archer.planning.dry_run import describe
        from archer.recipe import load_recipe_for_plan

        recipe = load_recipe_for_plan(args.recipe, args.overrides)
        for flag in ("write_mb_s", "rollout_seconds"):
            value = getattr(args, flag)
            if value is not None and not value > 0:
                raise UserError(f"--{flag.replace('_', '-')}: expected a positive number, got {value}")
        sources = check_sources(recipe)
        text = describe(
            recipe,
            num_processes=args.num_processes,
            zero_stage=args.zero_stage,
            deepspeed_config=args.deepspeed_config,
            sources=sources,
            write_mb_s=args.write_mb_s,
            rollout_s=args.rollout_seconds,
        )
        print(text)
        if warning := unfiltered_data_warning(recipe):
            print(f"warning: {warning}")
        for problem in machine_problems(recipe):
            print(f"note: this machine cannot launch it: {problem}")
        return 0

    from archer.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    for line in check_sources(recipe):  # the Hub asked once (or the cache offline), before anything is written
        logging.getLogger("archer.train").info("%s", line)
    if warning := unfiltered_data_warning(recipe):
        logging.getLogger("archer.train").warning("%s", warning)
    if problems := machine_problems(recipe):
        raise UserError(problems[0])
    from archer.network import network_errors
    from archer.training.pipeline import run_training
    from archer.training.preemption import TrainingStopped

    quiet_third_party()
    try:
        with network_errors(str(args.recipe)):  # what the sources check could not foresee: one line, the server named
            summary = run_training(recipe, resume=not args.no_resume)
    except TrainingStopped as stop:
        if stop.main_process:
            print(f"run folder: {recipe.trainer.output_dir}\n{stop} (exit {stop.exit_code})")
        return stop.exit_code
    if summary:
        print(format_summary(summary, recipe.trainer.output_dir))
    return 0


def quiet_third_party() -> None:
    """Keep the console to our progress bars and step lines: no per-file loading bars, no deprecation notes
    about calls made inside TRL (pinned, so they cannot be acted on by the user)."""
    import warnings

    import huggingface_hub
    import transformers

    transformers.utils.logging.disable_progress_bar()  # also turns off the Hub's download bars...
    huggingface_hub.utils.enable_progress_bars()  # ...which a multi-GB model download needs
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*(gradient|activation)_checkpointing.*")
    logging.getLogger("archer").setLevel(logging.INFO)


def format_summary(summary: dict, output_dir: str) -> str:
    steps = f"rollouts: {summary['global_step']}"
    if summary.get("optimizer_steps") is not None:
        steps += f", optimizer steps: {summary['optimizer_steps']}"
    lines = [f"run folder: {output_dir}", steps]
    if summary.get("already_complete"):
        lines.append("already complete: nothing trained (start a new run with --no-resume)")
    elif "train_runtime_s" in summary:
        wall, rl = summary["train_runtime_s"], summary.get("rl_runtime_s", 0.0)
        lines.append(f"wall time: {wall / 60:.1f} min (RL {rl / 60:.1f} min)")
    protocol = summary.get("heldout_sampled_protocol") or {}
    rows = [
        (f"avg@{protocol.get('k')} (T {protocol.get('temperature')}, top_p {protocol.get('top_p')})", "sampled"),
        ("greedy", ""),
    ]
    for label, kind in rows:
        key = f"heldout_{kind}_accuracy" if kind else "heldout_accuracy"
        before, after = summary.get(f"{key}_before"), summary.get(f"{key}_after")
        if before is not None and after is not None:
            lines.append(
                f"held-out {label}: {100 * before:.1f}% after SFT -> {100 * after:.1f}% after RL "
                f"({100 * (after - before):+.1f} points, objective {summary['objective']}, "
                f"{protocol.get('problems', '?')} problems)"
            )
    return "\n".join(lines)
