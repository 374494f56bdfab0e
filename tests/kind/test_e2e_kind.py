"""The end-to-end suite on kind (marker `kind`): runs hack/e2e-kind.sh, which creates a kind
cluster with a labelled worker and the models mounted, builds the images with docker, loads
them and runs tests/cluster/test_e2e.py against it.

Skips, naming what is missing, where there is no Docker engine or no kind (as on the machine
this project is developed on: no Docker engine, no image pulls). Only these tests may skip in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.kind

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "e2e-kind.sh"
TIMEOUT = int(os.environ.get("WASINN_KIND_TIMEOUT", "5400"))


def what_is_missing() -> list[str]:
    found = [tool for tool in ("docker", "kind") if shutil.which(tool) is None]
    if "docker" not in found:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
        if info.returncode != 0:
            found.append("a running Docker engine (`docker info` fails)")
    return found


def test_the_e2e_suite_passes_on_kind() -> None:
    missing = what_is_missing()
    if missing:
        pytest.skip(f"the kind e2e suite needs {', '.join(missing)} (hack/e2e-kind.sh)")
    proc = subprocess.run(
        [str(SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (
        f"hack/e2e-kind.sh failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    )
