"""Publishing to a Hub-compatible server on 127.0.0.1 (tests/hubserver.py), read back through huggingface_hub.

The server checks tokens, repo / revision existence, LFS object hashes and the commit protocol; it does not check
namespaces, Xet storage or multipart uploads (see its docstring). huggingface_hub is pointed at it with
``HfApi(endpoint=...)`` in-process and with ``HF_ENDPOINT`` in a subprocess running the real CLI.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from hubserver import HubServer
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from paths import ROOT
from test_card import make_run
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

from archer.cli import main
from archer.errors import UserError
from archer.publish.hub import CheckpointPusher, push_run, select_checkpoint_files, select_run_files

SRC = ROOT / "src"
# Files a checkpoint or run folder may hold that must never reach the Hub.
NEVER_PUSHED = [
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "rng_state_1.pth",
    "training_args.bin",
    "global_step10/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ".env",
    "wandb.env",
    "hf_token",
    "secrets/.env.local",
]
CHECKPOINT_PUSHED = ["config.json", "generation_config.json", "model.safetensors", "trainer_state.json"]


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir) -> Path:
    """A finished run: model, tokenizer, config, metrics, plots, eval results, a checkpoint and things to keep back."""
    run = tmp_path / "tiny-archer"
    shutil.copytree(tiny_model_dir, run)
    make_run(run)
    checkpoint = run / "checkpoint-10"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / name, checkpoint / name)
    for name in NEVER_PUSHED:
        for folder in (run, checkpoint):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("HF_TOKEN=hf_do_not_leak\n")
    (run / "sft").mkdir()  # the SFT warm start: a model of its own, not the one published
    shutil.copy(run / "model.safetensors", run / "sft" / "model.safetensors")
    (run / "notes.md").write_text("private notes")
    return run


@pytest.fixture
def hub(monkeypatch):
    """A fresh server, with huggingface_hub allowed to reach it (tests run offline) and Xet off (LFS protocol)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(token="hf_test_write") as server:
        yield server


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_run_selection_keeps_model_card_configs_plots_and_eval_only(run_dir):
    (run_dir / "README.md").write_text("card")
    assert select_run_files(run_dir) == [
        "README.md",
        "config.json",
        "config.yaml",
        "eval/2026-11-27T10-00-00/results.json",
        "generation_config.json",
        "metrics.jsonl",
        "model.safetensors",
        "plots/entropy.png",
        "plots/reward.png",
        "tokenizer.json",
        "tokenizer_config.json",
        "train_results.json",
    ]


def test_checkpoint_selection_drops_optimizer_rng_and_secrets(run_dir):
    checkpoint = run_dir / "checkpoint-10"
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "generation_config.json").write_text("{}")
    assert select_checkpoint_files(checkpoint) == CHECKPOINT_PUSHED


def test_push_run_round_trips_through_huggingface_hub(hub, run_dir, tmp_path):
    result = push_run(run_dir, "org/tiny-archer", token=hub.token, endpoint=hub.endpoint)
    assert result.changed and result.revision == "main"
    assert result.commit_url == f"{hub.endpoint}/org/tiny-archer/commit/{result.commit_oid}"

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    local = Path(api.snapshot_download("org/tiny-archer", local_dir=tmp_path / "download"))
    remote_files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    remote_files = [f for f in remote_files if not f.startswith((".cache/", ".gitattributes"))]
    assert remote_files == select_run_files(run_dir)
    for name in remote_files:
        assert (local / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert "hf_do_not_leak" not in "".join(c.decode(errors="ignore") for c in hub.files("org/tiny-archer").values())

    card = ModelCard.load(local / "README.md")
    assert card.data.model_name == "tiny-archer"
    assert {(r.dataset_name, r.metric_type) for r in card.data.eval_results} >= {("arithmetic", "avg@8")}

    # the published model and tokenizer load and compute exactly what the local ones do
    model = AutoModelForCausalLM.from_pretrained(local)
    reference = AutoModelForCausalLM.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(local)
    ids = tokenizer("Compute 26+10-17.", return_tensors="pt").input_ids
    assert torch.equal(ids, AutoTokenizer.from_pretrained(run_dir)("Compute 26+10-17.", return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_repush_of_same_run_is_a_no_op_and_a_change_is_one_commit(hub, run_dir):
    first = push_run(run_dir, "org/tiny-archer", token=hub.token, endpoint=hub.endpoint)
    commits = hub.commit_count("org/tiny-archer")
    assert commits == 2  # the repo's initial commit + the push

    uploads = sum(method == "PUT" for method, _ in hub.requests)
    assert uploads >= 1  # model.safetensors and the plots went up as LFS objects

    again = push_run(run_dir, "org/tiny-archer", token=hub.token, endpoint=hub.endpoint)
    assert not again.changed and again.commit_oid == first.commit_oid
    assert hub.commit_count("org/tiny-archer") == commits
    assert sum(method == "PUT" for method, _ in hub.requests) == uploads  # nothing uploaded again

    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "reward": 0.9}) + "\n")
    changed = push_run(run_dir, "org/tiny-archer", token=hub.token, endpoint=hub.endpoint)
    assert changed.changed and hub.commit_count("org/tiny-archer") == commits + 1
    assert hub.files("org/tiny-archer")["metrics.jsonl"] == (run_dir / "metrics.jsonl").read_bytes()


def test_push_to_revision_branch_of_private_repo(hub, run_dir):
    result = push_run(run_dir, "org/private", revision="v1", private=True, token=hub.token, endpoint=hub.endpoint)
    assert result.revision == "v1"
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    assert {b.name for b in api.list_repo_refs("org/private").branches} == {"main", "v1"}
    assert api.model_info("org/private").private
    assert "config.json" in hub.files("org/private", "v1") and "config.json" not in hub.files("org/private")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).model_info("org/private")


def test_missing_token_is_one_line_and_exit_2(hub, run_dir, no_saved_token, capsys):
    with pytest.raises(UserError, match="no Hugging Face token"):
        push_run(run_dir, "org/x", endpoint=hub.endpoint)
    assert main(["push", str(run_dir), "--repo", "org/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token") and err.count("\n") == 1
    assert not (run_dir / "README.md").exists()  # nothing written before the token check
    assert hub.requests == []


def test_rejected_token_and_bad_repo_id_are_user_errors(hub, run_dir):
    with pytest.raises(UserError, match="HTTP 401"):
        push_run(run_dir, "org/x", token="hf_wrong", endpoint=hub.endpoint)
    with pytest.raises(UserError, match="valid repo id"):
        push_run(run_dir, "org/bad name", token=hub.token, endpoint=hub.endpoint)
    with pytest.raises(UserError, match="no model to push"):
        push_run(run_dir / "plots", "org/x", token=hub.token, endpoint=hub.endpoint)


@pytest.mark.slow
def test_cli_push_honours_hf_endpoint(hub, run_dir):
    env = os.environ | {
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": hub.token,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "PYTHONPATH": str(SRC),
    }
    push = [sys.executable, "-m", "archer.cli", "push", str(run_dir), "--repo", "org/cli", "--revision", "exp"]
    out = subprocess.run(push, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    commit_url = out.stdout.strip().splitlines()[-1]
    assert commit_url.startswith(f"{hub.endpoint}/org/cli/commit/")
    assert "model.safetensors" in hub.files("org/cli", "exp")

    # ModelCard.load has no endpoint argument: HF_ENDPOINT alone must route it to our server
    read = "from huggingface_hub import ModelCard; print(ModelCard.load('org/cli').data.to_dict()['tags'])"
    loaded = subprocess.run(
        [sys.executable, "-c", read], env=env | {"HF_TOKEN": ""}, capture_output=True, text=True, timeout=120
    )
    assert loaded.returncode != 0  # the card is on branch "exp"; main holds only .gitattributes
    out = subprocess.run(push[:-2], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert "archer" in loaded.stdout


def _save_checkpoint(output_dir: Path, step: int, model_dir: Path) -> Path:
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(model_dir / name, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in NEVER_PUSHED:
        (checkpoint / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / name).write_text("secret")
    return checkpoint


def test_checkpoint_pusher_pushes_each_checkpoint_to_its_branch_in_the_background(hub, tmp_path, tiny_model_dir):
    output_dir = tmp_path / "out"
    args = TrainingArguments(output_dir=str(output_dir), report_to=[])
    pusher = CheckpointPusher("org/ckpt", branch_prefix="run1-", token=hub.token, endpoint=hub.endpoint)
    expected = {}
    hub.gate.clear()  # the server answers nothing until the gate opens: on_save must not wait for it
    for step in (5, 10):
        checkpoint = _save_checkpoint(output_dir, step, tiny_model_dir)
        expected[step] = {name: (checkpoint / name).read_bytes() for name in CHECKPOINT_PUSHED}
        started = time.perf_counter()
        pusher.on_save(args, TrainerState(global_step=step), TrainerControl())
        assert time.perf_counter() - started < 5  # local hard links only; the upload is held at the gate
        shutil.rmtree(checkpoint)  # checkpoint rotation may delete the folder before its push runs
    assert not pusher.results

    hub.gate.set()
    pusher.on_train_end(args, TrainerState(global_step=10), TrainerControl())
    assert pusher.errors == {}
    assert sorted(pusher.results) == [5, 10]
    for step in (5, 10):
        assert pusher.results[step].revision == f"run1-step-{step}"
        files = hub.files("org/ckpt", f"run1-step-{step}")
        assert {k: v for k, v in files.items() if k != ".gitattributes"} == expected[step]
    assert list(hub.files("org/ckpt")) == [".gitattributes"]  # main untouched
    assert [p.name for p in output_dir.iterdir()] == []  # staging folders cleaned up


def test_checkpoint_pusher_logs_failures_without_raising(hub, tmp_path, tiny_model_dir, caplog):
    output_dir = tmp_path / "out"
    args = TrainingArguments(output_dir=str(output_dir), report_to=[])
    pusher = CheckpointPusher("org/ckpt", token="hf_wrong", endpoint=hub.endpoint)
    _save_checkpoint(output_dir, 3, tiny_model_dir)
    with caplog.at_level(logging.ERROR, logger="archer.publish.hub"):
        pusher.on_save(args, TrainerState(global_step=3), TrainerControl())
        pusher.on_train_end(args, TrainerState(global_step=3), TrainerControl())
    assert list(pusher.errors) == [3] and isinstance(pusher.errors[3], UserError)
    assert "push of checkpoint-3 to org/ckpt failed" in caplog.text
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-3"]


def test_checkpoint_pusher_only_pushes_from_the_main_process(hub, tmp_path, tiny_model_dir):
    output_dir = tmp_path / "out"
    args = TrainingArguments(output_dir=str(output_dir), report_to=[])
    pusher = CheckpointPusher("org/ckpt", token=hub.token, endpoint=hub.endpoint)
    _save_checkpoint(output_dir, 1, tiny_model_dir)
    pusher.on_save(args, TrainerState(global_step=1, is_world_process_zero=False), TrainerControl())
    pusher.on_train_end(args, TrainerState(global_step=1), TrainerControl())
    assert pusher.results == {} and hub.requests == []


def test_checkpoint_pusher_needs_a_token_up_front(no_saved_token):
    with pytest.raises(UserError, match="no Hugging Face token"):
        CheckpointPusher("org/ckpt")
