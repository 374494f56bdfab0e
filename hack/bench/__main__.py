"""hack/bench: wasinn's benchmark suite, one entry point.

usage: .venv/bin/python hack/bench [--only runtime,startup,local,rest,image,cluster,operator]
                                   [--quick]
                                   [--tasks N] [--json out.json] [--compare old.json]
                                   [--plot out.png] [--models-dir DIR] [--guest WASM]

Sections: runtime (native OpenVINO vs the wasm guest per shared model, batch 1 and 8), startup
(cold vs warm process, per stage), local (the local shim end to end at concurrency 1/4/16),
rest (the shim's GET/POST requests/s), image (the proplet image's first task under podman, when
the image is built), cluster (only when `hack/cluster status` is up), operator (the operator
alone on a test control plane: task -> Pod latency at 20 tasks/s and RSS growth over --tasks
tasks, default 1,000, quick 100; hack/bench/controller.py; only when asked for).
Prints a table; --json writes the results for comparing commits, --compare prints new/old.
Timings are of this machine under its current load: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report

ROOT = Path(__file__).resolve().parent.parent.parent
SECTIONS = ("runtime", "startup", "local", "rest", "image", "cluster", "operator")
# operator starts a control plane of its own (minutes, and the Kubernetes binaries): asked for.
DEFAULT = SECTIONS[:-1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def meta(args: argparse.Namespace) -> dict[str, object]:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return {
        "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "sections": args.only,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def parse_only(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or '(none)'}; choose from {','.join(SECTIONS)}"
        )
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(prog="hack/bench", description=__doc__.splitlines()[0])
    every = ",".join(DEFAULT)
    parser.add_argument(
        "--only", type=parse_only, default=list(DEFAULT), help=f"sections (default {every})"
    )
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--tasks", type=int, help="local: tasks per concurrency (200; quick 20)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--compare", type=Path, help="print new/old against this JSON")
    parser.add_argument("--plot", type=Path, help="PNG of the results (needs matplotlib)")
    models = os.environ.get("WASINN_MODELS_DIR") or ROOT.parent / "shared" / "models"
    parser.add_argument("--models-dir", type=Path, default=Path(models))
    parser.add_argument("--guest", type=Path, default=ROOT / "build/guests/classify-c.wasm")
    parser.add_argument("--startup-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models_dir, guest = args.models_dir.resolve(), args.guest.resolve()
    if args.startup_child is not None:
        import engine

        engine._child(models_dir, guest, args.startup_child, args.spawned)
    old = report.load_rows(args.compare) if args.compare else None  # fail before measuring
    for needed, what in ((guest, "the classify guest (make guests)"), (models_dir, "models")):
        if not needed.exists():
            parser.error(f"{needed} does not exist: {what}")
    rows: list[report.Row] = []
    for section in args.only:
        began = time.perf_counter()
        print(f"== {section} ...", file=sys.stderr, flush=True)
        if section in ("runtime", "startup"):
            import engine

            run = engine.runtime_section if section == "runtime" else engine.startup_section
            rows += run(models_dir, guest, args.quick)
        elif section == "local":
            import service

            rows += service.local_section(
                models_dir, guest, args.tasks or (20 if args.quick else 200)
            )
        elif section == "rest":
            import service

            rows += service.rest_section(models_dir, guest, args.quick)
        elif section == "image":
            import image

            image_rows, skipped = image.image_section(models_dir, guest, args.quick)
            rows += image_rows
            if skipped:
                print(skipped, file=sys.stderr)
        elif section == "operator":
            import controller

            count = args.tasks or (100 if args.quick else 1000)
            rows += controller.operator_section(count, 20.0, 0, models_dir)
        else:
            import service

            cluster_rows, skipped = service.cluster_section(guest, args.quick)
            rows += cluster_rows
            if skipped:
                print(skipped, file=sys.stderr)
        print(f"   {section}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print(report.table(rows))
    if args.json:
        report.write_json(args.json, rows, meta(args))
        print(f"results written to {args.json}", file=sys.stderr)
    if old is not None:
        print()
        print(report.compare(old, rows))
    if args.plot:
        print(report.plot(rows, args.plot), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
