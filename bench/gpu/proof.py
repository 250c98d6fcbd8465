"""GPU proof: the paper recipe's own trainer on one CUDA GPU, in two calls that fit 5 minutes, rows written as they go.

What runs is what ``archer train`` builds: recipes/DeepSeek-R1-Distill-Qwen-1.5B/archer/math.yaml loaded with
``load_recipe`` and built by ``archer.training.pipeline._build_trainer`` (the precision plan: float32 weights and bf16
autocast on one process, bf16 weights with fp32 master copies under DeepSpeed; activation checkpointing; sdpa), then
``trainer.train()``. The model is a Qwen2 with DeepSeek-R1-Distill-Qwen-1.5B's config and random weights (saved as a
bf16 checkpoint, no download). The overrides, each forced by the machine or by the clock:

    model.name_or_path            the random-weight checkpoint (and the embedded tiny tokenizer)
    trainer.use_vllm false        vLLM cannot travel to a bare machine (~400 MB of wheels): transformers generate()
    trainer.max_completion_length 512 (random weights never stop early: every completion is 512 tokens)
    trainer.num_generations 4, generation_batch_size 8, responses_per_step 4 (= per_device_train_batch_size, the
                                  recipe's micro-batch): 3 epochs (the recipe's num_iterations) x 2 micro-batches,
                                  6 AdamW steps per rollout, as many as TRL's stock GRPOTrainer makes on that rollout
    trainer.drop_uniform_groups false   random weights score 0 everywhere: every group would be dropped
    trainer.vllm_max_model_length 576   bounds the prompt (64 tokens) for the memory planner, as in the recipe
    trainer.max_steps, save_strategy no, report_to none

Each trainer runs in its own process: the planner (``archer train --dry-run``'s estimate, printed beside the measured
peak) puts one trainer at ~37 GiB on one process (fp32 weights, gradients, AdamW states and reference model): two
would not leave an 80 GB H100 room for what it leaves out. Per trainer: a warm-up rollout of 16 tokens, one full
rollout timed by phase (decode = ``_generate``; scoring = the rest of ``_generate_and_score_completions``: rewards,
old and reference log-probs; training pass = the rest of the rollout: forward + backward x 3 epochs and the AdamW
steps), then the training pass again on that same rollout, replayed (``--replays``, 5 by default, fewer when the
deadline nears): the Archer / stock GRPO ratio is the ratio of training-pass medians, where the objective acts, not
of decoding. Decoding is measured once, with its own tokens/s and MFU.

Parts (on a GPU each in its own process; without one the plain parts share one), their rows written to the table
(and a JSON-lines file) as soon as each process ends, so that a kill keeps what is done. The budgets count from
run.sh's start, the install included; a part that would start with less than it needs is skipped, saying so:

    first call (--part first, budget 110 s):
      (0) the wheel install (run.sh), the random-weight model, one Archer rollout (warm-up + one full rollout)
    second call (--part rest, budget 190 s: both together 5 minutes):
      (d) compute_objective fwd + bwd at B=16, T=32,768 against a plain clipped GRPO loss
      (a) Archer (ArcherTrainer) and TRL's stock GRPOTrainer (loss_type grpo, beta 0.001 = the recipe's KL), both
          built by _build_trainer from the recipe; the training-pass ratio; the objective's share of the pass
      (b) Archer under DeepSpeed ZeRO-3 on one process (``accelerate launch`` with recipes/accelerate/zero3.yaml)
      (c) ``archer eval --backend vllm`` on the tiny suite where vLLM is importable (on the lent machine: skipped)

Without a GPU (``--device cpu``, or none visible) every part runs on the embedded tiny model with small shapes and
the table says so: that is the form CI runs (``--part all``). On the device tool (docs/benchmarks.md, "GPU proof"):

    bash bench/gpu/fetch_wheels.sh                      # here, once: .whl/ (ignored), the wheels of wheels.txt
    run: bash bench/gpu/run.sh .whl --part first --out $OUT/first.md        carry [".whl"], timeout_s 170
    run: bash bench/gpu/run.sh .whl --part rest --out $OUT/rest.md          carry [".whl"], timeout_s 240
    python bench/gpu/proof.py --merge FIRST.jsonl REST.jsonl --out bench/results/gpu-proof-<date>.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench"), str(HERE)]

RECIPE = REPO / "recipes" / "DeepSeek-R1-Distill-Qwen-1.5B" / "archer" / "math.yaml"
MODEL_CONFIG = REPO / "src" / "archer" / "data" / "model_configs" / "deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B.json"
ZERO3 = {
    "cuda": REPO / "recipes" / "accelerate" / "zero3.yaml",
    "cpu": REPO / "recipes" / "accelerate" / "cpu_zero3.yaml",
}
TRAINERS = {"archer": "Archer", "grpo": "stock GRPO"}
COLUMNS = ("part", "figure", "Archer / ours", "reference", "ratio", "note")
PROMPT_BOUND = 64  # tokens: the arithmetic prompts take about 8 with the tiny tokenizer
GIB = 2**30
# Seconds of the budget counted from run.sh's start (the install included); GPU figures for an H100.
BUDGET_S = {("cuda", "first"): 110.0, ("cuda", "rest"): 190.0, ("cuda", "all"): 300.0}
CPU_BUDGET_S = 1800.0  # busy CI machines
# What each part needs at least on a GPU (start-up, model loading, a warm-up and one full rollout): a part that
# would start with less is skipped with a row saying so.
NEEDS_S = {"model": 30.0, "first": 45.0, "objective": 12.0, "archer": 45.0, "grpo": 45.0, "zero3": 55.0, "eval": 0.0}


@dataclass(frozen=True)
class Form:
    """Shapes of one run: the GPU form or the CPU form (small, for CI)."""

    device: str
    completion_len: int  # trainer.max_completion_length
    generations: int  # trainer.num_generations
    rollout: int  # trainer.generation_batch_size: completions per rollout
    warmup_len: int  # max new tokens of the warm-up rollout
    replays: int  # training passes replayed on the timed rollout
    objective_batch: int
    objective_len: int
    objective_repeats: int

    @classmethod
    def for_device(cls, device: str, replays: int | None = None, completion_len: int | None = None) -> Form:
        if device == "cuda":
            return cls(device, completion_len or 512, 4, 8, 16, 5 if replays is None else replays, 16, 32_768, 20)
        return cls(device, completion_len or 16, 4, 8, 4, 1 if replays is None else replays, 16, 1024, 20)

    @property
    def label(self) -> str:
        if self.device == "cuda":
            return (
                "GPU form: the paper recipe (recipes/DeepSeek-R1-Distill-Qwen-1.5B/archer/math.yaml) built by "
                "_build_trainer and trained by trainer.train(), on DeepSeek-R1-Distill-Qwen-1.5B's config with random "
                f"weights; rollouts of {self.rollout} x {self.completion_len} tokens by transformers generate()"
            )
        return (
            "CPU form (no GPU): SMALLER SHAPES than the GPU proof - the embedded tiny Qwen2 (0.13M parameters) in the "
            f"paper recipe, float32, {self.completion_len}-token completions, objective at T={self.objective_len}: "
            "checks the code path, the numbers mean nothing for a GPU"
        )


def recipe_overrides(form: Form, model_dir: str, out_dir: str, max_steps: int) -> list[str]:
    """The recipe's values the proof replaces (module docstring: why each)."""
    overrides = [
        f"model.name_or_path={model_dir}",
        f"trainer.output_dir={out_dir}",
        "trainer.use_vllm=false",
        f"trainer.vllm_max_model_length={PROMPT_BOUND + form.completion_len}",
        f"trainer.max_completion_length={form.completion_len}",
        f"trainer.num_generations={form.generations}",
        f"trainer.generation_batch_size={form.rollout}",
        "trainer.responses_per_step=4",
        "trainer.drop_uniform_groups=false",
        f"trainer.max_steps={max_steps}",
        "trainer.save_strategy='no'",
        "trainer.report_to=none",
        "trainer.disable_tqdm=true",
    ]
    if form.device != "cuda":
        overrides.append("trainer.bf16=false")  # no bf16 autocast on a CPU
    return overrides


# --------------------------------------------------------------------------------------------------------------
# Rows: written to a JSON file after each change (a worker), or to the table files after each part (the driver)


def row(part: str, figure: str, ours: str, reference: str = "", ratio: float | None = None, note: str = "", **data):
    return {"part": part, "figure": figure, "Archer / ours": ours, "reference": reference, "ratio": ratio,
            "note": note, **({"data": data} if data else {})}  # fmt: skip


class Sink:
    """A worker's rows (those of the jobs done, then the current job's), rewritten to its JSON file at every change:
    the driver reads what a killed worker left."""

    def __init__(self, path: Path) -> None:
        self.path, self.done, self.current = path, [], []
        self.write()

    def set(self, rows: list[dict]) -> None:
        self.current = rows
        self.write()

    def finish(self) -> None:
        self.done, self.current = self.done + self.current, []

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done + self.current))
        tmp.replace(self.path)


def secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------------------
# Workers (each in its own process)


def job_model(args: argparse.Namespace, job: str, sink: Sink) -> list[dict]:
    """The random-weight checkpoint (reused when the folder holds the same one) and what the driver's header needs."""
    import torch
    from mfu import Shape
    from transformers import AutoModelForCausalLM, Qwen2Config

    from archer import tiny

    form = Form(**json.loads(args.form))
    path = Path(args.model_dir)
    marker = path / "proof-model.json"
    config_text = MODEL_CONFIG.read_text() if form.device == "cuda" else "tiny"
    digest = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    start = time.perf_counter()
    if marker.is_file() and json.loads(marker.read_text()).get("digest") == digest:
        shape, how = json.loads(marker.read_text())["shape"], "reused (built by an earlier call on this machine)"
    elif form.device != "cuda":
        from bench_trainer import MODELS, _build

        _build(path, next(iter(MODELS.values())), max_positions=256)
        shape, how = asdict(Shape.of(AutoModelForCausalLM.from_pretrained(path))), "built"
    else:
        tokenizer = tiny.build_tokenizer()  # ids below the model's vocabulary; decoding skips the others
        config = Qwen2Config(**json.loads(config_text))
        config.eos_token_id = config.pad_token_id = config.bos_token_id = tokenizer.eos_token_id
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # the checkpoint's own dtype
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        shape, how = asdict(Shape.of(model)), "built on the GPU and saved"
        del model
    if not marker.is_file() or how == "built":
        marker.write_text(json.dumps({"digest": digest, "shape": shape}))
    elapsed = time.perf_counter() - start
    params = f"{shape['matmul_params'] / 1e9:.2f}B matmul parameters" if form.device == "cuda" else "tiny"
    what = "DeepSeek-R1-Distill-Qwen-1.5B config, bf16 checkpoint" if form.device == "cuda" else "embedded tiny Qwen2"
    return [row("0", f"random-weight model ({what})", f"{elapsed:.0f} s", note=f"{how}; {params}",
                shape=shape, machine=machine(form.device))]  # fmt: skip


def stock_grpo_class():
    """TRL's GRPOTrainer on the recipe's arguments, with TRL's own GRPO loss (beta: the recipe's KL weight, 0.001)."""
    from trl import GRPOTrainer

    class StockGRPOTrainer(GRPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["args"].loss_type = "grpo"  # ArcherConfig refuses it in a recipe; TRL reads it at __init__
            super().__init__(*args, **kwargs)

    return StockGRPOTrainer


class Probe:
    """Times each rollout of ``trainer.train()`` by phase and replays the first full rollout.

    Rollout 0 is a warm-up (``warmup_len`` new tokens), rollout 1 the timed full one, later ones replay rollout 1's
    scored output instead of generating (their time is the training pass alone). A rollout starts when
    ``_generate_and_score_completions`` is called and ends at the Trainer's ``on_step_end`` of its last step (one
    step for ArcherTrainer, steps_per_generation x num_iterations for the stock trainer)."""

    def __init__(self, trainer, form: Form, deadline: float, on_rollout) -> None:
        from transformers import TrainerCallback

        self.trainer, self.form, self.deadline, self.on_rollout = trainer, form, deadline, on_rollout
        self.cuda = form.device == "cuda"
        args = trainer.args
        archer = hasattr(trainer, "objective_config")
        self.steps_per_rollout = 1 if archer else args.steps_per_generation * args.num_iterations
        self.rollouts: list[dict] = []
        self.cached: tuple[dict, Any] | None = None
        self.steps = 0
        self.recording = False
        generate, score = trainer._generate, trainer._generate_and_score_completions

        def timed_generate(*a, **kw):
            config = trainer.generation_config
            saved = config.max_new_tokens
            if len(self.rollouts) == 1:  # the warm-up
                config.max_new_tokens = form.warmup_len
            _sync(form.device)
            start = time.perf_counter()
            try:
                return generate(*a, **kw)
            finally:
                _sync(form.device)
                self.rollouts[-1]["decode"] = time.perf_counter() - start
                config.max_new_tokens = saved

        def timed_score(*a, **kw):
            import torch

            _sync(form.device)
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            current = {"start": start, "replay": self.cached is not None, "decode": 0.0}
            self.rollouts.append(current)
            if self.cached is not None:
                output, keep = self.cached
                trainer._rollout_keep = keep
            else:
                output = score(*a, **kw)
                if len(self.rollouts) == 2:  # the full rollout: replayed from now on
                    self.cached = (output, getattr(trainer, "_rollout_keep", None))
                    completion = output["completion_mask"].sum(1).float()
                    current.update(
                        rows=int(output["completion_ids"].size(0)),
                        prompt=float(output["prompt_mask"].sum(1).float().mean()),
                        completion=float(completion.mean()),
                    )
            _sync(form.device)
            current["score_end"] = time.perf_counter()
            self.recording = len(self.rollouts) == 2
            return output

        trainer._generate = timed_generate
        trainer._generate_and_score_completions = timed_score
        probe = self

        class Boundary(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                probe.steps += 1
                if probe.steps % probe.steps_per_rollout == 0 and probe.rollouts:
                    probe.close(control)

        trainer.add_callback(Boundary())

    def close(self, control) -> None:
        import torch

        _sync(self.form.device)
        now = time.perf_counter()
        current = self.rollouts[-1]
        current["train"] = now - current["score_end"]
        current["score"] = current["score_end"] - current["start"] - current["decode"]
        current["total"] = now - current["start"]
        if self.cuda:
            current["peak"] = torch.cuda.max_memory_allocated() / GIB
            current["reserved"] = torch.cuda.max_memory_reserved() / GIB
        self.recording = False
        self.on_rollout()
        if len(self.rollouts) >= 2 and time.time() + 1.5 * current["total"] > self.deadline:
            control.should_training_stop = True  # the next replay would pass the deadline

    @property
    def full(self) -> dict | None:
        return self.rollouts[1] if len(self.rollouts) > 1 and "train" in self.rollouts[1] else None

    @property
    def train_times(self) -> list[float]:
        return [r["train"] for r in self.rollouts[1:] if "train" in r]


def job_trainer(args: argparse.Namespace, job: str, sink: Sink) -> list[dict]:
    """One trainer built by the recipe path, trained for a warm-up, a full rollout and its replays.

    ``job``: first (Archer, warm-up and full rollout only), archer, grpo (TRL's stock trainer), zero3 (Archer)."""
    import torch
    import transformers
    from mfu import Shape

    import archer.training.trainer as archer_trainer
    from archer.data.arithmetic import ArithmeticTask
    from archer.planning.dry_run import estimate_recipe_memory
    from archer.planning.memory import DEFAULT_GPU_MEMORY_GIB
    from archer.recipe import load_recipe
    from archer.training import pipeline

    transformers.utils.logging.set_verbosity_error()
    form = Form(**json.loads(args.form))
    cuda = form.device == "cuda"
    first, zero3 = job == "first", job == "zero3"
    name = TRAINERS["grpo" if job == "grpo" else "archer"]
    part = "0" if first else "b" if zero3 else "a"
    label = f"{name}{', DeepSpeed ZeRO-3 (1 process)' if zero3 else ''}"
    rollouts = 2 + (0 if first else form.replays)
    if args.peak_tflops is None and cuda:
        from mfu import peak_tflops

        args.peak_tflops = peak_tflops(torch.cuda.get_device_name())
    with tempfile.TemporaryDirectory(prefix="gpu-proof-run-") as tmp:
        recipe = load_recipe(RECIPE, recipe_overrides(form, str(args.model_dir), tmp, rollouts))
        gpu_gib = torch.cuda.mem_get_info()[1] / GIB if cuda else DEFAULT_GPU_MEMORY_GIB
        planned = estimate_recipe_memory(recipe, 1, zero_stage=3 if zero3 else 0, gpu_memory_gib=gpu_gib)
        planner = f"{planned.total / GIB:.1f} GiB"
        if cuda and not planned.fits:
            return [row(part, f"{label}: the planner's estimate", "does not fit", planner,
                        note="; ".join(line.strip() for line in planned.format()))]  # fmt: skip
        dataset = ArithmeticTask().dataset(256, seed=3)
        cls = stock_grpo_class() if job == "grpo" else None
        start = time.perf_counter()
        trainer = pipeline._build_trainer(recipe, str(args.model_dir), dataset, None, trainer_class=cls)
        if cls is not None:  # one Trainer step per micro-batch: steps_per_generation x num_iterations per rollout
            trainer.args.max_steps = rollouts * trainer.args.steps_per_generation * trainer.args.num_iterations
        built_s = time.perf_counter() - start
        shape = Shape(**json.loads((Path(args.model_dir) / "proof-model.json").read_text())["shape"])
        calls: list[dict] = []

        def publish() -> None:
            sink.set(_trainer_rows(part, label, probe, form, shape, args, recipe, planned, built_s))

        probe = Probe(trainer, form, args.deadline, publish)
        real = archer_trainer.compute_objective
        signature = inspect.signature(real)

        def spy(*a, **kw):  # the full rollout's objective calls, detached, for the share replay
            if probe.recording:
                bound = signature.bind(*a, **kw).arguments
                calls.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in bound.items()})
            return real(*a, **kw)

        archer_trainer.compute_objective = spy
        try:
            trainer.train()
        finally:
            archer_trainer.compute_objective = real
        rows = _trainer_rows(part, label, probe, form, shape, args, recipe, planned, built_s)
        if calls and job == "archer":
            from bench_trainer import objective_seconds

            objective_s = objective_seconds(calls, repeats=5)
            train_s = statistics.median(probe.train_times)
            rows.append(row("a", f"the objective's share of the {name} training pass", f"{objective_s * 1e3:.2f} ms",
                            secs(train_s), objective_s / train_s,
                            f"compute_objective fwd (with metrics) + bwd of the pass's {len(calls)} calls, replayed "
                            "(median of 5) / the training pass"))  # fmt: skip
    return rows


def _trainer_rows(part, label, probe: Probe, form: Form, shape, args, recipe, planned, built_s) -> list[dict]:
    """Rows of the rollouts done so far: decode, scoring and training pass of the full rollout, memory."""
    from mfu import decode_flops, training_flops

    warm = probe.rollouts[0] if probe.rollouts and "total" in probe.rollouts[0] else None
    full = probe.full
    if full is None:
        return [row(part, f"{label}: trainer built", f"{built_s:.0f} s",
                    note="warm-up rollout done" if warm else "no rollout finished")]  # fmt: skip
    targs = recipe.trainer
    peak = args.peak_tflops
    b, p, c = full["rows"], full["prompt"], full["completion"]
    epochs = targs.num_iterations
    micro = targs.per_device_train_batch_size
    steps = b // targs.batch.responses_per_step * epochs
    mfu = lambda flops, seconds: f", MFU {flops / seconds / (peak * 1e12):.1%}" if peak else ""  # noqa: E731
    trains = probe.train_times
    train = statistics.median(trains)
    replays = len(trains) - 1
    rows = [
        row(part, f"{label}: decode, {b} x {c:.0f} tokens (transformers generate)", secs(full["decode"]),
            note=f"{b * c / full['decode']:,.0f} tokens/s{mfu(decode_flops(shape, b, p, c), full['decode'])}; "
                 f"after a {form.warmup_len}-token warm-up rollout of {secs(warm['total'])}; trainer built in "
                 f"{built_s:.0f} s", decode_s=full["decode"], **({"peak_tflops": peak} if peak else {})),
        row(part, f"{label}: scoring (rewards, old and reference log-probs)", secs(full["score"]),
            note="math-verify on the completions; forward passes for the old log-probs (num_iterations "
                 f"{epochs}) and the reference's (KL weight {targs.beta:g})", score_s=full["score"]),
        row(part, f"{label}: training pass ({epochs} epochs x {b // micro} micro-batches of {micro}, {steps} AdamW "
            "steps)", secs(train),
            note=f"median of {len(trains)} (the full rollout + {replays} replay{'s' * (replays != 1)} of it); "
                 f"{epochs * b * (p + c) / train:,.0f} trained tokens/s"
                 f"{mfu(training_flops(shape, b, p, c, epochs), train)}", train_s=train),
    ]  # fmt: skip
    items = ", ".join(f"{k} {v / GIB:.1f}" for k, v in planned.items.items())
    if probe.cuda:
        replay_peak = max((r["peak"] for r in probe.rollouts[2:] if "peak" in r), default=None)
        rows.append(
            row(
                part,
                f"{label}: peak GPU memory, measured / the planner's estimate",
                f"{full['peak']:.1f} GiB",
                f"{planned.total / GIB:.1f} GiB",
                full["peak"] / (planned.total / GIB),
                f"max allocated over the full rollout (decode + scoring + training pass), reserved "
                f"{full['reserved']:.1f} GiB"
                + (f", training pass alone {replay_peak:.1f} GiB" if replay_peak else "")
                + f"; planner (GiB): {items}",
            )  # fmt: skip
        )
    else:
        rows.append(row(part, f"{label}: peak GPU memory, measured / the planner's estimate", "n/a (CPU)",
                        f"{planned.total / GIB:.1f} GiB", note=f"planner (GiB): {items}"))  # fmt: skip
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


def job_objective(args: argparse.Namespace, job: str, sink: Sink) -> list[dict]:
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
        row("d", f"compute_objective (archer) fwd+bwd vs plain clipped GRPO loss, {shape}", f"{ours * 1e3:.2f} ms",
            f"{ref * 1e3:.2f} ms", ours / ref, f"median of {form.objective_repeats}, interleaved, on {device}{memory}")
    ]  # fmt: skip


JOBS = {"model": job_model, "objective": job_objective, "first": job_trainer, "archer": job_trainer,
        "grpo": job_trainer, "zero3": job_trainer}  # fmt: skip
PART_OF = {"model": "0", "first": "0", "objective": "d", "archer": "a", "grpo": "a", "zero3": "b", "eval": "c"}


def worker(args: argparse.Namespace) -> None:
    """Run ``args.jobs`` in this process, one after the other; a job that fails leaves a FAILED row and the next
    runs (a failed model stops the worker: nothing runs without it)."""
    import gc
    import traceback

    sink = Sink(args.json)
    for job in args.jobs.split(","):
        try:
            sink.set(JOBS[job](args, job, sink))
        except Exception as err:  # the row says which job; the traceback goes to the log
            traceback.print_exc()
            sink.set(
                [*sink.current, row(PART_OF[job], f"{job} job", "FAILED", note=f"{type(err).__name__}: {err}"[:300])]
            )
            if job == "model":
                sink.finish()
                return
        sink.finish()
        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()


# --------------------------------------------------------------------------------------------------------------
# The driver


def child_env() -> dict[str, str]:
    """The environment of every child: the repo's src first, the caller's PYTHONPATH kept (run.sh's --target)."""
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), *kept]), PYTHONUNBUFFERED="1")


def run_worker(name: str, args: list[str], kill_at: float, tmp: Path, log: Path, launcher: list[str] | None = None):
    """One worker in a fresh process group: (rows, None), or (the rows it wrote, why it failed)."""
    out = tmp / f"worker-{time.monotonic_ns()}.json"
    command = [*(launcher or [sys.executable]), str(Path(__file__)), "--worker", "--json", str(out), *args]
    env = child_env()
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    timeout = max(5.0, kill_at - time.time())
    with log.open("a") as sink:
        sink.write(f"\n===== {name}: {' '.join(command)} (killed after {timeout:.0f} s)\n")
        sink.flush()
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # accelerate launch's child too
            proc.wait()
            code = None
    rows = json.loads(out.read_text()) if out.exists() else []
    if code is None:
        return rows, f"timed out after {timeout:.0f} s (killed; the rows above are what it had done)"
    if code != 0 or not out.exists():
        return rows, f"failed (exit {code}): {_last_error(log)}"
    return rows, None


def _last_error(log: Path) -> str:
    """The last line naming an error in the log's last worker (its tail is printed to stderr)."""
    lines = log.read_text(errors="replace").split("\n===== ")[-1].strip().splitlines()
    print("\n".join(lines[-40:]), file=sys.stderr)
    errors = [line.strip() for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1][:300]


def eval_part(model_dir: Path, tmp: Path, deadline: float, device: str) -> dict:
    """(c) ``archer eval --backend vllm`` on the tiny suite (random weights: the score is 0; the path is the proof)."""
    figure = "archer eval --backend vllm (tiny suite, 16 problems)"
    if importlib.util.find_spec("vllm") is None:
        return row("c", figure, "skipped", note="vLLM is not importable on this machine (its wheels, ~400 MB, do not "
                   "travel to the lent machine)")  # fmt: skip
    if device != "cuda":
        return row("c", figure, "skipped", note="no CUDA GPU visible")
    if importlib.util.find_spec("lighteval") is None:
        return row("c", figure, "skipped", note="lighteval is not importable (bench/gpu/requirements-eval.txt)")
    command = [sys.executable, "-m", "archer.cli", "eval", "--model", str(model_dir), "--suite",
               str(REPO / "eval" / "suites" / "tiny.yaml"), "--backend", "vllm", "--limit", "16",
               "--output-dir", str(tmp / "eval"), "--max-model-length", "2048", "--gpu-memory-utilization", "0.5"]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=child_env(), capture_output=True, text=True, timeout=max(30.0, deadline - time.time())
        )
    except subprocess.TimeoutExpired:
        return row("c", figure, "timed out", note="vLLM engine start + 16 problems exceeded the budget")
    if done.returncode != 0:
        lines = (done.stderr + done.stdout).strip().splitlines()
        return row("c", figure, "FAILED", note=f"exit {done.returncode}: {(lines or ['no output'])[-1][:300]}")
    return row("c", figure, f"{time.perf_counter() - start:.0f} s", note="engine start, sampling, grading, results")


def machine(device: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = f"torch {torch.__version__}"
    for package in ("transformers", "trl", "datasets", "deepspeed", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            versions += f", {package} {version(package)}"
    if device == "cuda":
        memory = torch.cuda.mem_get_info()[1] / GIB
        return f"{torch.cuda.get_device_name()} ({memory:.1f} GiB), Python {platform.python_version()}, {versions}"
    return f"{platform.machine()} CPU ({os.cpu_count()} cores), Python {platform.python_version()}, {versions}"


def format_table(rows: list[dict]) -> str:
    def cell(r: dict, col: str) -> str:
        value = r.get(col)
        if value is None:
            return ""
        return f"{value:.2f}x" if col == "ratio" else str(value).replace("|", "/")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows])


class Report:
    """The table of one call, rewritten (markdown, JSON lines) after each part: a kill keeps the parts done."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.meta, self.rows = path, meta, []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self.write()

    @property
    def jsonl(self) -> Path:
        return self.path.with_suffix(".jsonl")

    @property
    def log(self) -> Path:
        return self.path.with_suffix(".log")

    def add(self, *rows: dict) -> None:
        self.rows += rows
        self.write()

    def write(self) -> None:
        self.meta["elapsed_s"] = round(time.time() - self.meta["started"], 1)
        lines = [json.dumps({"meta": self.meta})] + [json.dumps(r) for r in self.rows]
        for path, text in ((self.jsonl, "\n".join(lines) + "\n"), (self.path, render([self.meta], self.rows))):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)


def render(metas: list[dict], rows: list[dict]) -> str:
    order = {p: i for i, p in enumerate("0adbc")}
    rows = sorted(rows, key=lambda r: order.get(r["part"], 9))
    stamp = dt.datetime.fromtimestamp(metas[0]["started"]).strftime("%Y-%m-%d %H:%M")
    lines = [f"# GPU proof, {stamp}", "", f"- {metas[0]['form']}", f"- machine: {metas[-1].get('machine', '?')}"]
    for meta in metas:
        lines.append(
            f"- `{meta['command']}`: {meta['elapsed_s']:.0f} s of a {meta['budget_s']:.0f} s budget (from run.sh's "
            f"start, the install included); MFU against {meta['peak']}"
        )
    return "\n".join([*lines, "", format_table(rows), ""])


def merge(files: list[Path], out: Path) -> int:
    """One table from the JSON-lines files of several calls (the first and the second on the device)."""
    metas, rows = [], []
    for path in files:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        metas += [r["meta"] for r in records if "meta" in r]
        rows += [r for r in records if "meta" not in r]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(metas, rows))
    print(out.read_text())
    return 0


def plan_processes(part: str, device: str) -> list[list[str]]:
    """The jobs of a call, grouped by process. On a GPU each job has a process of its own (a trainer's memory is
    given back whole before the next starts); without one, the plain jobs share one process and ZeRO-3 has the other
    (``accelerate launch``), so that CI starts two instead of five."""
    jobs = ["model", "first"] if part == "first" else ["model", "objective", "archer", "grpo", "zero3", "eval"]
    if part == "first" or device == "cuda":
        return [[job] for job in jobs]
    return [[job for job in jobs if job not in ("zero3", "eval")], ["zero3"], ["eval"]]


def drive(args: argparse.Namespace) -> int:
    import torch  # torch.cuda.is_available() creates no CUDA context: the driver holds no GPU memory

    started = float(os.environ.get("GPU_PROOF_STARTED") or time.time())
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU visible", file=sys.stderr)
        return 2
    cuda = device == "cuda"
    form = Form.for_device(device, args.replays, args.completion_len)
    budget = args.budget_s or (BUDGET_S[(device, args.part)] if cuda else CPU_BUDGET_S)
    end = started + budget
    suffix = "" if cuda else "-cpu"
    out = args.out or REPO / "bench" / "results" / f"gpu-proof-{dt.date.today().isoformat()}{suffix}.md"
    meta = {"started": started, "form": form.label, "budget_s": budget, "part": args.part,
            "command": "bench/gpu/proof.py " + " ".join(args.argv), "peak": "no peak (CPU): no MFU"}  # fmt: skip
    report = Report(out, meta)
    installed = os.environ.get("GPU_PROOF_INSTALL")
    if installed or args.part in ("first", "all"):
        seconds, _, how = (installed or "none;").partition(";")
        note = how.strip() or "nothing installed: run.sh - or no run.sh (the packages were there)"
        report.add(row("0", f"wheel install (run.sh, --part {args.part})", seconds, note=note))
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as tmp_name:
        tmp = Path(tmp_name)
        # On a GPU the checkpoint (3.3 GiB) is kept in /tmp: the second call on the same machine reuses it.
        model_dir = args.model_dir or (Path(tempfile.gettempdir()) / "archer-proof-model" if cuda else tmp / "model")
        common = ["--form", json.dumps(asdict(form)), "--model-dir", str(model_dir)]
        common += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
        processes = plan_processes(args.part, device)
        for i, jobs in enumerate(processes):
            if jobs == ["eval"]:
                report.add(eval_part(model_dir, tmp, end, device))
                continue
            need = sum(NEEDS_S[job] for job in jobs) if cuda else 0.0
            later = sum(NEEDS_S[job] for group in processes[i + 1 :] for job in group) if cuda else 0.0
            left = end - time.time()
            if left < need:
                report.add(*(row(PART_OF[job], f"{job} job", "skipped", note=f"{left:.0f} s left of the budget, "
                                 f"the job needs about {need:.0f} s") for job in jobs))  # fmt: skip
                continue
            deadline = time.time() + max(need, left - later)
            kill_at = min(deadline + 20.0, end + 10.0) if cuda else deadline + 300.0
            launcher = None
            if jobs == ["zero3"]:
                launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3[device]),
                            "--num_processes", "1"]  # fmt: skip
            extra = ["--jobs", ",".join(jobs), "--deadline", str(deadline)]
            got, why = run_worker(",".join(jobs), [*common, *extra], kill_at, tmp, report.log, launcher)
            for r in got:
                data = r.get("data", {})
                if "machine" in data:
                    meta["shape"], meta["machine"] = data["shape"], data["machine"]
                    del r["data"]
                if "peak_tflops" in data:
                    meta["peak"] = f"{data['peak_tflops']:g} TFLOP/s (dense bf16, bench/gpu/mfu.py)"
            if why:
                got.append(row(PART_OF[jobs[-1]], f"{','.join(jobs)} worker",
                               "timed out" if why.startswith("timed out") else "FAILED", note=why))  # fmt: skip
            report.add(*got)
            if "grpo" in jobs:
                report.add(*training_pass_ratio(report.rows))
            if "model" in jobs and "shape" not in meta:
                break  # nothing runs without the model
            print(f"{','.join(jobs)} done at {time.time() - started:.0f} s", flush=True)
    print(report.path.read_text())
    print(f"written to {report.path} (and {report.jsonl.name}, {report.log.name})")
    return 1 if any(r["Archer / ours"] in ("FAILED", "timed out") for r in report.rows) else 0


def training_pass_ratio(rows: list[dict]) -> list[dict]:
    """(a) Archer / stock GRPO on the training pass, from the two workers' rows."""
    passes = {}
    for r in rows:
        if r["part"] == "a" and "train_s" in r.get("data", {}):
            passes["grpo" if r["figure"].startswith(TRAINERS["grpo"]) else "archer"] = r["data"]["train_s"]
    if len(passes) < 2:
        return []
    return [row("a", "training pass: Archer / stock GRPO", secs(passes["archer"]), secs(passes["grpo"]),
                passes["archer"] / passes["grpo"], "the same rollout shape and optimizer steps; each trainer's own "
                "loss (the Archer objective / TRL's grpo loss with beta 0.001)")]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu/proof.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--part",
        choices=("first", "rest", "all"),
        default="all",
        help="first: install, model, one Archer rollout (the device's first call); rest: the other parts; all: both",
    )
    parser.add_argument(
        "--replays", type=int, default=None, help="training passes replayed per trainer (default: 5 GPU, 1 CPU)"
    )
    parser.add_argument("--completion-len", type=int, default=None, help="tokens per completion (512 GPU, 16 CPU)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the call from run.sh's start (GPU: first 110 s, rest 190 s, all 300 s; CPU 1800 s)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU (default: by name)")
    parser.add_argument("--model-dir", type=Path, default=None, help="random-weight checkpoint, kept (reused) there")
    parser.add_argument(
        "--out", type=Path, default=None, help="markdown table (default: bench/results/gpu-proof-*.md)"
    )
    parser.add_argument("--merge", type=Path, nargs="+", help="JSON-lines files of several calls: one table to --out")
    # internal: one worker process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--form", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.worker:
        worker(args)
        return 0
    if args.merge:
        if args.out is None:
            print("error: --merge needs --out", file=sys.stderr)
            return 2
        return merge(args.merge, args.out)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
