"""Plant time: the plant's time zone, its calendar dates and its shifts.

Records are stored in UTC; the plant lives in ``MES_TIMEZONE``. Expiry, retest and
calibration due dates are calendar dates *at the plant*: a lot expiring on the 23rd may be
used until midnight of the 23rd in plant time, not until midnight UTC. Shifts are
``MES_SHIFTS`` start times on the plant's wall clock.

The zone and the shift pattern come from configuration: passed in explicitly, or read from
the running app's config. Outside an app context, without an explicit zone, every function
here raises :class:`PlantTimeError` instead of guessing UTC, because a guessed zone moves
the day an expiry or a calibration runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import current_app, has_app_context

__all__ = [
    "PlantTimeError",
    "Shift",
    "parse_shifts",
    "parse_zone",
    "plant_date",
    "plant_zone",
    "shift_pattern",
    "shifts_between",
]

Zone = ZoneInfo | str
"""A zone given explicitly: a ZoneInfo or an IANA name such as ``Europe/Zurich``."""
ShiftPattern = tuple[tuple[str, int], ...]
"""Shift starts as (name, minute of the day in plant time), in rising order."""


class PlantTimeError(RuntimeError):
    """Plant time asked for where the plant's zone (or shift pattern) is not known.

    A programming or configuration error, not a user's: pass the zone, or call from inside
    the app (which reads ``MES_TIMEZONE``)."""


def parse_zone(raw: str) -> str:
    """An IANA zone name checked to exist (``MES_TIMEZONE``); ValueError otherwise."""
    try:
        ZoneInfo(raw.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {raw!r}; use an IANA name such as Europe/Zurich") from None
    return raw.strip()


def parse_shifts(raw: str) -> ShiftPattern:
    """``06:00,14:00,22:00`` (or ``early=06:00,...``) -> ((name, minute of the day), ...)."""
    shifts: list[tuple[str, int]] = []
    for n, part in enumerate((p.strip() for p in raw.split(",")), start=1):
        name, _, at = part.rpartition("=")
        hours, _, minutes = at.strip().partition(":")
        if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and int(hours) < 24 and int(minutes) < 60):
            raise ValueError(f"expected shift start times such as 06:00,14:00,22:00, got {part!r}")
        shifts.append((name.strip() or f"Shift {n}", int(hours) * 60 + int(minutes)))
    starts = [m for _, m in shifts]
    if starts != sorted(set(starts)):
        raise ValueError("shift start times must be given in rising order, each once")
    return tuple(shifts)


def _configured(key: str, what: str) -> Any:
    if not has_app_context():
        raise PlantTimeError(f"The plant's {what} is not known outside the app: pass it explicitly or run inside "
                             f"the app, which reads {key}. Plant time never falls back to UTC.")
    value = current_app.config.get(key)
    if value is None or value == "":
        raise PlantTimeError(f"{key} is not set in the app config; plant time never falls back to UTC.")
    return value


def plant_zone(zone: Zone | None = None) -> ZoneInfo:
    """The plant's zone: ``zone`` if given, else the app's ``MES_TIMEZONE``; PlantTimeError
    outside an app context without ``zone``."""
    chosen = _configured("MES_TIMEZONE", "time zone") if zone is None else zone
    return chosen if isinstance(chosen, ZoneInfo) else ZoneInfo(chosen)


def plant_date(at: datetime, zone: Zone | None = None) -> date:
    """The calendar date at the plant at instant ``at`` (an aware datetime)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"plant_date needs an aware datetime, got {at!r}")
    return at.astimezone(plant_zone(zone)).date()


def shift_pattern(pattern: str | ShiftPattern | None = None) -> ShiftPattern:
    """The shift starts: ``pattern`` if given, else the app's ``MES_SHIFTS``."""
    raw = _configured("MES_SHIFTS", "shift pattern") if pattern is None else pattern
    return parse_shifts(raw) if isinstance(raw, str) else tuple(raw)


@dataclass(frozen=True)
class Shift:
    """One shift: its name, the plant date it starts on, and its UTC start and end."""

    name: str
    day: date
    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        return f"{self.day.isoformat()} {self.name}"


def shifts_between(start: datetime, end: datetime, *, zone: Zone | None = None,
                   pattern: str | ShiftPattern | None = None) -> list[Shift]:
    """The shifts overlapping ``[start, end)``, from the shift pattern in the plant's zone.

    Each start time is a wall-clock time at the plant; a time that does not exist on a
    spring-forward day is taken an hour later and an ambiguous one on a fall-back day at
    its first occurrence, so the shift around the change is an hour shorter or longer."""
    tz, starts = plant_zone(zone), shift_pattern(pattern)
    first = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date() + timedelta(days=1)
    bounds: list[tuple[datetime, str, date]] = []
    day = first
    while day <= last:
        for name, minute in starts:
            local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=tz)
            bounds.append((local.astimezone(UTC), name, day))
        day += timedelta(days=1)
    bounds.sort(key=lambda b: b[0])
    out = []
    for (b0, name, d), (b1, _, _) in zip(bounds, bounds[1:], strict=False):
        if b1 > b0 and b1 > start and b0 < end:
            out.append(Shift(name, d, b0, b1))
    return out
