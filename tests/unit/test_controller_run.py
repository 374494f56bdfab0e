"""`wasinn operator`'s process set-up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wasinn_operator.controller.run import GC_THRESHOLDS

pytestmark = pytest.mark.unit


def test_the_collector_skips_the_start_up_objects_and_runs_less_often() -> None:
    # A process of its own: freezing this one's objects would change every later test.
    probe = (
        "import gc; from wasinn_operator.controller import run; "
        "before = gc.get_freeze_count(); run.tune_gc(); "
        "print(before, gc.get_freeze_count(), *gc.get_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, frozen, *thresholds = (int(n) for n in out.stdout.split())
    assert before == 0 and frozen > 10_000  # the imports' modules, classes and functions
    assert tuple(thresholds) == GC_THRESHOLDS
