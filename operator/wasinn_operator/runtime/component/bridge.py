"""Large models and tensors from components: a bridge component in front of the wasi:nn host.

wasmtime lets a guest pass at most 128 MiB of host memory into one call of a host function,
and wasmtime-py's host functions receive a `list<u8>` as one 48-byte value per byte: a
component could not `load` a model or build a tensor larger than about 2.7 MB (wasmtime's
own component example loads a 5 MB ONNX model). wasmtime-py has no way to raise that limit.

So a component that imports wasi:nn is run inside an outer component that puts a bridge
(bridge.wat) between it and the host's `wasi:nn/graph` and `wasi:nn/tensor`: the bridge
receives `load`'s builders and the tensor constructor's data in its own memory (a
component-to-component copy), passes them to the host in 8 MiB pieces through
`wasinn:host/staging#push`, then calls the host's real function with a marker in place of
the bytes, which the host swaps for what was staged (`Staging`). A piece crosses as a hex
string, which wasmtime hands over as one value: tens of times faster than a list<u8>. Data up
to 4 KiB goes straight through. Everything else of wasi:nn and all of WASI goes from the
host to the guest unchanged.

The outer component copies the guest's leading type, import and alias sections byte for byte
(so its imports keep their types and indices), adds the staging import, nests the bridge and
the guest, and re-exports the guest's `wasi:cli/run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import wasmtime

from .nn import interface
from .staging import STAGING

PREAMBLE = b"\0asm\x0d\x00\x01\x00"
# Sections that may lead a component before its first definition of something else.
LEADING = {0, 3, 6, 7, 10}
SECTION_COMPONENT, SECTION_INSTANCE, SECTION_ALIAS = 4, 5, 6
SECTION_TYPE, SECTION_IMPORT, SECTION_EXPORT = 7, 10, 11
SORT_FUNC, SORT_VALUE, SORT_TYPE, SORT_COMPONENT, SORT_INSTANCE = 1, 2, 3, 4, 5
RUN_PREFIX = "wasi:cli/run@0.2."
_BRIDGED = (interface("graph"), interface("tensor"))
_BRIDGE_IMPORTS = (*(interface(n) for n in ("errors", "inference", "tensor", "graph")), STAGING)
# The template's switches (bridge.wat): the functions a guest may import, by interface.
FUNCTIONS = {
    "tensor": {
        "tensor.new": "[constructor]tensor",
        "tensor.dimensions": "[method]tensor.dimensions",
        "tensor.ty": "[method]tensor.ty",
        "tensor.data": "[method]tensor.data",
    },
    "graph": {
        "graph.load": "load",
        "graph.load-by-name": "load-by-name",
        "graph.init": "[method]graph.init-execution-context",
    },
}


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("truncated component")
        self.pos += 1
        return self.data[self.pos - 1]

    def u32(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value
            if shift > 35:
                raise ValueError("bad LEB128 in component")

    def name(self) -> str:
        length = self.u32()
        start = self.pos
        self.pos += length
        if self.pos > self.end:
            raise ValueError("truncated component")
        return self.data[start : self.pos].decode("utf-8")

    def plain_name(self) -> str:
        """An import or export name: 0x00 (0x01 in older binaries) then the name."""
        if self.byte() not in (0x00, 0x01):
            raise ValueError("unsupported name form")
        return self.name()


def _u32(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _name(text: str) -> bytes:
    raw = text.encode()
    return _u32(len(raw)) + raw


def _section(section_id: int, items: list[bytes]) -> bytes:
    payload = _u32(len(items)) + b"".join(items)
    return bytes([section_id]) + _u32(len(payload)) + payload


@dataclass
class _Layout:
    """What the guest's leading sections define: counts of index spaces, and its imports."""

    end: int = 8
    types: int = 0
    instances: int = 0
    imports: list[tuple[str, bytes, int]] | None = None  # name, sort, index in its space
    instance_types: dict[str, int] | None = None  # an instance import's type index
    type_sections: list[tuple[int, int, int, int]] | None = None  # first, count, start, end


def _leading(data: bytes) -> _Layout:
    layout = _Layout(imports=[], instance_types={}, type_sections=[])
    counts = {SORT_FUNC: 0, SORT_VALUE: 0, SORT_TYPE: 0, SORT_COMPONENT: 0, SORT_INSTANCE: 0}
    pos = 8
    while pos < len(data):
        r = _Reader(data, pos)
        section_id = r.byte()
        size = r.u32()
        body = _Reader(data, r.pos, r.pos + size)
        if section_id not in LEADING:
            break
        if section_id == SECTION_TYPE:
            count = body.u32()
            assert layout.type_sections is not None
            layout.type_sections.append((counts[SORT_TYPE], count, body.pos, body.end))
            counts[SORT_TYPE] += count
        elif section_id == SECTION_IMPORT:
            for _ in range(body.u32()):
                name = body.plain_name()
                kind = body.byte()
                if kind not in (SORT_FUNC, SORT_TYPE, SORT_INSTANCE):
                    raise ValueError("core module, value or component imports")
                if kind == SORT_INSTANCE:
                    assert layout.instance_types is not None
                    layout.instance_types[name] = body.u32()
                elif kind != SORT_TYPE or body.byte() == 0x00:  # a type bound: (eq i) or resource
                    body.u32()
                assert layout.imports is not None
                layout.imports.append((name, bytes([kind]), counts[kind]))
                counts[kind] += 1
        elif section_id == SECTION_ALIAS:
            for _ in range(body.u32()):
                sort = body.byte()
                if sort == 0x00:
                    body.byte()  # a core sort: not one of the counted spaces
                target = body.byte()
                if target in (0x00, 0x01):
                    body.u32()
                    body.name()
                else:
                    body.u32()
                    body.u32()
                if sort in counts:
                    counts[sort] += 1
        pos = r.pos + size
        layout.end = pos
    if counts[SORT_COMPONENT]:
        raise ValueError("component aliases")
    layout.types, layout.instances = counts[SORT_TYPE], counts[SORT_INSTANCE]
    return layout


def _run_export(data: bytes, start: int) -> str | None:
    """The guest's top-level `wasi:cli/run@0.2.x` instance export, if any."""
    pos = start
    while pos < len(data):
        r = _Reader(data, pos)
        section_id = r.byte()
        size = r.u32()
        if section_id == SECTION_EXPORT:
            body = _Reader(data, r.pos, r.pos + size)
            for _ in range(body.u32()):
                name = body.plain_name()
                sort = body.byte()
                if sort == 0x00:
                    body.byte()
                body.u32()
                if body.byte() == 0x01:  # an ascribed type: not expected here
                    return None
                if sort == SORT_INSTANCE and name.startswith(RUN_PREFIX):
                    return name
        pos = r.pos + size
    return None


def _nested(component: bytes) -> bytes:
    return bytes([SECTION_COMPONENT]) + _u32(len(component)) + component


def _instantiate(component: int, args: list[bytes]) -> bytes:
    return b"\x00" + _u32(component) + _u32(len(args)) + b"".join(args)


def _instance_alias(instance: int, name: str) -> bytes:
    """`(alias export INSTANCE NAME (instance))`."""
    return bytes([SORT_INSTANCE, 0x00]) + _u32(instance) + _name(name)


def _staging_type() -> bytes:
    """`(instance (export "push" (func (param "index" u32) (param "chunk" string))))`."""
    func = b"\x01\x40\x02" + _name("index") + b"\x79" + _name("chunk") + b"\x73" + b"\x01\x00"
    export = b"\x04\x00" + _name("push") + b"\x01" + _u32(0)
    return b"\x42\x02" + func + export


def _imported_functions(data: bytes, layout: _Layout, name: str, kind: str) -> set[str]:
    """The template switches for the functions the guest imports from interface `name`.

    Found as their export declarations in the bytes of the type section defining the
    import's instance type (wit-component gives each its own section).
    """
    assert layout.instance_types is not None and layout.type_sections is not None
    index = layout.instance_types[name]
    for first, count, start, end in layout.type_sections:
        if first <= index < first + count:
            found = data[start:end]
            return {
                key
                for key, func in FUNCTIONS[kind].items()
                if b"\x04\x00" + _name(func) + b"\x01" in found
            }
    return set()


@cache
def bridge_component(switches: frozenset[str]) -> bytes:
    """The bridge for a guest importing the functions `switches` names, compiled once."""
    lines = []
    for line in Path(__file__).with_name("bridge.wat").read_text().splitlines():
        if line.startswith(";;+"):
            keys, _, rest = line[3:].partition(" ")
            if switches.intersection(keys.split("|")):
                lines.append(rest)
        else:
            lines.append(line)
    return bytes(wasmtime.wat2wasm("\n".join(lines)))


def wrap(data: bytes) -> bytes | None:
    """The guest inside an outer component with the bridge; None when it needs none or the
    guest's layout is not one this handles (it then runs as it is, limits included)."""
    try:
        layout = _leading(data)
        run = _run_export(data, layout.end)
    except (ValueError, UnicodeDecodeError):
        return None
    assert layout.imports is not None
    instances = {name: index for name, sort, index in layout.imports if sort[0] == SORT_INSTANCE}
    if run is None or not all(interface(n) in instances for n in ("graph", "tensor", "errors")):
        return None
    if interface("inference") not in instances:
        return None
    switches = _imported_functions(data, layout, interface("tensor"), "tensor")
    switches |= _imported_functions(data, layout, interface("graph"), "graph")
    if not switches & {"tensor.new", "graph.load"}:
        return None  # nothing large to pass
    bridge_binary = bridge_component(frozenset(switches))
    staging = layout.instances
    bridge = staging + 1
    graph, tensor = bridge + 1, bridge + 2
    guest = bridge + 3
    sources = {**instances, STAGING: staging}
    bridge_args = [
        _name(name) + bytes([SORT_INSTANCE]) + _u32(sources[name]) for name in _BRIDGE_IMPORTS
    ]
    replaced = {interface("graph"): graph, interface("tensor"): tensor}
    guest_args = [
        _name(name) + sort + _u32(replaced.get(name, index)) for name, sort, index in layout.imports
    ]
    parts = [
        PREAMBLE,
        data[8 : layout.end],
        _section(SECTION_TYPE, [_staging_type()]),
        _section(SECTION_IMPORT, [b"\x00" + _name(STAGING) + b"\x05" + _u32(layout.types)]),
        _nested(bridge_binary),
        _nested(data),
        _section(SECTION_INSTANCE, [_instantiate(0, bridge_args)]),
        _section(SECTION_ALIAS, [_instance_alias(bridge, name) for name in _BRIDGED]),
        _section(SECTION_INSTANCE, [_instantiate(1, guest_args)]),
        _section(SECTION_ALIAS, [_instance_alias(guest, run)]),
        _section(
            SECTION_EXPORT,
            [b"\x00" + _name(run) + bytes([SORT_INSTANCE]) + _u32(guest + 1) + b"\x00"],
        ),
    ]
    return b"".join(parts)
