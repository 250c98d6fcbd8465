"""`archer eval --backend openai` end to end against a transformers-backed OpenAI-compatible server on 127.0.0.1.

The server (tests/openai_server.py) serves the same locally built tiny model; with greedy decoding the results
folder must equal the transformers backend's. Then the sampling seeds, the failure paths (server down, transient
and persistent 500s, 4xx) and the server held to the real protocols (the openai package's types, vLLM's request
fields from the pinned wheel).
"""

import json
import socket
from pathlib import Path

import pytest
from openai_server import CompletionServer
from test_eval_e2e import run_dirs, save_tiny, write_suite
from vllm_wheel import class_fields, find_wheel

from archer.cli import main

pytestmark = pytest.mark.slow

GREEDY = "defaults: {temperature: 0, max_new_tokens: 12, prompt_style: raw}\ntasks: [arithmetic]\n"
SAMPLED = "seed: 99\ndefaults: {k: 3, temperature: 0.8, max_new_tokens: 10, prompt_style: raw}\ntasks: [arithmetic]\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("served") / "run", seed=0)


def evaluate(model: Path, suite: Path, *args: str) -> tuple[dict, dict[str, list[dict]]]:
    """Run `archer eval`; returns results.json and the details rows of its newest run folder."""
    assert main(["eval", "--model", str(model), "--suite", str(suite), *args]) == 0
    out = run_dirs(model)[-1]
    results = json.loads((out / "results.json").read_text())
    details = {
        name: [json.loads(line) for line in (out / task["details"]).read_text().splitlines()]
        for name, task in results["tasks"].items()
    }
    return results, details


def comparable(results: dict) -> dict:
    return {name: {k: v for k, v in task.items() if k != "generation_s"} for name, task in results["tasks"].items()}


def test_greedy_results_equal_the_transformers_backend(model, workdir):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    local, local_details = evaluate(model, suite, "--backend", "transformers")
    with CompletionServer(model) as server:
        served, served_details = evaluate(model, suite, "--base-url", server.base_url)  # --backend auto
    assert served["protocol"] == {
        "backend": "openai",
        "seed": 1234,
        "served_model": "tiny",
        "server": "archer-tests",
        "prompt_format": "tokens",
        "max_concurrency": 32,
    }
    assert comparable(served) == comparable(local) and served_details == local_details
    ids = [row["prompt"] for row in served_details["arithmetic"]]
    assert len(server.requests) == len(ids) == 6  # one request per problem
    request = server.requests[0]
    assert isinstance(request["prompt"], list) and all(isinstance(t, int) for t in request["prompt"])
    assert (request["n"], request["temperature"], request["max_tokens"], request["model"]) == (1, 0, 12, "tiny")


def test_sampled_runs_are_seeded_per_problem(model, workdir):
    """Seeds go with problems, not with arrival order: any concurrency and either prompt format give one result."""
    suite = write_suite(workdir / "sampled.yaml", SAMPLED)
    with CompletionServer(model) as server:
        _, one = evaluate(model, suite, "--base-url", server.base_url, "--max-concurrency", "1")
        _, four = evaluate(model, suite, "--base-url", server.base_url, "--max-concurrency", "4")
        _, text = evaluate(model, suite, "--base-url", server.base_url, "--prompt-format", "text")
    assert one == four == text
    rows = one["arithmetic"]
    assert len({c for row in rows for c in row["completions"]}) > len(rows)  # really sampled
    seeds = sorted(r["seed"] for r in server.requests[:6])
    assert seeds == [99 + 3 * i for i in range(6)] and all(r["n"] == 3 for r in server.requests)
    assert isinstance(server.requests[-1]["prompt"], str)


def test_transient_500s_are_retried(model, workdir):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    with CompletionServer(model, fail_first=2) as server:
        _, details = evaluate(model, suite, "--base-url", server.base_url, "--max-concurrency", "1")
    assert len(server.requests) == 6 + 2 and len(details["arithmetic"]) == 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("server_args", "cli_args", "message"),
    [
        (None, [], "cannot connect after 1 retries"),
        ({"fail_always": True}, [], "the server answered 500 after 1 retries: EngineCore encountered an issue."),
        ({}, ["--model-name", "other"], "--model-name other: not served at"),
        ({"max_model_len": 20}, [], "the server answered 400: This model's maximum context length is 20 tokens."),
        ({}, ["--api-key-env", "ARCHER_NO_SUCH_KEY"], "--api-key-env ARCHER_NO_SUCH_KEY: that environment variable"),
    ],
    ids=["down", "persistent-500", "unknown-model", "context-too-long", "no-key"],
)
def test_server_failures_are_one_line_exit_2_nothing_written(model, workdir, capsys, server_args, cli_args, message):
    suite = write_suite(workdir / "greedy.yaml", GREEDY)
    before = sorted(model.rglob("*"))

    def run(url: str) -> int:
        argv = ["eval", "--model", str(model), "--suite", str(suite), "--base-url", url, "--max-retries", "1"]
        return main(argv + cli_args)

    if server_args is None:
        code = run(f"http://127.0.0.1:{free_port()}/v1")
    else:
        with CompletionServer(model, **server_args) as server:
            code = run(server.base_url)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --") and message in err[-1], err[-1]
    assert sorted(model.rglob("*")) == before


def test_the_test_server_speaks_the_real_protocols(model):
    """Its answers parse with the openai package's own types, strictly; its errors have vLLM's shape."""
    import httpx
    from openai.types import Completion, Model

    with CompletionServer(model) as server:
        models = httpx.get(f"{server.base_url}/models").json()
        body = {"model": "tiny", "prompt": [[5, 6], [7]], "n": 2, "temperature": 0.5, "max_tokens": 4, "seed": 1}
        answer = httpx.post(f"{server.base_url}/completions", json=body).json()
        missing = httpx.post(f"{server.base_url}/completions", json={**body, "model": "x"})
    [Model.model_validate(card, strict=True) for card in models["data"]]
    completion = Completion.model_validate(answer, strict=True)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]  # prompt-major, as vLLM numbers them
    assert completion.usage.prompt_tokens == 3
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.skipif(find_wheel() is None, reason="no vLLM 0.30.0 wheel (see tests/vllm_wheel.py)")
def test_what_we_send_and_what_the_server_answers_match_vllm(model, workdir):
    """The request fields archer sends exist in vLLM 0.30's CompletionRequest; the fake answers with vLLM's fields."""
    suite = write_suite(workdir / "sampled.yaml", SAMPLED)
    with CompletionServer(model) as server:
        evaluate(model, suite, "--base-url", server.base_url, "--limit", "1")
        card = server.models()["data"][0]
        answer = server.complete(dict(server.requests[0]))[1]
        error = server.error("x", "BadRequestError", 400)
    protocol = "vllm/entrypoints/openai/completion/protocol.py"
    engine = "vllm/entrypoints/serve/engine/protocol.py"
    assert set(server.requests[0]) <= class_fields(protocol, "CompletionRequest")
    assert set(answer) <= class_fields(protocol, "CompletionResponse")
    assert set(answer["choices"][0]) <= class_fields(protocol, "CompletionResponseChoice")
    assert set(answer["usage"]) <= class_fields(engine, "UsageInfo")
    assert set(card) <= class_fields(engine, "ModelCard")
    assert set(error["error"]) == class_fields(engine, "ErrorInfo")
