#!/usr/bin/env bash
# Build the real wasmtime CLI (with wasi-nn) from crates.io, cached outside the repo.
# Its OpenVINO backend loads libopenvino_c at run time; the proplet points it at the PyPI
# wheel's copy. Prints the binary's path.
#   usage: hack/build-wasmtime-cli.sh        (WASINN_CACHE overrides ~/.cache/wasinn)
set -euo pipefail
version=48.0.8 # the newest release whose MSRV the toolchain here (rustc 1.95) meets
cache=${WASINN_CACHE:-$HOME/.cache/wasinn}
root="$cache/wasmtime-cli/$version"
binary="$root/bin/wasmtime"
if [ -x "$binary" ] && "$binary" --version | grep -q "$version"; then
  echo "$binary"
  exit 0
fi
cargo=$(command -v cargo || true)
[ -n "$cargo" ] || cargo="$HOME/.cargo/bin/cargo"
if ! "$cargo" --version >/dev/null 2>&1; then
  echo "build-wasmtime-cli: cargo (rustup's, >= 1.91) is needed to build wasmtime-cli $version" >&2
  exit 1
fi
mkdir -p "$root"
log="$cache/wasmtime-cli/build-$version.log"
echo "building wasmtime-cli $version with wasi-nn (slow on 2 cores; log: $log)" >&2
CARGO_TARGET_DIR="$cache/wasmtime-cli/target" nice -n 10 "$cargo" install "wasmtime-cli@$version" \
  --locked --features wasi-nn --root "$root" >"$log" 2>&1 || {
  tail -20 "$log" >&2
  exit 1
}
rm -rf "$cache/wasmtime-cli/target"
echo "$binary"
