"""The dry run is the launch's validation: every bad input below fails `archer train --dry-run` and `archer train`
with the same line, exit 2, before anything is written (slurm/train.slurm relies on the dry run as its check)."""

from __future__ import annotations

import importlib.util
import json
import logging
import time

import pytest
import yaml

from archer.cli import main


def _recipe(folder, model, **blocks) -> dict:
    recipe = {
        "model": {"name_or_path": str(model)},
        "data": {"dataset": "arithmetic"},
        "trainer": {"output_dir": str(folder / "out"), "max_steps": 2, "num_generations": 4, "report_to": "none"},
    }
    for block, values in blocks.items():
        recipe[block].update(values)
    return recipe


BAD_INPUTS = {
    # name: (recipe blocks, whether ./data exists, expected)
    "missing local dataset": (
        {"data": {"dataset": "data/deepscaler-filtered"}},
        True,
        "data.dataset: data/deepscaler-filtered does not exist",
    ),
    "the README's data path with no ./data here (offline)": (
        {"data": {"dataset": "data/deepscaler-filtered"}},
        False,
        "data.dataset (no ./data folder here): Hub dataset data/deepscaler-filtered: not in the local cache",
    ),
    "neither a path nor a Hub id": (
        {"data": {"dataset": "my/deep/set"}},
        False,
        "data.dataset: 'my/deep/set' is neither a path here nor a Hub dataset id org/name",
    ),
    "report_to typo": (
        {"trainer": {"report_to": "wandbb"}},
        False,
        "trainer.report_to: unknown tracker 'wandbb'; valid: none, all, azure_ml, ",
    ),
    "report_to not installed": (
        {"trainer": {"report_to": ["mlflow"]}},
        False,
        "trainer.report_to: mlflow is not installed (pip install mlflow; or report_to: tensorboard, or none)",
    ),
    "optimizer package missing": (
        {"trainer": {"optim": "adamw_bnb_8bit"}},
        False,
        "trainer.optim=adamw_bnb_8bit: You need to install `bitsandbytes`",
    ),
    "checkpoint push without a token": (
        {"trainer": {"push_checkpoints": True, "hub_model_id": "org/ckpt"}},
        False,
        "trainer.push_checkpoints: no Hugging Face token found",
    ),
    "deprecated trainer key": (
        {"trainer": {"gradient_checkpointing": False}},
        False,
        "trainer.gradient_checkpointing: deprecated in transformers 5",
    ),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "launch"])
@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_fails_the_dry_run_and_the_launch_alike(name, dry_run, workdir, tiny_model_dir, capsys, monkeypatch):
    blocks, data_folder, expected = BAD_INPUTS[name]
    if name == "report_to not installed" and importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(workdir / "no-token"))
    if data_folder:
        (workdir / "data").mkdir()
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(workdir, tiny_model_dir, **blocks)))
    before = sorted(workdir.rglob("*"))
    started = time.perf_counter()
    assert main(["train", str(path), *(["--dry-run"] * dry_run)]) == 2
    assert time.perf_counter() - started < 30
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert sorted(workdir.rglob("*")) == before  # no run folder, nothing else


def test_dry_run_says_where_model_and_data_come_from(workdir, tiny_model_dir, capsys):
    (workdir / "data.jsonl").write_text('{"problem": "1+1", "solution": "2"}\n')
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(workdir, tiny_model_dir, data={"dataset": "data.jsonl"})))
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"model: local folder {tiny_model_dir}\ndata: local file data.jsonl\n" in out


def test_dry_run_notes_what_this_machine_lacks_where_the_launch_stops(workdir, tiny_model_dir, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(workdir, tiny_model_dir, trainer={"use_vllm": True})))
    assert main(["train", str(path), "--dry-run"]) == 0
    assert "note: this machine cannot launch it: " in capsys.readouterr().out
    assert main(["train", str(path)]) == 2
    assert "trainer.use_vllm: vLLM is not installed here" in capsys.readouterr().err
    assert not (workdir / "out").exists()


def test_unfiltered_data_is_a_warning_line_in_the_dry_run_and_a_logged_warning_at_launch(
    workdir, tiny_model_dir, capsys, caplog, monkeypatch
):
    """data.expect_filtered with data no `archer filter` made for the model: the dry run prints one warning line and
    passes; the launch logs the same warning and goes on (never an error)."""
    from archer.training import pipeline

    (workdir / "data.jsonl").write_text('{"prompt": "1+1", "solution": "2"}\n')
    path = workdir / "recipe.yaml"
    blocks = {
        "data": {"dataset": "data.jsonl", "expect_filtered": True, "max_prompt_tokens": 512},
        "trainer": {"max_completion_length": 64},
    }
    path.write_text(yaml.safe_dump(_recipe(workdir, tiny_model_dir, **blocks)))
    expected = (
        f"training data data.jsonl is not pass-rate filtered for {tiny_model_dir} (the paper filters: archer filter "
        f"data.jsonl data/data-filtered --model {tiny_model_dir} --reward math --max-prompt-tokens 512 "
        "--max-new-tokens 64, then data.dataset=data/data-filtered)"
    )
    assert main(["train", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("warning:")] == [f"warning: {expected}"]

    monkeypatch.setattr(pipeline, "run_training", lambda recipe, resume: {})  # the launch up to the training
    with caplog.at_level(logging.INFO, logger="archer.train"):
        assert main(["train", str(path)]) == 0
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == [
        ("WARNING", expected)
    ]

    filtered = workdir / "filtered"  # an archer filter output for this model: no warning
    filtered.mkdir()
    (filtered / "problems.jsonl").write_text('{"prompt": "1+1", "solution": "2"}\n')
    (filtered / "filter.json").write_text(json.dumps({"model": str(tiny_model_dir), "k": 8}))
    assert main(["train", str(path), "data.dataset=filtered", "--dry-run"]) == 0
    assert "warning:" not in capsys.readouterr().out
