"""The `make` steps of sources.toml: each returns one model file's bytes.

Steps read members of the pinned distributions and the files of the same model made before
them (in the staging directory). OpenVINO and Pillow are imported only by the steps that need
them.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .download import FetchError
from .manifest import Model, Step

PROBABILITY_TOLERANCE = 1e-4  # golden probabilities are rounded to 5 decimals


class StepError(FetchError):
    """A made file is not what the manifest pins; the message names the file and the numbers."""


class Context:
    """What the steps of one model read: distributions (fetched on first use), built files."""

    def __init__(self, model: Model, staging: Path, work: Path, dist: Callable[[str], Path]):
        self.model = model
        self.staging = staging
        self.work = work
        self._dist = dist
        self._core: Any = None

    def member(self, step: Step) -> bytes:
        """The member `step` names in its distribution, checked against `from_sha256`."""
        assert step.dist is not None and step.member is not None
        archive = self._dist(step.dist)
        try:
            with zipfile.ZipFile(archive) as z:
                data = z.read(step.member)
        except KeyError:
            raise StepError(f"{archive.name} has no {step.member}") from None
        except zipfile.BadZipFile as exc:
            raise StepError(f"{archive.name}: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if step.from_sha256 is not None and digest != step.from_sha256:
            raise StepError(
                f"{archive.name}:{step.member} has sha256 {digest}, pinned {step.from_sha256}"
            )
        return data

    def built(self, path: str) -> Path:
        return self.staging / path

    def core(self) -> Any:
        if self._core is None:
            import openvino as ov  # noqa: PLC0415

            self._core = ov.Core()
        return self._core

    def infer_f32(self, model_file: Path, data: npt.NDArray[np.float32]) -> list[npt.NDArray[Any]]:
        """Every output of native OpenVINO on the CPU at f32 for one input, shaped as
        golden.json's input says (an ONNX model may leave its input shape open)."""
        try:
            shape = tuple(int(d) for d in self.model.golden["input"]["shape"])
        except (KeyError, TypeError, ValueError):
            raise StepError(f"{self.model.name}: golden.input.shape is missing") from None
        compiled = self.core().compile_model(
            str(model_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        request = compiled.create_infer_request()
        request.infer({0: data.reshape(shape)})
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]


def make(step: Step, ctx: Context) -> tuple[bytes, str | None]:
    """The bytes of the file `step` makes, and a note when it was accepted by tolerance."""
    data = _MAKERS[step.make](step, ctx)
    digest = hashlib.sha256(data).hexdigest()
    if step.sha256 is None or digest == step.sha256:
        return data, None
    if step.make == "native-output":
        return data, _within_stats(step, data, digest)
    hint = _MISMATCH_HINTS.get(step.make, "")
    raise StepError(
        f"{ctx.model.name}/{step.path}: made with sha256 {digest}, pinned {step.sha256}{hint}"
    )


def _extract(step: Step, ctx: Context) -> bytes:
    return ctx.member(step)


def _imagenet_labels(step: Step, ctx: Context) -> bytes:
    names = json.loads(ctx.member(step))
    if not isinstance(names, dict):
        raise StepError(f"{step.member}: expected an object of index -> name")
    return "".join(f"{names[str(i)]}\n" for i in range(len(names))).encode()


def _efficientnet_ir(step: Step, ctx: Context) -> bytes:
    xml = ctx.work / "efficientnet-ir" / "model.xml"
    if not xml.is_file():  # model.xml and model.bin come from one conversion
        from .efficientnet import save_model  # noqa: PLC0415
        from .torchfile import load_state_dict  # noqa: PLC0415

        xml.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_model(load_state_dict(ctx.member(step)), xml)
        except ValueError as exc:  # CheckpointError, or weights that do not fit the network
            raise StepError(f"{step.member}: {exc}") from None
    suffix = Path(step.path).suffix
    if suffix not in (".xml", ".bin"):
        raise StepError(f"{step.path}: efficientnet-lite0-ir makes model.xml and model.bin only")
    return xml.with_suffix(suffix).read_bytes()


def _image_tensor(step: Step, ctx: Context) -> bytes:
    from .images import preprocess  # noqa: PLC0415

    return preprocess(ctx.built(step.inputs[0])).tobytes()


def _uniform_f32(step: Step, _ctx: Context) -> bytes:
    rng = np.random.default_rng(step.seed)
    if step.skip:
        rng.random(step.skip, dtype=np.float32)
    return rng.random(step.shape, dtype=np.float32).astype("<f4").tobytes()


def _native_output(step: Step, ctx: Context) -> bytes:
    model, input_file = (ctx.built(p) for p in step.inputs)
    outputs = ctx.infer_f32(model, np.fromfile(input_file, dtype="<f4"))
    if step.index >= len(outputs):
        raise StepError(f"{step.path}: the model has {len(outputs)} outputs, not {step.index + 1}")
    return outputs[step.index].astype("<f4").tobytes()


def _golden(_step: Step, ctx: Context) -> bytes:
    golden = ctx.model.golden
    if "images" in golden:
        _check_classifier(ctx, golden["images"])
    return (json.dumps(golden, indent=1) + "\n").encode()


def _check_classifier(ctx: Context, images: Mapping[str, Any]) -> None:
    """Every golden image's f32 top-5 from model.xml: indices and labels equal, probabilities
    within PROBABILITY_TOLERANCE."""
    labels = ctx.built("labels.txt").read_text().splitlines()
    for image, want in images.items():
        tensor = ctx.built(want["tensor"])
        if hashlib.sha256(tensor.read_bytes()).hexdigest() != want["sha256"]:
            raise StepError(f"{ctx.model.name}: {want['tensor']} is not golden.json's tensor")
        logits = ctx.infer_f32(ctx.built("model.xml"), np.fromfile(tensor, dtype="<f4"))[0]
        logits = logits.ravel().astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = [int(i) for i in np.argsort(-logits, kind="stable")[: len(want["f32"])]]
        expected = [entry["index"] for entry in want["f32"]]
        if top != expected:
            raise StepError(f"{ctx.model.name}: {image}: top-5 {top}, golden {expected}")
        for entry in want["f32"]:
            got = float(probs[entry["index"]])
            if abs(got - entry["probability"]) > PROBABILITY_TOLERANCE:
                raise StepError(
                    f"{ctx.model.name}: {image}: class {entry['index']} has probability "
                    f"{got:.6f}, golden {entry['probability']}"
                )
            if labels[entry["index"]] != entry["label"]:
                raise StepError(f"{ctx.model.name}: labels.txt line {entry['index']} differs")


def _within_stats(step: Step, data: bytes, digest: str) -> str:
    values = np.frombuffer(data, dtype="<f4").astype(np.float64)
    got = {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "l2": float(np.sqrt((values * values).sum())),
    }
    for key, want in step.stats.items():
        if abs(got[key] - want) > step.tolerance * max(1.0, abs(want)):
            raise StepError(
                f"{step.path}: native OpenVINO's output has {key} {got[key]:.6g}, the pinned "
                f"reference {want:.6g} (beyond the relative tolerance {step.tolerance})"
            )
    return (
        f"{step.path}: differs bitwise from the reference (sha256 {digest}; another CPU or "
        f"OpenVINO version rounds differently) but its statistics agree within {step.tolerance}"
    )


_MAKERS: dict[str, Callable[[Step, Context], bytes]] = {
    "extract": _extract,
    "imagenet-labels": _imagenet_labels,
    "efficientnet-lite0-ir": _efficientnet_ir,
    "image-tensor": _image_tensor,
    "uniform-f32": _uniform_f32,
    "native-output": _native_output,
    "golden": _golden,
}

_MISMATCH_HINTS = {
    "image-tensor": " (this Pillow resizes differently from the one the digest was made with)",
    "uniform-f32": " (this numpy's random generator differs)",
    "efficientnet-lite0-ir": " (the converted weights differ)",
}
