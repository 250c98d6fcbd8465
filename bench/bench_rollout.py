"""Rollout generation on CPU: vLLM's CPU engine (archer's ``vllm_engine``) against transformers' ``generate``.

The same job on both sides: P prompts (held-out arithmetic problems, the trainer's raw prompts) x k samples of at
most N new tokens, T 1.0 (the rollout temperature), top_p 1, no top-k, in float32, from the same random weights.
Timed alternately in this process after a warm-up of both (a small job); medians. The reference is plain transformers: one
left-padded batch of all prompts, ``num_return_sequences=k`` (what TRL's trainer does without vLLM). vLLM runs the
in-process eager engine of ``vllm_engine.build_engine`` (archer's CPU defaults), one request per prompt with its
own seed. Sampled tokens differ between the two (different random streams); the note gives the tokens each side
generated, so the ratio compares the same amount of work up to sampling noise.

Two scales: the tiny model with vLLM-servable heads (hidden 64, 2 heads of 32, 0.13M parameters; 40 new tokens,
the tiny suite's) and a Qwen2 of about 63M parameters (hidden 512, 8 layers, 8 heads of 64, 2 KV heads,
intermediate 2048, vocabulary 32,000, untied; 64 and 256 new tokens). One more row: start-up, vLLM's import +
engine build against transformers' ``from_pretrained``. These rows are why ``archer eval --backend auto`` keeps
transformers on CPU (``archer.evaluation.backends.vllm_available``): at 0.13M each engine step pays a serving
engine's scheduling and bookkeeping, which such small matmuls cannot hide (2.4x, every run); at 63M the two are
close and the winner changed from run to run on a shared 2-core machine (0.6x-1.6x: transformers' growing,
re-allocated KV cache is the more sensitive to other jobs' memory traffic, vLLM's paged cache is allocated once);
and vLLM's start-up costs 10-27 s more.
Torch runs one intra-op thread on both sides (OMP_NUM_THREADS=1 for vLLM's own kernels too).

    .venv/bin/python bench/bench_rollout.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name -> (hidden, layers, heads, kv heads, intermediate, vocabulary or None: the tokenizer's, tied)
MODELS = {
    "tiny (0.13M, heads of 32)": (64, 2, 2, 1, 256, None, True),
    "Qwen2 63M, random weights": (512, 8, 8, 2, 2048, 32000, False),
}


def build(model_dir: Path, shape: tuple, max_positions: int) -> int:
    """Save a random-weight float32 Qwen2 of ``shape`` with the tiny tokenizer; returns its parameter count."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    from archer import tiny
    from archer.tiny.model import qwen2_config

    hidden, layers, heads, kv, inter, vocab, tied = shape
    tokenizer = tiny.build_tokenizer()
    cfg = tiny.TinyModelConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tied,
    )
    config = qwen2_config(tokenizer, cfg)
    if vocab is not None:
        config.vocab_size = vocab  # the tokenizer's ids are the first ones; the rest only cost embedding rows
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model.num_parameters()


def prompts(tokenizer, n: int) -> list[list[int]]:
    from archer.data.arithmetic import ArithmeticTask

    return [tokenizer(p.prompt)["input_ids"] for p in ArithmeticTask().heldout(n)]


def hf_generate(model, tokenizer, ids: list[list[int]], k: int, new: int, seed: int) -> int:
    """One left-padded batch, k samples per prompt; returns the tokens generated (up to each sample's EOS)."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad([{"input_ids": x} for x in ids], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=new,
            num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id,
        )
    completions = out[:, batch["input_ids"].shape[1] :]
    eos = tokenizer.eos_token_id
    return sum(int(row.tolist().index(eos)) + 1 if eos in row.tolist() else new for row in completions)


def vllm_generate(engine, ids: list[list[int]], k: int, new: int, seed: int) -> int:
    from archer.evaluation.backends import vllm_engine
    from archer.evaluation.backends.base import problem_seeds

    out = vllm_engine.generate(engine, ids, k, 1.0, 1.0, new, problem_seeds(seed, len(ids), k), use_tqdm=False)
    return sum(len(t) for g in out for t in g.token_ids)


def measure(model_dir: Path, jobs: list[tuple[int, int, int, int]]) -> dict:
    """Build both sides once, warm both up on a small job, then time each (prompts, k, new tokens, repeats) job."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archer.evaluation.backends import vllm_engine

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_load = time.perf_counter() - start
    start = time.perf_counter()
    engine = vllm_engine.build_engine(str(model_dir), dtype="float32", seed=0)
    vllm_build = time.perf_counter() - start
    torch.set_num_threads(1)
    results = []
    try:
        warm = prompts(tokenizer, 4)
        vllm_generate(engine, warm, 2, 8, 0)
        hf_generate(model, tokenizer, warm, 2, 8, 0)
        for n, k, new, repeats in jobs:
            ids = prompts(tokenizer, n)
            times: dict[str, list[float]] = {"vllm": [], "hf": []}
            tokens: dict[str, list[int]] = {"vllm": [], "hf": []}
            for r in range(repeats):  # alternately
                for side in ("vllm", "hf"):
                    t0 = time.perf_counter()
                    if side == "vllm":
                        made = vllm_generate(engine, ids, k, new, r)
                    else:
                        made = hf_generate(model, tokenizer, ids, k, new, r)
                    times[side].append(time.perf_counter() - t0)
                    tokens[side].append(made)
            results.append({side: statistics.median(times[side]) for side in times})
            results[-1].update({f"{side}_tokens": statistics.median(tokens[side]) for side in tokens})
    finally:
        start = time.perf_counter()
        vllm_engine.shutdown(engine)
        shutdown = time.perf_counter() - start
    return {"hf_load": hf_load, "vllm_build": vllm_build, "vllm_shutdown": shutdown, "jobs": results}


def fresh_vllm_import_s() -> float:
    """What importing vLLM (archer's engine module) adds to a fresh process that has already imported transformers
    (as ``archer eval`` always has): measured in a subprocess, so the order of the benches does not matter."""
    code = (
        "import time, torch, transformers; t = time.perf_counter(); "
        "from archer.evaluation.backends import vllm_engine; print(time.perf_counter() - t)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    vllm_import = fresh_vllm_import_s()
    plans = {  # model -> its jobs: (prompts, k, at most new tokens, repeats)
        "tiny (0.13M, heads of 32)": [(4, 2, 8, 1)] if quick else [(64, 8, 40, 3)],
        "Qwen2 63M, random weights": [] if quick else [(16, 8, 64, 3), (8, 8, 256, 2)],
    }
    rows = []
    startup = None
    for name, jobs in plans.items():
        if not jobs:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
            params = build(Path(tmp), MODELS[name], max_positions=512)
            measured = measure(Path(tmp), jobs)
        startup = startup or measured
        for (n, k, new, repeats), m in zip(jobs, measured["jobs"], strict=True):
            rows.append(
                {
                    "figure": f"rollout generation, {name}, {new} new tokens: vLLM CPU engine vs transformers generate",
                    "ours": f"{m['vllm']:.2f} s ({m['vllm_tokens'] / m['vllm']:.0f} tokens/s)",
                    "reference": f"{m['hf']:.2f} s ({m['hf_tokens'] / m['hf']:.0f} tokens/s)",
                    "ratio": m["vllm"] / m["hf"],
                    "target": "report",
                    "note": (
                        f"{params / 1e6:.2f}M parameters; {n} prompts x k={k}, <= {new} new tokens, T 1.0, "
                        f"float32; median of {repeats}; tokens generated vLLM {m['vllm_tokens']:.0f}, "
                        f"transformers {m['hf_tokens']:.0f}"
                    ),
                }
            )
    rows.append(
        {
            "figure": "start-up: import vllm + in-process eager engine vs transformers from_pretrained (tiny)",
            "ours": f"{vllm_import + startup['vllm_build']:.1f} s",
            "reference": f"{startup['hf_load']:.2f} s",
            "ratio": (vllm_import + startup["vllm_build"]) / startup["hf_load"],
            "target": "report",
            "note": (
                f"import {vllm_import:.1f} s (in a fresh process, after transformers), engine build "
                f"{startup['vllm_build']:.1f} s (incl. a one-token warm-up), shutdown {startup['vllm_shutdown']:.1f} s"
            ),
        }
    )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    from run import standalone

    sys.exit(standalone(run))
