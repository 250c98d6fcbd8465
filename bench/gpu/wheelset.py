"""The wheels the GPU proof carries to a bare machine (bench/gpu/wheels.txt) and the checks that they are enough.

    python bench/gpu/wheelset.py resolve [--python python3.12]   # rewrite wheels.txt (network; a Python 3.12)
    python bench/gpu/wheelset.py check DIR [--python-version 3.12]   # DIR holds wheels.txt's wheels, and they
                                                                      # need nothing that DIR and machine.txt lack

``resolve`` asks pip (``install --dry-run --report``, metadata only) for the whole set that requirements.txt needs
on the machine's Python, pinning the machine's known versions (machine.txt) except those requirements.txt pins
itself (transformers); the set to carry is what the machine lacks, plus our own pins. A package PyPI ships only as
source (deepspeed) is marked ``# build``: fetch_wheels.sh builds it into a pure-Python wheel.

``check`` reads each wheel's METADATA: every Requires-Dist whose marker holds on the machine (Linux x86-64, the given
Python, no extra) must name a carried package at a version it accepts, or a package of machine.txt (at a version it
accepts where machine.txt gives one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEELS_TXT = HERE / "wheels.txt"
MACHINE_TXT = HERE / "machine.txt"
REQUIREMENTS_TXT = HERE / "requirements.txt"
BUILD = "# build"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str | None]:
    """name -> version (None: some version) of a requirements-style file (comments and blank lines skipped)."""
    pins: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, _, version = spec.partition("==")
            pins[norm(name)] = version.strip() or None
    return pins


def built_from_source() -> set[str]:
    return {norm(line.split("==")[0]) for line in WHEELS_TXT.read_text().splitlines() if BUILD in line}


def resolve(python: str) -> int:
    ours = read_pins(REQUIREMENTS_TXT)
    machine = read_pins(MACHINE_TXT)
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in machine.items() if v and n not in ours))
        report = Path(tmp) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                   str(report), "-c", str(constraints), "-r", str(REQUIREMENTS_TXT)]  # fmt: skip
        subprocess.run(command, check=True)
        items = json.loads(report.read_text())["install"]
    carried = []
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if norm(name) in machine and norm(name) not in ours:
            continue
        sdist = not item["download_info"]["url"].endswith(".whl")
        carried.append(f"{norm(name)}=={version}" + (f"  {BUILD} (PyPI ships only its source)" if sdist else ""))
    header = (
        [line for line in WHEELS_TXT.read_text().splitlines() if line.startswith("#")] if WHEELS_TXT.exists() else []
    )
    WHEELS_TXT.write_text("\n".join(header + sorted(carried)) + "\n")
    print(f"{WHEELS_TXT}: {len(carried)} packages")
    return 0


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = Parser().parsestr(archive.read(member).decode())
    return norm(message["Name"]), message["Version"], message.get_all("Requires-Dist") or []


def check(folder: Path, python_version: str) -> list[str]:
    """What is wrong with the wheel folder (an empty list: nothing)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    expected = read_pins(WHEELS_TXT)
    machine = read_pins(MACHINE_TXT)
    problems, carried = [], {}
    for path in sorted(folder.glob("*.whl")):
        name, version, requires = wheel_metadata(path)
        if name in carried:
            problems.append(f"{name}: two wheels ({carried[name][0]} and {version}): the install stops")
        carried[name] = (version, requires)
    for name, version in expected.items():
        if name not in carried:
            problems.append(f"{name}=={version}: in wheels.txt, no wheel in {folder}")
        elif carried[name][0] != version:
            problems.append(f"{name}: wheel {carried[name][0]}, wheels.txt {version}")
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "extra": ""}  # fmt: skip
    for name, (_version, requires) in carried.items():
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            need = norm(requirement.name)
            if need in carried:
                have = carried[need][0]
            elif need in machine:
                have = machine[need]
            else:
                problems.append(f"{name} needs {requirement}: neither carried nor on the machine (machine.txt)")
                continue
            if have is not None and not requirement.specifier.contains(Version(have), prereleases=True):
                where = "carried" if need in carried else "on the machine"
                problems.append(f"{name} needs {requirement}: {need} {have} {where}")
    return problems


def cache_folder(python_version: str) -> Path:
    """Where the wheel set for ``python_version`` is kept between runs (``$ARCHER_WHEEL_CACHE``, else
    ``~/.cache/archer/wheels``), named by wheels.txt's digest so that a new set is fetched anew."""
    digest = hashlib.sha256(WHEELS_TXT.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("ARCHER_WHEEL_CACHE") or Path.home() / ".cache" / "archer" / "wheels")
    return cache / f"gpu-proof-py{python_version}-{digest}"


def fetch(python_version: str) -> Path:
    """The cached wheel set for ``python_version``, fetched and checked once (bench/gpu/fetch_wheels.sh: network).
    ``make test`` runs this before the tests, which read the cache and never reach the network themselves."""
    folder = cache_folder(python_version)
    if not (folder / "complete").is_file():
        subprocess.run(
            ["bash", str(HERE / "fetch_wheels.sh"), str(folder), python_version],
            env=dict(os.environ, PYTHON=sys.executable),
            check=True,
        )
        (folder / "complete").write_text("")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu/wheelset.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_resolve = sub.add_parser("resolve", help="rewrite wheels.txt (network)")
    p_resolve.add_argument("--python", default="python3.12", help="an interpreter of the machine's Python version")
    p_check = sub.add_parser("check", help="check a wheel folder against wheels.txt and machine.txt")
    p_check.add_argument("folder", type=Path)
    p_check.add_argument("--python-version", default="3.12")
    p_fetch = sub.add_parser("fetch", help="fetch and check the cached wheel sets the tests rehearse with (network)")
    p_fetch.add_argument("--python-version", action="append", default=None, help="repeatable (default: 3.12 and ours)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        ours = f"{sys.version_info.major}.{sys.version_info.minor}"
        for version in args.python_version or sorted({"3.12", ours}):
            print(f"{fetch(version)}: the wheel set for Python {version}")
        return 0
    if args.command == "resolve":
        return resolve(args.python)
    problems = check(args.folder, args.python_version)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.folder}: the {len(read_pins(WHEELS_TXT))} wheels of wheels.txt, closed over machine.txt")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
