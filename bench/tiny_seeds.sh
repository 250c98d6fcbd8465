#!/usr/bin/env bash
# Archer vs DAPO on the embedded default's task over 3 seeds: sft.seed = s, trainer.seed = 42 + s (seed 0 is
# exactly `make train`).
# Each seed's SFT warm start is built once (by the Archer run) and reused by the DAPO run, so both objectives
# start from the same model. Prints one line per run; the numbers in the README come from this script.
#   bash bench/tiny_seeds.sh [SEEDS...]      (default: 0 1 2; about 8 minutes per seed on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-outputs/seeds}
SEEDS=${*:-0 1 2}
for s in $SEEDS; do
  for preset in archer dapo; do
    out=$ROOT/$preset-seed$s
    if [ "$preset" = dapo ] && [ ! -e "$out/sft" ]; then
      mkdir -p "$out" && cp -r "$ROOT/archer-seed$s/sft" "$out/sft"
    fi
    if [ ! -e "$out/train_results.json" ]; then
      .venv/bin/archer train "recipes/tiny/$preset.yaml" "trainer.output_dir=$out" "sft.seed=$s" "trainer.seed=$((42 + s))" \
        > "$out.log" 2>&1
    fi
    .venv/bin/python - "$out" "$preset" "$s" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/train_results.json"))
b, a = r["heldout_accuracy_before"], r["heldout_accuracy_after"]
print(f"{sys.argv[2]:6s} seed {sys.argv[3]}: {100*b:.1f}% -> {100*a:.1f}% ({100*(a-b):+.1f}), "
      f"shows working {100*r['heldout_worked_frac_before']:.0f}% -> {100*r['heldout_worked_frac_after']:.0f}%, "
      f"RL {r['rl_runtime_s']/60:.1f} min, total {r['train_runtime_s']/60:.1f} min")
PY
  done
done
