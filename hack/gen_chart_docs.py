#!/usr/bin/env python3
"""Write the chart's values.schema.json and README.md from the comments of its values.yaml.

    hack/gen_chart_docs.py [--chart DIR] [--out DIR]    default: charts/wasinn-operator, both

helm-docs style: a `# -- text` comment (continued on the following `#` lines) documents the key
below it. The text may start with a type in parentheses, `(int)`, `(string|int)`, needed where
the default does not show it (a null default: the value may then also be null). `(object)` and
`(list)` mark a value handed to Kubernetes as it is (resources, tolerations): its insides are
neither typed nor listed. Any other mapping is a section: each key in it must be documented, and
the schema refuses keys it does not list, so a misspelt `--set` fails `helm install`.
`make generate` runs this; tests/unit/test_generated.py fails when the files differ.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "wasinn-operator"
KEY = re.compile(r"^( *)([A-Za-z0-9_.-]+):(?:\s|$)")
DOC = re.compile(r"^\s*# --(?: (.*))?$")
COMMENT = re.compile(r"^\s*#(?: (.*))?$")
TYPE_HINT = re.compile(r"^\(([a-z]+(?:\|[a-z]+)*)\)\s*")
# Type names of the comments (helm-docs') and JSON Schema's.
TYPES = {
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "object": "object",
    "list": "array",
    "array": "array",
}
SHOWN = {"integer": "int", "boolean": "bool", "array": "list", "number": "float"}


class ValuesError(ValueError):
    """values.yaml cannot be documented as it is (an undocumented key, a wrong type)."""


@dataclass(frozen=True)
class Doc:
    """The `# --` comment of one key."""

    text: str
    types: tuple[str, ...]  # JSON Schema types from a `(type)` hint; empty: from the default


def comments(text: str) -> dict[tuple[str, ...], Doc]:
    """Each documented key's path and its comment."""
    docs: dict[tuple[str, ...], Doc] = {}
    stack: list[tuple[int, str]] = []
    lines: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if (doc := DOC.match(line)) is not None:
            lines = [doc.group(1) or ""]
        elif (comment := COMMENT.match(line)) is not None:
            if lines is not None:
                lines.append(comment.group(1) or "")
        elif (key := KEY.match(line)) is not None:
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(2)))
            if lines is not None:
                docs[tuple(k for _, k in stack)] = _doc(lines, number)
            lines = None
        else:
            lines = None  # a blank line (or a list item) ends a comment
    return docs


def _doc(lines: list[str], number: int) -> Doc:
    text = "\n".join(lines).strip()
    hint = TYPE_HINT.match(text)
    if hint is None:
        return Doc(_prose(text), ())
    names = hint.group(1).split("|")
    unknown = [n for n in names if n not in TYPES]
    if unknown:
        raise ValuesError(f"line {number}: unknown type {unknown[0]!r} (one of {', '.join(TYPES)})")
    return Doc(_prose(text[hint.end() :]), tuple(dict.fromkeys(TYPES[n] for n in names)))


def _prose(text: str) -> str:
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _type_of(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "object" if isinstance(value, dict) else "array"


@dataclass(frozen=True)
class Value:
    """One documented value: a leaf of the values tree (a section holds them)."""

    path: tuple[str, ...]
    types: tuple[str, ...]
    default: Any
    text: str

    @property
    def key(self) -> str:
        return ".".join(self.path)


def leaves(values: dict[str, Any], docs: dict[tuple[str, ...], Doc]) -> list[Value]:
    """Every value below the sections, in the order of values.yaml, each documented."""
    found = []

    def walk(path: tuple[str, ...], tree: dict[str, Any]) -> None:
        if not tree:
            raise ValuesError(f"{'.'.join(path)}: an empty mapping needs `# -- (object) ...`")
        for name, default in tree.items():
            sub = (*path, name)
            doc = docs.get(sub)
            if isinstance(default, dict) and not (doc and doc.types):
                walk(sub, default)
            elif doc is None:
                raise ValuesError(f"{'.'.join(sub)} has no `# --` comment in values.yaml")
            else:
                found.append(leaf(sub, default, doc))

    walk((), values)
    return found


def leaf(path: tuple[str, ...], default: Any, doc: Doc) -> Value:
    """The value at `path`, its types checked against its default."""
    key = ".".join(path)
    types = doc.types or ((_type_of(default),) if default is not None else ())
    if not types:
        raise ValuesError(f"{key}: a null default needs a type, e.g. `# -- (int) ...`")
    if default is not None and _type_of(default) not in types:
        raise ValuesError(f"{key}: the default {default!r} is not of type {'|'.join(types)}")
    if default is None:
        types = (*types, "null")
    return Value(path, types, default, doc.text)


def schema(values: list[Value], docs: dict[tuple[str, ...], Doc]) -> dict[str, Any]:
    """values.schema.json: every value typed; a section refuses keys it does not list."""
    root = _section((), docs)
    for value in values:
        node = root
        for depth in range(1, len(value.path)):
            name = value.path[depth - 1]
            if name not in node["properties"]:
                node["properties"][name] = _section(value.path[:depth], docs)
            node = node["properties"][name]
        node["properties"][value.path[-1]] = _leaf(value)
    used = {v.path[:depth] for v in values for depth in range(1, len(v.path) + 1)}
    if stray := sorted(".".join(k) for k in set(docs) - used):
        raise ValuesError(f"documented keys not in values.yaml: {stray}")
    # Helm's own key, shared with subcharts: allowed though this chart has none.
    root["properties"]["global"] = {"type": "object"}
    return {"$schema": "http://json-schema.org/draft-07/schema#", **root}


def _section(path: tuple[str, ...], docs: dict[tuple[str, ...], Doc]) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "object"}
    if path in docs:
        node["description"] = docs[path].text
    return {**node, "properties": {}, "additionalProperties": False}


def _leaf(value: Value) -> dict[str, Any]:
    node: dict[str, Any] = {"type": value.types[0] if len(value.types) == 1 else list(value.types)}
    node["description"] = value.text
    scalars = {_type_of(v) for v in value.default or []} if "array" in value.types else set()
    if len(scalars) == 1 and scalars <= {"string", "integer", "boolean"}:
        node["items"] = {"type": scalars.pop()}
    node["default"] = value.default
    return node


def readme(chart: dict[str, Any], values: list[Value], docs: dict[tuple[str, ...], Doc]) -> str:
    """The chart's README: what it is, then a table of the values per top-level section."""
    out = [
        "<!-- Generated by hack/gen_chart_docs.py (make generate) from values.yaml and Chart.yaml:",
        "     edit those, not this file. -->",
        f"# {chart['name']}",
        "",
        " ".join(chart["description"].split()),
        "",
        f"Chart {chart['version']}, app {chart['appVersion']}, Kubernetes {chart['kubeVersion']}.",
        "The WasiNNTask CRD is installed from `crds/` on the first install (Helm never upgrades or",
        "deletes it). Installing, staging models, the shim's token and MQTT are walked through in",
        'the repository README, "Install on Kubernetes"; every value below is optional.',
        "",
        "## Values",
    ]
    groups: dict[str, list[Value]] = {}
    for value in values:
        group = value.path[0] if len(value.path) > 1 else ""
        groups.setdefault(group, []).append(value)
    for group, members in groups.items():
        if group:
            out += ["", f"### `{group}`"]
            if (group,) in docs:
                out += ["", _markdown(docs[(group,)].text)]
        out += ["", "| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        out += [_row(v) for v in members]
    return "\n".join(out) + "\n"


def _row(value: Value) -> str:
    kind = "\\|".join(SHOWN.get(t, t) for t in value.types)
    default = json.dumps(value.default, separators=(",", ":"), ensure_ascii=False)
    text = _markdown(value.text).replace("|", "\\|").replace("\n\n", "<br><br>")
    return f"| `{value.key}` | {kind} | `{default}` | {text} |"


def _markdown(text: str) -> str:
    """`text` with `<` outside code spans escaped (`<prefix>` is no HTML tag)."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chart", type=Path, default=CHART, help="the chart directory")
    parser.add_argument("--out", type=Path, help="where to write (default: the chart directory)")
    args = parser.parse_args(argv)
    out = args.out or args.chart
    text = (args.chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    chart = yaml.safe_load((args.chart / "Chart.yaml").read_text())
    try:
        docs = comments(text)
        found = leaves(values, docs)
        values_schema = schema(found, docs)
        chart_readme = readme(chart, found, docs)
    except ValuesError as exc:
        print(f"{args.chart / 'values.yaml'}: {exc}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "values.schema.json").write_text(json.dumps(values_schema, indent=2) + "\n")
    (out / "README.md").write_text(chart_readme)
    print(f"wrote {out / 'values.schema.json'} and {out / 'README.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
