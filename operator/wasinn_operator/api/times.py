"""Times as Kubernetes writes them (RFC 3339, UTC, a Z) and read back."""

from __future__ import annotations

from datetime import UTC, datetime


def kube_time(moment: datetime) -> str:
    """`2026-01-02T03:04:05Z`: seconds precision, as the API server writes its own times."""
    aware = moment.astimezone(UTC) if moment.tzinfo else moment
    return aware.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (a Z or an offset) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
