"""``archer eval``: evaluate a model on a benchmark suite and write a fresh results folder."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

from archer.errors import UserError

logger = logging.getLogger(__name__)

EXIT_STOPPED = 75  # as archer train: stopped by a signal, run the same command again to finish
EXIT_STATUSES = """\
exit status:
  0   evaluated; results.json written
  2   bad input (suite, model, options): one 'error:' line, nothing written
  75  stopped by SIGTERM or SIGUSR1 (preemption, time limit): the tasks finished so far are kept in
      <folder>.partial/; the same command finishes the run, skipping them
A kill (SIGKILL) keeps them too."""


class Stopped(BaseException):
    """SIGTERM / SIGUSR1 during ``archer eval`` (a BaseException, as KeyboardInterrupt: nothing swallows it)."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGUSR1 end the evaluation at once: the task in progress is lost, finished ones are saved."""

    def handle(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _task_path(value: str) -> tuple[str, str]:
    task, sep, path = value.partition("=")
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(f"expected TASK=PATH, got {value!r}")
    return task, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUSES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--model",
        default=None,
        help="run folder, model folder or Hub id (default: the newest run folder under outputs/)",
    )
    parser.add_argument(
        "--suite",
        default="tiny",
        help="suite YAML, or a packaged suite's name: paper, quick, tiny (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto (openai if --base-url is given, else vLLM if installed and a GPU is visible, else transformers: "
        "faster on CPU), transformers, vllm (in-process engines; on CPU with vLLM's CPU build) or openai (a running "
        "OpenAI-compatible server)",
    )
    parser.add_argument("--output-dir", default=None, help="parent folder of the run folder (default: see README)")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N problems per task (a smoke run: model cards leave it out)"
    )
    parser.add_argument(
        "--tasks",
        default=None,
        metavar="TASK,...",
        help="run only these tasks of the suite, e.g. aime24,minerva (default: all of them)",
    )
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
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per engine")
    parser.add_argument(
        "--data-parallel-size", type=int, default=1, help="vLLM: engines, one process per group of TP GPUs"
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vLLM: fraction of GPU memory, on CPU of host RAM (default: 0.9 on GPUs; on CPU a KV cache sized for "
        "the model, at most 2 GiB)",
    )
    parser.add_argument("--max-model-length", type=int, default=None, help="vLLM: context length")
    server = parser.add_argument_group("openai backend (a running OpenAI-compatible server: vllm serve, SGLang, TGI)")
    server.add_argument("--base-url", default=None, help="the server's API root, e.g. http://127.0.0.1:8000/v1")
    server.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the key")
    server.add_argument(
        "--model-name", default=None, help="model name on the server (default: the only one it serves)"
    )
    server.add_argument(
        "--prompt-format",
        default="tokens",
        choices=["tokens", "text"],
        help="send token ids (exact; default) or the prompt text (the server tokenises it)",
    )
    server.add_argument("--max-concurrency", type=int, default=32, help="requests in flight (default: %(default)s)")
    server.add_argument(
        "--max-retries", type=int, default=5, help="retries on 5xx, timeouts, refused connections (default: 5)"
    )
    server.add_argument("--request-timeout", type=float, default=3600.0, help="seconds per request (default: 3600)")


def run(args: argparse.Namespace) -> int:
    from archer.evaluation.backends.base import BackendOptions
    from archer.evaluation.runner import EvalRequest, evaluate

    for flag in ("limit", "batch_size", "tensor_parallel_size", "data_parallel_size", "max_concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected a positive integer, got {value}")
    if args.max_retries < 0 or args.request_timeout <= 0:
        raise UserError("--max-retries must be >= 0 and --request-timeout > 0")
    request = EvalRequest(
        model=args.model,
        suite=args.suite,
        backend=args.backend,
        output_dir=args.output_dir,
        limit=args.limit,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks is not None else None,
        data=dict(args.data),
        backend_options=BackendOptions(
            dtype=args.dtype,
            batch_size=args.batch_size,
            tensor_parallel_size=args.tensor_parallel_size,
            data_parallel_size=args.data_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_length=args.max_model_length,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            served_model=args.model_name,
            prompt_format=args.prompt_format,
            max_concurrency=args.max_concurrency,
            max_retries=args.max_retries,
            request_timeout_s=args.request_timeout,
        ),
    )
    try:
        with stop_on_signals():
            out_dir, _ = evaluate(request)
    except Stopped as stop:
        print(
            f"stopped by {stop}: the tasks finished so far are kept; run the same command to finish the run",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    print((out_dir / "results.md").read_text())
    print(f"results: {out_dir}", file=sys.stderr)
    return 0
