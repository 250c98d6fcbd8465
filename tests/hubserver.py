"""A small in-memory Hugging Face Hub-compatible HTTP server, for offline push tests on 127.0.0.1.

It speaks the subset of the Hub's HTTP API that ``huggingface_hub`` uses to publish and read back a model repo
(with ``HF_HUB_DISABLE_XET=1``, i.e. the git-LFS upload path):

- ``POST /api/repos/create`` (409 when the repo exists), ``POST /api/validate-yaml``;
- ``POST /api/models/<repo>/preupload/<rev>``: upload mode per file (LFS for binary samples, known weight / image
  extensions or files over 1 MB) and the remote oid (git blob sha1, sha256 for LFS) used for no-op detection;
- ``POST /<repo>.git/info/lfs/objects/batch``, ``PUT /_lfs/<oid>``, ``POST /_lfs/<oid>/verify``;
- ``POST /api/models/<repo>/commit/<rev>`` (NDJSON: header, file, lfsFile, deletedFile, deletedFolder);
- ``POST /api/models/<repo>/branch/<name>``, ``GET /api/models/<repo>/refs``, ``GET .../commits/<rev>``;
- ``GET /api/models/<repo>[/revision/<rev>]``, ``GET /api/models/<repo>/tree/<rev>[/<path>]``;
- ``HEAD`` / ``GET /<repo>/resolve/<rev>/<path>`` (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``-Size``).

What it checks: the bearer token on every write and on reads of private repos (401 otherwise), and on any request
that sends one (a wrong token is 401, as on the Hub); writes to a namespace in ``forbidden`` (403); reads of a repo
in ``gated`` (401 without a token, 403 with one: never granted, the Hub's ``GatedRepo`` code); that a repo and a
revision exist (404 with the Hub's ``X-Error-Code``); the README front matter parses as a YAML mapping; the sha256
and size of every uploaded LFS object; that each ``lfsFile`` of a commit names an uploaded object; that a commit's
paths are relative and normalised; ``parentCommit`` against the branch head (412).
What it does not: namespaces and permissions beyond one token, the model-index schema beyond being a list, Xet
storage, multipart LFS uploads, pull requests, tags, pagination, gitattributes-driven LFS rules, quotas, or any
file-content validation (safetensors, configs). Commits are kept in memory only; ``commit_count``, ``files`` and
``requests`` let tests check what happened on the wire, and ``gate`` holds requests back (to test non-blocking code).
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".parquet", ".arrow", ".gguf", ".model")
LFS_MIN_SIZE = 1_000_000


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    size: int
    oid: str  # git sha1 for regular files, the LFS pointer's sha1 for LFS files
    lfs_sha256: str | None  # key into Server.lfs_store when the file lives in LFS
    content: bytes | None  # regular files only


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, Blob]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid


class HubServer:
    """Start with ``with HubServer(token=...) as hub:``; ``hub.endpoint`` is the base URL to give the client."""

    def __init__(self, token: str = "hf_test_token", forbidden: tuple[str, ...] = (), gated: tuple[str, ...] = ()):
        self.token = token
        self.forbidden = set(forbidden)  # namespaces the token may not write to
        self.gated = set(gated)  # repo ids whose files no one may read
        self.repos: dict[str, Repo] = {}
        self.commits: dict[str, Commit] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.gate = threading.Event()  # clear it to hold every request until it is set again
        self.gate.set()
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- state helpers, usable from tests -------------------------------------------------------------------------
    def commit_count(self, repo_id: str, branch: str = "main") -> int:
        """Number of commits reachable from ``branch`` (the repo's initial commit included)."""
        with self.lock:
            oid, count = self.repos[repo_id].branches.get(branch), 0
            while oid is not None:
                count, oid = count + 1, self.commits[oid].parent
            return count

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """Path -> content of every file at the head of ``branch``."""
        with self.lock:
            head = self.commits[self.repos[repo_id].branches[branch]]
            return {path: self._content(blob) for path, blob in head.files.items()}

    def _content(self, blob: Blob) -> bytes:
        return blob.content if blob.lfs_sha256 is None else self.lfs_store[blob.lfs_sha256]

    def _new_commit(self, parent: str | None, title: str, message: str, files: dict[str, Blob]) -> Commit:
        self._counter += 1
        seed = json.dumps([self._counter, parent, title, sorted((p, b.oid) for p, b in files.items())])
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, files, date)
        self.commits[commit.oid] = commit
        return commit


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_state = hub

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: HubServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        hub = self.server_state
        body = self._read_body()
        hub.gate.wait(timeout=60)
        with hub.lock:
            hub.requests.append((method, url.path))
            try:
                if self.headers.get("Authorization") and not self._authorized():
                    raise _HubError(401, "Invalid credentials in Authorization header")
                self._route(method, parts, query, body)
            except _HubError as err:
                headers = {"X-Error-Message": str(err)}
                if err.code:
                    headers["X-Error-Code"] = err.code
                self._send(err.status, {"error": str(err), **err.extra}, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None, raw: bytes = b""):
        data = json.dumps(payload).encode() if payload is not None else raw
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.server_state.token}"

    def _require_token(self) -> None:
        if not self._authorized():
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.server_state.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _head(self, repo: Repo, revision: str) -> Commit:
        commits = self.server_state.commits
        oid = repo.branches.get(revision, revision if revision in commits else None)
        if oid is None:
            raise _HubError(404, f"Revision {revision} not found", "RevisionNotFound")
        return commits[oid]

    # -- routes ----------------------------------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes) -> None:
        if parts[:1] == ["_lfs"]:
            return self._lfs_object(method, parts[1:], body)
        if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and method == "POST":
            return self._create_repo(json.loads(body))
        if parts == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api_model(method, f"{parts[2]}/{parts[3]}", parts[4:], query, body)
        if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{parts[0]}/{parts[1][: -len('.git')]}", json.loads(body))
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise _HubError(404, f"no route for {method} /{'/'.join(parts)}")

    def _create_repo(self, payload: dict) -> None:
        self._require_token()
        hub = self.server_state
        if payload.get("type", "model") != "model":
            raise _HubError(400, "this test server only hosts model repos")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"
        if repo_id.split("/")[0] in hub.forbidden:
            raise _HubError(403, f"You don't have the rights to create a model under the namespace {repo_id}")
        if repo_id in hub.repos:
            raise _HubError(409, "You already created this model repo", url=f"{hub.endpoint}/{repo_id}")
        repo = Repo(repo_id, private=payload.get("visibility", "public") == "private")
        attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        blob = Blob(len(attributes), git_blob_sha1(attributes), None, attributes)
        repo.branches["main"] = hub._new_commit(None, "initial commit", "", {".gitattributes": blob}).oid
        hub.repos[repo_id] = repo
        self._send(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1])
            except (yaml.YAMLError, IndexError) as err:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            if not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": "metadata must be a mapping"}]})
            if "model-index" in meta and not isinstance(meta["model-index"], list):
                return self._send(400, {"errors": [{"message": '"model-index" must be a list'}]})
        self._send(200, {"errors": [], "warnings": []})

    def _api_model(self, method: str, repo_id: str, rest: list[str], query: dict[str, str], body: bytes) -> None:
        action = rest[0] if rest else None
        if method == "POST":
            self._require_token()
        repo = self._repo(repo_id)
        if action is None or action == "revision":
            head = self._head(repo, rest[1] if action else "main")
            siblings = [{"rfilename": path} for path in sorted(head.files)]
            info = {"id": repo_id, "modelId": repo_id, "sha": head.oid, "private": repo.private, "tags": []}
            return self._send(200, info | {"siblings": siblings})
        if action == "refs":
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()]
            return self._send(200, {"branches": branches, "tags": [], "converts": []})
        if action == "commits" and method == "GET":
            return self._list_commits(repo, rest[1])
        if action == "tree" and method == "GET":
            return self._tree(repo, rest[1], "/".join(rest[2:]), query.get("recursive", "").lower() == "true")
        if action == "branch" and method == "POST":
            return self._create_branch(repo, "/".join(rest[1:]), json.loads(body or b"{}"))
        if action == "preupload" and method == "POST":
            return self._preupload(repo, rest[1], json.loads(body))
        if action == "commit" and method == "POST":
            return self._commit(repo, rest[1], query, body)
        raise _HubError(404, f"no route for {method} {action}")

    def _list_commits(self, repo: Repo, revision: str) -> None:
        commit, items = self._head(repo, revision), []
        while commit is not None:
            authors = [{"user": "archer-test"}]
            items.append({"id": commit.oid, "authors": authors, "date": commit.date, "title": commit.title})
            items[-1]["message"] = commit.message
            commit = self.server_state.commits.get(commit.parent) if commit.parent else None
        self._send(200, items)

    def _tree(self, repo: Repo, revision: str, prefix: str, recursive: bool) -> None:
        head = self._head(repo, revision)
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict] = {}
        for path, blob in sorted(head.files.items()):
            if not path.startswith(base):
                continue
            relative = path[len(base) :].split("/")
            for depth in range(1, len(relative)):  # folders on the way
                folder = base + "/".join(relative[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "path": folder})
            if recursive or len(relative) == 1:
                entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
                if blob.lfs_sha256:
                    entry["lfs"] = {"oid": blob.lfs_sha256, "size": blob.size, "pointerSize": 134}
                entries[path] = entry
        if prefix and not entries:
            raise _HubError(404, f"{prefix} not found", "EntryNotFound")
        self._send(200, list(entries.values()))

    def _create_branch(self, repo: Repo, name: str, payload: dict) -> None:
        if name in repo.branches:
            raise _HubError(409, f"Branch {name} already exists")
        repo.branches[name] = self._head(repo, payload.get("startingPoint") or "main").oid
        self._send(200, {})

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
        files = self._head(repo, revision).files
        answer = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["size"] >= LFS_MIN_SIZE or b"\0" in sample or item["path"].endswith(LFS_EXTENSIONS)
            remote = files.get(item["path"])
            oid = None if remote is None else (remote.lfs_sha256 or remote.oid)
            mode = "lfs" if lfs and item["size"] > 0 else "regular"
            answer.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": answer})

    def _lfs_batch(self, repo_id: str, payload: dict) -> None:
        self._require_token()
        self._repo(repo_id)
        endpoint, objects = self.server_state.endpoint, []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.server_state.lfs_store:
                answer["actions"] = {
                    "upload": {"href": f"{endpoint}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{endpoint}/_lfs/{obj['oid']}/verify"},
                }
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_object(self, method: str, rest: list[str], body: bytes) -> None:
        oid = rest[0]
        if method == "PUT" and len(rest) == 1:
            if hashlib.sha256(body).hexdigest() != oid:
                raise _HubError(400, f"uploaded content does not match sha256 {oid}")
            self.server_state.lfs_store[oid] = body
            return self._send(200, raw=b"")
        if method == "POST" and rest[1:] == ["verify"]:
            self._require_token()
            stored = self.server_state.lfs_store.get(oid)
            if stored is None or len(stored) != json.loads(body)["size"]:
                raise _HubError(404, f"LFS object {oid} missing or of the wrong size")
            return self._send(200, {})
        raise _HubError(404, "bad LFS request")

    def _commit(self, repo: Repo, revision: str, query: dict[str, str], body: bytes) -> None:
        if query.get("create_pr"):
            raise _HubError(400, "pull requests are not supported by this test server")
        hub = self.server_state
        head = self._head(repo, revision)
        if revision not in repo.branches:
            raise _HubError(400, f"can only commit to a branch, not {revision}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "the first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head.oid):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if path.startswith("/") or posixpath.normpath(path) != path or path.startswith(".."):
                raise _HubError(400, f"invalid path {path!r}")
            if key == "file":
                content = base64.b64decode(value["content"])
                files[path] = Blob(len(content), git_blob_sha1(content), None, content)
            elif key == "lfsFile":
                stored = hub.lfs_store.get(value["oid"])
                if stored is None:
                    raise _HubError(422, f"LFS object {value['oid']} of {path} was never uploaded")
                pointer = (
                    f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {len(stored)}\n"
                )
                files[path] = Blob(len(stored), git_blob_sha1(pointer.encode()), value["oid"], None)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise _HubError(400, f"unknown commit operation {key!r}")
        commit = hub._new_commit(head.oid, header["summary"], header.get("description", ""), files)
        repo.branches[revision] = commit.oid
        url = f"{hub.endpoint}/{repo.repo_id}/commit/{commit.oid}"
        self._send(200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo_id in self.server_state.gated:
            status = 403 if self._authorized() else 401
            raise _HubError(status, f"Access to model {repo_id} is restricted", "GatedRepo")
        head = self._head(repo, revision)
        blob = head.files.get(path)
        if blob is None:
            raise _HubError(404, f"Entry {path} not found", "EntryNotFound")
        content = self.server_state._content(blob)
        headers = {"X-Repo-Commit": head.oid, "ETag": f'"{blob.oid}"'}
        if blob.lfs_sha256:
            headers |= {"X-Linked-Etag": f'"{blob.lfs_sha256}"', "X-Linked-Size": str(blob.size)}
        self._send(200, headers=headers | {"Content-Type": "application/octet-stream"}, raw=content)


def seed_cache(hub_cache, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> None:
    """Lay out ``files`` of a Hub repo in a huggingface_hub cache folder (``HF_HOME/hub``), as a download leaves
    them: ``<type>s--org--name/refs/main`` naming a snapshot that holds the files. Offline code then finds it."""
    from pathlib import Path

    folder = Path(hub_cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
