"""Closing a shift: its OEE figures, once per line and shift, to ERP/MES reporting as the
outbox event ``mes.oee.shift_closed.v1`` (``shared/specs/events.md``).

A closure is a snapshot of the figures when the shift is closed (a sample arriving later
changes the page, not the event already sent). It is one transaction with its audit entry,
its :class:`~mes.oee.models.ShiftClosure` row (which makes a second closure of the same
shift a conflict) and its event.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from mes.audit.canonical import format_at
from mes.audit.log import Actor, Event, record
from mes.db import db, utcnow
from mes.errors import Conflict, ValidationFailed
from mes.oee.common import EPSILON, aware, commit, line_id_of, locked
from mes.oee.figures import known_lines, oee
from mes.oee.models import ShiftClosure
from mes.plant_time import Shift, plant_zone, shifts_between

SHIFT_CLOSED = "mes.oee.shift_closed.v1"
GRACE = timedelta(minutes=15)  # late samples from the line's buffer arrive within this
LOOKBACK = timedelta(days=2)
FIGURES = ("planned_production_s", "run_s", "downtime_s", "planned_stop_s", "not_scheduled_s", "no_data_s",
           "total_count", "good_count", "defective_count", "startup_rejects", "production_rejects",
           "qa_rejected_count", "reworked_count", "count_unit", "availability", "performance", "quality", "oee", "utilisation", "teep",
           "stops", "mtbf_s", "mttr_s", "losses_s", "downtime_by_reason")


def _shift_starting(at: datetime) -> Shift:
    for s in shifts_between(at, at + EPSILON):
        if s.start == at:
            return s
    raise ValidationFailed(f"No shift starts at {format_at(at)}.", field="shift_start")


def shift_closed_data(line_id: str, shift: Shift) -> dict[str, Any]:
    """The event payload: the line, the shift and its figures."""
    result = oee(line_id, shift.start, shift.end, "shift")
    group = next(g for g in result["groups"] if g["key"] == shift.label)
    return {"line": line_id, "shift_name": shift.name, "shift_date": shift.day.isoformat(),
            "shift_start": format_at(shift.start), "shift_end": format_at(shift.end), "timezone": plant_zone().key,
            "scheduled": group["scheduled"], "oee_target": result["oee_target"],
            **{k: group[k] for k in FIGURES}}


def close_shift(actor: Actor, line_id: str, shift_start: datetime) -> ShiftClosure:
    """Close one ended shift of a line: record its figures and send ``mes.oee.shift_closed.v1``."""
    line_id = line_id_of(line_id)
    shift = _shift_starting(aware(shift_start, "shift_start"))
    now = utcnow()
    if shift.end > now:
        raise Conflict(f"Shift {shift.label} ends at {format_at(shift.end)}; it is closed after it ends.")
    with locked():
        if db.session.execute(select(ShiftClosure.id).where(ShiftClosure.line_id == line_id,
                                                            ShiftClosure.shift_start == shift.start)).first():
            raise Conflict(f"Shift {shift.label} of line {line_id} is already closed.")
        data = shift_closed_data(line_id, shift)
        row = ShiftClosure(id=str(uuid.uuid4()), line_id=line_id, shift_name=shift.name, shift_start=shift.start,
                           shift_end=shift.end, figures=data, closed_at=now, closed_by=actor.id)
        db.session.add(row)
        record(actor, "oee.shift_closed", ("line", line_id), after=data,
               event=Event(SHIFT_CLOSED, "line", line_id, data=data, time=shift.end))
        commit(f"Shift {shift.label} of line {line_id} was closed at the same moment.")
    return row


def close_shifts_due(actor: Actor, lines: Iterable[str] | None = None) -> list[ShiftClosure]:
    """Close every shift of the last two days that ended at least :data:`GRACE` ago and is not closed yet."""
    now = utcnow()
    closed = []
    for line in (known_lines() if lines is None else list(lines)):
        done = set(db.session.execute(select(ShiftClosure.shift_start).where(
            ShiftClosure.line_id == line, ShiftClosure.shift_start >= now - LOOKBACK - timedelta(days=1))).scalars())
        for shift in shifts_between(now - LOOKBACK, now):
            if shift.end + GRACE <= now and shift.start not in done:
                closed.append(close_shift(actor, line, shift.start))
    return closed
