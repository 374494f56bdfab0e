#!/usr/bin/env python3
"""Write kubeconform's JSON schemas from Kubernetes' OpenAPI v2 document and from CRDs, offline.

kubeconform normally downloads its schemas from GitHub; this machine (and any air-gapped CI)
cannot. The same schemas come from the `swagger.json` that every Kubernetes release carries
(`api/openapi-spec/swagger.json` of the `k8s.io/kubernetes` Go module, or `kubectl get --raw
/openapi/v2` of a running cluster), and a CRD's `openAPIV3Schema`:

    hack/openapi2jsonschema.py --swagger swagger.json --crd crds/wasinntask.yaml OUTDIR

OUTDIR gets one standalone schema per kind, `{kind}-{group}-{version}.json` (kubeconform's
`{{ .ResourceKind }}{{ .KindSuffix }}` naming, lower case; group `core` → none), with every
`$ref` inlined and, as in kubeconform's `-strict` schemas, `additionalProperties: false` on
objects that list their properties. Like upstream `openapi2jsonschema`: int-or-string and
Quantity accept strings and numbers, and fields may be null (the API server accepts null for an
unset field). A recursive reference (JSONSchemaProps) is cut to `{}` after its first level.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
}


class Converter:
    """Inlines the `#/definitions/...` references of one OpenAPI v2 document."""

    def __init__(self, definitions: dict[str, Any], strict: bool = True) -> None:
        self.definitions = definitions
        self.strict = strict

    def convert(self, node: Any, stack: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [self.convert(n, stack) for n in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            name = ref.removeprefix("#/definitions/")
            if name in SPECIAL:
                return dict(SPECIAL[name])
            if name in stack:
                return {}  # recursion (JSONSchemaProps): anything below is accepted
            return self.convert(self.definitions[name], (*stack, name))
        return schema_node(
            {k: self.convert(v, stack) for k, v in node.items() if k != "$ref"}, self.strict
        )


def schema_node(node: dict[str, Any], strict: bool) -> dict[str, Any]:
    """One converted node: int-or-string, nullable types, strict objects; drop x-* keys."""
    node = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("format") == "int-or-string":
        return {**INT_OR_STRING, **{k: v for k, v in node.items() if k not in ("type", "format")}}
    if node.get("type") == "object" and strict and "properties" in node:
        node.setdefault("additionalProperties", False)
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = [kind, "null"]
    return node


def crd_node(node: Any) -> Any:
    """A CRD's structural schema as JSON schema: the extensions become plain keywords."""
    if isinstance(node, list):
        return [crd_node(n) for n in node]
    if not isinstance(node, dict):
        return node
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    out = {
        k: crd_node(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "default")
    }
    if int_or_string:
        out.pop("type", None)
        out.update(INT_OR_STRING)
    if out.get("type") == "object" and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def file_name(kind: str, group: str, version: str) -> str:
    group_part = group.split(".", maxsplit=1)[0] if group else ""
    suffix = f"-{group_part}-{version}" if group_part else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def write_swagger(swagger: dict[str, Any], outdir: Path, strict: bool) -> int:
    definitions = swagger["definitions"]
    converter = Converter(definitions, strict)
    count = 0
    for name, definition in sorted(definitions.items()):
        for gvk in definition.get("x-kubernetes-group-version-kind") or []:
            kind, group, version = gvk["kind"], gvk.get("group", ""), gvk["version"]
            if kind.endswith("List") or kind in ("WatchEvent", "DeleteOptions", "Status"):
                continue
            schema = converter.convert(definition, (name,))
            schema["$schema"] = "http://json-schema.org/schema#"
            (outdir / file_name(kind, group, version)).write_text(json.dumps(schema))
            count += 1
    return count


def write_crd(path: Path, outdir: Path) -> int:
    count = 0
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            schema = crd_node(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{version['name']}"]}
            props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
            schema["$schema"] = "http://json-schema.org/schema#"
            name = file_name(spec["names"]["kind"], spec["group"], version["name"])
            (outdir / name).write_text(json.dumps(schema))
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swagger", type=Path, help="Kubernetes OpenAPI v2 (swagger.json)")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="a CRD YAML file")
    parser.add_argument("--no-strict", action="store_true", help="allow unknown fields")
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    if args.swagger is None and not args.crd:
        parser.error("give --swagger and/or --crd")
    args.outdir.mkdir(parents=True, exist_ok=True)
    count = 0
    if args.swagger is not None:
        count += write_swagger(
            json.loads(args.swagger.read_text()), args.outdir, not args.no_strict
        )
    for crd in args.crd:
        count += write_crd(crd, args.outdir)
    print(f"{count} schemas in {args.outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
