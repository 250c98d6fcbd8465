"""Test-wide settings (never touch the network, keep caches in a temporary folder) and the fixtures several test
files share. Paths of the checkout: tests/paths.py."""

import os
import tempfile

import pytest
from paths import ROOT

_HOME = tempfile.mkdtemp(prefix="archer-test-hf-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="module")
def tasks():
    """The repository's lighteval task module (eval/archer_tasks.py): its task configs by name ("archer:aime24")."""
    from archer.evaluation.runner import load_task_module

    return {config.name: config for config in load_task_module(ROOT / "eval" / "archer_tasks.py").TASKS_TABLE}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A freshly initialised tiny model (seed 0, no training) and its tokenizer, saved once per test module."""
    from archer.tiny import TinyModelConfig, build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    build_model(tokenizer, TinyModelConfig(), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# A DeepSeek-R1-Distill-like BOS: the tokenizer adds it to any text encoded with special tokens, and the chat template
# (tests/data/chat_templates/deepseek_r1_distill.jinja, from that model's) writes it too.
BOS = "<｜begin▁of▁sentence｜>"
R1_TEMPLATE = ROOT / "tests" / "data" / "chat_templates" / "deepseek_r1_distill.jinja"
# the task the vLLM test model is warm-started on: a + b and a - b with a, b <= 9 (200 problems, 64 held out)
VLLM_TASK = {"max_operand": 9, "max_terms": 2, "heldout_size": 64}


def r1_like_tokenizer(task=None):
    """The tiny tokenizer with DeepSeek-R1-Distill's BOS handling: a BOS special token that the post-processor
    prepends (``tokenizer(text)``) and the chat template writes (``apply_chat_template``)."""
    from tokenizers import processors

    from archer import tiny

    tokenizer = tiny.build_tokenizer(task=task)
    tokenizer.add_special_tokens({"bos_token": BOS})
    bos = tokenizer.convert_tokens_to_ids(BOS)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos)]
    )
    tokenizer.chat_template = R1_TEMPLATE.read_text()
    return tokenizer


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    """A run folder that vLLM's CPU build serves: the embedded default's model shape (hidden 64, 2 heads of 32, 1 KV
    head; vLLM's CPU attention needs heads of at least 32), the R1-like BOS tokenizer, and 300 SFT steps on ``VLLM_TASK`` (about 30 s on
    one core), after which sampling at T 0.8 solves about a fifth of the held-out problems, most of them sometimes:
    sampled metrics are far from 0 and 1. ``config.yaml`` names the task, so `archer eval`'s arithmetic task
    rebuilds its 64 held-out problems. Built once per test session."""
    from archer import tiny
    from archer.data.arithmetic import ArithmeticTask

    folder = tmp_path_factory.mktemp("vllm-model")
    task = ArithmeticTask(**VLLM_TASK)
    tokenizer = r1_like_tokenizer(task)
    model = tiny.build_model(tokenizer, tiny.TinyModelConfig(), seed=0)
    tiny.run_sft(model, tokenizer, task, tiny.SFTConfig(steps=300, warmup_steps=0, log_every=1000))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = ", ".join(f"{key}: {value}" for key, value in VLLM_TASK.items())
    (folder / "config.yaml").write_text(f"data:\n  task: {{{settings}}}\n  heldout_examples: 64\n")
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The test's tmp_path, made the working directory for the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
