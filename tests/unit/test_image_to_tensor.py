"""hack/image_to_tensor.py reproduces the shared tensors exactly (their golden sha256)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_preprocessing_matches_golden_tensors(models_dir: Path, tmp_path: Path) -> None:
    model = models_dir / "efficientnet-lite0"
    golden = json.loads((model / "golden.json").read_text())
    images = sorted((model / "images").iterdir())
    subprocess.run(
        [sys.executable, str(ROOT / "hack/image_to_tensor.py"), "--out", str(tmp_path), *images],
        check=True,
        capture_output=True,
    )
    for image in images:
        tensor = (tmp_path / f"{image.stem}.rgb.f32").read_bytes()
        assert hashlib.sha256(tensor).hexdigest() == golden["images"][image.stem]["sha256"]
