"""Pod priority from a task's Propeller priority (controller/priority.py): the bands the chart's
PriorityClasses make, the priority read from the shim's annotation, and the Pod field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wasinn_operator.api import PROPELLER_FIELDS_ANNOTATION, WasiNNTaskSpec
from wasinn_operator.controller import OperatorSettings, build_pod
from wasinn_operator.controller.nodes import requirements
from wasinn_operator.controller.priority import parse_bands, priority_class, task_priority

pytestmark = pytest.mark.unit
BANDS = parse_bands("w-normal=34, w-low=0,w-high=67")


def _task(fields: Any = None) -> dict[str, Any]:
    notes = {} if fields is None else {PROPELLER_FIELDS_ANNOTATION: json.dumps(fields)}
    return {"metadata": {"name": "t", "namespace": "ml", "uid": "u", "annotations": notes}}


def test_bands_are_sorted_and_checked() -> None:
    assert BANDS == ((0, "w-low"), (34, "w-normal"), (67, "w-high"))
    assert parse_bands("") == ()
    for bad, why in (
        ("low", "NAME=FROM"),
        ("Low=0", "NAME=FROM"),
        ("low=101", "0 to 100"),
        ("low=x", "0 to 100"),
        ("a=5,b=5", "same priority"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_bands(bad)


@pytest.mark.parametrize(
    ("priority", "expected"),
    [(0, "w-low"), (33, "w-low"), (34, "w-normal"), (50, "w-normal"), (67, "w-high"),
     (100, "w-high")],
)  # fmt: skip
def test_the_highest_band_reached_wins(priority: int, expected: str) -> None:
    assert priority_class(priority, BANDS) == expected


def test_no_bands_or_below_the_lowest_is_no_class() -> None:
    assert priority_class(90, ()) is None
    assert priority_class(10, parse_bands("mid=40")) is None


def test_task_priority_comes_from_the_propeller_fields() -> None:
    assert task_priority(_task({"priority": 90, "kind": "standard"})) == 90
    # Unset, unreadable or out of range: Propeller's default, 50.
    for fields in (None, {}, {"priority": "high"}, {"priority": True}, {"priority": 101}, [1]):
        assert task_priority(_task(fields)) == 50
    broken = _task()
    broken["metadata"]["annotations"][PROPELLER_FIELDS_ANNOTATION] = "{not json"
    assert task_priority(broken) == 50


def test_the_pod_gets_the_class_only_when_given() -> None:
    spec = WasiNNTaskSpec.model_validate({"wasm": {"url": "http://shim/artifacts/sha256:x"}})
    task = _task({"priority": 80})
    placement = requirements(spec, OperatorSettings())
    common: dict[str, Any] = {"image": "i", "pull_policy": "Never", "placement": placement}
    chosen = priority_class(task_priority(task), BANDS)
    pod = build_pod(task, spec, 1, claim="m", priority_class=chosen, **common)
    assert pod["spec"]["priorityClassName"] == "w-high"
    assert "priorityClassName" not in build_pod(task, spec, 1, claim="m", **common)["spec"]


def test_settings_read_the_bands() -> None:
    settings = OperatorSettings.from_env({"WASINN_PRIORITY_CLASSES": "a-low=0,a-high=60"})
    assert settings.priority_classes == ((0, "a-low"), (60, "a-high"))
    assert OperatorSettings.from_env({}).priority_classes == ()
