"""Calibrate the embedded default's warm start and task: is the SFT model good at what RL needs, does RL then gain?

Each named configuration is ``recipes/tiny/archer.yaml`` plus overrides (task, SFT, trainer). Two stages, both
through ``archer.ablation`` (so warm starts are shared and cached exactly as ``make ablate`` shares them, under
``--out``):

``sft``: the warm start of each configuration and seed, probed every 500 SFT steps (from step 1500) on a
*validation* set (200 problems drawn like training problems, from their own seed; the reserved held-out set is
left for the final numbers):

- greedy accuracy, and the share of greedy answers that show their working;
- sampled at the RL temperature (T 1.0, 4 samples): accuracy, share showing working, accuracy of worked and of
  answer-only samples, step accuracy (the share of worked steps ``a+b=c.`` that are true);
- sampled at the evaluation temperature (T 0.8, 4 samples): accuracy.

A warm start leaves RL room when worked samples are mostly right and answer-only ones mostly wrong: RL then has a
better behaviour to find (showing the working).

``rl``: Archer RL from those warm starts; the held-out figures (avg@8 at T 0.8 and greedy, 500 problems) before and
after RL come from the runs' ``train_results.json``.

    python bench/tiny_calibrate.py sft CONFIG... [--seeds 5] [--workers 2]
    python bench/tiny_calibrate.py rl CONFIG... [--seeds 5] [--workers 2]
    python bench/tiny_calibrate.py table [CONFIG...]        # the calibration table of docs/ablations.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

OUT = Path("outputs/calibrate")
RECIPE = "recipes/tiny/archer.yaml"
VALIDATION_N = 200
PROBE_EVERY, PROBE_FROM = 500, 1500
SAMPLES = 4
STEP = re.compile(r"^(-?\d+)([-+*])(-?\d+)=(-?\d+)\.$")

# name -> overrides of recipes/tiny/archer.yaml (the recipe: operands 0..12; SFT batch 32, 40 % answer-only, stop at
# 90 % validation; RL lr 2e-5 for 150 rollouts)
CONFIGS: dict[str, list[str]] = {
    "recipe": [],
    "r100": ["trainer.max_steps=100"],
    "lr3e-5_r100": ["trainer.learning_rate=3e-5", "trainer.max_steps=100"],
    "lr5e-5_r100": ["trainer.learning_rate=5e-5", "trainer.max_steps=100"],
    "sft95": ["sft.target_accuracy=0.95"],
    "sft95_lr3e-5": ["sft.target_accuracy=0.95", "trainer.learning_rate=3e-5"],
    "sft95_lr3e-5_r100": ["sft.target_accuracy=0.95", "trainer.learning_rate=3e-5", "trainer.max_steps=100"],
    "sft95_lr5e-5_r100": ["sft.target_accuracy=0.95", "trainer.learning_rate=5e-5", "trainer.max_steps=100"],
}


def step_accuracy(completion: str) -> tuple[int, int]:
    """(true steps, steps) among the ``a op b=c.`` steps of a completion's working."""
    body = completion.partition("<think>")[2].partition("</think>")[0]
    good = total = 0
    for step in body.split():
        total += 1
        match = STEP.match(step)
        if match:
            a, op, b, c = match.groups()
            a, b, c = int(a), int(b), int(c)
            good += (a + b if op == "+" else a - b if op == "-" else a * b) == c
    return good, total


def sample(model, tokenizer, prompts: list[str], k: int, temperature: float, seed: int) -> list[list[str]]:
    import torch

    torch.manual_seed(seed)
    out: list[list[str]] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), 100):
            enc = tokenizer(
                prompts[start : start + 100],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            )
            ids = model.generate(
                **enc,
                max_new_tokens=40,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                num_return_sequences=k,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [texts[i : i + k] for i in range(0, len(texts), k)]
    return out


def probe(model, tokenizer, problems) -> dict[str, float]:
    from archer.tiny.accuracy import generate_completions, score, shows_working

    was_training = model.training
    model.eval()
    prompts, solutions = [p.prompt for p in problems], [p.solution for p in problems]
    greedy = generate_completions(model, tokenizer, prompts)
    row = {
        "greedy": statistics.mean(score(greedy, solutions)),
        "greedy_worked": statistics.mean(map(shows_working, greedy)),
    }
    for temperature, name in ((1.0, "t1"), (0.8, "t08")):
        samples = sample(model, tokenizer, prompts, SAMPLES, temperature, seed=1234)
        flat = [c for group in samples for c in group]
        rewards = score(flat, [s for s in solutions for _ in range(SAMPLES)])
        worked = [shows_working(c) for c in flat]
        row[f"{name}_acc"] = statistics.mean(rewards)
        if name == "t1":
            row["t1_worked"] = statistics.mean(worked)
            w = [r for r, is_w in zip(rewards, worked, strict=True) if is_w]
            a = [r for r, is_w in zip(rewards, worked, strict=True) if not is_w]
            row["t1_acc_worked"] = statistics.mean(w) if w else float("nan")
            row["t1_acc_answer_only"] = statistics.mean(a) if a else float("nan")
            steps = [step_accuracy(c) for c, is_w in zip(flat, worked, strict=True) if is_w]
            row["t1_step_acc"] = sum(g for g, _ in steps) / max(1, sum(t for _, t in steps))
    model.train(was_training)
    return row


class Prober:
    """The SFT callback: probes the model on the validation set every PROBE_EVERY steps, appends rows to a file."""

    def __init__(self, task_kwargs: dict[str, Any], path: Path, label: dict[str, Any]):
        self.task_kwargs, self.path, self.label = task_kwargs, path, label
        self.problems = self.tokenizer = None

    def __call__(self, step: int, model) -> None:
        if step < PROBE_FROM or step % PROBE_EVERY:
            return
        if self.problems is None:
            from archer.data.arithmetic import ArithmeticTask
            from archer.tiny import build_tokenizer

            task = ArithmeticTask(**self.task_kwargs)
            self.problems = task.validation(VALIDATION_N)  # the set the SFT's own stopping rule looks at
            self.tokenizer = build_tokenizer(task=task)
        row = {**self.label, "step": step, **probe(model, self.tokenizer, self.problems)}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def plan(configs: list[str], seeds: int, out: Path, workers: int):
    from archer.ablation.plan import Variant, plan_ablation

    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown config {unknown[0]!r}; known: {', '.join(CONFIGS)}")
    return plan_ablation([Variant(c, RECIPE, tuple(CONFIGS[c])) for c in configs], seeds, out, workers)


def run_warm_starts(configs: list[str], seeds: int, out: Path, workers: int) -> None:
    """Every missing warm start of the configurations, with probes, ``workers`` at a time."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from archer.ablation.jobs import load_run_recipe, warm_start_job

    the_plan = plan(configs, seeds, out, workers)
    jobs = [run for warm, run in the_plan.warm_starts.items() if not (warm / "sft_results.json").is_file()]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {}
        for run in jobs:
            probes = run.warm_dir.with_suffix(".probes.jsonl")
            probes.unlink(missing_ok=True)
            label = {"warm": run.warm_dir.name, "config": run.name, "seed": run.seed}
            prober = Prober(load_run_recipe(run).data.task, probes, label)
            futures[pool.submit(warm_start_job, run, the_plan.threads, prober)] = run
        for future in as_completed(futures):
            run = futures[future]
            error = future.exception()
            print(f"{'FAILED' if error else 'done'} {run.name} seed {run.seed}: {error or run.warm_dir}", flush=True)


def probe_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((out / "warm_starts").glob("*.probes.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


SFT_COLUMNS = ("greedy", "t1_acc", "t1_worked", "t1_acc_worked", "t1_acc_answer_only", "t1_step_acc", "t08_acc")


def table(configs: list[str], seeds: int, out: Path) -> str:
    """Per configuration: SFT length, the RL outcome on held-out (means over seeds, worst seed), probe columns when
    ``sft`` probed the warm starts (means over seeds at the last probed step)."""
    from archer.ablation.report import run_values

    rows = probe_rows(out)
    probed = any(r["config"] in configs for r in rows)
    head = ["config", "SFT steps", "avg@8 SFT → RL", "avg@8 gain min / mean", "greedy SFT → RL", "greedy gain min"]
    head += [*(f"probe {c}" for c in SFT_COLUMNS)] if probed else []
    lines = ["| " + " | ".join(head + ["seeds"]) + " |", "|---" * (len(head) + 1) + "|"]
    for config in configs:
        the_plan = plan([config], seeds, out, 1)
        finished = [r for r in the_plan.runs if r.done]
        done = [run_values(r.out_dir) for r in finished]
        sft_steps = [
            json.loads((r.out_dir / "sft" / "sft_results.json").read_text())["sft"]["steps"] for r in finished
        ]
        if done:

            def mean(key: str, done=done) -> float:
                return statistics.mean(v[key] for v in done)

            cells = [
                f"{statistics.mean(sft_steps):.0f} ({min(sft_steps)}–{max(sft_steps)})",
                f"{mean('avg8_before'):.1f} → {mean('avg8_after'):.1f}",
                f"{min(v['avg8_gain'] for v in done):+.1f} / {mean('avg8_gain'):+.1f}",
                f"{mean('greedy_before'):.1f} → {mean('greedy_after'):.1f}",
                f"{min(v['greedy_gain'] for v in done):+.1f}",
            ]
        else:
            cells = ["–"] * 5
        if probed:
            warm = {r.warm_dir.name for r in the_plan.runs}
            probes = [r for r in rows if r["warm"] in warm]
            last = max((r["step"] for r in probes), default=None)
            final = [r for r in probes if r["step"] == last]
            cells += [f"{100 * statistics.mean(r[c] for r in final):.1f}" if final else "–" for c in SFT_COLUMNS]
        lines.append(f"| {config} | " + " | ".join(cells) + f" | {len(done)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["sft", "rl", "table"])
    parser.add_argument("configs", nargs="*")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    configs = args.configs or list(CONFIGS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ["TQDM_DISABLE"] = "1"
    if args.command == "sft":
        run_warm_starts(configs, args.seeds, args.out, args.workers)
    elif args.command == "rl":
        from archer.ablation import run_ablation
        from archer.ablation.plan import Variant

        variants = [Variant(c, RECIPE, tuple(CONFIGS[c])) for c in configs]
        _, failures = run_ablation(variants, args.seeds, args.out, args.workers, command="bench/tiny_calibrate.py rl")
        for line in failures:
            print(f"error: {line}", file=sys.stderr)
    print(table(configs, args.seeds, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
