"""GPU proof: the recipe's trainer, objective and vLLM evaluation measured on one CUDA GPU, in at most 8 minutes.

Parts (each in its own process, so that memory peaks and DeepSpeed state do not leak from one to the next):

  (a) trainer steps: Archer (``ArcherTrainer``, preset ``archer``) and TRL's stock ``GRPOTrainer`` (beta 0.001),
      interleaved step by step as in ``bench/bench_trainer.py`` (learning rate 0 and the RNG re-seeded before every
      step, so both sample the same completions), on a Qwen2 model with DeepSeek-R1-Distill-Qwen-1.5B's config and
      random weights, bf16, transformers generation, 1024-token completions: step time, completion tokens/s, peak
      GPU memory, MFU, and the Archer / GRPO ratio;
  (b) the same under DeepSpeed ZeRO-3 on one process (``accelerate launch``);
  (c) ``archer eval --backend vllm`` on the tiny suite, when vLLM is importable (else skipped, saying why);
  (d) ``archer.objective.compute_objective`` forward + backward at B=16, T=32,768 against a plain clipped GRPO
      loss (the usual token-mean clipped surrogate, ``plain_grpo_loss`` below).

Steps: 10 per trainer by default, fewer when the time budget (``--budget-s``, 450 s) would be exceeded: the table
says how many ran. Without a GPU (``--device cpu``, or none visible) every part runs with small shapes, and the
table says so: that is the form CI runs. Output: one markdown table, ``bench/results/gpu-proof-<date>.md``.

    python bench/gpu/proof.py [--device auto|cuda|cpu] [--steps 10] [--peak-tflops X] [--out FILE]
    bash bench/gpu/run.sh WHEELS [...]      # on a bare GPU machine: install from a wheel folder, then run this
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench"), str(HERE)]

MODEL_CONFIG = REPO / "src" / "archer" / "data" / "model_configs" / "deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B.json"
TRAINERS = ("archer", "stock GRPO (beta 0.001)")  # names in bench_trainer._trainers
COLUMNS = ("part", "figure", "Archer / ours", "reference", "ratio", "note")


@dataclass(frozen=True)
class Form:
    """Shapes of one run: the GPU form (the issue's) or the CPU form (small, for CI)."""

    device: str
    completion_len: int
    completions_per_step: int  # per_device_train_batch_size; 4 generations per prompt
    steps: int
    objective_batch: int
    objective_len: int
    objective_repeats: int

    @classmethod
    def for_device(cls, device: str, steps: int | None) -> Form:
        if device == "cuda":
            return cls(device, 1024, 8, steps or 10, 16, 32_768, 20)
        return cls(device, 16, 8, steps or 2, 16, 1024, 20)

    @property
    def label(self) -> str:
        if self.device == "cuda":
            return "GPU form: DeepSeek-R1-Distill-Qwen-1.5B config, random weights, bf16"
        return (
            "CPU form (no GPU): SMALLER SHAPES than the GPU proof - the embedded tiny Qwen2 (0.13M parameters), "
            f"{self.completion_len}-token completions, objective at T={self.objective_len}: checks the code path, "
            "the numbers mean nothing for a GPU"
        )


# --------------------------------------------------------------------------------------------------------------
# The model


def build_model_dir(path: Path, form: Form) -> dict:
    """A random-weight model + the tiny tokenizer, saved to ``path``; returns the shape MFU needs."""
    import torch
    from bench_trainer import MODELS, _build
    from mfu import Shape
    from transformers import AutoModelForCausalLM, Qwen2Config

    from archer import tiny

    if form.device != "cuda":
        _build(path, next(iter(MODELS.values())), max_positions=256)
        model = AutoModelForCausalLM.from_pretrained(path)
        return asdict(Shape.of(model))
    tokenizer = tiny.build_tokenizer()  # ids below the model's vocabulary; generation samples the whole vocabulary
    config = Qwen2Config(**json.loads(MODEL_CONFIG.read_text()))
    config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    shape = asdict(Shape.of(model))
    del model
    torch.cuda.empty_cache()
    return shape


# --------------------------------------------------------------------------------------------------------------
# Workers (run in their own process; each writes JSON rows)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def prepare_deepspeed(trainer) -> None:
    """What ``Trainer.train`` does before its first step under DeepSpeed: build the engine around the model."""
    from transformers.integrations.deepspeed import deepspeed_init

    trainer.optimizer, trainer.lr_scheduler = deepspeed_init(trainer, num_training_steps=trainer.args.max_steps)
    engine, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model_wrapped = trainer.deepspeed = engine


def worker_trainers(args: argparse.Namespace) -> list[dict]:
    import torch
    import transformers
    from bench_trainer import _step, _trainers, objective_calls, objective_seconds
    from mfu import Shape, step_flops

    transformers.utils.logging.set_verbosity_error()
    form = Form(**json.loads(args.form))
    cuda = form.device == "cuda"
    overrides = dict(bf16=cuda, max_steps=form.steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        built = _trainers(
            Path(args.model_dir),
            Path(tmp),
            form.completions_per_step,
            form.completion_len,
            names=TRAINERS,
            **overrides,
        )
        if args.zero3:
            for trainer, _ in built.values():
                prepare_deepspeed(trainer)
                stage = trainer.deepspeed.zero_optimization_stage()
                assert stage == 3, f"DeepSpeed engine at ZeRO stage {stage}, not 3"
        tokenizer = next(iter(built.values()))[0].processing_class
        times: dict[str, list[float]] = {name: [] for name in built}
        peaks: dict[str, list[float]] = {name: [] for name in built}
        lengths: dict[str, list[float]] = {name: [] for name in built}
        prompt_len = statistics.mean(
            len(tokenizer(row["prompt"])["input_ids"]) for row in next(iter(built.values()))[1]
        )
        steps, rep = form.steps, 0
        while rep <= steps:  # rep 0 is the warm-up
            for name, (trainer, batch) in built.items():
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                _sync(form.device)
                start = time.perf_counter()
                _step(trainer, batch, seed=rep)
                _sync(form.device)
                elapsed = time.perf_counter() - start
                if rep:
                    times[name].append(elapsed)
                    peaks[name].append(torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))
                    lengths[name].append(trainer._metrics["train"]["completions/mean_length"][-1])
            if rep == 1 and args.deadline < float("inf"):  # first timed pair: fit the other steps into the deadline
                per_rep = sum(t[-1] for t in times.values())
                steps = max(1, min(steps, 1 + int((args.deadline - time.time()) / per_rep)))
            rep += 1
        objective_s = None
        if not args.zero3:  # the objective's share of the Archer step: its calls in one step, replayed fwd + bwd
            archer_trainer, archer_batch = built[TRAINERS[0]]
            objective_s = objective_seconds(objective_calls(archer_trainer, archer_batch, seed=0), repeats=5)
    shape = Shape(**json.loads(args.shape))
    rows, medians = [], {}
    kind = "DeepSpeed ZeRO-3, 1 process" if args.zero3 else "no DeepSpeed"
    for name in built:
        med = statistics.median(times[name])
        medians[name] = med
        completion = statistics.mean(lengths[name])
        tokens = form.completions_per_step * completion
        flops = step_flops(shape, form.completions_per_step, prompt_len, completion, with_reference=True)
        mfu = flops / med / (args.peak_tflops * 1e12) if args.peak_tflops else None
        rows.append(
            {
                "part": "b" if args.zero3 else "a",
                "figure": f"trainer step ({kind}): {name}",
                "Archer / ours": f"{med:.2f} s",
                "reference": "",
                "ratio": None,
                "note": (
                    f"{tokens / med:,.0f} completion tokens/s, peak GPU memory "
                    + (f"{max(peaks[name]):.1f} GiB" if cuda else "n/a (CPU)")
                    + (f", MFU {mfu:.1%}" if mfu is not None else "")
                    + f"; median of {len(times[name])}/{form.steps} steps"
                    + (" (time budget)" if len(times[name]) < form.steps else "")
                    + f", {form.completions_per_step} completions x {completion:.0f} tokens"
                ),
            }
        )
    ours, ref = TRAINERS
    rows.append(
        {
            "part": "b" if args.zero3 else "a",
            "figure": f"trainer step ({kind}): Archer / stock GRPO",
            "Archer / ours": f"{medians[ours]:.2f} s",
            "reference": f"{medians[ref]:.2f} s",
            "ratio": medians[ours] / medians[ref],
            "note": "interleaved steps, same completions (lr 0, RNG re-seeded); peak memory includes both trainers",
        }
    )
    if objective_s is not None:
        rows.append(
            {
                "part": "a",
                "figure": "the objective's share of an Archer trainer step",
                "Archer / ours": f"{objective_s * 1e3:.2f} ms",
                "reference": f"{medians[ours]:.2f} s",
                "ratio": objective_s / medians[ours],
                "note": "compute_objective fwd (with metrics) + bwd of the step's calls, replayed (median of 5)",
            }
        )
    return rows


def plain_grpo_loss(logps, old_logps, advantages, mask):
    """The usual clipped surrogate with one token-mean (as TRL's GRPO loss with beta = 0): the reference of (d)."""
    import torch

    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - 0.2, 1 + 0.2)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, clipped * adv)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def objective_inputs(batch: int, length: int, seed: int = 0) -> dict:
    """A micro-batch like the trainer's: right-padded responses of random lengths, a reused rollout (r != 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    logps = -torch.rand(batch, length, generator=gen) * 3
    return {
        "logps": logps,
        "old_logps": logps + 0.2 * torch.randn(batch, length, generator=gen),
        "ref_logps": logps + 0.2 * torch.randn(batch, length, generator=gen),
        "advantages": torch.randn(batch, generator=gen),
        "entropies": torch.empty(batch, length).exponential_(1.0, generator=gen),
        "mask": mask,
    }


def worker_objective(args: argparse.Namespace) -> list[dict]:
    import torch

    from archer.objective import ObjectiveConfig, compute_objective

    form = Form(**json.loads(args.form))
    device, cuda = form.device, form.device == "cuda"
    cfg = ObjectiveConfig.preset("archer")
    if not cuda:
        torch.set_num_threads(1)  # as bench_trainer.py: a busy shared CPU makes thread synchronisation noise
    inputs = {k: v.to(device) for k, v in objective_inputs(form.objective_batch, form.objective_len).items()}

    def archer():
        logps = inputs["logps"].clone().requires_grad_(True)
        out = compute_objective(
            logps, inputs["old_logps"], inputs["ref_logps"], inputs["advantages"], inputs["entropies"],
            inputs["mask"], cfg,
        )  # fmt: skip
        out.loss.backward()

    def plain():
        logps = inputs["logps"].clone().requires_grad_(True)
        plain_grpo_loss(logps, inputs["old_logps"], inputs["advantages"], inputs["mask"]).backward()

    measured: dict[str, list[float]] = {"archer": [], "plain": []}
    peak: dict[str, float] = {}
    for rep in range(3 + form.objective_repeats):  # 3 warm-ups, then alternate
        for name, fn in (("archer", archer), ("plain", plain)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if rep >= 3:
                measured[name].append(time.perf_counter() - start)
                if cuda:
                    peak[name] = max(peak.get(name, 0.0), (torch.cuda.max_memory_allocated() - base) / 2**20)
    ours, ref = statistics.median(measured["archer"]), statistics.median(measured["plain"])
    shape = f"B={form.objective_batch}, T={form.objective_len:,}"
    memory = f"; peak extra GPU memory {peak['archer']:.0f} vs {peak['plain']:.0f} MiB" if cuda else ""
    return [
        {
            "part": "d",
            "figure": f"compute_objective (archer) fwd+bwd vs plain clipped GRPO loss, {shape}",
            "Archer / ours": f"{ours * 1e3:.2f} ms",
            "reference": f"{ref * 1e3:.2f} ms",
            "ratio": ours / ref,
            "note": f"median of {form.objective_repeats}, interleaved, on {device}{memory}",
        }
    ]


WORKERS = {"trainers": worker_trainers, "objective": worker_objective}


# --------------------------------------------------------------------------------------------------------------
# The driver


def _accelerate_config(path: Path, form: Form) -> Path:
    """One-process DeepSpeed ZeRO-3 for ``accelerate launch``: the paper recipes' DeepSpeed JSON on GPU (bf16 from
    the trainer's flag, fp32 gradient accumulation and reduction), the CPU one on CPU."""
    import yaml

    name = "zero3.json" if form.device == "cuda" else "zero3_cpu.json"
    deepspeed = {"deepspeed_config_file": str(REPO / "recipes" / "deepspeed" / name), "zero3_init_flag": True}
    extra = {"use_cpu": False} if form.device == "cuda" else {}
    config = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "deepspeed_config": deepspeed,
              "num_machines": 1, "num_processes": 1, "machine_rank": 0, "main_training_function": "main",
              "rdzv_backend": "static", "same_network": True, **extra}  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def run_worker(
    name: str, args: list[str], deadline: float, tmp: Path, launcher: list[str] | None = None
) -> tuple[list[dict], str | None]:
    """Run one worker in a fresh process; (rows, None) or ([], why it failed)."""
    out = tmp / f"{name}.json"
    command = [*(launcher or [sys.executable]), str(Path(__file__)), "--worker", name, "--json", str(out), *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    timeout = max(30.0, deadline - time.time() + 60.0)  # the worker fits its steps to the deadline; this is a guard
    try:
        done = subprocess.run(command, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    if done.returncode != 0 or not out.exists():
        return [], f"failed (exit {done.returncode}): {_last_error(done)}"
    return json.loads(out.read_text()), None


def _last_error(done: subprocess.CompletedProcess) -> str:
    """The last line naming an error in a failed process's output (printed in full above the table)."""
    lines = (done.stderr + done.stdout).strip().splitlines()
    print("\n".join(lines[-40:]), file=sys.stderr)
    errors = [line.strip() for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1][:300]


def eval_part(model_dir: Path, tmp: Path, deadline: float) -> dict:
    """(c) ``archer eval --backend vllm`` on the tiny suite (random weights: the score is 0; the path is the proof)."""
    import torch

    row = {
        "part": "c",
        "figure": "archer eval --backend vllm (tiny suite, 16 problems)",
        "reference": "",
        "ratio": None,
    }
    if importlib.util.find_spec("vllm") is None:
        return {**row, "Archer / ours": "skipped", "note": "vLLM is not importable on this machine (not installed)"}
    if not torch.cuda.is_available():
        return {**row, "Archer / ours": "skipped", "note": "no CUDA GPU visible"}
    command = [sys.executable, "-m", "archer.cli", "eval", "--model", str(model_dir), "--suite",
               str(REPO / "eval" / "suites" / "tiny.yaml"), "--backend", "vllm", "--limit", "16",
               "--output-dir", str(tmp / "eval"), "--max-model-length", "2048", "--gpu-memory-utilization", "0.5"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=max(30.0, deadline - time.time())
        )
    except subprocess.TimeoutExpired:
        return {**row, "Archer / ours": "timed out", "note": "vLLM engine start + 16 problems exceeded the budget"}
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        return {**row, "Archer / ours": "FAILED", "note": f"exit {done.returncode}: {_last_error(done)}"}
    return {**row, "Archer / ours": f"{elapsed:.0f} s", "note": "engine start, sampling, grading, results files"}


def machine(device: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = f"torch {torch.__version__}"
    for package in ("transformers", "trl", "deepspeed", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            versions += f", {package} {version(package)}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, Python {platform.python_version()}, {versions}"
    return f"{platform.machine()} CPU ({os.cpu_count()} cores), Python {platform.python_version()}, {versions}"


def format_table(rows: list[dict]) -> str:
    def cell(row: dict, col: str) -> str:
        value = row.get(col)
        if value is None:
            return ""
        return f"{value:.2f}x" if col == "ratio" else str(value).replace("|", "/")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows])


def drive(args: argparse.Namespace) -> int:
    import torch

    started = time.time()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU visible", file=sys.stderr)
        return 2
    form = Form.for_device(device, args.steps)
    peak = args.peak_tflops
    if peak is None and device == "cuda":
        from mfu import peak_tflops

        peak = peak_tflops(torch.cuda.get_device_name())
    args.budget_s = args.budget_s or (450.0 if device == "cuda" else 1800.0)
    budget_end = started + args.budget_s
    has_vllm = device == "cuda" and importlib.util.find_spec("vllm") is not None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as tmp_name:
        tmp = Path(tmp_name)
        shape = build_model_dir(tmp / "model", form)
        print(f"model ready ({time.time() - started:.0f} s): {shape}", flush=True)
        common = ["--form", json.dumps(asdict(form)), "--model-dir", str(tmp / "model"), "--shape", json.dumps(shape)]
        common += ["--peak-tflops", str(peak)] if peak else []
        eval_reserve = 150.0 if has_vllm else 0.0
        plan = [("d", "objective", [], None, 0.05), ("a", "trainers", [], None, 0.5), ("b", "trainers", ["--zero3"],
                [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(_accelerate_config(tmp / "zero3.yaml", form))], 1.0)]  # fmt: skip
        for part, worker, extra, launcher, share in plan:
            remaining = budget_end - eval_reserve - time.time()
            deadline = time.time() + share * remaining
            got, why = run_worker(worker, [*common, *extra, "--deadline", str(deadline)], deadline, tmp, launcher)
            if why:
                got = [{"part": part, "figure": f"{worker}{' (ZeRO-3)' * bool(extra)}", "Archer / ours": "FAILED",
                        "reference": "", "ratio": None, "note": why}]  # fmt: skip
            rows += got
            print(f"part ({part}) done at {time.time() - started:.0f} s", flush=True)
        rows.append(eval_part(tmp / "model", tmp, budget_end))
    rows.sort(key=lambda r: r["part"])
    total = time.time() - started
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    mfu_note = f"{peak:g} TFLOP/s bf16 peak" if peak else "no peak known for this device (--peak-tflops): no MFU"
    text = "\n".join(
        [
            f"# GPU proof, {stamp}",
            "",
            f"- {form.label}",
            f"- machine: {machine(device)}",
            f"- whole run: {total:.0f} s (budget {args.budget_s:.0f} s); MFU against {mfu_note} (bench/gpu/mfu.py)",
            "- command: `python bench/gpu/proof.py " + " ".join(args.argv) + "`",
            "",
            format_table(rows),
            "",
        ]
    )
    out = (
        args.out
        or REPO
        / "bench"
        / "results"
        / f"gpu-proof-{dt.date.today().isoformat()}{'' if device == 'cuda' else '-cpu'}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 1 if any(r["Archer / ours"] in ("FAILED", "timed out") for r in rows) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu/proof.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per trainer (default: 10 GPU, 2 CPU)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the whole run (default: 450 s GPU, 1800 s CPU)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU (default: by name)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: bench/results/gpu-proof-*.md)")
    # internal: one worker process
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--form", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--zero3", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.worker:
        args.json.write_text(json.dumps(WORKERS[args.worker](args)))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
