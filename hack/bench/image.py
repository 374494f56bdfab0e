"""The proplet image's first task: `podman run` of the image as a Pod runs it, wall time.

Three kinds of run, alternated so load changes hit them alike:
- baseline: the same container (read-only root, no network, non-root) running the image's
  Python with nothing to do: what the container runtime and the interpreter cost;
- cold: one classification with the task's cache on the container's own tmpfs, empty, as in a
  new pod-per-task Pod (its `/tmp/wasinn-cache` is an emptyDir);
- warm: the same with a cache directory populated by an earlier run mounted there, what a Pod
  with a node-local compiled-module/model cache would see.
`cold - baseline` is what the proplet itself adds to a Pod's start. Skipped (with the reason)
without podman or without the image (`hack/build-images.sh proplet` builds it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import report

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = os.environ.get("WASINN_PROPLET_IMAGE", "localhost/wasinn-proplet:dev")
UID = 65532
TENSOR = "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "hack" / "containers.conf"))
    return env


def _podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=_env(), check=False
    )


def _skip_reason() -> str | None:
    if shutil.which("podman") is None:
        return "image: skipped: podman is not installed"
    if _podman("image", "exists", IMAGE, timeout=60).returncode != 0:
        return f"image: skipped: no image {IMAGE} (hack/build-images.sh proplet builds it)"
    return None


def _run(work: Path, guest: Path, models_dir: Path, kind: str) -> float:
    """One container run of `kind` (baseline, cold, warm); its wall time in ms."""
    log = work / "termination-log"
    log.write_text("")
    os.chown(log, UID, UID)
    command = [
        "run", "--rm", "--network", "none", "--read-only", "--user", f"{UID}:{UID}",
        "--tmpfs", "/tmp:rw,mode=1777,size=1g", "-v", f"{log}:/dev/termination-log:rw",
        "-v", f"{models_dir}:/models:ro", "-v", f"{guest}:/task/module.wasm:ro",
    ]  # fmt: skip
    if kind == "warm":
        command += ["-v", f"{work / 'cache'}:/tmp/wasinn-cache:rw"]
    if kind == "baseline":
        command += ["--entrypoint", "/opt/wasinn/bin/python", IMAGE, "-c", "pass"]
    else:
        task = {
            "id": f"bench-{kind}",
            "wasm": {"path": "/task/module.wasm"},
            "args": ["--model", "efficientnet-lite0", TENSOR],
        }
        command += ["-e", f"WASINN_TASK={json.dumps(task)}", IMAGE]
    began = time.perf_counter()
    proc = _podman(*command)
    elapsed = (time.perf_counter() - began) * 1000
    if proc.returncode != 0 or (kind != "baseline" and "tiger cat" not in proc.stdout):
        raise RuntimeError(f"image {kind} run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def image_section(models_dir: Path, guest: Path, quick: bool) -> tuple[list[report.Row], str]:
    """Rows for the proplet image's first task, or no rows and why it was skipped."""
    reason = _skip_reason()
    if reason is not None:
        return [], reason
    rounds = 2 if quick else 7
    samples: dict[str, list[float]] = {"baseline": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="wasinn-bench-image-") as tmp:
        work = Path(tmp)
        (work / "cache").mkdir()
        os.chown(work / "cache", UID, UID)
        _run(work, guest, models_dir, "warm")  # populates the cache; also pulls pages in
        for _ in range(rounds):
            for kind, values in samples.items():
                values.append(_run(work, guest, models_dir, kind))
    rows: list[report.Row] = []
    for kind, values in samples.items():
        stats = report.summary(values)
        rows.append(report.row("image", f"proplet {kind}", "p50", stats["median"], "ms"))
        rows.append(report.row("image", f"proplet {kind}", "max", max(values), "ms"))
    base = report.summary(samples["baseline"])["median"]
    cold = report.summary(samples["cold"])["median"]
    warm = report.summary(samples["warm"])["median"]
    rows.append(report.row("image", "first task (cold - baseline)", "p50", cold - base, "ms"))
    rows.append(report.row("image", "first task cold/warm", "ratio", cold / warm, "ratio"))
    return rows, ""
