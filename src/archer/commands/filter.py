"""``archer filter DATASET OUTPUT``: keep the problems a model sometimes, but not always, solves (the paper's
pass-rate filter of training data; :mod:`archer.data.filtering`). ``python -m archer.data.filtering`` is an alias."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archer.errors import UserError

EXIT_STOPPED = 75  # as archer train / eval: stopped by a signal, run the same command again to finish

EXIT_STATUSES = """\
exit status:
  0   filtered: OUTPUT holds the kept rows (datasets.save_to_disk, with a pass_rate column) and filter.json
      (model, k, thresholds, counts); or OUTPUT was already complete for these settings (nothing sampled)
  2   bad input (dataset, model, options, an unfinished OUTPUT.partial of other settings): one 'error:' line
  75  stopped by SIGTERM or SIGUSR1 (preemption, time limit): the finished shards are kept in OUTPUT.partial/;
      the same command samples only the others
A kill (SIGKILL) keeps them too. The number of engines may change between the runs: the samples do not depend on
it (each problem has its own seed)."""


def _json_object(value: str) -> dict:
    try:
        parsed = json.loads(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"enable_thinking\": false}'")
    return parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from archer.data.filtering import BACKENDS, DTYPES, FilterConfig

    parser.epilog = EXIT_STATUSES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("dataset", help="Hub id, save_to_disk folder or json / jsonl / parquet file")
    parser.add_argument(
        "output", help="folder to write the kept problems to (must not exist; OUTPUT.partial/ while it runs)"
    )
    parser.add_argument("--model", required=True, help="the model to filter against (Hub id or folder)")
    parser.add_argument("--reward", required=True, choices=("math", "code"), help="how answers are scored")
    data = parser.add_argument_group("data")
    data.add_argument("--loader", default=None, help="archer.data.loaders loader (guessed from the Hub id)")
    data.add_argument("--config", default=None, help="dataset configuration name")
    data.add_argument("--split", default="train")
    data.add_argument("--data-files", default=None, help="one file (or glob) of the dataset repo or folder to read")
    data.add_argument("--num-examples", type=int, default=None, help="filter only the first N problems")
    data.add_argument("--min-tests", type=int, default=None, help="code: drop problems with fewer tests")
    data.add_argument("--system-prompt", default=None)
    data.add_argument(
        "--chat-template-kwargs", type=_json_object, default=None, help="JSON, e.g. '{\"enable_thinking\": false}'"
    )
    data.add_argument(
        "--require-think-close",
        choices=("auto", "true", "false"),
        default="false",
        help="false (default, as the paper's recipes train): a completion without </think> is graded whole; "
        "true: it scores 0; auto: true when the chat template opens the reasoning",
    )
    sampling = parser.add_argument_group("sampling")
    defaults = FilterConfig()
    for name in ("k", "max_new_tokens", "temperature", "top_p", "max_prompt_tokens", "seed", "shard_size"):
        value = getattr(defaults, name)
        sampling.add_argument(
            f"--{name.replace('_', '-')}",
            type=float if isinstance(value, float) else int,
            default=value,
            help=FilterConfig.__dataclass_fields__[name].metadata["help"] + " (default: %(default)s)",
        )
    engines = parser.add_argument_group("backend")
    engines.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): vLLM if installed (GPU, or its CPU build), else transformers; the choice is logged",
    )
    engines.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: auto)")
    engines.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per engine")
    engines.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="vLLM: engines, one process per group of --tensor-parallel-size GPUs; shards go to whichever is free",
    )
    engines.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vLLM: fraction of GPU memory (default 0.9; on CPU a KV cache sized for the model)",
    )
    engines.add_argument(
        "--max-model-length", type=int, default=None, help="vLLM: context (default: longest prompt + max new tokens)"
    )
    engines.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=FilterConfig.__dataclass_fields__["batch_size"].metadata["help"] + " (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from archer.commands.evaluate import Stopped, stop_on_signals
    from archer.data.filtering import FilterConfig, FilterRequest, partial_folder, run_filter, summary_line

    for flag in ("num_examples", "min_tests", "max_model_length"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected a positive integer, got {value}")
    request = FilterRequest(
        dataset=args.dataset,
        output=args.output,
        model=args.model,
        reward=args.reward,
        config=FilterConfig(
            k=args.k,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            max_prompt_tokens=args.max_prompt_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            shard_size=args.shard_size,
        ),
        loader=args.loader,
        dataset_config=args.config,
        split=args.split,
        data_files=args.data_files,
        num_examples=args.num_examples,
        min_tests=args.min_tests,
        system_prompt=args.system_prompt,
        chat_template_kwargs=args.chat_template_kwargs,
        require_think_close=args.require_think_close,
        backend=args.backend,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_length=args.max_model_length,
    )
    try:
        with stop_on_signals():
            record = run_filter(request)
    except Stopped as stop:
        print(
            f"stopped by {stop}: the finished shards are kept in {partial_folder(Path(args.output))}; run the "
            "same command to finish",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    if record.get("already_done"):
        print(f"already filtered with these settings: {summary_line(record, args.output)}")
    else:
        print(summary_line(record, args.output))
    return 0
