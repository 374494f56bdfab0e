"""Pod priority from a task's Propeller priority: bands of PriorityClasses the chart creates.

A task's priority is Propeller's (0-100, 50 when unset), kept by the shim in the
`wasinn.dev/propeller-fields` annotation (a WasiNNTask written by hand may carry it there too).
The operator is given the bands as `NAME=FROM,...` (WASINN_PRIORITY_CLASSES, from the chart's
`priorityClasses`): a task's Pod gets the class of the band with the highest FROM its priority
reaches, so the scheduler places higher-priority tasks first when nodes are full. No bands: no
class (the cluster's default priority). Pure: unit-tested alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..api import PROPELLER_FIELDS_ANNOTATION

DEFAULT_PRIORITY = 50  # Propeller's default (manager/service.go CreateTask)
# A PriorityClass name: a DNS subdomain.
CLASS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
Bands = tuple[tuple[int, str], ...]  # (from, class name), lowest first


def parse_bands(text: str) -> Bands:
    """`low=0,normal=34,high=67` as bands, lowest first; ValueError naming a bad entry."""
    bands: list[tuple[int, str]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, equals, start = entry.rpartition("=")
        if not equals or not CLASS_NAME.match(name) or len(name) > 253:
            raise ValueError(
                f"WASINN_PRIORITY_CLASSES: {entry!r} is not NAME=FROM with NAME a PriorityClass "
                "name (lowercase letters, digits, '-' and '.')"
            )
        if not start.isdigit() or not 0 <= int(start) <= 100:
            raise ValueError(f"WASINN_PRIORITY_CLASSES: {entry!r}: FROM must be 0 to 100")
        bands.append((int(start), name))
    starts = [start for start, _ in bands]
    if len(set(starts)) != len(starts):
        raise ValueError("WASINN_PRIORITY_CLASSES: two bands start at the same priority")
    return tuple(sorted(bands))


def task_priority(task: dict[str, Any]) -> int:
    """The task's Propeller priority (0-100), 50 when unset or unreadable."""
    notes = task.get("metadata", {}).get("annotations") or {}
    try:
        fields = json.loads(notes.get(PROPELLER_FIELDS_ANNOTATION) or "{}")
    except ValueError:
        return DEFAULT_PRIORITY
    value = fields.get("priority") if isinstance(fields, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        return DEFAULT_PRIORITY
    return value


def priority_class(priority: int, bands: Bands) -> str | None:
    """The class of the highest band `priority` reaches; None without bands, or below the
    lowest one."""
    found = None
    for start, name in bands:
        if priority >= start:
            found = name
    return found
