#!/usr/bin/env bash
# Fill the wheel folder that bench/gpu/run.sh installs on a bare GPU machine (no network there): the wheels of
# bench/gpu/wheels.txt for the machine's Python, fetched as the device README says, then checked.
#
#   bash bench/gpu/fetch_wheels.sh [DIR [PYTHON_VERSION]]      (default: .whl 3.12, the lent machines')
#
# Binary wheels: pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux..._x86_64.
# Lines marked '# build' (deepspeed: PyPI has only its source) are built with pip wheel --no-deps into pure-Python
# wheels. Then bench/gpu/wheelset.py check: one wheel per line of wheels.txt, each needing only what the folder or the
# machine (bench/gpu/machine.txt) has. About 20 MiB: it travels with `carry: [".whl"]` (.whl/ is git-ignored).
# PYTHON (default python3) runs pip; it needs network (PyPI) and `packaging`.
set -euo pipefail
cd "$(dirname "$0")/../.."

DIR=${1:-.whl}
PYVER=${2:-3.12}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"
binary=()
build=()
while IFS= read -r line; do
  spec=$(echo "${line%%#*}" | xargs)
  [[ -z "$spec" ]] && continue
  if [[ "$line" == *"# build"* ]]; then build+=("$spec"); else binary+=("$spec"); fi
done < bench/gpu/wheels.txt

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${platforms[@]}" --dest "$DIR" "${binary[@]}"
for spec in "${build[@]}"; do
  name=${spec%%==*}
  version=${spec##*==}
  compgen -G "$DIR/${name//-/_}-${version}-*.whl" >/dev/null && continue
  "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" "$spec"
done
"$PYTHON" bench/gpu/wheelset.py check "$DIR" --python-version "$PYVER"
du -sh "$DIR"
