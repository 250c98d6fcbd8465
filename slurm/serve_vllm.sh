#!/usr/bin/env bash
# Serve a recipe's model with vLLM for rollouts in server mode (TRL's `trl vllm-serve`); the trainer sends prompts
# over HTTP and pushes its new weights to the server after each optimizer step (NCCL, port vllm_group_port): GPUs
# only (on a machine without one it says so and what vLLM's CPU build can serve instead).
#
#   slurm/serve_vllm.sh RECIPE [more trl vllm-serve arguments]       (make serve-vllm RECIPE=... does the same)
#
# Environment: VLLM_TP (GPUs per engine, default 1), VLLM_DP (engines, default: visible GPUs / VLLM_TP),
# VLLM_PORT (8000), VLLM_GPU_MEMORY_UTILIZATION (0.9: the GPUs are vLLM's alone), PYTHON, TRL (the trl command).
# Train against it with: trainer.use_vllm=true trainer.vllm_mode=server trainer.vllm_server_host=<this host>
set -euo pipefail

RECIPE=${1:?usage: slurm/serve_vllm.sh RECIPE [trl vllm-serve arguments]}
shift
PYTHON=${PYTHON:-python}
TRL=${TRL:-trl}
[[ -f "$RECIPE" ]] || { echo "error: $RECIPE: recipe file not found" >&2; exit 2; }

# model id and context length from the recipe (prompt + completion, as the trainer will ask for)
read -r MODEL MAX_LEN < <("$PYTHON" - "$RECIPE" <<'PY'
import sys
import yaml

recipe = yaml.safe_load(open(sys.argv[1]))
trainer = recipe.get("trainer") or {}
print(recipe["model"]["name_or_path"], trainer.get("vllm_max_model_length") or "")
PY
)

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a VISIBLE <<< "$CUDA_VISIBLE_DEVICES"
  NUM_GPUS=${#VISIBLE[@]}
else
  NUM_GPUS=$( { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true)
fi
if (( NUM_GPUS == 0 )); then
  SERVED=$MODEL
  [[ "$MODEL" == tiny ]] && SERVED="<model folder>"
  # vLLM's CPU build could serve generation, but not rollouts: the trainer sends its weights over NCCL (CUDA only),
  # and the `vllm` CLI that `trl vllm-serve` runs stops at once there (it looks up the distribution `vllm`)
  echo "error: no GPU visible: server-mode rollouts need CUDA GPUs (TRL sends the new weights over NCCL); on CPU" \
    "train with trainer.vllm_mode: colocate. To serve generation alone with vLLM's CPU build: VLLM_SERVER_DEV_MODE=1" \
    "python -m vllm.entrypoints.openai.api_server --model $SERVED --dtype float32" \
    "--kv-cache-memory-bytes 1G (docs/scaling.md: vLLM rollouts on CPU)" >&2
  exit 2
fi
TP=${VLLM_TP:-1}
DP=${VLLM_DP:-$((NUM_GPUS / TP))}
if (( DP < 1 || DP * TP > NUM_GPUS )); then
  echo "error: VLLM_DP=$DP x VLLM_TP=$TP needs $((DP > 0 ? DP * TP : TP)) GPUs; $NUM_GPUS visible" >&2
  exit 2
fi

echo "serving $MODEL on $((DP * TP)) GPU(s): $DP engine(s) x TP $TP," \
  "port ${VLLM_PORT:-8000}, context ${MAX_LEN:-from the model}"
exec "$TRL" vllm-serve --model "$MODEL" \
  --tensor_parallel_size "$TP" --data_parallel_size "$DP" \
  --host 0.0.0.0 --port "${VLLM_PORT:-8000}" \
  --gpu_memory_utilization "${VLLM_GPU_MEMORY_UTILIZATION:-0.9}" \
  ${MAX_LEN:+--max_model_len "$MAX_LEN"} "$@"
