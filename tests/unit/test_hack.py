"""hack/: versions pinned once (hack/versions.env), helpers shared (hack/lib.sh), small files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import pinned_version

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
SCRIPTS = [*sorted(HACK.glob("*.sh")), HACK / "cluster"]
PINNED = ("K8S_VERSION", "COREDNS_VERSION", "HELM_VERSION", "KUBECONFORM_VERSION")
PINNED += ("WASMTIME_CLI_VERSION",)
SOURCE_LIB = 'source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"'


def code_files() -> list[Path]:
    """Scripts and tests: where a version could be restated (prose in *.md may name one)."""
    files = [*HACK.rglob("*"), *(REPO / "tests").rglob("*.py"), REPO / "Makefile"]
    return [
        f
        for f in files
        if f.is_file() and f.suffix not in (".md", ".pyc") and f.name != "versions.env"
    ]


@pytest.mark.parametrize("name", PINNED)
def test_each_version_is_pinned_once(name: str) -> None:
    version = pinned_version(name)
    restating = [str(f.relative_to(REPO)) for f in code_files() if version in f.read_text()]
    assert not restating, f"{name} ({version}) is restated in {restating}: read hack/versions.env"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_sources_the_lib(script: Path) -> None:
    if script.name == "lib.sh":
        return
    assert SOURCE_LIB in script.read_text(), f"{script.name} does not source hack/lib.sh"
    assert not [
        line for line in script.read_text().splitlines() if line.startswith(("die()", "log()"))
    ], f"{script.name} defines its own log/die"


@pytest.mark.parametrize("script", [HACK / "cluster", *sorted((HACK / "cluster.d").glob("*.sh"))])
def test_cluster_files_stay_small(script: Path) -> None:
    assert len(script.read_text().splitlines()) <= 400, f"split {script.name} by concern"
