"""Service layer for OEE, data in: line samples from the gateway and ideal rates; and the
public surface of the OEE package (figures, stops, reasons, calendars, shift closing live
in their own modules and are re-exported here).

Data in. The device gateway calls :func:`record_line_sample` with the line's PackML state
and its cumulative ``processed`` and ``defective`` counters. A new state (or a new stop
reason in a stop) starts a new :class:`~mes.oee.models.LineStateInterval`; counters become a
:class:`~mes.oee.models.CounterSample` with the units made since the previous sample. A
counter that goes *down* means the line restarted and counts from zero again: the units
since the restart are the new value itself, and the sample is flagged. The very first
sample of a counter is its baseline (what it counted before the MES listened is unknown).
Each call is one transaction with one audit entry; nothing is updated or deleted.

The figures and their definitions: :mod:`mes.oee.figures`; stops and their reasons:
:mod:`mes.oee.stops` and :mod:`mes.oee.reasons`; what is planned: :mod:`mes.oee.calendar`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import Actor, record
from mes.db import db, utcnow
from mes.errors import Conflict, ValidationFailed
from mes.oee.calendar import DEFAULT_MINOR_STOP_S, DEFAULT_STARTUP_S, calendar_json, calendars, set_line_calendar
from mes.oee.closing import close_shift, close_shifts_due
from mes.oee.common import MAX_COUNTER, MAX_FUTURE, MAX_RANGE, aware, iso, line_id_of, locked
from mes.oee.common import commit as _commit
from mes.oee.figures import GROUPS, NO_PRODUCT, compare_lines, has_reported, known_lines, oee
from mes.oee.models import PACKML_STATES, RUNNING_STATE, CounterSample, IdealRate, LineStateInterval
from mes.oee.reasons import define_reason, reason_tree, tree_json
from mes.oee.stops import assign_downtime_reason, current_reason, describe_stop, reason_json, stops
from mes.plant_time import shifts_between
from mes.validation import ID_RE, TEXT_MAX, required_text

__all__ = [
    "DEFAULT_MINOR_STOP_S", "DEFAULT_STARTUP_S", "GROUPS", "MAX_RANGE", "NO_PRODUCT", "assign_downtime_reason",
    "calendar_json", "calendars", "close_shift", "close_shifts_due", "compare_lines", "current_reason",
    "define_reason", "describe_stop", "has_reported", "ideal_rates", "known_lines", "line_id_of", "normalise_state", "oee",
    "rate_json", "reason_json", "reason_tree", "record_line_sample", "set_ideal_rate", "set_line_calendar",
    "shifts_between", "stops", "tree_json",
]

STATE_BY_NAME: dict[str, str] = {s.lower(): s for s in PACKML_STATES} | {str(n): s for n, s in enumerate(PACKML_STATES)}
_line = line_id_of
_aware = aware
_iso = iso
_locked = locked


# ------------------------------------------------------------------------ helpers


def _counter(value: Any, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"The {field_name} counter must be a whole number.", field=field_name)
    if not 0 <= value <= MAX_COUNTER:
        raise ValidationFailed(f"The {field_name} counter must be between 0 and {MAX_COUNTER}.", field=field_name)
    return value


def normalise_state(value: Any) -> str:
    """A PackML state from its name (any case) or its PackTags number: ``"held"``, ``"11"`` -> ``"Held"``."""
    key = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    state = STATE_BY_NAME.get(key)
    if state is None:
        raise ValidationFailed(f"{value!r} is not a PackML state (use one of {', '.join(PACKML_STATES)}).",
                               field="state")
    return state


# ------------------------------------------------------------------------ data in


def _last_interval(line_id: str) -> Any:
    """(seq, state, started_at, stop_reason) of the line's newest interval, or None."""
    return db.session.execute(select(LineStateInterval.seq, LineStateInterval.state, LineStateInterval.started_at,
                                     LineStateInterval.stop_reason)
                              .where(LineStateInterval.line_id == line_id)
                              .order_by(LineStateInterval.seq.desc()).limit(1)).first()


def _last_sample(line_id: str) -> Any:
    """(seq, at, processed, defective) of the line's newest counter sample, or None."""
    return db.session.execute(select(CounterSample.seq, CounterSample.at, CounterSample.processed,
                                     CounterSample.defective)
                              .where(CounterSample.line_id == line_id)
                              .order_by(CounterSample.seq.desc()).limit(1)).first()


def _last_reading(line_id: str, column: Any) -> int | None:
    """The newest reported value of one counter (a sample may carry only the other one)."""
    return db.session.execute(select(column).where(CounterSample.line_id == line_id, column.is_not(None))
                              .order_by(CounterSample.seq.desc()).limit(1)).scalar()


def _delta(value: int | None, previous: int | None) -> tuple[int, bool]:
    """Units since the previous reading of a cumulative counter, and whether it was reset."""
    if value is None or previous is None:
        return 0, False  # no reading, or the first one: the baseline
    if value >= previous:
        return value - previous, False
    return value, True  # the counter went down: the line restarted and counts from zero


def record_line_sample(
    actor: Actor,
    line_id: str,
    *,
    at: datetime,
    state: str | None,
    processed: int | None,
    defective: int | None,
    stop_reason: str | None = None,
    source: str,
    reworked: int | None = None,
) -> None:
    """Record what the line reported at ``at``: its PackML ``state`` (name or number) with
    the line's ``stop_reason`` code, and its cumulative ``processed`` / ``defective``
    counters (either may be None), and optionally ``reworked`` (units sent to rework). A
    repeated state with the same reason and no counters records nothing. Samples older than
    the line's last one are refused (the gateway sends them in order), as are times more
    than a minute ahead of the server clock."""
    line_id = _line(line_id)
    at = _aware(at, "at")
    now = utcnow()
    if at > now + MAX_FUTURE:
        raise ValidationFailed("The sample time is in the future; check the line's clock.", field="at")
    state = normalise_state(state) if state is not None else None
    processed = _counter(processed, "processed")
    defective = _counter(defective, "defective")
    reworked = _counter(reworked, "reworked")
    if reworked is not None and processed is None and defective is None:
        raise ValidationFailed("The reworked counter comes with the processed or defective counter.", field="reworked")
    if state is None and processed is None and defective is None:
        raise ValidationFailed("A line sample needs a state or a counter.", field="state")
    source = required_text(source, "The source", "source", 200)
    if stop_reason is not None and not isinstance(stop_reason, str):
        stop_reason = str(stop_reason) if isinstance(stop_reason, int) and not isinstance(stop_reason, bool) else None
        if stop_reason is None:
            raise ValidationFailed("The stop reason is a code or short text.", field="stop_reason")
    stop_reason = (stop_reason or "").strip() or None
    if stop_reason is not None and len(stop_reason) > 64:
        raise ValidationFailed("The stop reason is at most 64 characters.", field="stop_reason")
    if state == RUNNING_STATE:
        stop_reason = None  # a running line has no stop reason (PackML keeps the last one published)

    with _locked(), db.session.no_autoflush:
        after: dict[str, Any] = {"at": format_at(at), "source": source}
        interval = None
        if state is not None:
            last = _last_interval(line_id)
            if last is not None and at < last.started_at:
                raise Conflict(f"Line {line_id} already reported its state at {format_at(last.started_at)}; "
                               f"a sample from {format_at(at)} is older and is not recorded.")
            if last is None or last.state != state or last.stop_reason != stop_reason:
                interval = LineStateInterval(id=str(uuid.uuid4()), line_id=line_id, seq=(last.seq + 1) if last else 1,
                                             state=state, started_at=at, stop_reason=stop_reason, source=source,
                                             recorded_at=now, recorded_by=actor.id)
                db.session.add(interval)
                after["interval"] = {"id": interval.id, "seq": interval.seq, "state": state, "stop_reason": stop_reason,
                                     "previous_state": last.state if last else None}
        sample = None
        if processed is not None or defective is not None:
            last_any = _last_sample(line_id)
            if last_any is not None and at < last_any.at:
                raise Conflict(f"Line {line_id} already reported its counters at {format_at(last_any.at)}; "
                               f"a sample from {format_at(at)} is older and is not recorded.")
            prev_p = prev_d = None
            if last_any is not None:
                prev_p = last_any.processed
                if prev_p is None and processed is not None:
                    prev_p = _last_reading(line_id, CounterSample.processed)
                prev_d = last_any.defective
                if prev_d is None and defective is not None:
                    prev_d = _last_reading(line_id, CounterSample.defective)
            dp, reset_p = _delta(processed, prev_p)
            dd, reset_d = _delta(defective, prev_d)
            dr = _delta(reworked, _last_reading(line_id, CounterSample.reworked) if last_any else None)[0] \
                if reworked is not None else 0
            sample = CounterSample(id=str(uuid.uuid4()), line_id=line_id, seq=(last_any.seq + 1) if last_any else 1,
                                   at=at,
                                   processed=processed, defective=defective, processed_delta=dp, defective_delta=dd,
                                   processed_reset=reset_p, defective_reset=reset_d, reworked=reworked,
                                   reworked_delta=dr, source=source, recorded_at=now, recorded_by=actor.id)
            db.session.add(sample)
            after["counters"] = {"seq": sample.seq, "processed": processed, "defective": defective,
                                 "processed_delta": dp, "defective_delta": dd, "processed_reset": reset_p,
                                 "defective_reset": reset_d}
            if reworked is not None:
                after["counters"] |= {"reworked": reworked, "reworked_delta": dr}
        if interval is None and sample is None:
            db.session.rollback()
            return  # the same state again and no counters: nothing new to record
        record(actor, "oee.line_sample_recorded", ("line", line_id), after=after)
        _commit(f"Line {line_id} reported another sample at the same moment; it was not recorded twice.")


# --------------------------------------------------------------------------- rates


def rate_json(r: IdealRate) -> dict[str, Any]:
    return {"id": r.id, "line": r.line_id, "product": r.product,
            "ideal_rate": {"value": q.fmt(r.units_per_minute), "uom": "units/min"},
            "effective_from": _iso(r.effective_from), "comment": r.comment, "recorded_at": _iso(r.recorded_at),
            "recorded_by": r.recorded_by}


def set_ideal_rate(
    actor: Actor,
    line_id: str,
    units_per_minute: Decimal | str,
    *,
    product: str | None = None,
    effective_from: datetime | None = None,
    comment: str | None = None,
) -> IdealRate:
    """Configure the line's ideal rate (units per minute) for ``product``, or for any product
    without its own rate when ``product`` is None, from ``effective_from`` (default now)."""
    line_id = _line(line_id)
    if product is not None:
        product = product.strip() if isinstance(product, str) else ""
        if not ID_RE.fullmatch(product):
            raise ValidationFailed("A product is an item code of 1 to 64 letters, digits, dots, dashes or underscores.",
                                   field="product")
    try:
        rate = q.storable(q.parse_quantity(units_per_minute), "units/min")
    except q.QuantityError as exc:
        raise ValidationFailed(f"The ideal rate: {exc}.", field="units_per_minute") from None
    if rate <= 0:
        raise ValidationFailed("The ideal rate must be more than zero units per minute.", field="units_per_minute")
    now = utcnow()
    effective_from = _aware(effective_from, "effective_from") if effective_from is not None else now
    if comment is not None:
        comment = required_text(comment, "The comment", "comment", TEXT_MAX)
    with _locked():
        row = IdealRate(id=str(uuid.uuid4()), line_id=line_id, product=product, units_per_minute=rate,
                        effective_from=effective_from, comment=comment, recorded_at=now, recorded_by=actor.id)
        db.session.add(row)
        record(actor, "oee.ideal_rate_set", ("line", line_id),
               after={"product": product, "ideal_rate": {"value": q.fmt(rate), "uom": "units/min"},
                      "effective_from": format_at(effective_from), "comment": comment})
        _commit("The rate changed at the same moment; reload and try again.")
    return row


def ideal_rates(line_id: str) -> list[IdealRate]:
    """The line's ideal rates, oldest first (later ones take over from their effective time)."""
    line_id = _line(line_id)
    return list(db.session.execute(select(IdealRate).where(IdealRate.line_id == line_id)
                                   .order_by(IdealRate.effective_from, IdealRate.recorded_at)).scalars())


