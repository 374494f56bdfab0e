"""Times on the wire: one RFC 3339 form (UTC, microseconds, `Z`) for status, Propeller JSON,
annotations and the local database.

Fixed width, so the text order of two times is their order (the local backend sorts on it).
"""

from __future__ import annotations

from datetime import UTC, datetime

ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
GO_ZERO = "0001-01-01T00:00:00Z"  # Go's zero time.Time, Propeller's "unset"


def format_time(moment: datetime) -> str:
    """`2026-01-02T03:04:05.123456Z` (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (any precision, `Z` or an offset) as an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def maybe_time(text: str | None) -> datetime | None:
    """`parse_time`, with None for an unset time (None or "")."""
    return parse_time(text) if text else None


def propeller_time(moment: datetime | None) -> str:
    """A Propeller JSON time: unset (None, or the zero time) is Go's zero time."""
    if moment is None or moment == ZERO_TIME:
        return GO_ZERO
    return format_time(moment)
