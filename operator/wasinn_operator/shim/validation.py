"""Request checks Propeller's manager makes before its service runs (manager/api/requests.go),
with the same answers: 400 and what is wrong."""

from __future__ import annotations

import re

from .errors import BadRequestError

# The forms Go's uuid.Parse accepts: canonical, {braced}, urn:uuid: and 32 bare hex digits.
_HEX = r"[0-9a-fA-F]"
_CANONICAL = rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
UUID = re.compile(rf"^(?:{_CANONICAL}|\{{{_CANONICAL}\}}|urn:uuid:{_CANONICAL}|{_HEX}{{32}})$")
MAX_TASK_PAGE = 100  # Propeller's MaxLimitSize for task lists
PROPLET_STATUSES = ("active", "inactive")


def check_id(value: str, what: str = "task") -> None:
    """400 unless `value` is a UUID, as Propeller checks ids in paths."""
    if not UUID.match(value):
        raise BadRequestError(f"invalid query parameters: the {what} id {value!r} is not a UUID")


def check_task_limit(limit: int) -> None:
    """400 unless 1 <= `limit` <= 100 (Propeller's task list)."""
    if not 1 <= limit <= MAX_TASK_PAGE:
        raise BadRequestError(f"limit: invalid limit size: must be between 1 and {MAX_TASK_PAGE}")


def proplet_alive_filter(status: str | None) -> bool | None:
    """`?status=` of the proplet list: active → alive ones, inactive → the others, absent → all;
    anything else is a 400."""
    if not status:
        return None
    if status not in PROPLET_STATUSES:
        raise BadRequestError(
            f"status: invalid proplet status {status!r} (allowed: {', '.join(PROPLET_STATUSES)})"
        )
    return status == "active"
