"""Network and Hub failures at the boundaries (model / dataset loading in train and eval, push): one line, exit 2,
within seconds, and nothing written. The Hub is tests/hubserver.py on 127.0.0.1; an absent network is a closed port
(refused) or a port that accepts and never answers (a black hole, with a 1 s timeout)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import huggingface_hub.constants
import pytest
import yaml
from hubserver import HubServer, seed_cache
from huggingface_hub.errors import GatedRepoError
from test_card import make_run

from archer import network
from archer.cli import main
from archer.errors import UserError

FAST_S = 10  # seconds a failure may take, imports aside: no retry, no back-off (huggingface_hub's: ~30 s per file)


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub allowed to send requests (the tests run offline), to an endpoint set with ``.point(url)``,
    with a 1 s timeout, an empty cache and no token."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # go_offline may set it: monkeypatch restores it

    class Online:
        @staticmethod
        def point(url: str, token: str | None = None) -> None:
            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
            if token is not None:
                monkeypatch.setenv("HF_TOKEN", token)

    return Online


@pytest.fixture
def hub():
    with HubServer(token="hf_good", forbidden=("not-mine",), gated=("org/gated",)) as server:
        yield server


@pytest.fixture
def refused() -> str:
    """The URL of a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def black_hole():
    """The URL of a port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _one_line_exit_2(argv: list[str], capsys, expected: str) -> str:
    started = time.perf_counter()
    assert main(argv) == 2
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err[:2000]
    assert expected in err, err
    assert elapsed < FAST_S, f"{elapsed:.1f} s"
    return err


def _model_repo(hub: HubServer, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_file(path_or_fileobj=b'{"model_type": "qwen2"}', path_in_repo="config.json", repo_id=repo_id)


# --------------------------------------------------------------------------------------------------------------
# archer eval --model <Hub id>


EVAL_CASES = {
    # name: (endpoint kind, token, repo, expected)
    "404": ("hub", None, "org/missing", "org/missing not found on http://127.0.0.1:"),
    "401 gated, no token": ("hub", None, "org/gated", "org/gated is gated: accept its conditions at"),
    "403 gated, token": ("hub", "hf_good", "org/gated", "org/gated is gated"),
    "401 wrong token": ("hub", "hf_wrong", "org/model", "rejected the token (HTTP 401)"),
    "refused": ("refused", None, "org/model", "(connection refused); check the network or HF_ENDPOINT"),
    "black hole": ("black_hole", None, "org/model", "within 1 s (timeout)"),
}


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_of_a_hub_model_fails_in_one_line(case, online, hub, refused, black_hole, capsys, tmp_path, monkeypatch):
    kind, token, repo, expected = EVAL_CASES[case]
    _model_repo(hub, "org/model")
    _model_repo(hub, "org/gated")
    online.point({"hub": hub.endpoint, "refused": refused, "black_hole": black_hole}[kind], token)
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(["eval", "--model", repo], capsys, f"error: --model {repo}: ")
    _one_line_exit_2(["eval", "--model", repo], capsys, expected)
    assert not (tmp_path / "outputs").exists()


def test_eval_offline_fails_at_once_without_a_request(hub, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)  # HF_HUB_OFFLINE=1 (conftest)
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(
        ["eval", "--model", "Qwen/Qwen2.5-0.5B-Instruct"],
        capsys,
        "Hub model Qwen/Qwen2.5-0.5B-Instruct: not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it",
    )
    assert hub.requests == []


def test_an_unreachable_hub_falls_back_to_a_cached_copy(online, refused, tmp_path, caplog):
    online.point(refused)
    with pytest.raises(UserError, match="connection refused"):
        network.check_hub_source("org/model", "model", "--model org/model")
    seed_cache(huggingface_hub.constants.HF_HUB_CACHE, "org/model", {"config.json": b"{}"})
    source = network.check_hub_source("org/model", "model", "--model org/model")
    assert source.where == "the local cache; the Hub is unreachable"
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # the loaders now read the cache without retrying
    assert "cannot reach http://127.0.0.1:" in caplog.text and "working offline" in caplog.text


def test_failures_inside_loaders_map_to_one_line():
    describe = network.describe_failure
    dns = httpx.ConnectError("[Errno -2] Name or service not known")
    assert "host name not resolved (DNS)" in describe(dns, "--model a/b")
    wrapped = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    wrapped.__cause__ = httpx.ConnectTimeout("timed out")
    assert "(timeout)" in describe(wrapped, "--model a/b")
    response = httpx.Response(403, request=httpx.Request("GET", "https://x/a/b/resolve/main/config.json"))
    gated = OSError("You are trying to access a gated repo.")
    gated.__cause__ = GatedRepoError("403 Client Error", response=response)
    assert "is gated" in describe(gated, "--model a/b", "a/b")
    assert describe(ValueError("not the network"), "--model a/b") is None
    assert describe(TimeoutError("a collective timed out"), "r.yaml") is None  # not every timeout is the network
    vllm = httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("POST", "http://n3:8000/x"))
    line = describe(vllm, "r.yaml")
    assert (
        line == "r.yaml: cannot reach http://n3:8000 (connection refused); check the network and that the server runs"
    )
    with pytest.raises(UserError, match="^--model a/b: cannot reach"), network.network_errors("--model a/b"):
        raise httpx.ConnectError("[Errno 111] Connection refused")


# --------------------------------------------------------------------------------------------------------------
# archer push: one request checks the endpoint; the local card changes only after a successful push


@pytest.fixture
def run_dir(tmp_path) -> Path:
    import archer.publish.card  # noqa: F401 (imported before the clock starts)
    import archer.publish.hub  # noqa: F401

    run = make_run(tmp_path / "run")
    (run / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (run / "README.md").write_text("the card as it was")
    return run


PUSH_CASES = {
    # name: (endpoint kind, token, repo, expected)
    "401": ("hub", "hf_wrong", "org/x", "rejected the token (HTTP 401)"),
    "403": ("hub", "hf_good", "not-mine/x", "refused to let this token write to not-mine/x (HTTP 403)"),
    "404": ("not a hub", "hf_good", "org/x", "(HTTP 404)"),
    "refused": ("refused", "hf_good", "org/x", "(connection refused); check the network or HF_ENDPOINT"),
    "black hole": ("black_hole", "hf_good", "org/x", "within 1 s (timeout)"),
}


@pytest.mark.parametrize("case", PUSH_CASES)
def test_push_fails_in_one_line_and_leaves_the_run_folder_alone(
    case, online, hub, refused, black_hole, run_dir, capsys
):
    kind, token, repo, expected = PUSH_CASES[case]
    url = {"hub": hub.endpoint, "not a hub": f"{hub.endpoint}/nothub", "refused": refused, "black_hole": black_hole}
    online.point(url[kind], token)
    before = {p: p.read_bytes() for p in run_dir.parent.rglob("*") if p.is_file()}
    _one_line_exit_2(["push", str(run_dir), "--repo", repo], capsys, expected)
    assert {p: p.read_bytes() for p in run_dir.parent.rglob("*") if p.is_file()} == before


def test_push_offline_is_one_line(hub, run_dir, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    _one_line_exit_2(["push", str(run_dir), "--repo", "org/x"], capsys, "HF_HUB_OFFLINE=1 is set")
    assert (run_dir / "README.md").read_text() == "the card as it was" and hub.requests == []


def test_a_successful_push_then_writes_the_card(online, hub, run_dir, capsys):
    online.point(hub.endpoint, hub.token)
    assert main(["push", str(run_dir), "--repo", "org/x"]) == 0
    assert (run_dir / "README.md").read_bytes() == hub.files("org/x")["README.md"]
    assert not list(run_dir.parent.glob(".archer-push-*"))


# --------------------------------------------------------------------------------------------------------------
# archer train (and its dry run) with a Hub model


def _recipe(tmp_path: Path, model: str) -> Path:
    recipe = {
        "model": {"name_or_path": model},
        "data": {"dataset": "arithmetic"},
        "trainer": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "num_generations": 4, "report_to": "none"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "launch"])
@pytest.mark.parametrize("case", ["404", "refused", "offline"])
def test_train_with_an_unavailable_hub_model_fails_the_same_in_dry_run_and_launch(
    case, dry_run, online, hub, refused, tmp_path, capsys, monkeypatch
):
    import archer.recipe
    import archer.training.config  # noqa: F401 (TRL, imported before the clock starts)

    if case == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    online.point(refused if case == "refused" else hub.endpoint)
    path = _recipe(tmp_path, "org/missing")
    expected = {
        "404": "org/missing not found on",
        "refused": "(connection refused)",
        "offline": "not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it",
    }[case]
    err = _one_line_exit_2(["train", str(path), *(["--dry-run"] * dry_run)], capsys, expected)
    assert f"{path}: model.name_or_path (no ./org folder here): " in err
    assert not (tmp_path / "out").exists()
