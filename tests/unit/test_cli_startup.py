"""`wasinn --help`, `--version` and argument errors must not load the engine or the services.

A start-up budget, checked by what gets imported rather than by timing (no timed assertions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("wasmtime", "openvino", "numpy", "fastapi", "kopf")

PROBE = """
import json, os, sys
HEAVY = json.loads(os.environ["HEAVY"])
from wasinn_operator import cli
def report(code=0):
    loaded = [m for m in HEAVY if m in sys.modules]
    sys.__stdout__.write(json.dumps(loaded) + "\\n")
    sys.__stdout__.flush()
    os._exit(0)
cli._exit_now = report  # `wasinn run` ends with os._exit: report before it
sys.stdout = open(os.devnull, "w")
sys.stderr = open(os.devnull, "w")
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
report()
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["run", "--help"],
        ["run"],
        ["no-such-command"],
        ["shim", "--help"],
    ],
)
def test_help_and_errors_stay_light(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HEAVY": json.dumps(HEAVY)},
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_proplet_loads_no_http_client() -> None:
    # A proplet (a Pod's `proplet run`, a warm worker) on a file or inline module fetches
    # nothing over http: requests and urllib3 load only when a task needs them.
    probe = (
        "import sys, wasinn_operator.proplet.runner, wasinn_operator.proplet.worker; "
        "print([m for m in ('requests', 'urllib3') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_engine_loads_openvino_without_its_converter() -> None:
    # openvino's model converter (with its telemetry, urllib and ssl) was ~40% of the engine's
    # imports, for nothing the runtime calls; it still imports on demand afterwards.
    probe = (
        "import sys, wasinn_operator.runtime, openvino; "
        "print([m for m in ('openvino.tools.ovc', 'ssl', 'http.client') if m in sys.modules]); "
        "import openvino.tools.ovc; print(callable(openvino.tools.ovc.convert_model))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["[]", "True"]
