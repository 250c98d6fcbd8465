#!/usr/bin/env bash
# Fill a wheel folder for bench/gpu/run.sh, on a machine WITH network, for a GPU machine WITHOUT network.
#
#   PYTHON=python3.12 bash bench/gpu/fetch_wheels.sh WHEELS [--eval]
#
# Run it with the GPU machine's Python version on Linux x86_64 (PYTHON=python3.12 for the lent H200): pip fetches
# the wheels that interpreter would install (cp312 for the compiled ones) and builds the packages that PyPI ships
# only as source (deepspeed; rouge_score with --eval) into pure-Python wheels. What the GPU machine already has
# (bench/gpu/machine.txt: torch and its CUDA libraries, transformers, accelerate, ...) and those packages' own
# dependencies are not fetched, unless our requirement files pin them. --eval adds part (c)'s dependencies
# (bench/gpu/requirements-eval.txt: lighteval and its ~100 dependencies, about 150 MB more).
#
# The commands it runs (WHEELS=wheels, no --eval):
#   python3.12 -m pip install --dry-run --ignore-installed --quiet --report wheels/need.json \
#       -c wheels/constraints.txt -r bench/gpu/requirements.txt   # what we need (metadata only), against
#                                                                  # machine.txt less what requirements.txt pins
#   python3.12 -m pip install --dry-run --ignore-installed --quiet --report wheels/have.json \
#       -r bench/gpu/machine.txt                                           # what the machine has
#   python3.12 -m pip wheel --no-deps --wheel-dir wheels -r wheels/fetch.txt   # need - have (name and version)
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELS=${1:?usage: PYTHON=python3.12 bash bench/gpu/fetch_wheels.sh WHEELS [--eval]}
PYTHON=${PYTHON:-python3.12}
REQS=(-r bench/gpu/requirements.txt)
[[ "${2:-}" == "--eval" ]] && REQS+=(-r bench/gpu/requirements-eval.txt)
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (set PYTHON= to the GPU machine's Python version)" >&2; exit 2; }
mkdir -p "$WHEELS"

# Our own pins win over the machine's (transformers): constrain the resolution with the machine's other pins only.
"$PYTHON" - "$WHEELS" "${REQS[@]}" <<'PY'
import re
import sys
from pathlib import Path

wheels, requirement_files = Path(sys.argv[1]), sys.argv[3::2]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(path: str) -> set[str]:
    lines = Path(path).read_text().splitlines()
    return {norm(m.group(1)) for line in lines if (m := re.match(r"\s*([A-Za-z0-9_.-]+)\s*==", line))}


ours = set().union(*(pinned(path) for path in requirement_files))
machine = Path("bench/gpu/machine.txt").read_text().splitlines()
kept = [line for line in machine if not (m := re.match(r"\s*([A-Za-z0-9_.-]+)", line)) or norm(m.group(1)) not in ours]
(wheels / "constraints.txt").write_text("\n".join(kept) + "\n")
PY
"$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$WHEELS/need.json" \
  -c "$WHEELS/constraints.txt" "${REQS[@]}"
"$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$WHEELS/have.json" -r bench/gpu/machine.txt

# Fetch what we need at a version the machine's packages do not already bring (torch's CUDA stack never differs).
"$PYTHON" - "$WHEELS" <<'PY'
import json
import re
import sys
from pathlib import Path

wheels = Path(sys.argv[1])


def resolved(report: str) -> dict[str, str]:
    items = json.loads((wheels / report).read_text())["install"]
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in items}


need, have = resolved("need.json"), resolved("have.json")
fetch = {name: version for name, version in need.items() if have.get(name) != version}
(wheels / "fetch.txt").write_text("".join(f"{name}=={version}\n" for name, version in sorted(fetch.items())))
print(f"{len(fetch)} packages to fetch (the GPU machine has the other {len(need) - len(fetch)})")
PY

"$PYTHON" -m pip wheel --no-deps --progress-bar off --wheel-dir "$WHEELS" -r "$WHEELS/fetch.txt"
du -sh "$WHEELS"
echo "copy $WHEELS to the GPU machine, then: bash bench/gpu/run.sh $WHEELS   (or make gpu-proof WHEELS=$WHEELS)"
