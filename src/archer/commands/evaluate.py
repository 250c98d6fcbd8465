"""``archer eval``: evaluate a model on a benchmark suite and write a fresh results folder."""

from __future__ import annotations

import argparse
import sys

from archer.errors import UserError


def _task_path(value: str) -> tuple[str, str]:
    task, sep, path = value.partition("=")
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(f"expected TASK=PATH, got {value!r}")
    return task, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="run folder, model folder or Hub id (default: the newest run folder under outputs/)",
    )
    parser.add_argument("--suite", default="eval/suites/tiny.yaml", help="suite YAML (default: %(default)s)")
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto (vLLM if installed and a GPU is visible, else transformers), vllm or transformers",
    )
    parser.add_argument("--output-dir", default=None, help="parent folder of the run folder (default: see README)")
    parser.add_argument("--limit", type=int, default=None, help="at most N problems per task (smoke runs)")
    parser.add_argument(
        "--data",
        type=_task_path,
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="local copy of a task's data (.jsonl/.json/.parquet or dataset folder); repeatable",
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=16, help="transformers: problems per generate call")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per model replica")
    parser.add_argument("--data-parallel-size", type=int, default=1, help="vLLM: model replicas")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM: fraction of GPU memory")
    parser.add_argument("--max-model-length", type=int, default=None, help="vLLM: context length")


def run(args: argparse.Namespace) -> int:
    from archer.evaluation.backends import BackendOptions
    from archer.evaluation.runner import EvalRequest, evaluate

    for flag in ("limit", "batch_size", "tensor_parallel_size", "data_parallel_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected a positive integer, got {value}")
    request = EvalRequest(
        model=args.model,
        suite=args.suite,
        backend=args.backend,
        output_dir=args.output_dir,
        limit=args.limit,
        data=dict(args.data),
        backend_options=BackendOptions(
            dtype=args.dtype,
            batch_size=args.batch_size,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_length=args.max_model_length,
        ),
    )
    out_dir, _ = evaluate(request)
    print((out_dir / "results.md").read_text())
    print(f"results: {out_dir}", file=sys.stderr)
    return 0
