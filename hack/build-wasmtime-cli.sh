#!/usr/bin/env bash
# Build the real wasmtime CLI (with wasi-nn) from crates.io, cached outside the repo.
# Its OpenVINO backend loads libopenvino_c at run time; the proplet points it at the PyPI
# wheel's copy. Prints the binary's path.
#   usage: hack/build-wasmtime-cli.sh        (WASINN_CACHE overrides ~/.cache/wasinn; CARGO
#                                            names a cargo >= 1.91; the version is pinned in
#                                            hack/versions.env)
# Slim features (the defaults add serve, wast, wizer, winch, pulley, gc, debug, ... and build far
# longer): `run` (core modules and components, --dir/--env/--invoke/-W/-O/-S), `wasi-nn` (its
# default features include OpenVINO), and `component-model`, needed even for core modules:
# src/commands/run.rs links wasi_ephemeral_nn only under cfg(all(feature = "wasi-nn", feature =
# "component-model")), else `-S nn` gives `unknown import: wasi_ephemeral_nn::load`. Left out:
# -W threads/gc/component-model-async, -D coredump. A cached binary is reused if cargo's install
# record shows these features or the defaults (a superset); anything else is rebuilt.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
version=$WASMTIME_CLI_VERSION
features=run,component-model,wasi-nn,cranelift,wat,parallel-compilation,pooling-allocator,cache,logging,backtrace,demangle,clap/default,clap/wrap_help
root="$CACHE/wasmtime-cli/$version"
binary="$root/bin/wasmtime"
reusable() { # cargo install writes its features, sorted, to $root/.crates2.json
  local record="$root/.crates2.json" sorted
  [ -x "$binary" ] && [ -f "$record" ] && "$binary" --version | grep -q "$version" || return 1
  sorted=$(tr , '\n' <<<"$features" | LC_ALL=C sort | sed 's/.*/"&"/' | paste -sd, -)
  grep -qF '"no_default_features":false' "$record" ||
    grep -qF "\"features\":[$sorted],\"all_features\":false,\"no_default_features\":true" "$record"
}
if reusable; then
  echo "$binary"
  exit 0
fi
# The first cargo >= 1.91 (wasmtime 48's MSRV): rustup's, not Debian's /usr/bin/cargo (1.65),
# whichever comes first on PATH.
cargo=""
for candidate in "${CARGO:-}" "$HOME/.cargo/bin/cargo" "$(command -v cargo || true)"; do
  [ -n "$candidate" ] || continue
  minor=$("$candidate" --version 2>/dev/null | sed -n 's/^cargo 1\.\([0-9]*\)\..*/\1/p')
  if [ -n "$minor" ] && [ "$minor" -ge 91 ]; then
    cargo=$candidate
    break
  fi
done
[ -n "$cargo" ] || die "cargo >= 1.91 (rustup's) is needed to build wasmtime-cli $version"
mkdir -p "$root"
build_log="$CACHE/wasmtime-cli/build-$version.log"
log "building wasmtime-cli $version with wasi-nn (slow on 2 cores; log: $build_log)"
CARGO_TARGET_DIR="$CACHE/wasmtime-cli/target" nice -n 10 "$cargo" install "wasmtime-cli@$version" \
  --locked --force --no-default-features --features "$features" --root "$root" >"$build_log" 2>&1 || {
  tail -20 "$build_log" >&2
  exit 1
}
rm -rf "$CACHE/wasmtime-cli/target"
echo "$binary"
