#!/usr/bin/env bash
# The GPU proof on a bare machine: install what it lacks from a wheel folder (no network), then run it.
#
#   bash bench/gpu/run.sh WHEELS [bench/gpu/proof.py arguments]     (make gpu-proof WHEELS=... ARGS=...)
#   bash bench/gpu/run.sh - [...]                                    (install nothing: the packages are there)
#
# WHEELS comes from bench/gpu/fetch_wheels.sh. pip skips what is installed already and takes the rest from the
# folder only (--no-index); part (c)'s packages (lighteval) are installed only where vLLM is importable.
# PYTHON (default python3) is the interpreter that has torch; PIP_ARGS adds pip options (e.g. --user).
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELS=${1:?usage: bash bench/gpu/run.sh WHEELS|- [proof.py arguments]}
shift
PYTHON=${PYTHON:-python3}
read -r -a EXTRA <<< "${PIP_ARGS:-}"

if [[ "$WHEELS" != "-" ]]; then
  [[ -d "$WHEELS" ]] || { echo "error: $WHEELS: no such wheel folder (bench/gpu/fetch_wheels.sh fills one)" >&2; exit 2; }
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --progress-bar off "${EXTRA[@]}" \
    -r bench/gpu/requirements.txt
  if "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"; then
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --progress-bar off "${EXTRA[@]}" \
      -r bench/gpu/requirements-eval.txt \
      || echo "warning: lighteval could not be installed from $WHEELS (fetch_wheels.sh --eval): part (c) will fail"
  fi
fi

export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
exec "$PYTHON" bench/gpu/proof.py "$@"
