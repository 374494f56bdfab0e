"""Strict JSON for request bodies and MQTT messages: what is parsed can be stored and answered.

Numbers keep their JSON text (`JSONInt`, `JSONFloat`), so that a field Propeller stores as
text gets exactly what was sent. Python's `json` accepts what cannot be stored or sent back:
lone UTF-16 surrogates (`"\\udc80"` becomes a str that SQLite and UTF-8 encoding refuse),
`NaN`/`Infinity`, and nesting deep enough to exhaust the recursion limit. Here each is a
`BadRequestError` that says where.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from .errors import BadRequestError

MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class JSONInt(int):
    """An integer that remembers its JSON text (`-0` stays `-0`)."""

    json_text: str


class JSONFloat(float):
    """A number with a fraction or exponent that remembers its JSON text (`1.50`, `1e400`),
    which Propeller keeps as given where it stores numbers as text (task inputs)."""

    json_text: str


def _int(text: str) -> JSONInt:
    value = JSONInt(text)
    value.json_text = text
    return value


def _float(text: str) -> JSONFloat:
    value = JSONFloat(text)
    value.json_text = text
    return value


def parse_json(raw: bytes | bytearray | str) -> Any:
    """The document in `raw` (UTF-8), or `BadRequestError` naming the problem and its place.

    A `bytearray` is emptied once decoded, so that a large body is not held twice over."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(
                f"invalid JSON: the body is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                f"{exc.start})"
            ) from None
        if isinstance(raw, bytearray):
            raw.clear()
    try:
        document = json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float)
    except RecursionError:
        raise BadRequestError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's guard against slow int()
            raise BadRequestError(
                f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
            ) from None
        raise BadRequestError(f"invalid JSON: {exc}") from None
    del text
    check_document(document)
    return document


def check_document(document: Any) -> None:
    """`BadRequestError` for nesting past `MAX_DEPTH` or a string (or key) that is not valid
    Unicode; iterative, so any depth is safe to check."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise BadRequestError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key, f"{where}: a key" if where else "a key")
                    stack.append((item, f"{where}.{key}" if where else key, depth + 1))
            else:
                stack.extend(
                    (item, f"{where}.{i}" if where else str(i), depth + 1)
                    for i, item in enumerate(value)
                )


def _check_text(value: str, where: str) -> None:
    if value.isascii():  # O(1) in CPython: the common case, and every base64 module
        return
    match = _SURROGATE.search(value)
    if match is not None:
        place = where or "body"
        raise BadRequestError(
            f"{place}: the string holds a lone UTF-16 surrogate (\\u{ord(match.group()):04x} at "
            f"character {match.start()}), which is not valid Unicode"
        )
