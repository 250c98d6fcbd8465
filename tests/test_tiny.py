"""The embedded default's tokenizer, model, SFT warm-start and held-out accuracy."""

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2ForCausalLM

from archer.data.arithmetic import ArithmeticTask
from archer.errors import UserError
from archer.evaluation.backends.base import VLLM_CPU_HEAD_SIZES
from archer.tiny import (
    SFTConfig,
    TinyModelConfig,
    build_model,
    build_tokenizer,
    evaluate_heldout,
    heldout_accuracy,
    prepare_tiny_model,
    run_sft,
)
from archer.tiny import accuracy as accuracy_module
from archer.tiny.model import qwen2_config
from archer.tiny.sft import IGNORE_INDEX, completion_loss, lr_factor, make_batch

MARKERS = ["<think>", "</think>", "\\boxed{"]


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask()


@pytest.fixture(scope="module")
def tokenizer(task):
    return build_tokenizer(task=task)


def sample_texts(task, n=200):
    rng = random.Random(5)
    problems = [task.sample(rng) for _ in range(n)]
    return [p.prompt for p in problems] + [p.worked for p in problems] + [p.answer_only for p in problems]


# --- tokenizer -------------------------------------------------------------------------------------------------


def test_markers_are_single_non_special_tokens(tokenizer):
    for marker in MARKERS:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] not in tokenizer.all_special_ids
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id in tokenizer.all_special_ids


def test_skip_special_tokens_keeps_markers_and_drops_eos(tokenizer, task):
    # TRL decodes completions this way; the reward must still see <think>, </think> and \boxed{.
    problem = task.sample(random.Random(0))
    ids = tokenizer(problem.worked, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == problem.worked


def test_digits_are_single_tokens_and_text_round_trips(tokenizer, task):
    for digit in "0123456789":
        assert len(tokenizer(digit, add_special_tokens=False)["input_ids"]) == 1
    for text in sample_texts(task, 50) + ["Any ASCII text: {x} ~ 3.14 | a\tb\nc"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # "12" is two tokens: the model must write numbers digit by digit.
    assert len(tokenizer("12", add_special_tokens=False)["input_ids"]) == 2


def test_tokenizer_is_deterministic_and_small(tokenizer, task):
    again = build_tokenizer(task=task)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert len(tokenizer) <= 128 + len(MARKERS)
    with pytest.raises(UserError, match="vocab_size"):
        build_tokenizer(vocab_size=10)


@pytest.mark.parametrize("with_model_config", [True, False])
def test_save_and_reload_gives_identical_ids(tokenizer, task, tmp_path, with_model_config):
    # With a qwen2 config.json beside it, AutoTokenizer rebuilds the tokenizer as Qwen2Tokenizer (its own
    # normaliser and pre-tokeniser): the ids must not change either way.
    tokenizer.save_pretrained(tmp_path)
    if with_model_config:
        qwen2_config(tokenizer, TinyModelConfig()).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    if with_model_config:
        assert type(reloaded).__name__ == "Qwen2Tokenizer"
    texts = sample_texts(task) + ["Compute 1+2.<think>1+2=3.</think> \\boxed{3}<|endoftext|>"]
    assert (
        reloaded(texts, add_special_tokens=False)["input_ids"]
        == tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
    assert (reloaded.eos_token_id, reloaded.pad_token_id, len(reloaded)) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        len(tokenizer),
    )
    ids = tokenizer(texts[-1], add_special_tokens=False)["input_ids"]
    assert reloaded.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)


# --- model -----------------------------------------------------------------------------------------------------


def test_model_shape_dtype_and_seed(tokenizer):
    model = build_model(tokenizer, TinyModelConfig(), seed=3)
    assert isinstance(model, Qwen2ForCausalLM) and model.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert 100_000 < model.num_parameters() < 160_000
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 2, 1)
    assert cfg.hidden_size // cfg.num_attention_heads in VLLM_CPU_HEAD_SIZES  # the embedded default runs on vLLM
    assert cfg.vocab_size == len(tokenizer) and cfg.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    same, other = build_model(tokenizer, seed=3), build_model(tokenizer, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)


@pytest.mark.parametrize(
    "kwargs", [{"hidden_size": 31}, {"num_kv_heads": 3}, {"num_layers": 0}, {"max_position_embeddings": 8}]
)
def test_model_config_validation(kwargs):
    with pytest.raises(UserError):
        TinyModelConfig(**kwargs)


# --- SFT -------------------------------------------------------------------------------------------------------


def test_batch_labels_cover_completion_and_eos_only(tokenizer):
    prompts, completions = ["Compute 1+2.", "Compute 10-20+3."], ["<think></think> \\boxed{3}", "x"]
    batch = make_batch(tokenizer, prompts, completions)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(p) + len(c)
        assert batch["input_ids"][i, :n].tolist() == p + c
        assert batch["labels"][i, len(p) : n].tolist() == c
        assert (batch["labels"][i, : len(p)] == IGNORE_INDEX).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].sum() == n


def test_learning_rate_schedules():
    cos = SFTConfig(steps=100, warmup_steps=10, schedule="cosine")
    assert lr_factor(0, cos) < lr_factor(9, cos) < lr_factor(10, cos) == pytest.approx(1.0)
    assert lr_factor(55, cos) == pytest.approx(0.5) and lr_factor(99, cos) < 0.01
    lin = SFTConfig(steps=100, warmup_steps=0, schedule="linear")
    assert lr_factor(50, lin) == pytest.approx(0.5)
    assert lr_factor(99, SFTConfig(steps=100, warmup_steps=0, schedule="constant")) == 1.0


def test_sft_stops_early_once_validation_reaches_the_target(tokenizer, task, monkeypatch):
    from archer.tiny import sft as sft_module

    scores = iter([0.3, 0.5, 0.95, 0.99])
    seen = []
    monkeypatch.setattr(
        sft_module, "validation_accuracy", lambda m, t, problems: seen.append(problems) or next(scores)
    )
    cfg = SFTConfig(steps=200, batch_size=4, warmup_steps=2, target_accuracy=0.9, eval_every=10)
    stats = run_sft(build_model(tokenizer, seed=0), tokenizer, task, cfg)
    assert stats["steps"] == 30 and stats["examples"] == 120  # target met at the 3rd check
    assert [tuple(x) for x in stats["validation_accuracy"]] == [(10, 0.3), (20, 0.5), (30, 0.95)]
    assert len(seen[0]) == 200 and not {p.prompt for p in seen[0]} & task.heldout_prompts  # never the held-out set
    assert [p.prompt for p in seen[0]] == [p.prompt for p in task.validation(200)]
    never = SFTConfig(steps=25, batch_size=4, warmup_steps=2, target_accuracy=1.0, eval_every=10)
    scores = iter([0.3, 0.5])
    assert run_sft(build_model(tokenizer, seed=0), tokenizer, task, never)["steps"] == 25  # the cap


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"learning_rate": 0.0},
        {"schedule": "step"},
        {"answer_only_frac": 1.5},
        {"warmup_steps": 2500},
        {"target_accuracy": 0.0},
        {"target_accuracy": 0.9, "eval_every": 0},
    ],
)
def test_sft_config_validation(kwargs):
    with pytest.raises(UserError, match="sft."):
        SFTConfig(**kwargs)


def test_a_few_sft_steps_lower_the_completion_loss(tokenizer, task):
    model = build_model(tokenizer, seed=0)
    rng = random.Random(123)
    problems = [task.sample(rng) for _ in range(64)]
    fixed = make_batch(tokenizer, [p.prompt for p in problems], [p.worked for p in problems])
    with torch.no_grad():
        before = completion_loss(model, fixed).item()
    stats = run_sft(model, tokenizer, task, SFTConfig(steps=40, batch_size=16, warmup_steps=5, log_every=20))
    with torch.no_grad():
        after = completion_loss(model, fixed).item()
    assert after < before - 1.0, (before, after)
    assert stats["final_loss"] < stats["initial_loss"] and stats["examples"] == 640
    assert not model.training


# --- held-out accuracy -----------------------------------------------------------------------------------------


def test_gold_completions_score_one_and_wrong_ones_zero(task, tokenizer, monkeypatch):
    problems = task.heldout(40)
    gold = {p.prompt: p.worked for p in problems}
    monkeypatch.setattr(accuracy_module, "generate_completions", lambda m, t, prompts, *a: [gold[p] for p in prompts])
    result = evaluate_heldout(None, tokenizer, task, n=40)
    assert result.accuracy == 1.0 and result.worked_frac == 1.0

    short = {p.prompt: p.answer_only for p in problems}
    monkeypatch.setattr(accuracy_module, "generate_completions", lambda m, t, prompts, *a: [short[p] for p in prompts])
    result = evaluate_heldout(None, tokenizer, task, n=40)
    assert result.accuracy == 1.0 and result.worked_frac == 0.0

    off_by_one = {p.prompt: f"<think></think> \\boxed{{{p.answer + 1}}}" for p in problems}
    off_by_one[problems[0].prompt] = problems[0].worked
    monkeypatch.setattr(
        accuracy_module, "generate_completions", lambda m, t, prompts, *a: [off_by_one[p] for p in prompts]
    )
    assert heldout_accuracy(None, tokenizer, task, n=40) == pytest.approx(1 / 40)


def test_scoring_uses_the_math_reward_after_think():
    completions = {
        "<think>1+2=3.</think> \\boxed{3}": 1.0,
        "\\boxed{3}": 1.0,  # no think block: the whole text is the answer region
        "<think></think> \\boxed{4}": 0.0,
        "<think>\\boxed{3}</think>": 0.0,  # the answer must come after </think>
        "<think>1+2=3. \\boxed{3}": 1.0,  # think block never closed: graded whole, as the authors' rewards grade
        "<think></think> 3": 0.0,
    }
    assert accuracy_module.score(list(completions), ["3"] * len(completions)) == list(completions.values())


def test_batched_left_padded_generation_matches_one_by_one(tokenizer, task):
    model = build_model(tokenizer, seed=1)
    run_sft(model, tokenizer, task, SFTConfig(steps=30, batch_size=32, warmup_steps=3, log_every=30))
    batched = evaluate_heldout(model, tokenizer, task, n=24, batch_size=24, max_new_tokens=20)
    single = evaluate_heldout(model, tokenizer, task, n=24, batch_size=1, max_new_tokens=20)
    assert batched.completions == single.completions
    assert len({len(p) for p in (pp.prompt for pp in task.heldout(24))}) > 1  # prompts really differ in length


def test_prepare_tiny_model_saves_a_loadable_folder(tmp_path, task):
    model, tokenizer, stats = prepare_tiny_model(
        tmp_path, TinyModelConfig(), SFTConfig(steps=5, batch_size=8, warmup_steps=1, log_every=5), task
    )
    assert stats["steps"] == 5
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == tokenizer.eos_token_id
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2"
    enc = reloaded_tok(["Compute 3+4."], return_tensors="pt", add_special_tokens=False)
    assert enc["input_ids"].tolist() == tokenizer(["Compute 3+4."], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, reloaded(**enc).logits)


@pytest.mark.slow
def test_short_sft_learns_the_task(tokenizer):
    # The embedded default's task and SFT batch, cut short: validation accuracy rises sharply with steps (seed 0,
    # cosine over 2000 steps: 22 % at 500, 42 % at 700, 69 % at 1000; this cosine over 1200: 35 %, ~26 s).
    task = ArithmeticTask(min_terms=3, max_operand=12)
    model = build_model(tokenizer, seed=0)
    before = heldout_accuracy(model, tokenizer, task, n=200)
    run_sft(model, tokenizer, task, SFTConfig(steps=1200, batch_size=32, warmup_steps=20, log_every=400))
    after = evaluate_heldout(model, tokenizer, task, n=200)
    assert before < 0.05
    assert after.accuracy > before + 0.10, (before, after.accuracy)
    assert 0 < after.worked_frac < 1  # the mix: sometimes shows working, sometimes answers at once
