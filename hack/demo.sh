#!/usr/bin/env bash
# The main job, with no cluster: preprocess a model's example images into tensors and classify
# them with a wasi-nn guest running in the embedded engine (wasmtime + OpenVINO).
# usage: hack/demo.sh MODELS_DIR MODEL GUEST.wasm
set -euo pipefail
if [ ! -d "${1:?models directory}" ]; then
  echo "demo: models directory $1 does not exist (\`make models\` fetches the demo models)" >&2
  exit 2
fi
models_dir=$(cd "$1" && pwd)
model=${2:?model name}
guest=${3:?guest wasm}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"

images="$models_dir/$model/images"
tensors="$here/build/demo/$model"
if [ -d "$images" ]; then
  mkdir -p "$tensors"
  "$py" "$here/hack/image_to_tensor.py" --out "$tensors" "$images"/* >/dev/null
elif [ -d "$models_dir/$model/tensors" ]; then
  tensors="$models_dir/$model/tensors"
else
  echo "demo: $models_dir/$model has neither images/ nor tensors/ (see README: Models)" >&2
  exit 2
fi

args=()
for f in "$tensors"/*.f32; do
  args+=("/tensors/$(basename "$f")")
done
echo "+ wasinn run --models-dir $models_dir -S nn --dir $tensors::/tensors $(basename "$guest") --model $model ${args[*]}"
exec "$here/.venv/bin/wasinn" run --models-dir "$models_dir" \
  -S nn --dir "$tensors::/tensors" "$guest" --model "$model" "${args[@]}"
