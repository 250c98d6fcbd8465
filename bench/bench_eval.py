"""Cost of `archer eval` on the tiny suite (CPU): our runner against plain transformers generate, and the backends.

Rows 1-2: the runner's path (prompt encoding, the transformers backend, grading with the training reward) against a
bare ``model.generate`` loop with no grading: the same held-out arithmetic problems, model, batch size, seed and
sampling protocol (the tiny suite's), timed alternately in this process after a warm-up of both, medians.

Rows 3-4: ``--backend vllm`` (vLLM's CPU engine in this process, archer's CPU defaults) against
``--backend transformers`` (batch size 16) on the same problems: generation alone with both warm, then a whole
run's decoding cost from a fresh start (vLLM: import + engine build + generate + shutdown; transformers: load +
generate). The model has heads of 32 (vLLM's CPU kernels need >= 32) and, outside ``--quick``, a short SFT warm
start so that completions end at EOS at different lengths, as a trained model's do. Torch runs one intra-op thread
on both sides (vLLM's CPU engine runs in this process and shares it).

    .venv/bin/python bench/bench_eval.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archer.evaluation.backends.base import BackendOptions, Sampling  # noqa: E402
from archer.evaluation.backends.transformers import TransformersBackend  # noqa: E402
from archer.evaluation.runner import encode_prompts, load_task_module, score_task  # noqa: E402
from archer.evaluation.suite import load_suite  # noqa: E402

logger = logging.getLogger("bench_eval")


def _tiny_model(path: Path, sft_steps: int = 0) -> None:
    from archer import tiny
    from archer.data.arithmetic import ArithmeticTask

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, tiny.TinyModelConfig(hidden_size=64, num_heads=2, num_kv_heads=1), seed=0)
    if sft_steps:
        tiny.run_sft(model, tokenizer, ArithmeticTask(), tiny.SFTConfig(steps=sft_steps, warmup_steps=0))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _reference(backend: TransformersBackend, ids: list[list[int]], sampling: Sampling, seed: int) -> list[str]:
    """Plain transformers: left-padded batches, ``generate`` with the same sampling, decode."""
    import torch

    tokenizer, model, batch_size = backend.tokenizer, backend.model, backend.options.batch_size
    torch.manual_seed(seed)
    texts = []
    for start in range(0, len(ids), batch_size):
        batch = tokenizer.pad([{"input_ids": x} for x in ids[start : start + batch_size]], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.k,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


def run(quick: bool = False) -> list[dict]:
    import torch

    torch.set_num_threads(1)  # one intra-op thread on both sides: on a busy shared machine, less noise
    suite = load_suite(ROOT / "eval" / "suites" / "tiny.yaml")
    (spec,) = suite.tasks
    n, repeats = (4, 1) if quick else (16, 3)
    n_backends = 4 if quick else 256  # rows 3-4: a tiny-suite-sized job (the suite has 500 problems)
    sampling = Sampling(2 if quick else spec.k, spec.temperature, spec.top_p, 8 if quick else spec.max_new_tokens)
    config = {c.name: c for c in load_task_module(suite.module).TASKS_TABLE}[spec.task]
    rows = load_task_module(suite.module).LOCAL_DATASETS[spec.task](None)[: max(n, n_backends)]
    all_docs = [config.prompt_function(row, config.name) for row in rows]
    docs = all_docs[:n]

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        _tiny_model(Path(tmp), sft_steps=0 if quick else 400)
        backend = TransformersBackend(tmp, BackendOptions(batch_size=16, seed=suite.seed))
        split = {"generate": [], "grade": []}

        def ours() -> list[str]:
            start = time.perf_counter()
            prompts, ids = encode_prompts(backend.tokenizer, [d.query for d in docs], spec.prompt_style)
            completions = backend.generate(ids, sampling, desc="bench")
            mid = time.perf_counter()
            score_task(
                spec.__class__(**{**spec.__dict__, "k": sampling.k, "pass_k": ()}), docs, prompts, completions, None
            )
            split["generate"].append(mid - start)
            split["grade"].append(time.perf_counter() - mid)
            return [text for group in completions for text in group]

        ids = encode_prompts(backend.tokenizer, [d.query for d in docs], spec.prompt_style)[1]
        ours_s, ref_s = [], []
        same = ours() == _reference(backend, ids, sampling, suite.seed)  # warm-up, and the same work is done
        for _ in range(repeats):
            start = time.perf_counter()
            ours()
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            _reference(backend, ids, sampling, suite.seed)
            ref_s.append(time.perf_counter() - start)
        backend_ids = encode_prompts(backend.tokenizer, [d.query for d in all_docs], spec.prompt_style)[1]
        backend_rows = _backends(tmp, backend_ids, sampling, suite.seed, repeats)

    ours_t, ref_t = statistics.median(ours_s), statistics.median(ref_s)
    gen_t = statistics.median(split["generate"][1:])
    protocol = f"{n} problems x k={sampling.k}, {sampling.max_new_tokens} new tokens, T {sampling.temperature}"
    note = f"median of {repeats}; {protocol}; identical completions: {same}"
    return [
        {
            "figure": "tiny suite generation: archer eval's transformers backend vs plain generate",
            "ours": f"{n / gen_t:.2f} problems/s",
            "reference": f"{n / ref_t:.2f} problems/s",
            "ratio": gen_t / ref_t,
            "target": "<= 1.1x",
            "note": note,
        },
        {
            "figure": "tiny suite end to end (encode, generate, grade with math_reward) vs plain generate",
            "ours": f"{n / ours_t:.2f} problems/s",
            "reference": f"{n / ref_t:.2f} problems/s",
            "ratio": ours_t / ref_t,
            "target": "<= 1.3x",
            "note": note,
        },
        *backend_rows,
    ]


def _backends(model: str, ids: list[list[int]], sampling: Sampling, seed: int, repeats: int) -> list:
    """``--backend vllm`` vs ``--backend transformers``: warm generation, then a run's decoding from a fresh start."""
    from archer.evaluation.backends.vllm import VLLMBackend

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_rollout import fresh_vllm_import_s  # the same measurement as the rollout bench's

    vllm_import = fresh_vllm_import_s()
    t0 = time.perf_counter()
    vllm_backend = VLLMBackend(model, BackendOptions(seed=seed))
    vllm_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf_backend = TransformersBackend(model, BackendOptions(batch_size=16, seed=seed))
    hf_start = time.perf_counter() - t0
    n = len(ids)
    times: dict[str, list[float]] = {"vllm": [], "transformers": []}
    samples: dict[str, list[list[str]]] = {}
    try:
        for backend in (vllm_backend, hf_backend):  # warm-up
            samples[backend.name] = backend.generate(ids, sampling, desc="warm-up")
        for _ in range(repeats):
            for backend in (vllm_backend, hf_backend):
                t0 = time.perf_counter()
                backend.generate(ids, sampling, desc="bench")
                times[backend.name].append(time.perf_counter() - t0)
    finally:
        t0 = time.perf_counter()
        vllm_backend.close()
        vllm_stop = time.perf_counter() - t0
    v, h = statistics.median(times["vllm"]), statistics.median(times["transformers"])
    mean_len = {
        name: statistics.mean(len(hf_backend.tokenizer(t)["input_ids"]) for g in out for t in g)
        for name, out in samples.items()
    }
    protocol = f"{n} problems x k={sampling.k}, <= {sampling.max_new_tokens} new tokens, T {sampling.temperature}"
    cold_v = vllm_import + vllm_start + v + vllm_stop
    cold_h = hf_start + h
    return [
        {
            "figure": "tiny suite generation, warm: --backend vllm (CPU engine) vs --backend transformers",
            "ours": f"{n / v:.2f} problems/s",
            "reference": f"{n / h:.2f} problems/s",
            "ratio": v / h,
            "target": "report",
            "note": (
                f"median of {repeats}; {protocol}; float32 both; mean completion tokens vLLM "
                f"{mean_len['vllm']:.1f}, transformers {mean_len['transformers']:.1f}"
            ),
        },
        {
            "figure": "tiny suite decoding from a fresh start: --backend vllm vs --backend transformers",
            "ours": f"{cold_v:.1f} s",
            "reference": f"{cold_h:.2f} s",
            "ratio": cold_v / cold_h,
            "target": "report",
            "note": (
                f"vLLM: import {vllm_import:.1f} s + engine {vllm_start:.1f} s + generate {v:.2f} s + shutdown "
                f"{vllm_stop:.1f} s; transformers: load {hf_start:.2f} s + generate {h:.2f} s; {protocol}"
            ),
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = run(quick=args.quick)
    sys.path.insert(0, str(ROOT / "bench"))
    from run import format_table

    print(format_table(rows))


if __name__ == "__main__":
    main()
