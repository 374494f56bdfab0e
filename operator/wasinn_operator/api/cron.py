"""Task schedules: the five-field cron expressions Propeller accepts, and their next run.

Propeller parses `schedule` with robfig/cron's standard parser (minute, hour, day of month,
month, day of week; no seconds, no `@` descriptors): `*`, `?` (as `*`), numbers, names
(`JAN`-`DEC`, `SUN`-`SAT`), ranges `a-b`, steps `*/n` and `a-b/n` and `a/n`, lists `a,b`, and a
leading `TZ=Zone` or `CRON_TZ=Zone`. As there, when both day fields are restricted a day
matching either one runs; an unknown `timezone` counts as UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, low, high, names with their first value)
FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 6, DAYS),
)
SEARCH_YEARS = 5  # robfig gives up after five years too (e.g. "0 0 30 2 *")


class CronError(ValueError):
    """The expression is not a valid five-field cron expression; the message says why."""


@dataclass(frozen=True)
class Schedule:
    """A parsed expression: the allowed values of each field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool  # day of month was `*` or `?`
    any_weekday: bool
    zone: tzinfo | None = None  # from a TZ= prefix

    def next_run(self, after: datetime, timezone: str = "") -> datetime | None:
        """The first matching minute strictly after `after` (UTC), or None within five years."""
        zone = self.zone or location(timezone)
        moment = after.astimezone(zone).replace(second=0, microsecond=0, tzinfo=None)
        moment += timedelta(minutes=1)
        limit = moment.year + SEARCH_YEARS
        while moment.year <= limit:
            if moment.month not in self.months:
                moment = (moment.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(
                    day=1
                )
            elif not self._day_matches(moment):
                moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
            elif moment.hour not in self.hours:
                moment = moment.replace(minute=0) + timedelta(hours=1)
            elif moment.minute not in self.minutes:
                moment += timedelta(minutes=1)
            else:
                return moment.replace(tzinfo=zone).astimezone(UTC)
        return None

    def _day_matches(self, moment: datetime) -> bool:
        in_month = moment.day in self.days
        in_week = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


def location(name: str) -> tzinfo:
    """The zone named `name`; UTC when empty or unknown (as Propeller falls back)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def parse(expression: str) -> Schedule:
    """Parse `expression`; `CronError` naming the field and the reason otherwise."""
    text = expression.strip()
    zone: tzinfo | None = None
    if text.startswith(("TZ=", "CRON_TZ=")):
        head, _, text = text.partition(" ")
        name = head.split("=", 1)[1]
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise CronError(f"unknown time zone {name!r}") from None
    if text.startswith("@"):
        raise CronError("descriptors such as @daily are not accepted: give five fields")
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    minutes, hours, days, months, weekdays = (
        _field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)
    )
    return Schedule(
        minutes,
        hours,
        days,
        months,
        weekdays,
        any_day=parts[2] in ("*", "?"),
        any_weekday=parts[4] in ("*", "?"),
        zone=zone,
    )


def validate(expression: str) -> None:
    """`CronError` unless `expression` parses."""
    parse(expression)


def next_run(expression: str, after: datetime, timezone: str = "") -> datetime | None:
    """The next run of `expression` after `after` in `timezone` (UTC when empty or unknown)."""
    return parse(expression).next_run(after, timezone)


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _range(item, name, low, high, names)
    return frozenset(values)


def _range(item: str, name: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise CronError(f"{name}: bad step in {item!r}")
        step = int(step_text)
    if span in ("*", "?"):
        start, end = low, high
    else:
        first, dash, last = span.partition("-")
        start = _value(first, name, low, high, names)
        # "a/n" runs from a to the end of the field, as in robfig/cron.
        end = _value(last, name, low, high, names) if dash else (high if slash else start)
        if end < start:
            raise CronError(f"{name}: range {span!r} ends before it starts")
    return set(range(start, end + 1, step))


def _value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    upper = text.upper()
    if upper in names:
        return names.index(upper) + low
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number" + (" or a name" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name}: {value} is outside {low}-{high}")
    return value
