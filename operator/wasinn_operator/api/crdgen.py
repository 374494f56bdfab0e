"""The WasiNNTask CustomResourceDefinition, built from the pydantic models.

`build_crd()` turns the models' JSON Schema (pydantic's) into a structural OpenAPI v3 schema as
Kubernetes requires one: references inlined, titles dropped, `Optional` fields plain (absent or
null, the API server prunes a null), `dict[str, Any]` free-form
(`x-kubernetes-preserve-unknown-fields`), a model's `extra="forbid"` left to pruning, an
integer's exclusive bound as an inclusive one. `x-kubernetes-*` keys (CEL rules, list types)
come from the models' `json_schema_extra`. `check_structural` refuses what the API server would.
hack/gen_crd.py writes the result as YAML (`make generate`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .crd import (
    CATEGORIES,
    DESCRIPTION,
    GROUP,
    KIND,
    PLURAL,
    PRINTER_COLUMNS,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    WasiNNTaskSpec,
)
from .status import WasiNNTaskStatus

Schema = dict[str, Any]

# Keys in the order they are written (the rest after them, sorted): what a reader looks for
# first, the nested schemas last.
KEY_ORDER = (
    "type",
    "format",
    "description",
    "enum",
    "default",
    "nullable",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
    "properties",
    "additionalProperties",
    "items",
)
# Keywords a structural schema may not use (or that mean nothing to the API server).
FORBIDDEN = ("$ref", "$defs", "definitions", "const", "anyOf", "oneOf", "allOf", "not", "title")
TYPES = ("object", "array", "string", "integer", "number", "boolean")


class SchemaError(ValueError):
    """The models' schema cannot be expressed as a structural schema."""


def structural(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of `model` (aliases as field names)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return _node(schema, defs, model.__name__)


def _node(node: Schema, defs: dict[str, Schema], where: str) -> Schema:
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        # Keys beside the reference (the field's description, default) win over the model's.
        node = {**_node(defs[ref.rsplit("/", 1)[-1]], defs, where), **node}
    if "anyOf" in node:
        choices = [c for c in node.pop("anyOf") if c != {"type": "null"}]
        if len(choices) != 1:
            raise SchemaError(f"{where}: a union of {len(choices)} types has no structural form")
        node = {**_node(choices[0], defs, where), **node}
    node.pop("title", None)
    if node.get("default", 0) is None:
        del node["default"]  # `= None` means absent
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "description" in node:
        node["description"] = _prose(node["description"])
    if "x-kubernetes-validations" in node:
        node["x-kubernetes-validations"] = [_rule(r) for r in node["x-kubernetes-validations"]]
    _bounds(node)
    if "properties" in node:
        node["properties"] = {
            name: _node(sub, defs, f"{where}.{name}") for name, sub in node["properties"].items()
        }
    extra = node.get("additionalProperties")
    if extra is False:
        del node["additionalProperties"]  # unknown fields are pruned
    elif extra is True or extra == {}:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = _node(extra, defs, f"{where}.*")
    if "items" in node:
        node["items"] = _node(node["items"], defs, f"{where}[]")
    return _ordered(node)


def _bounds(node: Schema) -> None:
    """JSON Schema's numeric exclusive bounds as OpenAPI v3.0's (inclusive for integers)."""
    for bound, inclusive, step in (
        ("exclusiveMinimum", "minimum", 1),
        ("exclusiveMaximum", "maximum", -1),
    ):
        value = node.get(bound)
        if isinstance(value, bool) or value is None:
            continue
        del node[bound]
        if node.get("type") == "integer":
            node[inclusive] = value + step
        else:
            node[inclusive] = value
            node[bound] = True


def _prose(text: str) -> str:
    """A docstring as one line per paragraph."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _rule(rule: Schema) -> Schema:
    """A CEL rule with `rule` first (pydantic sorts the keys of `json_schema_extra`)."""
    first = [
        k for k in ("rule", "message", "messageExpression", "reason", "fieldPath") if k in rule
    ]
    return {k: rule[k] for k in [*first, *sorted(set(rule) - set(first))]}


def _ordered(node: Schema) -> Schema:
    first = [k for k in KEY_ORDER if k in node]
    return {k: node[k] for k in [*first, *sorted(set(node) - set(first))]}


def check_structural(node: Schema, where: str = "") -> None:
    """Raise `SchemaError` where `node` is not a structural schema the API server accepts."""
    for key in FORBIDDEN:
        if key in node:
            raise SchemaError(f"{where or '.'}: {key} is not allowed in a structural schema")
    typed = node.get("type") in TYPES or node.get("x-kubernetes-int-or-string") is True
    free = node.get("x-kubernetes-preserve-unknown-fields") is True and "type" not in node
    if not (typed or free):
        raise SchemaError(f"{where or '.'}: type must be one of {', '.join(TYPES)}")
    if "properties" in node and "additionalProperties" in node:
        raise SchemaError(f"{where}: properties and additionalProperties exclude each other")
    if node.get("additionalProperties") is False or node.get("uniqueItems") is True:
        raise SchemaError(f"{where}: additionalProperties: false and uniqueItems are not allowed")
    if node.get("type") == "array" and "items" not in node:
        raise SchemaError(f"{where}: an array needs items")
    for name, sub in (node.get("properties") or {}).items():
        check_structural(sub, f"{where}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        check_structural(node["additionalProperties"], f"{where}.*")
    if "items" in node:
        check_structural(node["items"], f"{where}[]")


def task_schema() -> Schema:
    """The `openAPIV3Schema` of a WasiNNTask: the Kubernetes envelope, spec and status."""
    schema: Schema = {
        "type": "object",
        "description": DESCRIPTION,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(WasiNNTaskSpec),
            "status": structural(WasiNNTaskStatus),
        },
    }
    check_structural(schema)
    return schema


def _column_type(schema: Schema, path: str) -> str:
    """The printer-column type of the field at `path` (`.status.phase`)."""
    if path == ".metadata.creationTimestamp":
        return "date"  # every object has one; metadata's schema is the API server's
    node = schema
    for name in path.lstrip(".").split("."):
        props = node.get("properties") or {}
        if name not in props:
            raise SchemaError(f"printer column {path}: no such field in the schema")
        node = props[name]
    return "date" if node.get("format") == "date-time" else str(node["type"])


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition document."""
    schema = task_schema()
    columns = []
    for name, kind, path, description in PRINTER_COLUMNS:
        if _column_type(schema, path) != kind:
            raise SchemaError(f"printer column {name}: {path} is not of type {kind}")
        column = {"name": name, "type": kind, "jsonPath": path}
        columns.append({**column, "description": description} if description else column)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "wasinn-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }
