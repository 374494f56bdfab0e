"""Validation errors as one line a person can act on: `field.path: reason; ...`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

# FastAPI names where a field came from first; the field's own path is what a client wrote.
REQUEST_PARTS = ("body", "query", "path", "header")


class HasErrors(Protocol):
    """A pydantic `ValidationError` or FastAPI's `RequestValidationError`."""

    def errors(self) -> Sequence[Any]: ...


def describe_errors(exc: HasErrors, root: str = "") -> str:
    """Each error as `where: reason`, joined by `; `; `root` names an error of the whole."""
    return "; ".join(_describe(error, root) for error in exc.errors())


def _describe(error: Mapping[str, Any], root: str) -> str:
    loc: Iterable[Any] = error.get("loc", ())
    parts = [str(p) for p in loc]
    if parts and parts[0] in REQUEST_PARTS:
        parts = parts[1:]
    where = ".".join(parts) or root
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
