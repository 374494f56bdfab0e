#!/usr/bin/env python3
"""How much host memory a guest's wasi-nn loads cost: the figure behind the graph limits.

Two measurements, printed as tables (nothing is asserted):

1. `wasinn run` with a 160 MiB linear-memory cap running tests/runtime/guests/nn_hog.c in
   several modes (distinct/same/padded/garbage loads, named loads, contexts): the peak RSS of the
   process (from wait4) and what the guest's calls returned. Run it against another checkout with
   `--src DIR` (e.g. the main branch, for before/after figures).
2. `--calibrate`: in one process, the RSS each additional EfficientNet graph loaded from bytes
   costs, at f32 and at the device's default precision, as a multiple of the model's size: the
   measurement behind `nn.budget.GRAPH_MEMORY_FACTOR`.

Usage: hack/measure_graph_memory.py [--models-dir DIR] [--src CHECKOUT] [--calibrate]
Needs clang + wasi-libc (the guest is built into a temporary directory).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUEST_SOURCE = ROOT / "tests" / "runtime" / "guests" / "nn_hog.c"
CAP = "160MiB"
SCENARIOS = [
    ("distinct 64", "64 loads of the EfficientNet IR, each with other bytes"),
    ("same 64", "64 loads of the same bytes"),
    ("padded 120", "one load with 120 MiB of weights"),
    ("garbage 150", "one load of a 150 MiB onnx builder of zeros"),
    ("named 64", "64 load_by_name of one model"),
    ("contexts 300", "300 execution contexts on one graph"),
]


def build_guest(out: Path) -> Path:
    """nn_hog.wasm, built with clang for wasm32-wasi."""
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("clang is missing (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)")
    wasm = out / "nn_hog.wasm"
    subprocess.run(
        [
            clang,
            "--target=wasm32-wasi",
            "-O2",
            "-Wall",
            "-Wextra",
            "-o",
            str(wasm),
            str(GUEST_SOURCE),
        ],
        check=True,
    )
    return wasm


def peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """(peak RSS in KiB, stdout, stderr) of a command run to completion."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, _, usage = os.wait4(process.pid, 0)
        process.returncode = 0  # reaped by wait4
        out.seek(0)
        err.seek(0)
        return (
            usage.ru_maxrss,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def summarize(stdout: str) -> str:
    """`call: N x errno E, ...` from the guest's `<call> <i> <errno>` lines."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            counts[(parts[0], parts[2])] += 1
    return ", ".join(f"{n} x {call}={errno}" for (call, errno), n in sorted(counts.items()))


def runs(models_dir: Path, src: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="wasinn-measure-") as tmp:
        wasm = build_guest(Path(tmp))
        env = {**os.environ, "WASINN_CACHE_DIR": str(Path(tmp) / "cache")}
        if src is not None:
            env["PYTHONPATH"] = str(src / "operator")
        command = [
            sys.executable,
            "-c",
            "import sys; from wasinn_operator.cli import main; sys.exit(main())",
        ]
        print(f"wasinn run -W max-memory-size={CAP} nn_hog.wasm MODE  (code: {src or ROOT})")
        for mode, what in SCENARIOS:
            print(f"  {mode}: {what}")
        print(f"{'mode':<14} {'peak RSS':>10}  {'x cap':>6}  calls (errno)")
        for mode, _ in SCENARIOS:
            flags = ["--models-dir", str(models_dir), "-W", f"max-memory-size={CAP}"]
            argv = [*command, "run", *flags, str(wasm), *mode.split()]
            rss, stdout, _ = peak_rss(argv, env)
            print(
                f"{mode:<14} {rss / 1024:>7.0f} MiB  {rss / 1024 / 160:>5.1f}x  {summarize(stdout)}"
            )


def calibrate(models_dir: Path) -> None:
    """RSS per extra EfficientNet graph loaded from bytes, as a multiple of the model size."""
    import wasmtime

    from wasinn_operator.runtime import RunSpec, Runtime, RuntimeConfig

    shim = wasmtime.wat2wasm((ROOT / "tests" / "runtime" / "guests" / "nn_shim.wat").read_text())
    model = models_dir / "efficientnet-lite0"
    xml, weights = (model / "model.xml").read_bytes(), (model / "model.bin").read_bytes()
    size = len(xml) + len(weights)
    for precision in ("f32", None):
        runtime = Runtime(
            RuntimeConfig(inference_precision=precision, max_graph_memory=64 << 30, max_graphs=64)
        )
        s = runtime.session(RunSpec(wasm=shim))
        base = 0x200000
        s.write(base + len(xml) + 64, weights)
        deltas = []
        for i in range(9):
            text = xml + f"<!-- {i} -->".encode()
            s.write(base, text.ljust(len(xml) + 64, b" "))
            s.write(0x1000, struct.pack("<4I", base, len(text), base + len(xml) + 64, len(weights)))
            before = _rss()
            assert s.call("nn_load", 0x1000, 2, 0, 0, 0x200) == 0, s.stderr
            deltas.append(_rss() - before)
        steady = sorted(deltas[1:])[len(deltas[1:]) // 2]  # the first pays for one-time setup
        mib = 1 << 20
        print(
            f"{precision or 'default':>7}: model {size / mib:.1f} MiB, "
            f"first graph +{deltas[0] / mib:.0f} MiB ({deltas[0] / size:.1f}x), "
            f"median next +{steady / mib:.0f} MiB = {steady / size:.2f}x the model"
        )


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("WASINN_MODELS_DIR") or ROOT.parent / "shared" / "models"),
    )
    parser.add_argument("--src", type=Path, help="measure this checkout's code instead")
    parser.add_argument("--calibrate", action="store_true", help="measure the per-graph factor")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(args.models_dir)
    else:
        runs(args.models_dir, args.src)


if __name__ == "__main__":
    main()
