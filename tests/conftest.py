"""Shared fixtures: where the models and built guests are, and a runtime per precision."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def missing(reason: str) -> None:
    """Skip for a missing tool; under CI (which installs every tool) fail instead."""
    if os.environ.get("CI") and "WASINN_ALLOW_SKIPS" not in os.environ:
        pytest.fail(f"CI installs every tool, yet: {reason}")
    pytest.skip(reason)


def models_dir_path() -> Path:
    """`$WASINN_MODELS_DIR`, else `../shared/models` beside the repo."""
    return Path(os.environ.get("WASINN_MODELS_DIR") or ROOT.parent / "shared" / "models").resolve()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = models_dir_path()
    if not (path / "efficientnet-lite0" / "model.xml").is_file():
        missing(f"models directory {path} (../shared/models) is missing")
    return path


@pytest.fixture(scope="session")
def guest_dir() -> Path:
    return Path(os.environ.get("WASINN_GUEST_DIR") or ROOT / "build" / "guests").resolve()


@pytest.fixture(scope="session")
def guest_path(guest_dir: Path) -> Iterator[object]:
    def find(name: str) -> Path:
        path = guest_dir / f"{name}.wasm"
        if not path.is_file():
            tool = "clang + wasi-libc" if name.endswith("-c") else "Debian rustc + wasm32 std"
            missing(f"guest {path} is not built ({tool}; run `make guests`)")
        return path

    yield find
