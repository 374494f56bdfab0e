#!/usr/bin/env bash
# Builds the example wasi-nn guests:
#   OUTDIR/classify-c.wasm     examples/classify-c   (clang --target=wasm32-wasi + wasi-libc)
#   OUTDIR/classify-rust.wasm  examples/classify-rust (Debian rustc 1.63 + libstd-rust-dev-wasm32)
#
# Usage: hack/build-guests.sh OUTDIR
#
# Incremental: a guest is rebuilt only when one of its sources (or this script) is newer than
# its output. Nothing is written into the repository: crates are vendored into
# $WASINN_CACHE/cargo/vendor and Rust builds go to $WASINN_CACHE/target
# (WASINN_CACHE defaults to ~/.cache/wasinn).
#
# Debian 12 packages: clang lld wasi-libc libclang-rt-14-dev-wasm32 rustc cargo
# libstd-rust-dev-wasm32. Network is needed only once, to fetch crates from crates.io
# (sparse protocol; GitHub's git index is not used).
# Overrides: WASINN_CLANG, WASINN_RUSTC, WASINN_CARGO (defaults: clang, /usr/bin/rustc,
# /usr/bin/cargo: rustup's toolchains, often earlier on PATH, lack the wasm32-wasi target).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
script="$root/hack/build-guests.sh"
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
cache=${WASINN_CACHE:-${HOME:?HOME is not set; set WASINN_CACHE}/.cache/wasinn}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# up_to_date OUTPUT SOURCE... : true when OUTPUT exists and no SOURCE is newer.
up_to_date() {
    local out=$1 src
    shift
    [[ -f $out ]] || return 1
    for src in "$@"; do
        [[ $src -nt $out ]] && return 1
    done
    return 0
}

pick() { # first of the arguments that is an executable or a command on PATH
    local c
    for c in "$@"; do
        if [[ -n $c ]] && command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

# ---- C guest ----------------------------------------------------------------------------

build_c() {
    local src="$root/examples/classify-c/classify.c" out="$outdir/classify-c.wasm"
    if up_to_date "$out" "$src" "$script"; then
        echo "classify-c.wasm: up to date"
        return 0
    fi
    local clang
    clang=$(pick "${WASINN_CLANG:-clang}") || die "clang not found (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"

    # A probe build turns clang's failure into the name of the missing Debian package.
    local tmp log
    tmp=$(mktemp -d)
    log="$tmp/log"
    printf '#include <stdio.h>\nint main(void){puts("ok");return 0;}\n' >"$tmp/probe.c"
    if ! "$clang" --target=wasm32-wasi -O2 "$tmp/probe.c" -o "$tmp/probe.wasm" >"$log" 2>&1; then
        local why
        if grep -q "file not found" "$log"; then
            why="the wasi-libc headers are missing (apt-get install wasi-libc)"
        elif grep -q "libclang_rt.builtins-wasm32" "$log"; then
            why="the wasm32 compiler runtime is missing (apt-get install libclang-rt-14-dev-wasm32)"
        elif grep -q "wasm-ld" "$log"; then
            why="the wasm linker wasm-ld is missing (apt-get install lld)"
        elif grep -q -e "crt1.*\.o" -e "-lc\b" "$log"; then
            why="the wasi-libc libraries are missing (apt-get install wasi-libc)"
        else
            why="$clang cannot build for wasm32-wasi"
        fi
        sed 's/^/  /' "$log" >&2
        rm -rf "$tmp"
        die "$why"
    fi
    rm -rf "$tmp"

    echo "classify-c.wasm: building"
    # Build beside the output and rename, so a failed build never leaves a fresh-looking file.
    "$clang" --target=wasm32-wasi -O2 -Wall -Wextra -o "$out.tmp" "$src"
    mv -f "$out.tmp" "$out"
}

# ---- Rust guest -------------------------------------------------------------------------

build_rust() {
    local crate="$root/examples/classify-rust" out="$outdir/classify-rust.wasm"
    local -a srcs
    mapfile -t srcs < <(find "$crate/src" -type f -name '*.rs')
    if up_to_date "$out" "$crate/Cargo.toml" "$crate/Cargo.lock" "${srcs[@]}" "$script"; then
        echo "classify-rust.wasm: up to date"
        return 0
    fi

    local rustc cargo sysroot
    rustc=$(pick "${WASINN_RUSTC:-}" /usr/bin/rustc rustc) || die "rustc not found (apt-get install rustc libstd-rust-dev-wasm32)"
    cargo=$(pick "${WASINN_CARGO:-}" /usr/bin/cargo cargo) || die "cargo not found (apt-get install cargo)"
    sysroot=$("$rustc" --print sysroot) || die "$rustc --print sysroot failed"
    compgen -G "$sysroot/lib/rustlib/wasm32-wasi/lib/libstd-*.rlib" >/dev/null ||
        die "$rustc ($("$rustc" --version)) has no wasm32-wasi standard library: apt-get install libstd-rust-dev-wasm32 (Debian's rustc; rustup cannot add targets offline; or set WASINN_RUSTC)"
    # Debian's rustc links wasm with rust-lld, a symlink into lld-14.
    if [[ $rustc == /usr/bin/rustc ]] && [[ ! -e /usr/bin/rust-lld ]]; then
        die "/usr/bin/rust-lld is missing or dangling: the wasm linker (apt-get install lld)"
    fi

    # Vendor the locked crates once per Cargo.lock, so builds run --offline.
    local cargo_home="$cache/cargo" vendor="$cache/cargo/vendor" lock_sum
    lock_sum=$(sha256sum "$crate/Cargo.lock" | cut -d' ' -f1)
    if [[ ! -f $vendor/.wasinn-lock-sha256 || $(<"$vendor/.wasinn-lock-sha256") != "$lock_sum" ]]; then
        # Cargo < 1.68 (Debian 12 has 1.65) only speaks the sparse protocol as an unstable
        # feature; RUSTC_BOOTSTRAP lets this stable cargo use it. GitHub's git index is unreachable.
        local minor
        local -a zflags=()
        minor=$("$cargo" --version | sed -n 's/^cargo 1\.\([0-9]*\).*/\1/p')
        if [[ -n $minor && $minor -lt 68 ]]; then
            zflags=(-Z sparse-registry)
        fi
        echo "classify-rust: vendoring crates into $vendor"
        rm -rf "$vendor.tmp"
        mkdir -p "$cargo_home"
        if ! CARGO_HOME="$cargo_home" RUSTC="$rustc" RUSTC_BOOTSTRAP=1 \
            CARGO_REGISTRIES_CRATES_IO_PROTOCOL=sparse \
            "$cargo" "${zflags[@]}" vendor --locked --manifest-path "$crate/Cargo.toml" \
            "$vendor.tmp" >"$cache/vendor.log" 2>&1; then
            sed 's/^/  /' "$cache/vendor.log" >&2
            rm -rf "$vendor.tmp"
            die "cannot vendor the crates of $crate/Cargo.lock from crates.io (network to crates.io is needed once)"
        fi
        echo "$lock_sum" >"$vendor.tmp/.wasinn-lock-sha256"
        rm -rf "$vendor"
        mv "$vendor.tmp" "$vendor"
    fi

    echo "classify-rust.wasm: building"
    local target_dir="$cache/target/classify-rust"
    CARGO_HOME="$cargo_home" RUSTC="$rustc" "$cargo" build --release --locked --offline \
        --target wasm32-wasi --manifest-path "$crate/Cargo.toml" --target-dir "$target_dir" \
        --config "source.crates-io.replace-with='wasinn-vendor'" \
        --config "source.wasinn-vendor.directory='$vendor'"
    cp -f "$target_dir/wasm32-wasi/release/classify.wasm" "$out.tmp"
    mv -f "$out.tmp" "$out"
}

build_c
build_rust
