"""Our task module through lighteval's own CLI and pipeline, offline: every task reports its own avg@k and pass@k
at its own k and nothing else (no rows borrowed from a task with another k), and the README's commands run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import ROOT

DATA = ROOT / "tests" / "data" / "eval"
CANNED = ROOT / "tests" / "lighteval_models" / "canned.py"
LOCAL_ROWS = {"archer:aime24": "aime24.jsonl", "archer:math_500": "math500.jsonl"}


@pytest.fixture
def offline_lighteval(monkeypatch):
    """lighteval as `archer eval` runs it offline: only our task module is registered (none of its 600+ built-in
    tasks, one of which downloads at import), and each task's rows come from a local copy of its dataset."""
    import datasets
    from lighteval.tasks.lighteval_task import LightevalTask
    from lighteval.tasks.registry import Registry

    monkeypatch.setattr(Registry, "_load_from_files", staticmethod(lambda files, prefix: {}))
    monkeypatch.setattr(Registry, "_load_from_subdirs", staticmethod(lambda subdirs: {}))

    def local_rows(task: LightevalTask) -> datasets.DatasetDict:
        rows = [json.loads(line) for line in (DATA / LOCAL_ROWS[task.name]).read_text().splitlines()]
        return datasets.DatasetDict({task.evaluation_split[0]: datasets.Dataset.from_list(rows)})

    monkeypatch.setattr(LightevalTask, "download_dataset_worker", staticmethod(local_rows))
    # lighteval's transformers model turns autograd off for the whole process (at import and in __init__, which
    # its pipeline module triggers), and importing lighteval.__main__ runs logging.config.dictConfig, which disables
    # every logger that exists already (archer's among them): give both back to the tests that run after these
    import logging

    import torch

    grad_enabled = torch.is_grad_enabled()
    loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict]
    states = [(logger, logger.disabled, logger.level, logger.propagate, list(logger.handlers)) for logger in loggers]
    root = (logging.root.level, list(logging.root.handlers))
    yield
    torch.set_grad_enabled(grad_enabled)
    for logger, disabled, level, propagate, handlers in states:
        logger.disabled, logger.level, logger.propagate, logger.handlers = disabled, level, propagate, handlers
    logging.root.level, logging.root.handlers = root


def lighteval(*argv: str):
    """``lighteval ARGV...`` in this process (its typer app), returning what the command returns."""
    from lighteval.__main__ import app

    return app(list(argv), standalone_mode=False)


def saved_results(output_dir: Path) -> dict:
    (path,) = output_dir.glob("results/**/results_*.json")
    return json.loads(path.read_text())["results"]


def test_each_task_reports_only_its_own_k(offline_lighteval, tmp_path):
    # two tasks at the paper's k = 64 and k = 4, from the packaged module importable from any folder
    tasks = "archer:aime24|0,archer:math_500|0"
    results = lighteval(
        "custom", "canned", str(CANNED), tasks, "--custom-tasks", "archer.tasks", "--output-dir", str(tmp_path)
    )
    scores = results["results"]
    for name, k in (("archer:aime24:0", 64), ("archer:math_500:0", 4)):
        assert set(scores[name]) == {"avg@k", "pass@k", "avg@k_stderr", "pass@k_stderr"}, name
        assert scores[name]["avg@k"] == pytest.approx(1 / k) and scores[name]["pass@k"] == pytest.approx(1.0)
        assert str(results["config_tasks"][name].metrics[0].sample_level_fn) == f"ArcherSampling(k={k})"
    # the group row averages what each task measured at its own k (as the paper's "math avg"), no zeros
    assert scores["archer:_average:0"]["avg@k"] == pytest.approx((1 / 64 + 1 / 4) / 2)
    assert scores["archer:_average:0"]["pass@k"] == pytest.approx(1.0)
    saved = saved_results(tmp_path)  # the results file lighteval wrote says the same
    assert set(saved) == {"archer:aime24|0", "archer:math_500|0", "archer:_average|0", "all"}
    assert saved["archer:math_500|0"]["avg@k"] == pytest.approx(0.25)


@pytest.mark.slow
def test_readme_accelerate_command_on_the_tiny_model(offline_lighteval, tmp_path):
    """README's `lighteval accelerate` route (transformers) on a locally built tiny model, offline."""
    from archer import tiny

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, tiny.TinyModelConfig(), seed=0)
    # lighteval's transformers backend samples only when the model's generation config says so, as R1-distill's does
    model.generation_config.do_sample = True
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    model_args = (
        f"model_name={tmp_path / 'model'},cache_dir={tmp_path / 'cache'},"
        "generation_parameters={temperature:0.8,top_p:1.0,max_new_tokens:8}"
    )
    out = tmp_path / "out"
    argv = ["accelerate", model_args, "archer:math_500|0", "--custom-tasks", "archer.tasks", "--max-samples", "1"]
    lighteval(*argv, "--output-dir", str(out))
    saved = saved_results(out)
    assert set(saved["archer:math_500|0"]) == {"avg@k", "pass@k"}  # one problem: no stderr
    assert 0.0 <= saved["archer:math_500|0"]["avg@k"] <= 1.0
