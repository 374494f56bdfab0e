"""Named models: directories laid out like wasmtime's `-S nn-graph=ENCODING::DIR`.

A directory holding `model.xml` + `model.bin` (OpenVINO IR), `model.onnx` or `model.tflite` is a
model named after the directory's basename. A models directory holds one such model per
subdirectory; every task sees it at `/models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .abi import ENCODING_NAMES, GraphEncoding

MODEL_FILES: dict[GraphEncoding, tuple[str, ...]] = {
    GraphEncoding.OPENVINO: ("model.xml", "model.bin"),
    GraphEncoding.ONNX: ("model.onnx",),
    GraphEncoding.TENSORFLOWLITE: ("model.tflite",),
}


class ModelError(ValueError):
    """A named model is declared wrongly (bad encoding, missing files)."""


@dataclass(frozen=True)
class NamedModel:
    """A model the guest can load with `load_by_name(name)`."""

    name: str
    encoding: GraphEncoding
    path: Path

    def files(self) -> list[Path]:
        """The files to read, in builder order (IR: xml then weights)."""
        return [self.path / f for f in MODEL_FILES[self.encoding]]


def detect_encoding(directory: Path) -> GraphEncoding | None:
    """The encoding whose files are all present in `directory`, if any."""
    for encoding, files in MODEL_FILES.items():
        if all((directory / f).is_file() for f in files):
            return encoding
    return None


def named_model(encoding_name: str, directory: str | Path) -> NamedModel:
    """Resolve one `ENCODING::DIR` declaration, checking that the files exist."""
    path = Path(directory).expanduser().resolve()
    encoding = ENCODING_NAMES.get(encoding_name.lower())
    if encoding is None:
        known = ", ".join(sorted(ENCODING_NAMES))
        raise ModelError(f"unknown graph encoding {encoding_name!r} (known: {known})")
    if not path.is_dir():
        raise ModelError(f"model directory {str(path)!r} does not exist")
    if encoding is GraphEncoding.AUTODETECT:
        detected = detect_encoding(path)
        if detected is None:
            raise ModelError(f"no model.xml+model.bin, model.onnx or model.tflite in {path}")
        encoding = detected
    model = NamedModel(name=path.name, encoding=encoding, path=path)
    missing = [str(f) for f in model.files() if not f.is_file()]
    if missing:
        raise ModelError(f"{encoding.name.lower()} model {path.name!r} lacks {', '.join(missing)}")
    return model


def scan_models_dir(models_dir: str | Path) -> list[NamedModel]:
    """Every model subdirectory of a models directory, sorted by name."""
    root = Path(models_dir).expanduser().resolve()
    if not root.is_dir():
        raise ModelError(f"models directory {str(root)!r} does not exist")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        encoding = detect_encoding(sub)
        if encoding is not None:
            found.append(NamedModel(name=sub.name, encoding=encoding, path=sub))
    return found
