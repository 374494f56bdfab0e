"""`hack/bench --only image --quick` runs the built proplet image and reports its first task.

No timing assertions: the numbers are whatever this machine gives.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import podman_env

pytestmark = pytest.mark.container

BENCH = Path(__file__).resolve().parents[2] / "hack" / "bench"


def test_image_quick_reports_the_first_task(
    proplet_image: str, models_dir: Path, guest_path: Callable[[str], Path], tmp_path: Path
) -> None:
    out, guest = tmp_path / "bench.json", guest_path("classify-c")
    command = [sys.executable, str(BENCH), "--only", "image", "--quick", "--json", str(out),
               "--models-dir", str(models_dir), "--guest", str(guest)]  # fmt: skip
    env = {**podman_env(), "WASINN_PROPLET_IMAGE": proplet_image}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped" not in done.stderr, done.stderr
    results = {(r["name"], r["metric"]): r["value"] for r in json.loads(out.read_text())["results"]}
    for kind in ("baseline", "cold", "warm"):
        assert math.isfinite(results[(f"proplet {kind}", "p50")]), results
    assert results[("first task cold/warm", "ratio")] > 0
    assert "first task (cold - baseline)" in done.stdout
