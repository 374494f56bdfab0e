#!/usr/bin/env bash
# Classify every preprocessed image tensor of a model with the C guest, in-process (no cluster).
# usage: hack/demo.sh MODELS_DIR MODEL GUEST.wasm
set -euo pipefail
models_dir=${1:?models directory}
model=${2:?model name}
guest=${3:?guest wasm}
tensors="$models_dir/$model/tensors"
if [ ! -d "$tensors" ]; then
  echo "demo: no tensors directory $tensors (see README: bringing your own model)" >&2
  exit 2
fi
args=()
for f in "$tensors"/*.f32; do
  args+=("/tensors/$(basename "$f")")
done
here=$(cd "$(dirname "$0")/.." && pwd)
set -x
"$here/.venv/bin/wasinn" run --models-dir "$models_dir" \
  -S nn --dir "$tensors::/tensors" "$guest" --model "$model" "${args[@]}"
