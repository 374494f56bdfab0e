"""An IR model (two files) published as one archive over http: fetched, verified, unpacked into
the cache and classified by a real guest; a tampered or hostile archive caches nothing."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from wasinn_operator.api.modelsource import ModelSource
from wasinn_operator.models.remote import ModelFetchError, entry_dir, fetch_source

from ..httpfiles import SimpleIndex, serving

pytestmark = pytest.mark.runtime


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tgz(files: dict[str, bytes], top: str = "efficientnet-lite0") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_wasinn_run_classifies_with_an_ir_archive(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    root = models_dir / "efficientnet-lite0"
    archive = tgz({n: (root / n).read_bytes() for n in ("model.xml", "model.bin", "labels.txt")})
    with serving(SimpleIndex({"effnet.tar.gz": archive})) as server:
        command = [
            sys.executable, "-m", "wasinn_operator.cli", "run", "--cache-dir", str(tmp_path),
            f"--model=effnet@{sha(archive)}={server.url}/files/effnet.tar.gz",
            "--dir", f"{root / 'tensors'}::/tensors", str(guest_path("classify-c")),
            "--model-dir", "/models/effnet", "/tensors/chelsea.rgb.f32",
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "1. tiger cat (282)" in proc.stdout
    entry = entry_dir(tmp_path, sha(archive)[7:])
    assert sorted(p.name for p in entry.iterdir()) == ["labels.txt", "model.bin", "model.xml"]
    assert (entry / "model.bin").read_bytes() == (root / "model.bin").read_bytes()
    assert not (entry / "model.xml").stat().st_mode & 0o222  # sealed read-only


def test_bad_archives_cache_nothing(tmp_path: Path) -> None:
    good = tgz({"model.onnx": b"onnx"})
    escape = io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w:gz") as out:
        info = tarfile.TarInfo("../../outside.onnx")
        info.size = 1
        out.addfile(info, io.BytesIO(b"x"))
    hostile = escape.getvalue()
    cache = tmp_path / "cache"
    with serving(SimpleIndex({"m.tgz": good, "h.tgz": hostile})) as server:
        cases = [
            (ModelSource(name="m", uri=f"{server.url}/files/m.tgz", sha256=sha(b"other")),
             "digest mismatch"),
            (ModelSource(name="m", uri=f"{server.url}/files/h.tgz", sha256=sha(hostile)),
             "must be relative paths inside the archive"),
        ]  # fmt: skip
        for source, reason in cases:
            with pytest.raises(ModelFetchError, match=reason):
                fetch_source(source, cache, 1 << 20)
        assert sorted((cache / "models" / "sha256").iterdir()) == []
        assert not (tmp_path / "outside.onnx").exists()
        path = fetch_source(
            ModelSource(name="m", uri=f"{server.url}/files/m.tgz", sha256=sha(good)), cache, 1 << 20
        )
    assert (path / "model.onnx").read_bytes() == b"onnx"
