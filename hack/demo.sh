#!/usr/bin/env bash
# The main job, with no cluster: preprocess a model's example images into tensors and classify
# them with a wasi-nn guest running in the embedded engine (wasmtime + OpenVINO).
# usage: hack/demo.sh MODELS_DIR MODEL GUEST.wasm
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [ ! -d "${1:?models directory}" ]; then
  die "models directory $1 does not exist (\`make models\` fetches the demo models)"
fi
models_dir=$(cd "$1" && pwd)
model=${2:?model name}
guest=${3:?guest wasm}
py="$REPO_ROOT/.venv/bin/python"

images="$models_dir/$model/images"
tensors="$REPO_ROOT/build/demo/$model"
if [ -d "$images" ]; then
  mkdir -p "$tensors"
  "$py" "$REPO_ROOT/hack/image_to_tensor.py" --out "$tensors" "$images"/* >/dev/null
elif [ -d "$models_dir/$model/tensors" ]; then
  tensors="$models_dir/$model/tensors"
else
  log "$models_dir/$model has neither images/ nor tensors/ (see README: Models)"
  exit 2
fi

args=()
for f in "$tensors"/*.f32; do
  args+=("/tensors/$(basename "$f")")
done
echo "+ wasinn run --models-dir $models_dir -S nn --dir $tensors::/tensors $(basename "$guest") --model $model ${args[*]}"
exec "$REPO_ROOT/.venv/bin/wasinn" run --models-dir "$models_dir" \
  -S nn --dir "$tensors::/tensors" "$guest" --model "$model" "${args[@]}"
