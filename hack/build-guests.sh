#!/usr/bin/env bash
# Builds the example wasi-nn guests:
#   OUTDIR/classify-c.wasm          examples/classify-c   (clang --target=wasm32-wasi + wasi-libc)
#   OUTDIR/classify-rust.wasm       examples/classify-rust (Debian rustc 1.63 + libstd-rust-dev-wasm32)
#   OUTDIR/classify-component.wasm  examples/classify-component: a wasi:nn@0.2.0-rc-2024-10-28
#                                   component (Debian rustc for the core module, then wasm-tools
#                                   component embed + component new with the WASI preview1 adapter)
#   OUTDIR/nn-probe-component.wasm  tests/runtime/guests/nn-probe-component, a test guest built
#                                   the same way
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
#
# The component guest also needs, pinned and cached under $WASINN_CACHE/tools:
#   wasm-tools (hack/versions.env), built once with `cargo install` by a cargo >= 1.88 (rustup's;
#     WASINN_HOST_CARGO names one) or given as WASINN_WASM_TOOLS; its wasmparser is the one
#     wasmtime 50 (the engine's wasmtime-py) uses;
#   the WASI preview1 adapter (wasi_snapshot_preview1.command.wasm) of that wasmtime,
#     from the crates registry's wasi-preview1-component-adapter-provider, checked by sha256.
# Without wasm-tools the component guest is skipped with a message naming it.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WASM_TOOLS_FEATURES=component,validate,print,parse,metadata,strip

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

# ---- Rust toolchain and crates (both Rust guests) ----------------------------------------

# rust_toolchain: sets rustc and cargo (Debian's, with the wasm32-wasi standard library).
rust_toolchain() {
    local sysroot
    rustc=$(pick "${WASINN_RUSTC:-}" /usr/bin/rustc rustc) || die "rustc not found (apt-get install rustc libstd-rust-dev-wasm32)"
    cargo=$(pick "${WASINN_CARGO:-}" /usr/bin/cargo cargo) || die "cargo not found (apt-get install cargo)"
    sysroot=$("$rustc" --print sysroot) || die "$rustc --print sysroot failed"
    compgen -G "$sysroot/lib/rustlib/wasm32-wasi/lib/libstd-*.rlib" >/dev/null ||
        die "$rustc ($("$rustc" --version)) has no wasm32-wasi standard library: apt-get install libstd-rust-dev-wasm32 (Debian's rustc; rustup cannot add targets offline; or set WASINN_RUSTC)"
    # Debian's rustc links wasm with rust-lld, a symlink into lld-14.
    if [[ $rustc == /usr/bin/rustc ]] && [[ ! -e /usr/bin/rust-lld ]]; then
        die "/usr/bin/rust-lld is missing or dangling: the wasm linker (apt-get install lld)"
    fi
    cargo_home="$cache/cargo"
}

# vendor_crates MANIFEST_DIR VENDOR_DIR LABEL KEY_FILE [--locked]: the crates of MANIFEST_DIR
# into VENDOR_DIR, once per content of KEY_FILE (the lock file, or the manifest when cargo
# makes the lock file), so builds run --offline.
vendor_crates() {
    local crate=$1 vendor=$2 label=$3 key=$4 locked=${5:-} lock_sum
    lock_sum=$(sha256sum "$key" | cut -d' ' -f1)
    if [[ -f $vendor/.wasinn-lock-sha256 && $(<"$vendor/.wasinn-lock-sha256") == "$lock_sum" ]]; then
        return 0
    fi
    # Cargo < 1.68 (Debian 12 has 1.65) only speaks the sparse protocol as an unstable
    # feature; RUSTC_BOOTSTRAP lets this stable cargo use it. GitHub's git index is unreachable.
    local minor
    local -a flags=()
    minor=$("$cargo" --version | sed -n 's/^cargo 1\.\([0-9]*\).*/\1/p')
    if [[ -n $minor && $minor -lt 68 ]]; then
        flags=(-Z sparse-registry)
    fi
    [[ -n $locked ]] && flags+=("$locked")
    echo "$label: vendoring crates into $vendor"
    rm -rf "$vendor.tmp"
    mkdir -p "$cargo_home"
    if ! CARGO_HOME="$cargo_home" RUSTC="$rustc" RUSTC_BOOTSTRAP=1 \
        CARGO_REGISTRIES_CRATES_IO_PROTOCOL=sparse \
        "$cargo" "${flags[@]}" vendor --manifest-path "$crate/Cargo.toml" \
        "$vendor.tmp" >"$cache/vendor.log" 2>&1; then
        sed 's/^/  /' "$cache/vendor.log" >&2
        rm -rf "$vendor.tmp"
        die "cannot vendor the crates of $crate from crates.io (network to crates.io is needed once)"
    fi
    echo "$lock_sum" >"$vendor.tmp/.wasinn-lock-sha256"
    rm -rf "$vendor"
    mv "$vendor.tmp" "$vendor"
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

    local rustc cargo cargo_home vendor="$cache/cargo/vendor"
    rust_toolchain
    vendor_crates "$crate" "$vendor" classify-rust "$crate/Cargo.lock" --locked
    echo "classify-rust.wasm: building"
    local target_dir="$cache/target/classify-rust"
    CARGO_HOME="$cargo_home" RUSTC="$rustc" "$cargo" build --release --locked --offline \
        --target wasm32-wasi --manifest-path "$crate/Cargo.toml" --target-dir "$target_dir" \
        --config "source.crates-io.replace-with='wasinn-vendor'" \
        --config "source.wasinn-vendor.directory='$vendor'"
    cp -f "$target_dir/wasm32-wasi/release/classify.wasm" "$out.tmp"
    mv -f "$out.tmp" "$out"
}

# ---- Component guest --------------------------------------------------------------------

# wasm_tools: print the pinned wasm-tools (WASINN_WASM_TOOLS, else the cached build, else one
# built now with a cargo >= 1.88); fail with the reason when there is none.
wasm_tools() {
    if [[ -n ${WASINN_WASM_TOOLS:-} ]]; then
        command -v "$WASINN_WASM_TOOLS" || { echo "WASINN_WASM_TOOLS=$WASINN_WASM_TOOLS is not a command"; return 1; }
        return 0
    fi
    local root="$cache/tools/wasm-tools-$WASM_TOOLS_VERSION" host_cargo="" candidate minor
    if [[ -x $root/bin/wasm-tools ]] && "$root/bin/wasm-tools" --version | grep -qF " $WASM_TOOLS_VERSION"; then
        echo "$root/bin/wasm-tools"
        return 0
    fi
    for candidate in "${WASINN_HOST_CARGO:-}" "$HOME/.cargo/bin/cargo" "$(command -v cargo || true)"; do
        [[ -n $candidate ]] || continue
        minor=$("$candidate" --version 2>/dev/null | sed -n 's/^cargo 1\.\([0-9]*\)\..*/\1/p')
        if [[ -n $minor && $minor -ge 88 ]]; then
            host_cargo=$candidate
            break
        fi
    done
    if [[ -z $host_cargo ]]; then
        echo "wasm-tools $WASM_TOOLS_VERSION is not installed and no cargo >= 1.88 (rustup's) can build it; set WASINN_WASM_TOOLS or WASINN_HOST_CARGO"
        return 1
    fi
    local log="$cache/tools/wasm-tools-$WASM_TOOLS_VERSION.log"
    mkdir -p "$cache/tools"
    echo "classify-component: building wasm-tools $WASM_TOOLS_VERSION (one-time; log: $log)" >&2
    if ! CARGO_TARGET_DIR="$cache/tools/wasm-tools-target" nice -n 10 "$host_cargo" install \
        "wasm-tools@$WASM_TOOLS_VERSION" --locked --no-default-features \
        --features "$WASM_TOOLS_FEATURES" --root "$root" >"$log" 2>&1; then
        tail -5 "$log" >&2
        echo "building wasm-tools $WASM_TOOLS_VERSION failed (log: $log)"
        return 1
    fi
    rm -rf "$cache/tools/wasm-tools-target"
    echo "$root/bin/wasm-tools"
}

# wasi_adapter: print the WASI preview1 command adapter of wasmtime $WASI_ADAPTER_VERSION, taken once
# from the crates registry (wasi-preview1-component-adapter-provider) and checked by sha256.
wasi_adapter() {
    local file="$cache/tools/wasi_snapshot_preview1.command-$WASI_ADAPTER_VERSION.wasm"
    if [[ ! -f $file ]]; then
        local fetch="$cache/tools/adapter-$WASI_ADAPTER_VERSION" vendor="$cache/cargo/vendor-adapter-$WASI_ADAPTER_VERSION"
        mkdir -p "$fetch/src"
        : >"$fetch/src/lib.rs"
        printf '%s\n' '[package]' 'name = "wasinn-adapter-fetch"' 'version = "0.0.0"' \
            'edition = "2021"' '' '[dependencies]' \
            "wasi-preview1-component-adapter-provider = \"=$WASI_ADAPTER_VERSION\"" '' '[workspace]' \
            >"$fetch/Cargo.toml"
        vendor_crates "$fetch" "$vendor" classify-component "$fetch/Cargo.toml" >&2
        cp -f "$vendor/wasi-preview1-component-adapter-provider/artefacts/wasi_snapshot_preview1.command.wasm" "$file.tmp"
        mv -f "$file.tmp" "$file"
    fi
    if [[ $(sha256sum "$file" | cut -d' ' -f1) != "$WASI_ADAPTER_SHA256" ]]; then
        rm -f "$file"
        die "the WASI adapter of wasi-preview1-component-adapter-provider $WASI_ADAPTER_VERSION does not have the pinned sha256"
    fi
    echo "$file"
}

# build_component CRATE_DIR BIN OUT_NAME: the crate's binary BIN, a core module importing
# wasi:nn@0.2.0-rc-2024-10-28 (world `classify` of examples/classify-component/wit) and WASI
# preview1, made a WASI 0.2 command component OUTDIR/OUT_NAME.
build_component() {
    local crate=$1 bin=$2 out="$outdir/$3" wit="$root/examples/classify-component/wit"
    local -a srcs
    mapfile -t srcs < <(find "$crate/src" "$wit" "$root/examples/classify-component/src" -type f)
    if up_to_date "$out" "$crate/Cargo.toml" "$crate/Cargo.lock" "${srcs[@]}" "$script"; then
        echo "$3: up to date"
        return 0
    fi
    local tools
    if ! tools=$(wasm_tools); then
        echo "$3: skipped: $tools"
        return 0
    fi
    local rustc cargo cargo_home adapter
    rust_toolchain
    adapter=$(wasi_adapter)

    echo "$3: building"
    local target_dir="$cache/target/${3%.wasm}"
    # No crates: the bindings are in the source, so no vendoring.
    CARGO_HOME="$cargo_home" RUSTC="$rustc" "$cargo" build --release --locked --offline \
        --target wasm32-wasi --manifest-path "$crate/Cargo.toml" --target-dir "$target_dir"
    # wasm-ld wraps every export of a command in a call of libc's constructors, cabi_realloc
    # too. The host calls cabi_realloc while it returns a list to the guest, where the component
    # model forbids calling out, and this wasi-libc's constructor calls WASI (preopens): the
    # guest would trap with "cannot leave component instance". Export the unwrapped function
    # (the constructors have run by then: main is running).
    local wat="$target_dir/core.wat"
    "$tools" print "$target_dir/wasm32-wasi/release/$bin.wasm" -o "$wat"
    # shellcheck disable=SC2016 # wasm text names start with $
    sed -i 's/(export "cabi_realloc" (func \$cabi_realloc\.command_export))/(export "cabi_realloc" (func $cabi_realloc))/' "$wat"
    # shellcheck disable=SC2016
    grep -qF '(export "cabi_realloc" (func $cabi_realloc))' "$wat" ||
        die "$3: cannot find the function cabi_realloc in the core module"
    "$tools" parse "$wat" -o "$target_dir/core.wasm"
    "$tools" component embed "$wit" --world classify "$target_dir/core.wasm" \
        -o "$target_dir/embedded.wasm"
    "$tools" component new "$target_dir/embedded.wasm" \
        --adapt "wasi_snapshot_preview1=$adapter" -o "$out.tmp"
    "$tools" validate "$out.tmp"
    mv -f "$out.tmp" "$out"
}

build_c
build_rust
build_component "$root/examples/classify-component" classify classify-component.wasm
# A test guest (tests/runtime/test_component_nn.py) on the same bindings.
build_component "$root/tests/runtime/guests/nn-probe-component" nn-probe nn-probe-component.wasm
