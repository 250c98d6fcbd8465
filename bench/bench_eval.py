"""Cost of `archer eval` on the tiny suite (CPU): problems/s of our runner against plain transformers generate.

Both decode the same held-out arithmetic problems with the same model, batch size, seed and sampling protocol
(the tiny suite's), timed alternately in this process after a warm-up of both, compared by medians. Ours is the
runner's path (prompt encoding, the transformers backend, grading with the training reward); the reference is a
bare ``model.generate`` loop with no grading. Rows (see bench/run.py for the contract):

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


def _tiny_model(path: Path) -> None:
    from archer import tiny

    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer, tiny.TinyModelConfig(), seed=0).save_pretrained(path)
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
    suite = load_suite(ROOT / "eval" / "suites" / "tiny.yaml")
    (spec,) = suite.tasks
    n, repeats = (4, 1) if quick else (16, 3)
    sampling = Sampling(2 if quick else spec.k, spec.temperature, spec.top_p, 8 if quick else spec.max_new_tokens)
    config = {c.name: c for c in load_task_module(suite.module).TASKS_TABLE}[spec.task]
    rows = load_task_module(suite.module).LOCAL_DATASETS[spec.task](None)[:n]
    docs = [config.prompt_function(row, config.name) for row in rows]

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        _tiny_model(Path(tmp))
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
