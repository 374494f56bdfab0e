"""The operator image builds, runs `wasinn` as uid 65532 on a read-only root, and saves."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import BUILD_IMAGES, UID, podman, podman_env, run_container

pytestmark = pytest.mark.container


def test_operator_image_runs_wasinn(operator_image: str, tmp_path: Path) -> None:
    config = json.loads(podman("image", "inspect", operator_image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["wasinn"]
    assert config["Cmd"] == ["operator"]
    run = run_container(operator_image, tmp_path, args=["--help"], user=None)
    assert run.returncode == 0, run.describe()
    assert "usage: wasinn" in run.stdout
    run = run_container(operator_image, tmp_path, entrypoint="id", args=["-u"], user=None)
    assert run.stdout.strip() == str(UID), run.describe()


def test_save_writes_an_archive_for_cluster_load_image(operator_image: str, tmp_path: Path) -> None:
    archive = tmp_path / "operator.tar"
    proc = subprocess.run(
        [str(BUILD_IMAGES), "save", operator_image, str(archive)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**podman_env(), "WASINN_IMAGE_BUILDER": "buildah"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    # A docker archive keeps the name, so `ctr images import` tags it.
    assert any(
        re.fullmatch(rf"(localhost/)?{re.escape(operator_image.removeprefix('localhost/'))}", tag)
        for tag in manifest[0]["RepoTags"]
    ), manifest
