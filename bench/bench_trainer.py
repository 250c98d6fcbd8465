"""Trainer step: Archer (and our DAPO preset) against TRL's stock GRPOTrainer, and the objective's share of it.

One optimizer step = sample a rollout with transformers' generate, score it, forward + backward, clip the gradient
norm, AdamW step. All trainers start from the same weights and train at learning rate 0 (AdamW still does all its
work), and the RNG is re-seeded before every step, so each trainer samples exactly the same completions: the timings
differ only by the loss path. Steps are interleaved across trainers (A B C D A B C D ...); we report medians after
warm-up, of wall time (the ratio column) and of the process's CPU time (in the note: on a busy shared machine it
moves less).
Torch runs one intra-op thread here, so that thread synchronisation on a busy machine does not add noise.

The objective's share: one more Archer step records the ``compute_objective`` calls the trainer makes; after each
round of steps those calls are replayed (forward with metrics, then backward to the log-probs) and timed, and the
median replay time is divided by the median Archer step.

    .venv/bin/python bench/bench_trainer.py [--quick]
"""

from __future__ import annotations

import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# name -> (hidden, layers, heads, kv heads, intermediate)
MODELS = {
    "tiny (embedded default, 0.13M)": (64, 2, 4, 2, 256),
    "Qwen2-style 65M, random weights": (768, 10, 12, 4, 2048),
}


def _build(model_dir: Path, shape: tuple[int, ...], max_positions: int) -> int:
    from archer import tiny

    hidden, layers, heads, kv, inter = shape
    tokenizer = tiny.build_tokenizer()
    cfg = tiny.TinyModelConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=max_positions,
    )
    model = tiny.build_model(tokenizer, cfg, seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def _trainers(
    model_dir: Path, out: Path, batch: int, completion_len: int, names: tuple[str, ...] | None = None, **overrides
) -> dict:
    """The trainers of ``specs`` below (or those in ``names``); ``overrides`` replace the common config values."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from archer.data.arithmetic import ArithmeticTask
    from archer.rewards import math_reward
    from archer.training.config import ArcherConfig
    from archer.training.trainer import ArcherTrainer

    common = dict(
        learning_rate=0.0,
        num_generations=4,
        per_device_train_batch_size=batch,
        max_completion_length=completion_len,
        temperature=1.0,
        max_steps=1000,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        bf16=False,
        activation_checkpointing=False,
        dataloader_pin_memory=False,
    )
    common.update(overrides)
    dataset = ArithmeticTask().dataset(256, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    specs = {
        # every row in every step, as the stock trainers do (an untrained model's all-uniform rollout would
        # otherwise make no update at all, and the ratio would time nothing)
        "archer": (ArcherTrainer, ArcherConfig, dict(objective="archer", drop_uniform_groups=False)),
        "stock GRPO (beta 0.001)": (GRPOTrainer, GRPOConfig, dict(loss_type="grpo", beta=0.001, epsilon=0.2)),
        "archer dapo preset": (ArcherTrainer, ArcherConfig, dict(objective="dapo", drop_uniform_groups=False)),
        "stock DAPO": (GRPOTrainer, GRPOConfig, dict(loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28)),
    }
    trainers = {}
    for i, (name, (trainer_cls, config_cls, extra)) in enumerate(specs.items()):
        if names is not None and name not in names:
            continue
        args = config_cls(output_dir=str(out / str(i)), **common, **extra)
        trainer = trainer_cls(
            model=str(model_dir),
            reward_funcs=[math_reward],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # normally set by the training loop
        trainers[name] = (trainer, next(iter(trainer.get_train_dataloader())))
    return trainers


def _step(trainer, batch, seed: int) -> float:
    torch.manual_seed(seed)
    start = time.perf_counter()
    trainer.model.train()
    trainer.training_step(trainer.model, batch, None)
    # the Trainer loop's gradient clipping and AdamW step (ArcherTrainer did both inside its step: no gradient left)
    params = [p for p in trainer.model.parameters() if p.grad is not None]
    if params and trainer.args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def objective_calls(trainer, batch, seed: int) -> list[dict[str, Any]]:
    """The arguments (by name) of each ``compute_objective`` call that one training step of an ArcherTrainer makes."""
    import archer.training.trainer
    from archer.objective import compute_objective

    with mock.patch.object(archer.training.trainer, "compute_objective", wraps=compute_objective) as spy:
        _step(trainer, batch, seed)
    signature = inspect.signature(compute_objective)
    return [dict(signature.bind(*call.args, **call.kwargs).arguments) for call in spy.call_args_list]


def objective_seconds(calls: list[dict[str, Any]], repeats: int) -> float:
    """Median wall time of replaying ``calls``: compute_objective (with its metrics) and the backward of its loss."""
    from archer.objective import compute_objective

    def replay() -> float:
        start = time.perf_counter()
        for args in calls:
            logps = args["logps"].detach().requires_grad_()
            compute_objective(**{**args, "logps": logps}).loss.backward()
            if logps.is_cuda:
                torch.cuda.synchronize()
        return time.perf_counter() - start

    replay()  # warm-up
    return statistics.median(replay() for _ in range(repeats))


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rows(quick)
    finally:
        torch.set_num_threads(threads)


def _rows(quick: bool) -> list[dict]:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    rows = []
    models = dict(list(MODELS.items())[:1]) if quick else MODELS
    repeats, warmup = (2, 1) if quick else (7, 1)
    replays = 5  # objective replays per repeat
    for label, shape in models.items():
        big = shape[0] > 64
        batch, completion_len = (16, 32) if big else (64, 40)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            n_params = _build(tmp / "model", shape, max_positions=128)
            trainers = _trainers(tmp / "model", tmp / "runs", batch, completion_len)
            times: dict[str, list[float]] = {name: [] for name in [*trainers, "objective"]}
            cpu_times: dict[str, list[float]] = {name: [] for name in trainers}
            calls = objective_calls(*trainers["archer"], seed=0)  # an extra, untimed step
            for rep in range(warmup + repeats):
                for name, (trainer, prompts) in trainers.items():
                    cpu_start = time.process_time()
                    elapsed = _step(trainer, prompts, seed=rep)
                    if rep >= warmup:
                        times[name].append(elapsed)
                        cpu_times[name].append(time.process_time() - cpu_start)
                if rep >= warmup:  # interleaved with the steps, like them
                    times["objective"].append(objective_seconds(calls, replays))
        med = {name: statistics.median(values) for name, values in times.items()}
        cpu = {name: statistics.median(values) for name, values in cpu_times.items()}
        shape_note = (
            f"{n_params / 1e6:.2f}M params, {batch} completions x {completion_len} tokens, median of {repeats}"
        )
        for ours, ref, target in (
            ("archer", "stock GRPO (beta 0.001)", "<= 1.05x"),
            ("archer dapo preset", "stock DAPO", "<= 1.05x"),
            ("archer", "archer dapo preset", None),
        ):
            rows.append(
                {
                    "figure": f"trainer step, {label}: {ours} vs {ref}",
                    "ours": f"{med[ours]:.3f} s",
                    "reference": f"{med[ref]:.3f} s",
                    "ratio": med[ours] / med[ref],
                    "target": target,
                    "note": f"{shape_note}; CPU-time ratio {cpu[ours] / cpu[ref]:.2f}",
                }
            )
        share = med["objective"] / med["archer"]
        rows.append(
            {
                "figure": f"objective's share of an Archer trainer step, {label}",
                "ours": f"{med['objective'] * 1e3:.2f} ms",
                "reference": f"{med['archer']:.3f} s",
                "ratio": share,
                "target": "< 0.05",
                "note": f"share {share:.3%}: compute_objective fwd (with metrics) + bwd, the step's {len(calls)} "
                f"call(s) replayed ({replays} times after each repeat) / Archer step; {shape_note}",
            }
        )
    return rows


if __name__ == "__main__":
    from run import standalone

    sys.exit(standalone(run))
