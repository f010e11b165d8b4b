"""Stops: one event from the line leaving Execute to returning to it, with its states.

A normal PackML break (Stopping, Stopped, Resetting, Idle, Starting) is one stop of five
intervals; classifying the stop classifies all of them. A stop ends where the line runs
again (Execute) or loses its data (Undefined, "no data"); a new stop code reported in the
same PackML state (the gateway then records a new interval in the same state) starts a
new stop, because the line says something else stopped it.

A stop's reason is, in order: the latest reason a supervisor or operator assigned to it;
else the reason its PLC stop code maps to in the reason tree; else, when it lasted less
than the line's minor-stop threshold, a minor stop; else it is unassigned (a loss).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from mes.audit.canonical import format_at
from mes.audit.log import Actor, Event, record
from mes.db import db, utcnow
from mes.errors import Conflict, ValidationFailed
from mes.oee.common import EPSILON, checked_range, commit, iso, line_id_of, locked
from mes.oee.models import RUNNING_STATE, UNKNOWN_STATE, DowntimeReason, LineStateInterval, LossCategory
from mes.oee.reasons import Reason, plc_map, reason_tree
from mes.validation import TEXT_MAX, get_or_404, required_text

STOP_CLASSIFIED = "mes.oee.stop_classified.v1"
BOUNDARY_STATES = (RUNNING_STATE, UNKNOWN_STATE)


@dataclass
class Stop:
    """One stop event: its intervals (oldest first), its start and end (None while it lasts)."""

    intervals: list[LineStateInterval]
    end: datetime | None = None
    reasons: list[DowntimeReason] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.intervals[0].id

    @property
    def line_id(self) -> str:
        return self.intervals[0].line_id

    @property
    def start(self) -> datetime:
        return self.intervals[0].started_at

    @property
    def assigned(self) -> DowntimeReason | None:
        """The latest assignment to any of its intervals."""
        return max(self.reasons, key=lambda r: (r.assigned_at, r.id)) if self.reasons else None


@dataclass(frozen=True)
class Classification:
    """How a stop counts: its label, loss category, whether planned, and where that came from."""

    label: str
    category: LossCategory
    planned: bool
    source: str  # assigned | plc | minor_stop | unassigned


def group_stops(intervals: Sequence[LineStateInterval], next_start: datetime | None) -> list[Stop]:
    """The stops among a line's consecutive intervals (oldest first); ``next_start`` is when
    the interval after the last one began (None: the last one still lasts)."""
    stops: list[Stop] = []
    current: Stop | None = None
    for n, row in enumerate(intervals):
        if row.state in BOUNDARY_STATES:
            if current is not None:
                current.end = row.started_at
            current = None
            continue
        if current is not None and current.intervals[-1].state == row.state:
            current.end = row.started_at  # a new stop code in the same state: a new stop
            current = None
        if current is None:
            current = Stop([row])
            stops.append(current)
        else:
            current.intervals.append(row)
        if n == len(intervals) - 1:
            current.end = next_start
    return stops


def attach_reasons(stops: Sequence[Stop]) -> None:
    """Load the downtime reasons assigned to the stops' intervals."""
    by_interval = {i.id: s for s in stops for i in s.intervals}
    ids = list(by_interval)
    for chunk in (ids[n:n + 500] for n in range(0, len(ids), 500)):
        for r in db.session.execute(select(DowntimeReason).where(DowntimeReason.interval_id.in_(chunk))).scalars():
            by_interval[r.interval_id].reasons.append(r)


def classify(stop: Stop, tree: dict[str, Reason], plc: dict[str, Reason], minor_stop_s: int,
             now: datetime) -> Classification:
    """How the stop counts (see the module docstring)."""
    assigned = stop.assigned
    if assigned is not None:
        r = tree.get(assigned.reason)
        if r is not None:
            return Classification(r.label, r.category, r.planned, "assigned")
        return Classification(assigned.reason, LossCategory.UNCLASSIFIED if not assigned.planned
                              else LossCategory.PLANNED_BREAK, assigned.planned, "assigned")
    for row in stop.intervals:
        if row.stop_reason is not None and row.stop_reason in plc:
            r = plc[row.stop_reason]
            return Classification(r.label, r.category, r.planned, "plc")
    end = stop.end or now
    if (end - stop.start).total_seconds() < minor_stop_s:
        minor = tree.get("minor_stop")
        return Classification(minor.label if minor else "Minor stop", LossCategory.MINOR_STOP, False, "minor_stop")
    first = stop.intervals[0]
    code = f" {first.stop_reason}" if first.stop_reason else ""
    return Classification(f"unassigned ({first.state}{code})", LossCategory.UNCLASSIFIED, False, "unassigned")


def intervals_around(line_id: str, start: datetime, until: datetime) -> tuple[list[LineStateInterval], datetime | None]:
    """The line's intervals from the start of the stop in effect at ``start`` (or the interval
    in effect then) up to ``until``, oldest first, and when the next one after them began."""
    first_seq = db.session.execute(select(func.max(LineStateInterval.seq)).where(
        LineStateInterval.line_id == line_id, LineStateInterval.started_at <= start)).scalar()
    if first_seq is not None:
        boundary = db.session.execute(select(func.max(LineStateInterval.seq)).where(
            LineStateInterval.line_id == line_id, LineStateInterval.seq <= first_seq,
            LineStateInterval.state.in_(BOUNDARY_STATES))).scalar()
        from_seq = boundary if boundary is not None else 1
    else:
        from_seq = 1
    rows = list(db.session.execute(select(LineStateInterval).where(
        LineStateInterval.line_id == line_id, LineStateInterval.seq >= from_seq,
        LineStateInterval.started_at < until).order_by(LineStateInterval.seq)).scalars())
    last_seq = rows[-1].seq if rows else from_seq - 1
    nxt = db.session.execute(select(LineStateInterval.started_at).where(
        LineStateInterval.line_id == line_id, LineStateInterval.seq == last_seq + 1)).scalar()
    return rows, nxt


def stop_of(interval: LineStateInterval) -> Stop:
    """The stop an interval belongs to, with all its intervals and reasons."""
    line = interval.line_id
    boundary = db.session.execute(select(func.max(LineStateInterval.seq)).where(
        LineStateInterval.line_id == line, LineStateInterval.seq < interval.seq,
        LineStateInterval.state.in_(BOUNDARY_STATES))).scalar() or 0
    after = db.session.execute(select(func.min(LineStateInterval.seq)).where(
        LineStateInterval.line_id == line, LineStateInterval.seq > interval.seq,
        LineStateInterval.state.in_(BOUNDARY_STATES))).scalar()
    q = select(LineStateInterval).where(LineStateInterval.line_id == line, LineStateInterval.seq > boundary)
    if after is not None:
        q = q.where(LineStateInterval.seq <= after)
    rows = list(db.session.execute(q.order_by(LineStateInterval.seq)).scalars())
    stops = group_stops(rows, None)
    stop = next(s for s in stops if any(i.id == interval.id for i in s.intervals))
    attach_reasons([stop])
    return stop


def current_reason(interval_id: str) -> DowntimeReason | None:
    """The reason that counts for the stop this interval belongs to: the latest assignment."""
    return stop_of(get_or_404(LineStateInterval, interval_id, "Line state interval")).assigned


def reason_json(r: DowntimeReason | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"id": r.id, "interval_id": r.interval_id, "reason": r.reason, "planned": r.planned, "comment": r.comment,
            "assigned_at": iso(r.assigned_at), "assigned_by": r.assigned_by}


def stop_json(stop: Stop, c: Classification) -> dict[str, Any]:
    first = stop.intervals[0]
    return {"id": stop.id, "line": stop.line_id, "state": first.state, "stop_reason": first.stop_reason,
            "states": [{"interval_id": i.id, "state": i.state, "stop_reason": i.stop_reason,
                        "started_at": iso(i.started_at)} for i in stop.intervals],
            "started_at": iso(stop.start), "ended_at": iso(stop.end), "source": first.source,
            "reason": reason_json(stop.assigned),
            "classification": {"label": c.label, "category": c.category.value, "planned": c.planned,
                               "source": c.source}}


def stops(line_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The line's stops overlapping ``[start, end)`` with their states and reason, oldest
    first, for supervisors and operators to classify."""
    from mes.oee.calendar import calendars  # the calendar module reads stops' thresholds

    line_id = line_id_of(line_id)
    start, end = checked_range(start, end)
    rows, nxt = intervals_around(line_id, start, end)
    found = [s for s in group_stops(rows, nxt) if s.end is None or s.end > start]
    attach_reasons(found)
    tree = reason_tree()
    plc, cal, now = plc_map(tree), calendars(line_id), utcnow()
    return [stop_json(s, classify(s, tree, plc, cal.minor_stop_s(s.start), now)) for s in found]


def describe_stop(interval_id: str) -> dict[str, Any]:
    """One stop (found by any of its intervals) with its states and how it counts now."""
    from mes.oee.calendar import calendars

    interval = get_or_404(LineStateInterval, interval_id, "Line state interval")
    if interval.state in BOUNDARY_STATES:
        raise Conflict(f"Line {interval.line_id} was not stopped at {format_at(interval.started_at)}.")
    stop = stop_of(interval)
    tree = reason_tree()
    return stop_json(stop, classify(stop, tree, plc_map(tree), calendars(stop.line_id).minor_stop_s(stop.start),
                                    utcnow()))


def assign_downtime_reason(
    actor: Actor,
    interval_id: str,
    reason: str,
    *,
    planned: bool | None = None,
    comment: str | None = None,
) -> DowntimeReason:
    """Classify the stop the interval belongs to (every state in it): ``reason`` is a code of
    the reason tree (its category says whether it is planned) or a free text with
    ``planned``. A new assignment supersedes the previous one; both stay on record."""
    reason = required_text(reason, "The downtime reason", "reason", 100)
    if planned is not None and not isinstance(planned, bool):
        raise ValidationFailed("planned is true or false.", field="planned")
    if comment is not None:
        comment = required_text(comment, "The comment", "comment", TEXT_MAX)
    tree = reason_tree()
    known = tree.get(reason)
    if known is not None:
        if planned is not None and planned != known.planned:
            raise ValidationFailed(f"Reason {known.code} is {'a planned stop' if known.planned else 'a loss'}; "
                                   "its category decides, not the planned flag.", field="planned")
        planned = known.planned
    planned = bool(planned)
    with locked():
        interval = get_or_404(LineStateInterval, interval_id, "Line state interval")
        if interval.state == RUNNING_STATE:
            raise Conflict(f"Line {interval.line_id} was running from {format_at(interval.started_at)}; "
                           "only stops get a downtime reason.")
        if interval.state == UNKNOWN_STATE:
            raise Conflict(f"Line {interval.line_id} did not know its state from {format_at(interval.started_at)}; "
                           "that time is counted as no data, not as downtime.")
        stop = stop_of(interval)
        before = stop.assigned
        now = utcnow()
        if before is not None and now <= before.assigned_at:
            now = before.assigned_at + EPSILON  # the latest assignment must sort last
        row = DowntimeReason(id=str(uuid.uuid4()), interval_id=stop.id, line_id=stop.line_id, reason=reason,
                             planned=planned, comment=comment, assigned_at=now, assigned_by=actor.id)
        db.session.add(row)
        category = known.category.value if known else None
        after = {"line": stop.line_id, "stop_id": stop.id, "state": stop.intervals[0].state,
                 "states": [i.state for i in stop.intervals], "started_at": format_at(stop.start),
                 "ended_at": iso(stop.end), "reason": reason, "category": category, "planned": planned,
                 "comment": comment}
        record(actor, "oee.downtime_reason_assigned", ("oee_stop", stop.id),
               before=None if before is None else {"reason": before.reason, "planned": before.planned},
               after=after, reason=None if before is None else "reason reassigned",
               event=Event(STOP_CLASSIFIED, "line", stop.line_id,
                           data={**after, "classified_by": actor.id, "classified_at": format_at(now)}))
        commit("The stop changed at the same moment; reload and try again.")
    return row
