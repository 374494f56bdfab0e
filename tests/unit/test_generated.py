"""Generated files (`make generate`): the CRD from the pydantic models, the chart's
values.schema.json and README.md from values.yaml. Each is what its generator writes now, and
what it says holds (the examples validate, every status field the operator writes is kept)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, Field

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.api.crdgen import SchemaError, build_crd, check_structural, structural
from wasinn_operator.api.status import RUN_FIELDS
from wasinn_operator.controller import Facts, OperatorSettings, TaskPhase, reconcile

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "wasinn-operator"
CRD = CHART / "crds" / "wasinntask.yaml"
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
REGENERATE = "generated file is stale: run `make generate` and commit the result"


def load_hack(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- no diff


def test_crd_is_what_the_generator_writes(tmp_path: Path) -> None:
    assert load_hack("gen_crd").main([str(tmp_path / "crd.yaml")]) == 0
    assert (tmp_path / "crd.yaml").read_bytes() == CRD.read_bytes(), REGENERATE


def test_chart_docs_are_what_the_generator_writes(tmp_path: Path) -> None:
    assert load_hack("gen_chart_docs").main(["--out", str(tmp_path)]) == 0
    for name in ("values.schema.json", "README.md"):
        assert (tmp_path / name).read_bytes() == (CHART / name).read_bytes(), (
            f"{name}: {REGENERATE}"
        )


def test_repository_crds_link_to_the_chart() -> None:
    link = REPO / "crds" / "wasinntask.yaml"
    assert link.is_symlink() and link.resolve() == CRD.resolve()
    assert [p.name for p in (CHART / "crds").iterdir()] == ["wasinntask.yaml"]


# ---------------------------------------------------------------------------- the CRD


def crd_schema(*path: str) -> dict[str, Any]:
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    node: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return node


def validator(*path: str) -> jsonschema.Validator:
    """A JSON Schema validator of the CRD's schema (unknown fields are errors here)."""
    schema = load_hack("openapi2jsonschema").crd_node(crd_schema(*path))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("task*.yaml")), ids=str)
def test_examples_satisfy_the_model(example: Path) -> None:
    """The model's validators are the CEL rules' twins (test_chart_files checks the schema)."""
    WasiNNTaskSpec.model_validate(yaml.safe_load(example.read_text())["spec"])


def test_crd_keeps_the_constraints_and_rules() -> None:
    spec = crd_schema("spec")
    props = spec["properties"]
    assert spec["x-kubernetes-validations"][0]["message"] == (
        "spec.wasm is required unless the task is suspended"
    )
    wasm = props["wasm"]
    assert "exactly one of url, configMapKeyRef" in wasm["x-kubernetes-validations"][0]["message"]
    assert wasm["properties"]["configMapKeyRef"]["required"] == ["name", "key"]
    assert wasm["properties"]["digest"]["pattern"] == "^sha256:[0-9a-f]{64}$"
    assert props["env"]["x-kubernetes-validations"][0]["rule"] == (
        "self.all(k, k.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$'))"
    )
    assert (props["timeoutSeconds"]["minimum"], props["timeoutSeconds"]["maximum"]) == (1, 604800)
    assert props["backoffLimit"] == {
        **props["backoffLimit"],
        "default": 0,
        "minimum": 0,
        "maximum": 100,
    }
    assert props["device"]["default"] == "CPU"
    assert "default" not in props["engine"]  # unset: the operator's --proplet-engine
    assert props["resources"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "id" not in props and "name" not in props  # the proplet's, not the resource's
    check_structural(crd_schema())


def test_printer_columns_name_fields_of_the_schema() -> None:
    (version,) = build_crd()["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Node": ".status.nodeName",
        "Exit": ".status.exitCode",
        "Age": ".metadata.creationTimestamp",
    }


def test_status_phases_are_the_lifecycles() -> None:
    phase = validator("status").schema["properties"]["phase"]
    assert phase["enum"] == [p.value for p in TaskPhase]


def operator_statuses() -> list[dict[str, Any]]:
    """The statuses the operator writes along a task's life: start, run, retry, end, stop."""
    settings = OperatorSettings(results_cap=8)
    body: dict[str, Any] = {
        "metadata": {"name": "t", "namespace": "ml", "uid": "u", "generation": 2, "labels": {}},
        "spec": {"wasm": {"path": "/m.wasm"}, "backoffLimit": 1},
    }
    body["metadata"]["labels"]["wasinn.dev/propeller-id"] = "p-1"

    def step(status: dict[str, Any], *pods: dict[str, Any], **spec: Any) -> dict[str, Any]:
        task = {**body, "spec": {**body["spec"], **spec}, "status": status}
        return reconcile(task, Facts(now=NOW, pods=list(pods)), settings).status

    def pod(attempt: int, phase: str, code: int | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": phase, "startTime": "2026-11-25T11:59:00Z"}
        if code is not None:
            summary = {"state": "Completed" if code == 0 else "Failed", "exitCode": code}
            summary |= {"stdout": "0123456789", "digest": "sha256:" + "a" * 64}
            ended = {"exitCode": code, "message": json.dumps(summary)}
            status["containerStatuses"] = [{"name": "proplet", "state": {"terminated": ended}}]
        return {
            "metadata": {"name": f"t-{attempt}", "labels": {"wasinn.dev/attempt": str(attempt)}},
            "spec": {"nodeName": "n1"},
            "status": status,
        }

    scheduled = step({})
    running = step(scheduled, pod(1, "Running"))
    retrying = step(running, pod(1, "Failed", 1))
    second = step({**retrying, "retryAfter": "2026-11-25T11:00:00Z"}, pod(1, "Failed", 1))
    completed = step(second, pod(2, "Succeeded", 0))
    failed = step({**second}, pod(2, "Failed", 3))
    interrupted = step(step(second, pod(2, "Running")), pod(2, "Running"), suspend=True)
    invalid = step({}, wasm={"url": "ftp://x"})
    return [scheduled, running, retrying, second, completed, failed, interrupted, invalid]


def test_the_status_schema_keeps_what_the_operator_writes() -> None:
    """The API server prunes a status field the schema does not list."""
    check = validator("status")
    written: set[str] = set()
    for status in operator_statuses():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(status)]
        assert not errors, status
        written |= set(status)
    listed = set(crd_schema("status")["properties"])
    assert {"results", "resultsTruncated", "digest", "retryAfter", "failedAttempts"} <= written
    # The shim's writes (a run's reset, stop, a failed start), and every key reconcile.py names.
    source = (REPO / "operator" / "wasinn_operator" / "controller" / "reconcile.py").read_text()
    named = set(re.findall(r'\bstatus(?:\.(?:get|pop|setdefault))?[\[(]"(\w+)"', source))
    named |= {
        k
        for call in re.findall(r"\bstatus\.update\(([^)]*)\)", source)
        for k in re.findall(r"(\w+)=", call)
    }
    assert "phase" in named and "podName" in named
    missing = (named | set(RUN_FIELDS) | {"phase", "state", "error", "completionTime"}) - listed
    assert not missing, f"status fields the schema would prune: {sorted(missing)}"


# ---------------------------------------------------------------------------- the generator


class _Inner(BaseModel):
    size: int = Field(default=1, gt=0, lt=10)
    ratio: float = Field(default=0.5, gt=0)


class _Outer(BaseModel):
    inner: _Inner | None = None
    free: dict[str, Any] = Field(default_factory=dict)


class _Union(BaseModel):
    value: int | str = 0


def test_structural_inlines_and_converts() -> None:
    schema = structural(_Outer)
    inner = schema["properties"]["inner"]
    assert inner["type"] == "object" and "default" not in inner
    assert inner["properties"]["size"] == {
        "type": "integer",
        "default": 1,
        "minimum": 1,
        "maximum": 9,
    }
    ratio = inner["properties"]["ratio"]
    assert (ratio["minimum"], ratio["exclusiveMinimum"]) == (0, True)
    assert schema["properties"]["free"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    check_structural(schema)


def test_structural_refuses_what_kubernetes_would() -> None:
    with pytest.raises(SchemaError, match="union of 2 types"):
        structural(_Union)
    for bad, message in [
        ({"type": "object", "anyOf": [{}]}, "anyOf"),
        ({"properties": {}}, "type must be"),
        ({"type": "object", "additionalProperties": False}, "additionalProperties"),
        ({"type": "array"}, "needs items"),
    ]:
        with pytest.raises(SchemaError, match=message):
            check_structural(bad)


VALUES = """\
# -- A section.
sec:
  # -- (int) A number, unset by default.
  count: null
  # -- A list.
  names: [a, b]
  # -- (object) Passed on.
  extra: {k: v}
  #  an example, not a description
# -- Top | level.
flag: true
"""


@pytest.mark.parametrize(
    ("values", "error"),
    [
        (VALUES + "other: 1\n", "other has no `# --` comment"),
        (VALUES + "# -- Unset.\nother: null\n", "a null default needs a type"),
        (VALUES + "# -- (int) A number.\nother: x\n", "is not of type integer"),
        (VALUES + "# -- (integr) A number.\nother: 1\n", "unknown type 'integr'"),
        (VALUES + "# -- Passed on?\nother: {}\n", "an empty mapping needs"),
        (VALUES + "# -- (object) On.\nother:\n  # -- Inside.\n  k: v\n", "not in values.yaml"),
    ],
)
def test_values_generator_refuses_undocumented_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: str, error: str
) -> None:
    (tmp_path / "values.yaml").write_text(values)
    (tmp_path / "Chart.yaml").write_text(
        "name: c\ndescription: d\nversion: 1\nappVersion: '1'\nkubeVersion: '>=1'\n"
    )
    assert load_hack("gen_chart_docs").main(["--chart", str(tmp_path)]) == 1
    assert error in capsys.readouterr().err


def test_values_generator_types_and_documents(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text(VALUES)
    (tmp_path / "Chart.yaml").write_text(
        "name: c\ndescription: d\nversion: 1\nappVersion: '1'\nkubeVersion: '>=1'\n"
    )
    assert load_hack("gen_chart_docs").main(["--chart", str(tmp_path)]) == 0
    schema = yaml.safe_load((tmp_path / "values.schema.json").read_text())
    sec = schema["properties"]["sec"]
    assert sec["additionalProperties"] is False and sec["description"] == "A section."
    assert sec["properties"]["count"]["type"] == ["integer", "null"]
    assert sec["properties"]["names"]["items"] == {"type": "string"}
    assert sec["properties"]["extra"] == {
        "type": "object",
        "description": "Passed on.",
        "default": {"k": "v"},
    }
    check = jsonschema.Draft7Validator(schema)
    assert not list(check.iter_errors({"sec": {"count": 3, "extra": {"any": 1}}}))
    assert list(check.iter_errors({"sec": {"cuont": 3}}))
    readme = (tmp_path / "README.md").read_text()
    assert "| `flag` | bool | `true` | Top \\| level. |" in readme
    assert "| `sec.count` | int\\|null | `null` | A number, unset by default. |" in readme
