#!/usr/bin/env bash
# The GPU proof on a bare machine: install the carried wheels (no network there), then run bench/gpu/proof.py.
#
#   bash bench/gpu/run.sh WHEELS [proof.py arguments]     on the device tool (docs/benchmarks.md, "GPU proof"):
#       bash bench/gpu/run.sh .whl --part first --out $OUT/first.md      then   ... --part rest --out $OUT/rest.md
#   bash bench/gpu/run.sh - [proof.py arguments]          install nothing: the packages are there
#
# WHEELS: a folder filled by bench/gpu/fetch_wheels.sh (the wheels of bench/gpu/wheels.txt, which with what the
# machine has, bench/gpu/machine.txt, is everything the proof imports). They are installed as the device README says:
# pip --no-index --no-deps --no-compile into a target folder, $PROOF_PREFIX/site-packages (default
# /tmp/archer-proof/site-packages), put first on PYTHONPATH, which is kept, not replaced. Named site-packages as
# the machine's own folder is: dill (datasets' fingerprints) pickles modules by reference only from sys.prefix or a
# path holding "site-packages", by value elsewhere. A later call that finds the same wheels there skips the install.
# proof.py's time budget counts from this script's start (GPU_PROOF_STARTED), the install included.
# PYTHON (default python3) is the interpreter that has torch.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GPU_PROOF_STARTED=${GPU_PROOF_STARTED:-$(date +%s.%N)}

WHEELS=${1:?usage: bash bench/gpu/run.sh WHEELS|- [proof.py arguments]}
shift
PYTHON=${PYTHON:-python3}
SITE=${PROOF_PREFIX:-/tmp/archer-proof}/site-packages

if [[ "$WHEELS" != "-" ]]; then
  [[ -d "$WHEELS" ]] || { echo "error: $WHEELS: no such wheel folder (bench/gpu/fetch_wheels.sh fills one)" >&2; exit 2; }
  shopt -s nullglob
  files=("$WHEELS"/*.whl)
  shopt -u nullglob
  (( ${#files[@]} )) || { echo "error: $WHEELS holds no wheel (bench/gpu/fetch_wheels.sh fills it)" >&2; exit 2; }
  stamp=$(for f in "${files[@]}"; do printf '%s %s\n' "$(basename "$f")" "$(wc -c < "$f")"; done | md5sum | cut -c1-16)
  start=$(date +%s.%N)
  if [[ "$(cat "$SITE/.proof-wheels" 2>/dev/null)" == "$stamp" ]]; then
    how="already in $SITE (an earlier call on this machine)"
  else
    rm -rf "$SITE"
    mkdir -p "$SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${files[@]}"
    echo "$stamp" > "$SITE/.proof-wheels"
    how="pip install --no-index --no-deps --no-compile --target $SITE"
  fi
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  megabytes=$(du -cb "${files[@]}" | awk 'END { printf "%.1f", $1 / 1048576 }')
  export GPU_PROOF_INSTALL="$seconds s; ${#files[@]} wheels, $megabytes MiB from $WHEELS, $how"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # the proof downloads nothing; a lent machine reaches nothing
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu/proof.py "$@"
