"""Production calendars: what time of a line is planned production time.

A line's calendar says which shifts it works on which weekdays (a shift belongs to the
plant date and weekday it starts on: Friday's night shift runs into Saturday), its holidays and its
planned maintenance windows, with its OEE target, its minor-stop threshold and its
startup window (rejects this long after a restart are startup rejects). A line without a
calendar is planned every hour of every day. Stops outside the calendar are no losses
(the line was not planned to run); a line that runs outside it still counts its run and
its units. Each change is an audited, append-only new version from ``effective_from`` in
one transaction with its outbox event ``mes.oee.line_calendar_set.v1``.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import Actor, Event, record
from mes.db import db, utcnow
from mes.errors import ValidationFailed
from mes.oee.common import aware, commit, iso, line_id_of, locked
from mes.oee.models import LineCalendar
from mes.plant_time import Shift, shift_pattern
from mes.validation import TEXT_MAX, required_text

CALENDAR_SET = "mes.oee.line_calendar_set.v1"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_MINOR_STOP_S = 300
DEFAULT_STARTUP_S = 600
MAX_THRESHOLD_S = 86_400


class Calendars:
    """The calendar versions of one line, answering what applies at a time."""

    def __init__(self, rows: Iterable[LineCalendar]) -> None:
        self.rows = list(rows)  # by effective_from
        self.starts = [r.effective_from for r in self.rows]
        self.holidays = [frozenset(r.holidays) for r in self.rows]
        self.windows = [[(datetime.fromisoformat(w["from"]), datetime.fromisoformat(w["to"]), w.get("note"))
                         for w in r.maintenance] for r in self.rows]

    def _index(self, t: datetime) -> int:
        return bisect.bisect_right(self.starts, t) - 1

    def at(self, t: datetime) -> LineCalendar | None:
        i = self._index(t)
        return self.rows[i] if i >= 0 else None

    def scheduled(self, shift: Shift, t: datetime) -> bool:
        """Whether the line is planned to work in ``shift`` (at ``t``, for the version)."""
        i = self._index(t)
        if i < 0:
            return True  # no calendar: every hour is planned
        row = self.rows[i]
        if shift.day.isoformat() in self.holidays[i]:
            return False
        return shift.name in row.shifts.get(WEEKDAYS[shift.day.weekday()], ())

    def maintenance_at(self, t: datetime) -> str | None:
        """The planned maintenance window's note when ``t`` is inside one, else None."""
        i = self._index(t)
        if i < 0:
            return None
        for a, b, note in self.windows[i]:
            if a <= t < b:
                return note or "planned maintenance"
        return None

    def cuts(self, start: datetime, end: datetime) -> set[datetime]:
        """Times inside ``(start, end)`` where what the calendar says may change."""
        out = {t for t in self.starts if start < t < end}
        for ws in self.windows:
            out.update(t for a, b, _ in ws for t in (a, b) if start < t < end)
        return out

    def minor_stop_s(self, t: datetime) -> int:
        row = self.at(t)
        return row.minor_stop_s if row else DEFAULT_MINOR_STOP_S

    def startup_s(self, t: datetime) -> int:
        row = self.at(t)
        return row.startup_s if row else DEFAULT_STARTUP_S

    def target(self, t: datetime) -> Decimal | None:
        row = self.at(t)
        return row.oee_target if row else None


def calendars(line_id: str) -> Calendars:
    """The line's calendar versions, oldest first."""
    return Calendars(db.session.execute(select(LineCalendar).where(LineCalendar.line_id == line_id)
                                        .order_by(LineCalendar.effective_from, LineCalendar.recorded_at)).scalars())


def calendar_json(row: LineCalendar) -> dict[str, Any]:
    return {"id": row.id, "line": row.line_id, "effective_from": iso(row.effective_from), "shifts": row.shifts,
            "holidays": row.holidays, "maintenance": row.maintenance,
            "oee_target": None if row.oee_target is None else q.fmt(row.oee_target),
            "minor_stop_s": row.minor_stop_s, "startup_s": row.startup_s, "comment": row.comment,
            "recorded_at": iso(row.recorded_at), "recorded_by": row.recorded_by}


def _shifts(value: Any) -> dict[str, list[str]]:
    names = {name for name, _ in shift_pattern()}
    if not isinstance(value, Mapping) or not set(value) <= set(WEEKDAYS):
        raise ValidationFailed("shifts maps weekdays (" + ", ".join(WEEKDAYS) + ") to the shifts worked.",
                               field="shifts")
    out = {}
    for day in WEEKDAYS:
        worked = value.get(day, [])
        if not isinstance(worked, list) or any(not isinstance(s, str) or s not in names for s in worked):
            raise ValidationFailed(f"The shifts worked on {day} are names of the plant's shifts "
                                   f"({', '.join(sorted(names))}).", field="shifts")
        out[day] = list(dict.fromkeys(worked))
    return out


def _holidays(value: Iterable[Any]) -> list[str]:
    out = []
    for v in value:
        try:
            out.append(date.fromisoformat(v).isoformat() if isinstance(v, str) else v.isoformat())
        except (ValueError, AttributeError):
            raise ValidationFailed(f"{v!r} is not a date such as 2026-12-25.", field="holidays") from None
    return sorted(set(out))


def _when(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(f"{value!r} is not a date-time such as 2026-12-24T06:00:00Z.",
                               field="maintenance") from None


def _windows(value: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for w in value:
        if not isinstance(w, Mapping):
            raise ValidationFailed("A maintenance window has from, to and a note.", field="maintenance")
        a = w.get("from")
        b = w.get("to")
        a, b = aware(_when(a), "maintenance"), aware(_when(b), "maintenance")
        if b <= a:
            raise ValidationFailed("A maintenance window ends after it starts.", field="maintenance")
        note = w.get("note")
        note = required_text(note, "The maintenance note", "maintenance", 200) if note is not None else None
        out.append({"from": a.isoformat(), "to": b.isoformat(), "note": note})
    return sorted(out, key=lambda x: x["from"])


def _threshold(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THRESHOLD_S:
        raise ValidationFailed(f"{name} is whole seconds from 0 to {MAX_THRESHOLD_S}.", field=name)
    return value


def set_line_calendar(
    actor: Actor,
    line_id: str,
    *,
    shifts: Mapping[str, list[str]],
    holidays: Iterable[Any] = (),
    maintenance: Iterable[Mapping[str, Any]] = (),
    oee_target: Decimal | str | None = None,
    minor_stop_s: int = DEFAULT_MINOR_STOP_S,
    startup_s: int = DEFAULT_STARTUP_S,
    effective_from: datetime | None = None,
    comment: str | None = None,
) -> LineCalendar:
    """A new calendar version of the line from ``effective_from`` (default now)."""
    line_id = line_id_of(line_id)
    worked = _shifts(shifts)
    days = _holidays(holidays)
    windows = _windows(maintenance)
    target = None
    if oee_target is not None:
        try:
            target = q.storable(q.parse_quantity(oee_target), "1")
        except q.QuantityError as exc:
            raise ValidationFailed(f"The OEE target: {exc}.", field="oee_target") from None
        if not 0 < target <= 1:
            raise ValidationFailed("The OEE target is a ratio above 0 and at most 1 (0.85 = 85 %).",
                                   field="oee_target")
    minor = _threshold(minor_stop_s, "minor_stop_s")
    startup = _threshold(startup_s, "startup_s")
    now = utcnow()
    effective = aware(effective_from, "effective_from") if effective_from is not None else now
    if comment is not None:
        comment = required_text(comment, "The comment", "comment", TEXT_MAX)
    with locked():
        before = calendars(line_id).at(effective)
        row = LineCalendar(id=str(uuid.uuid4()), line_id=line_id, effective_from=effective, shifts=worked,
                           holidays=days, maintenance=windows, oee_target=target, minor_stop_s=minor,
                           startup_s=startup, comment=comment, recorded_at=now, recorded_by=actor.id)
        db.session.add(row)
        after = {"line": line_id, "effective_from": format_at(effective), "shifts": worked, "holidays": days,
                 "maintenance": windows, "oee_target": None if target is None else q.fmt(target),
                 "minor_stop_s": minor, "startup_s": startup, "comment": comment}
        record(actor, "oee.line_calendar_set", ("line", line_id),
               before=None if before is None else {k: v for k, v in calendar_json(before).items()
                                                   if k not in ("id", "recorded_at", "recorded_by")},
               after=after, event=Event(CALENDAR_SET, "line", line_id, data=after))
        commit("The calendar changed at the same moment; reload and try again.")
    return row
