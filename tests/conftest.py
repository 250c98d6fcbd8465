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


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The test's tmp_path, made the working directory for the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
