"""schemathesis against the shim's own /openapi.json: no 5xx, no answer outside the schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ..conftest import missing
from .conftest import Shim

pytestmark = pytest.mark.integration
# An upload's content (a `.wasm` name, the \0asm magic) is beyond what OpenAPI can say about a
# multipart file, so there a schema-valid request may get 400 or 415; so is the task policy
# (which wasmtime flags and env names a task may hold, docs/security.md), so a schema-valid
# task may get 400 from it; a job's or workflow's `depends_on` must name tasks of the same
# request (a task's own: existing tasks of its workflow) and make no cycle, which OpenAPI
# cannot say either, and an invocation runs the
# module (502 when the run fails); an unknown proplet id that is not a UUID is a 400 while a
# known one (a node name) is found. Everything else is exact.
CONFIG = """\
[[operations]]
include-path = "/tasks/{task_id}/upload"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404, 409, 413, 415]

[[operations]]
include-name = ["POST /tasks", "PUT /tasks/{task_id}"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404]

[[operations]]
include-name = ["POST /jobs", "POST /workflows"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404, 409]

[[operations]]
include-name = ["POST /tasks/{task_id}/invoke"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404, 409, 502]

[[operations]]
include-name = ["GET /proplets/{proplet_id}", "GET /proplets/{proplet_id}/sdf",
                "GET /proplets/{proplet_id}/alive-history", "DELETE /proplets/{proplet_id}"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404, 409]
"""


def test_schemathesis_finds_nothing(make_shim: Callable[..., Shim], tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if binary is None:
        missing("schemathesis is not installed (pip install -e '.[test]')")
    shim = make_shim()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    proc = subprocess.run(
        [
            binary,
            "--config-file",
            str(config),
            "run",
            f"{shim.url}/openapi.json",
            "--max-examples",
            "15",
            "--seed",
            "7",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,  # schemathesis keeps its example database in the working directory
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " 500 " not in shim.log.read_text()
