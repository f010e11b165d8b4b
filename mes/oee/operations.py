"""Service layer for OEE: line samples in, downtime reasons and ideal rates, and the OEE
figures of a line over any time range, grouped by shift or by product.

Data in. The device gateway calls :func:`record_line_sample` with the line's PackML state
and its cumulative ``processed`` and ``defective`` counters. A new state (or a new stop
reason in a stop) starts a new :class:`~mes.oee.models.LineStateInterval`; counters become a
:class:`~mes.oee.models.CounterSample` with the units made since the previous sample. A
counter that goes *down* means the line restarted and counts from zero again: the units
since the restart are the new value itself, and the sample is flagged. The very first
sample of a counter is its baseline (what it counted before the MES listened is unknown).
Each call is one transaction with one audit entry; nothing is updated or deleted.

Definitions (ISO 22400-2 style), all in exact Decimal arithmetic:

- *no data*: time before the line's first state, or in state ``Undefined``; outside every
  figure below and shown on its own;
- *planned production time* = time with a known state − planned stops (stops whose
  supervisor-assigned reason is marked planned: breaks, planned maintenance, no order);
- *run time* = time in ``Execute``; *downtime* = planned production time − run time,
  broken down by reason (the assigned reason, else ``unassigned`` with the state and the
  line's own stop code);
- *total count* = units processed, *good count* = total − defective;
- availability = run / planned production time; performance = ideal run time of the
  total count (Σ count ÷ ideal rate of the product made, at the time) / run time;
  quality = good / total; OEE = availability × performance × quality. A figure whose
  denominator is zero, or a performance with a product that has no ideal rate, is null.

Attribution. A time span belongs to the shift and product at its start; a counter sample
at ``t`` reports the units made up to ``t``, so it belongs to the shift and product of the
instant just before ``t`` (a sample at 14:00:00 closes the shift that ends at 14:00). The
product is the item of the work order of the batch running on the line (started, not yet
completed or decided); when two batches overlap, the one started last. Shifts come from
``MES_SHIFTS`` in ``MES_TIMEZONE`` (:mod:`mes.plant_time`), so on DST days a shift is an hour
shorter or longer.
"""

from __future__ import annotations

import bisect
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import ADVISORY_LOCK_KEY, Actor, record
from mes.db import db, utcnow
from mes.errors import Conflict, MESError, NotFound, ValidationFailed
from mes.execution.models import Batch, WorkOrder
from mes.oee.models import (
    PACKML_STATES,
    RUNNING_STATE,
    UNKNOWN_STATE,
    CounterSample,
    DowntimeReason,
    IdealRate,
    LineStateInterval,
)
from mes.plant_time import Shift, plant_zone, shifts_between
from mes.validation import ID_RE, TEXT_MAX, get_or_404, identifier, required_text

STATE_BY_NAME: dict[str, str] = {s.lower(): s for s in PACKML_STATES} | {str(n): s for n, s in enumerate(PACKML_STATES)}
MAX_FUTURE = timedelta(seconds=60)  # line clocks may run a little ahead of the server
MAX_RANGE = timedelta(days=93)
MAX_COUNTER = 2**53 - 1  # audit entries carry integers below 2^53
GROUPS = ("shift", "product")
RATIO = Decimal("0.0001")
US = 1_000_000  # microseconds per second
EPSILON = timedelta(microseconds=1)


# ------------------------------------------------------------------------ helpers


def _line(line_id: Any) -> str:
    return identifier(line_id, "line id", "line")


def _aware(value: Any, field_name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationFailed(f"{field_name} must be a date-time.", field=field_name)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationFailed(f"{field_name} needs a time zone.", field=field_name)
    return value.astimezone(UTC)


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


@contextmanager
def _locked() -> Iterator[None]:
    """Take the audit append lock first on PostgreSQL (the order every audited writer uses),
    so reading the line's last sample and appending the next one cannot interleave; a
    refusal inside rolls back, so the lock (and SQLite's write lock) is not kept."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    try:
        yield
    except MESError:
        db.session.rollback()
        raise


def _commit(message: str) -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(message) from None


def _iso(value: datetime | None) -> str | None:
    return format_at(value) if value is not None else None


def _seconds(us: int) -> str:
    """Integer microseconds as a decimal string of seconds: ``"3600"``, ``"0.25"``."""
    whole, rest = divmod(us, US)
    return str(whole) if rest == 0 else str(Decimal(us).scaleb(-6).normalize())


def _ratio(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(RATIO, rounding=ROUND_HALF_EVEN))


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
) -> None:
    """Record what the line reported at ``at``: its PackML ``state`` (name or number) with
    the line's ``stop_reason`` code, and its cumulative ``processed`` / ``defective``
    counters (either may be None). A repeated state with the same reason and no counters
    records nothing. Samples older than the line's last one are refused (the gateway sends
    them in order), as are times more than a minute ahead of the server clock."""
    line_id = _line(line_id)
    at = _aware(at, "at")
    now = utcnow()
    if at > now + MAX_FUTURE:
        raise ValidationFailed("The sample time is in the future; check the line's clock.", field="at")
    state = normalise_state(state) if state is not None else None
    processed = _counter(processed, "processed")
    defective = _counter(defective, "defective")
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
            sample = CounterSample(id=str(uuid.uuid4()), line_id=line_id, seq=(last_any.seq + 1) if last_any else 1,
                                   at=at,
                                   processed=processed, defective=defective, processed_delta=dp, defective_delta=dd,
                                   processed_reset=reset_p, defective_reset=reset_d, source=source, recorded_at=now,
                                   recorded_by=actor.id)
            db.session.add(sample)
            after["counters"] = {"seq": sample.seq, "processed": processed, "defective": defective,
                                 "processed_delta": dp, "defective_delta": dd, "processed_reset": reset_p,
                                 "defective_reset": reset_d}
        if interval is None and sample is None:
            db.session.rollback()
            return  # the same state again and no counters: nothing new to record
        record(actor, "oee.line_sample_recorded", ("line", line_id), after=after)
        _commit(f"Line {line_id} reported another sample at the same moment; it was not recorded twice.")


# ------------------------------------------------------------------ reasons and rates


def get_interval(interval_id: str) -> LineStateInterval:
    return get_or_404(LineStateInterval, interval_id, "Line state interval")


def current_reason(interval_id: str) -> DowntimeReason | None:
    """The reason that counts for a stop: the latest assignment."""
    return db.session.execute(select(DowntimeReason).where(DowntimeReason.interval_id == interval_id)
                              .order_by(DowntimeReason.assigned_at.desc(), DowntimeReason.id).limit(1)).scalar()


def reason_json(r: DowntimeReason | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"id": r.id, "interval_id": r.interval_id, "reason": r.reason, "planned": r.planned, "comment": r.comment,
            "assigned_at": _iso(r.assigned_at), "assigned_by": r.assigned_by}


def assign_downtime_reason(
    actor: Actor,
    interval_id: str,
    reason: str,
    *,
    planned: bool = False,
    comment: str | None = None,
) -> DowntimeReason:
    """Give a stop interval its downtime reason (``planned`` stops leave planned production
    time). A new assignment supersedes the previous one; both stay on record."""
    reason = required_text(reason, "The downtime reason", "reason", 100)
    if not isinstance(planned, bool):
        raise ValidationFailed("planned is true or false.", field="planned")
    if comment is not None:
        comment = required_text(comment, "The comment", "comment", TEXT_MAX)
    with _locked():
        interval = get_interval(interval_id)
        if interval.state == RUNNING_STATE:
            raise Conflict(f"Line {interval.line_id} was running from {format_at(interval.started_at)}; "
                           "only stops get a downtime reason.")
        if interval.state == UNKNOWN_STATE:
            raise Conflict(f"Line {interval.line_id} did not know its state from {format_at(interval.started_at)}; "
                           "that time is counted as no data, not as downtime.")
        before = current_reason(interval.id)
        now = utcnow()
        if before is not None and now <= before.assigned_at:
            now = before.assigned_at + EPSILON  # the latest assignment must sort last
        row = DowntimeReason(id=str(uuid.uuid4()), interval_id=interval.id, line_id=interval.line_id, reason=reason,
                             planned=planned, comment=comment, assigned_at=now, assigned_by=actor.id)
        db.session.add(row)
        record(actor, "oee.downtime_reason_assigned", ("oee_stop", interval.id),
               before=None if before is None else {"reason": before.reason, "planned": before.planned},
               after={"line": interval.line_id, "state": interval.state, "started_at": format_at(interval.started_at),
                      "reason": reason, "planned": planned, "comment": comment},
               reason=None if before is None else "reason reassigned")
        _commit("The stop changed at the same moment; reload and try again.")
    return row


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


def has_reported(line_id: str) -> bool:
    """Whether the line ever reported a state or counters to the MES."""
    return any(db.session.execute(select(model.id).where(model.line_id == line_id).limit(1)).first()
               for model in (LineStateInterval, CounterSample))


def known_lines() -> list[str]:
    """Lines that have reported a state or counters, by id."""
    a = db.session.execute(select(LineStateInterval.line_id).distinct()).scalars()
    b = db.session.execute(select(CounterSample.line_id).distinct()).scalars()
    return sorted(set(a) | set(b))


# ---------------------------------------------------------------------------- shifts


def _shift_json(shift: Shift, zone: ZoneInfo) -> dict[str, Any]:
    return {"name": shift.name, "date": shift.day.isoformat(), "start": format_at(shift.start),
            "end": format_at(shift.end), "start_local": shift.start.astimezone(zone).isoformat(),
            "end_local": shift.end.astimezone(zone).isoformat(),
            "length_s": _seconds(int((shift.end - shift.start) / EPSILON))}


# ------------------------------------------------------------------------- the figures


@dataclass
class _Figures:
    """What one group (a shift, a product, or the whole range) adds up to."""

    known_us: int = 0
    run_us: int = 0
    planned_stop_us: int = 0
    no_data_us: int = 0
    downtime: dict[tuple[str, bool], int] = field(default_factory=lambda: defaultdict(int))
    processed: int = 0
    defective: int = 0
    resets: int = 0
    ideal_minutes: Decimal = Decimal(0)
    missing_rate: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        planned_us = self.known_us - self.planned_stop_us
        good = max(self.processed - self.defective, 0)
        with localcontext() as ctx:
            ctx.prec = 34
            availability = Decimal(self.run_us) / Decimal(planned_us) if planned_us > 0 else None
            performance = None
            if self.run_us > 0 and not (self.missing_rate and self.processed > 0):
                performance = self.ideal_minutes * 60 * US / Decimal(self.run_us)
            quality = Decimal(good) / Decimal(self.processed) if self.processed > 0 else None
            oee = (availability * performance * quality
                   if None not in (availability, performance, quality) else None)  # type: ignore[operator]
            ideal_run_us = (self.ideal_minutes * 60 * US).to_integral_value() if not self.missing_rate else None
        reasons = sorted(self.downtime.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "planned_production_s": _seconds(planned_us), "run_s": _seconds(self.run_us),
            "downtime_s": _seconds(planned_us - self.run_us), "planned_stop_s": _seconds(self.planned_stop_us),
            "no_data_s": _seconds(self.no_data_us),
            "total_count": self.processed, "good_count": good, "defective_count": self.defective,
            "count_unit": "units", "counter_resets": self.resets,
            "ideal_run_s": None if ideal_run_us is None else _seconds(int(ideal_run_us)),
            "availability": _ratio(availability), "performance": _ratio(performance), "quality": _ratio(quality),
            "oee": _ratio(oee),
            "downtime_by_reason": [{"reason": r, "planned": p, "seconds": _seconds(us)} for (r, p), us in reasons],
            "missing_ideal_rate": sorted(self.missing_rate),
        }


@dataclass(frozen=True)
class _Run:
    start: datetime
    end: datetime | None
    product: str
    batch_id: str


def _batches(line_id: str, start: datetime, end: datetime) -> list[_Run]:
    """Batches on the line overlapping the range, by start: the product made is the item of their work order."""
    rows = db.session.execute(
        select(Batch.id, Batch.created_at, Batch.completed_at, Batch.decided_at, WorkOrder.item)
        .join(WorkOrder, WorkOrder.id == Batch.work_order_id)
        .where(func.coalesce(Batch.line, WorkOrder.line) == line_id, Batch.created_at < end)
        .order_by(Batch.created_at, Batch.id)
    ).all()
    runs = []
    for batch_id, created, completed, decided, item in rows:
        finish = completed or decided
        if finish is None or finish > start:
            runs.append(_Run(created, finish, item, batch_id))
    return runs


def _product_at(runs: list[_Run], t: datetime) -> str | None:
    for run in reversed(runs):  # the batch started last wins when two overlap
        if run.start <= t and (run.end is None or t < run.end):
            return run.product
    return None


class _Rates:
    """Which ideal rate applies to a product at a time."""

    def __init__(self, rows: Iterable[IdealRate]) -> None:
        self.by_product: dict[str | None, list[IdealRate]] = defaultdict(list)
        for r in rows:  # oldest first
            self.by_product[r.product].append(r)
        self.starts = {p: [r.effective_from for r in rs] for p, rs in self.by_product.items()}

    def at(self, product: str | None, t: datetime) -> Decimal | None:
        for key in ((product, None) if product is not None else (None,)):
            rows = self.by_product.get(key)
            if rows:
                i = bisect.bisect_right(self.starts[key], t)
                if i > 0:
                    return rows[i - 1].units_per_minute
        return None


NO_PRODUCT = "(no batch)"


def oee(line_id: str, start: datetime, end: datetime, group: str = "shift") -> dict[str, Any]:
    """OEE of ``line_id`` over ``[start, end)`` grouped by ``shift`` or ``product``, with the
    whole range as ``total``. Time after the server's now is not counted."""
    line_id = _line(line_id)
    start, end = _aware(start, "from"), _aware(end, "to")
    if group not in GROUPS:
        raise ValidationFailed(f"group must be one of {', '.join(GROUPS)}.", field="group")
    if end <= start:
        raise ValidationFailed("to must be after from.", field="to")
    if end - start > MAX_RANGE:
        raise ValidationFailed(f"The range is at most {MAX_RANGE.days} days.", field="to")
    if not has_reported(line_id):
        raise NotFound(f"Line {line_id} has never reported a state or counters to the MES.")
    zone = plant_zone()
    until = min(end, utcnow())

    # states in effect: the one at `start`, then every change inside the range
    first = db.session.execute(select(LineStateInterval).where(LineStateInterval.line_id == line_id,
                                                               LineStateInterval.started_at <= start)
                               .order_by(LineStateInterval.seq.desc()).limit(1)).scalar()
    inside = list(db.session.execute(select(LineStateInterval).where(LineStateInterval.line_id == line_id,
                                                                     LineStateInterval.started_at > start,
                                                                     LineStateInterval.started_at < until)
                                     .order_by(LineStateInterval.seq)).scalars())
    intervals = ([first] if first is not None else []) + inside
    interval_starts = [max(i.started_at, start) for i in intervals]
    reasons: dict[str, DowntimeReason] = {}
    stop_ids = [i.id for i in intervals if i.state not in (RUNNING_STATE, UNKNOWN_STATE)]
    for chunk in (stop_ids[n:n + 500] for n in range(0, len(stop_ids), 500)):
        for r in db.session.execute(select(DowntimeReason).where(DowntimeReason.interval_id.in_(chunk))
                                    .order_by(DowntimeReason.assigned_at, DowntimeReason.id)).scalars():
            reasons[r.interval_id] = r  # the latest assignment wins
    runs = _batches(line_id, start, until) if until > start else []
    shifts = shifts_between(start, end)
    shift_starts = [s.start for s in shifts]
    rates = _Rates(ideal_rates(line_id))

    def shift_at(t: datetime) -> Shift:
        return shifts[max(bisect.bisect_right(shift_starts, t) - 1, 0)]

    def interval_at(t: datetime) -> LineStateInterval | None:
        i = bisect.bisect_right(interval_starts, t) - 1
        return intervals[i] if i >= 0 else None

    def key_at(t: datetime) -> str:
        if group == "shift":
            return shift_at(t).label
        return _product_at(runs, t) or NO_PRODUCT

    total = _Figures()
    groups: dict[str, _Figures] = {}
    if group == "shift":
        for s in shifts:
            groups[s.label] = _Figures()

    def figures(key: str) -> _Figures:
        if key not in groups:
            groups[key] = _Figures()
        return groups[key]

    # time: cut the range wherever the state, the product or the shift changes
    cuts = {start, until} if until > start else {start}
    cuts.update(t for t in interval_starts if start < t < until)
    for run in runs:
        cuts.update(t for t in (run.start, run.end) if t is not None and start < t < until)
    cuts.update(s.start for s in shifts if start < s.start < until)
    points = sorted(cuts)
    for a, b in zip(points, points[1:], strict=False):
        us = int((b - a) / EPSILON)
        interval = interval_at(a)
        for fig in (total, figures(key_at(a))):
            if interval is None or interval.state == UNKNOWN_STATE:
                fig.no_data_us += us
                continue
            fig.known_us += us
            if interval.state == RUNNING_STATE:
                fig.run_us += us
                continue
            assigned = reasons.get(interval.id)
            if assigned is not None:
                label, planned = assigned.reason, assigned.planned
            else:
                code = f" {interval.stop_reason}" if interval.stop_reason else ""
                label, planned = f"unassigned ({interval.state}{code})", False
            if planned:
                fig.planned_stop_us += us
            fig.downtime[(label, planned)] += us

    # counts: a sample at t reports the units made up to t
    samples = db.session.execute(
        select(CounterSample.at, CounterSample.processed_delta, CounterSample.defective_delta,
               CounterSample.processed_reset, CounterSample.defective_reset)
        .where(CounterSample.line_id == line_id, CounterSample.at > start, CounterSample.at <= until)
        .order_by(CounterSample.seq)
    ).all()
    with localcontext() as ctx:
        ctx.prec = 34
        for at, dp, dd, reset_p, reset_d in samples:
            t = at - EPSILON
            product = _product_at(runs, t)
            rate = rates.at(product, at) if dp else None
            for fig in (total, figures(key_at(t))):
                fig.processed += dp
                fig.defective += dd
                fig.resets += int(reset_p or reset_d)
                if dp:
                    if rate is None:
                        fig.missing_rate.add(product or NO_PRODUCT)
                    else:
                        fig.ideal_minutes += Decimal(dp) / rate

    out_groups = []
    for key, fig in groups.items():
        item: dict[str, Any] = {"key": key, "label": key}
        if group == "shift":
            item["shift"] = _shift_json(next(s for s in shifts if s.label == key), zone)
        else:
            item["product"] = None if key == NO_PRODUCT else key
        item.update(fig.as_json())
        out_groups.append(item)
    return {"line": line_id, "from": format_at(start), "to": format_at(end), "counted_to": format_at(max(until, start)),
            "group": group, "timezone": zone.key, "total": total.as_json(), "groups": out_groups}


def stops(line_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The line's stop intervals overlapping ``[start, end)`` with their reason, oldest first,
    for supervisors to assign reasons to."""
    line_id = _line(line_id)
    start, end = _aware(start, "from"), _aware(end, "to")
    if end <= start:
        raise ValidationFailed("to must be after from.", field="to")
    if end - start > MAX_RANGE:
        raise ValidationFailed(f"The range is at most {MAX_RANGE.days} days.", field="to")
    first = db.session.execute(select(LineStateInterval).where(LineStateInterval.line_id == line_id,
                                                               LineStateInterval.started_at <= start)
                               .order_by(LineStateInterval.seq.desc()).limit(1)).scalar()
    rows = ([first] if first else []) + list(db.session.execute(
        select(LineStateInterval).where(LineStateInterval.line_id == line_id, LineStateInterval.started_at > start,
                                        LineStateInterval.started_at < end).order_by(LineStateInterval.seq)).scalars())
    nxt = db.session.execute(select(LineStateInterval.started_at).where(
        LineStateInterval.line_id == line_id, LineStateInterval.started_at >= end).order_by(LineStateInterval.seq)
        .limit(1)).scalar()
    out = []
    for i, row in enumerate(rows):
        ended = rows[i + 1].started_at if i + 1 < len(rows) else nxt
        if row.state in (RUNNING_STATE, UNKNOWN_STATE):
            continue
        out.append({"id": row.id, "line": row.line_id, "state": row.state, "stop_reason": row.stop_reason,
                    "started_at": _iso(row.started_at), "ended_at": _iso(ended), "source": row.source,
                    "reason": reason_json(current_reason(row.id))})
    return out
