"""The Hub and the network at the boundaries (model, tokenizer and dataset loading in train and eval, push): every
failure is one :class:`UserError` line, and no retry storm.

huggingface_hub retries a request that fails to connect five times with back-off (about 30 s per file), and its
client has no timeout, so an absent network used to cost minutes before a traceback. Here, before anything loads,
:func:`check_hub_source` sends one request (no retry, ``HF_HUB_ETAG_TIMEOUT`` seconds, 10 by default) for a Hub id:

- offline mode (``HF_HUB_OFFLINE=1``): no request; the repo must be in the local cache, else one line at once;
- the Hub answers: an HTTP error (401, 403, gated, 404 repo or revision) is one line naming what to fix;
- the Hub cannot be reached (refused, DNS, timeout): a cached copy is used, the process switching to offline mode
  (so the loaders do not retry), else one line.

:func:`network_errors` maps what still fails inside a loader (huggingface_hub, httpx, requests, datasets and
transformers' wrappers of them) to one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from archer.errors import UserError, one_line

logger = logging.getLogger(__name__)

PROBE_FILE = {"model": "config.json", "dataset": "README.md"}  # the file one request asks for, per repo type


def endpoint(override: str | None = None) -> str:
    """The Hub's URL: ``override`` (an API's ``endpoint=``), else ``HF_ENDPOINT`` (huggingface_hub's constant)."""
    from huggingface_hub import constants

    return (override or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def timeout_s() -> float:
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT)


def go_offline(reason: str) -> None:
    """Offline mode for the rest of this process (and its children): loaders read the cache and never retry."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "datasets" in sys.modules:  # datasets copies the flag at import
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    logger.warning("%s: working offline from the local cache", reason)


def _repo_url(repo_id: str, repo_type: str) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{endpoint()}/{prefix}{repo_id}"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _server_of(err: BaseException) -> str | None:
    """``scheme://host[:port]`` of the request that failed, when the error carries it (httpx, requests)."""
    try:
        request = getattr(err, "request", None)
    except RuntimeError:  # httpx: an error raised outside a request has none
        return None
    url = getattr(request, "url", None)
    if url is None:
        return None
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _unreachable_line(what: str, err: BaseException, hub_url: str, problem: str) -> str:
    """``cannot reach`` / ``no answer from`` the server the request went to: the Hub (check HF_ENDPOINT) or
    another one (a vLLM server, a proxy), named by its own URL."""
    server = _server_of(err) or hub_url
    hint = "check the network or HF_ENDPOINT" if server == hub_url else "check the network and that the server runs"
    return f"{what}: {problem.format(server=server)}; {hint}"


def _connect_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "temporary failure in name" in text:
        return "host name not resolved (DNS)"
    if "unreachable" in text:
        return "network unreachable"
    return one_line(err, 80) or type(err).__name__


def describe_failure(
    err: BaseException, what: str, repo_id: str | None = None, repo_type: str = "model", url: str | None = None
) -> str | None:
    """One line for a Hub or network failure anywhere in ``err``'s chain (``what``: the setting that named the
    source, e.g. ``--model Qwen/...``; ``url``: the Hub's, when not HF_ENDPOINT), or None when it is neither."""
    import httpx
    from huggingface_hub import errors as hub

    chain = list(_chain(err))
    where = endpoint(url)
    repos = [getattr(e, "repo_id", None) for e in chain]
    repo = repo_id or next((r for r in repos if r), None)
    page = f"{where}/{'datasets/' if repo_type == 'dataset' else ''}{repo}" if repo else where
    for e in chain:
        if isinstance(e, hub.OfflineModeIsEnabled) or (isinstance(e, hub.LocalEntryNotFoundError) and offline()):
            return (
                f"{what}: not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE "
                "or give a local path"
            )
        if isinstance(e, hub.GatedRepoError):
            return (
                f"{what}: {repo or 'the repo'} is gated: accept its conditions at {page} and use a token with access "
                "(HF_TOKEN or `hf auth login`)"
            )
        if isinstance(e, hub.RevisionNotFoundError):
            return f"{what}: no such revision in {repo or 'the repo'} on {where} (HTTP 404); check the revision"
        if isinstance(e, hub.RepositoryNotFoundError):
            return (
                f"{what}: {repo or 'the repo'} not found on {where} (HTTP {_status(e) or 404}); check the name, or "
                "for a private repo set HF_TOKEN / `hf auth login`"
            )
        if isinstance(e, hub.DisabledRepoError):
            return f"{what}: {repo or 'the repo'} is disabled on {where}"
        if isinstance(e, hub.LocalEntryNotFoundError):
            return f"{what}: not in the local cache, and {where} cannot be reached; check the network or HF_ENDPOINT"
        if isinstance(e, httpx.TimeoutException):
            return _unreachable_line(
                what, e, where, "no answer from {server} " + f"within {timeout_s():g} s (timeout)"
            )
        if isinstance(e, httpx.ConnectError | httpx.NetworkError | httpx.RemoteProtocolError):
            return _unreachable_line(what, e, where, "cannot reach {server} " + f"({_connect_reason(e)})")
        if isinstance(e, hub.HfHubHTTPError) or (isinstance(e, httpx.HTTPStatusError) and _status(e)):
            return _http_line(what, _status(e), where, repo)
    for e in chain:  # libraries' own wrappers, when nothing more specific is in the chain
        if type(e).__name__ == "DatasetNotFoundError":
            return f"{what}: {repo or 'the dataset'} not found on {where}, or not accessible (gated or private)"
        if _is_requests_error(e):
            return _unreachable_line(what, e, where, "cannot reach {server} " + f"({_connect_reason(e)})")
        if isinstance(e, ConnectionError) and ("Couldn't reach" in str(e) or where in str(e)):  # datasets' wrapper
            return f"{what}: cannot reach {where} ({one_line(e, 120)}); check the network or HF_ENDPOINT"
    return None


def _is_requests_error(err: BaseException) -> bool:
    requests = sys.modules.get("requests")
    return requests is not None and isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


def _http_line(what: str, status: int | None, where: str, repo: str | None) -> str:
    if status == 401:
        return f"{what}: {where} rejected the token (HTTP 401); check HF_TOKEN / `hf auth login`"
    if status == 403:
        return (
            f"{what}: {where} refused access{f' to {repo}' if repo else ''} (HTTP 403); use a token with access "
            "(HF_TOKEN / `hf auth login`)"
        )
    if status == 404:
        return f"{what}: {repo or 'not found'} not found on {where} (HTTP 404); check the name and HF_ENDPOINT"
    if status is not None and status >= 500:
        return f"{what}: {where} answered HTTP {status} (a server error); try again later"
    return f"{what}: {where} answered HTTP {status}"


@contextlib.contextmanager
def network_errors(
    what: str, repo_id: str | None = None, repo_type: str = "model", url: str | None = None
) -> Iterator[None]:
    """Turn a Hub or network failure raised inside the block into one UserError line; anything else passes."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        line = describe_failure(err, what, repo_id, repo_type, url)
        if line is None:
            raise
        raise UserError(line) from None


def cached(repo_id: str, repo_type: str = "model", revision: str | None = None) -> bool:
    """Whether a Hub repo has a copy in the local caches (the Hub cache; for datasets also datasets' own)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, PROBE_FILE["model"], revision=revision), str)
    folder = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    if folder.is_dir() and any(folder.iterdir()):
        return True
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return (datasets_cache / repo_id.replace("/", "___")).is_dir()


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    repo_type: str
    where: str  # "the Hub (<endpoint>)" or "the local cache"

    def describe(self) -> str:
        return f"Hub {self.repo_type} {self.repo_id} (from {self.where})"


def check_hub_source(repo_id: str, repo_type: str, what: str, revision: str | None = None) -> HubSource:
    """Make sure a Hub repo can be loaded before anything is: one request, or none offline (see the module doc)."""
    if offline():
        if cached(repo_id, repo_type, revision):
            return HubSource(repo_id, repo_type, "the local cache, HF_HUB_OFFLINE=1")
        raise UserError(
            f"{what}: Hub {repo_type} {repo_id}: not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it; "
            "unset HF_HUB_OFFLINE or give a local path"
        )
    try:
        probe(repo_id, repo_type, revision)
    except UserError:
        raise
    except Exception as err:
        line = describe_failure(err, what, repo_id, repo_type)
        if line is None:
            raise
        if _unreachable(err) and cached(repo_id, repo_type, revision):
            go_offline(line.removeprefix(f"{what}: "))
            return HubSource(repo_id, repo_type, "the local cache; the Hub is unreachable")
        raise UserError(line) from None
    return HubSource(repo_id, repo_type, f"the Hub, {endpoint()}")


def _unreachable(err: BaseException) -> bool:
    import httpx

    return any(isinstance(e, httpx.TransportError) or _is_requests_error(e) for e in _chain(err))


def probe(repo_id: str, repo_type: str = "model", revision: str | None = None) -> None:
    """One HEAD request for the repo's :data:`PROBE_FILE`, no retry, ``HF_HUB_ETAG_TIMEOUT`` seconds. Raises
    huggingface_hub's errors (repo, revision, gated) or httpx's (connection, timeout); a missing file is fine."""
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{_repo_url(repo_id, repo_type)}/resolve/{quote(revision or 'main', safe='')}/{PROBE_FILE[repo_type]}"
    response = get_session().head(url, headers=build_hf_headers(), timeout=timeout_s(), follow_redirects=False)
    if response.status_code >= 400:
        try:
            hf_raise_for_status(response)
        except EntryNotFoundError:
            return  # the repo and revision exist; the loader says what it misses


def check_endpoint(what: str, repo_id: str, token: str | None = None, url: str | None = None) -> None:
    """One request to the Hub before a push (no retry, ``HF_HUB_ETAG_TIMEOUT`` seconds): reachable, and the token
    not rejected. Any other answer counts as reachable (a repo not created yet is a 404)."""
    from huggingface_hub.utils import build_hf_headers, get_session

    if offline():
        raise UserError(f"{what}: HF_HUB_OFFLINE=1 is set and a push needs the network: unset HF_HUB_OFFLINE")
    with network_errors(what, repo_id, url=url):
        response = get_session().get(
            f"{endpoint(url)}/api/models/{repo_id}", headers=build_hf_headers(token=token), timeout=timeout_s()
        )
    if response.status_code in (401, 403):
        raise UserError(_http_line(what, response.status_code, endpoint(url), repo_id))
