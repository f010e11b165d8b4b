"""The OEE figures of a line over a time range, grouped by shift, product or week, and the
comparison of lines (ISO 22400-2 and the six big losses as the anchor).

Definitions, in exact Decimal arithmetic:

- *calendar time*: the range counted (up to now); *no data*: before the line's first state
  or in ``Undefined``;
- *not scheduled*: stop time outside the line's calendar (a shift not worked, a weekend,
  a holiday); no loss. Run time outside the calendar still counts as run;
- *planned stops*: stops classified in a planned category (break, planned maintenance, no
  order) and stop time inside a calendar maintenance window;
- *planned production time* = known time − not scheduled − planned stops;
- *run time* = time in ``Execute``; *downtime* = planned production time − run time, by
  stop (see :mod:`mes.oee.stops`) and its reason, with stop counts (a stop counts once, in
  the group and range where it started), MTBF = run time ÷ unplanned stops and MTTR =
  unplanned downtime ÷ unplanned stops;
- *total count* = units processed; *defective* (scrap) = units the line counted bad plus
  every unit of a batch QA rejected; *reworked* = units the line sent to rework, counted
  apart from scrap; *good* (first pass) = total − defective − reworked; rejects counted within the line's
  startup window after it enters Execute are startup rejects, the others production rejects;
- availability = run ÷ planned production time; performance = ideal run time of the total
  count ÷ run time; quality = good ÷ total; OEE = A × P × Q, and OEE is 0 whenever planned
  production time is positive and nothing ran or nothing was made (the worst shifts stay in
  every chart and average); utilisation = planned production time ÷ calendar time;
  TEEP = OEE × utilisation. A figure whose denominator is zero is null.

Attribution. A time span belongs to the shift and product at its start; a counter sample
at ``t`` belongs to the shift and product of the instant just before ``t``. The product is
the item of the work order of the batch running on the line (the one started last when two
overlap). Shifts come from ``MES_SHIFTS`` in ``MES_TIMEZONE``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.db import db, utcnow
from mes.errors import NotFound, ValidationFailed
from mes.execution.models import Batch, BatchStatus, WorkOrder
from mes.oee.calendar import calendars
from mes.oee.common import EPSILON, US, checked_range, line_id_of, micros, ratio, seconds
from mes.oee.models import (
    RUNNING_STATE,
    UNKNOWN_STATE,
    CounterSample,
    IdealRate,
    LineStateInterval,
    LossCategory,
)
from mes.oee.reasons import plc_map, reason_tree
from mes.oee.stops import Classification, attach_reasons, classify, group_stops, intervals_around
from mes.plant_time import Shift, plant_zone, shifts_between

GROUPS = ("shift", "product", "week")
NO_PRODUCT = "(no batch)"
MAINTENANCE = Classification("planned maintenance", LossCategory.PLANNED_MAINTENANCE, True, "calendar")


Ratios = tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None]


def factors(planned_us: int, run_us: int, ideal_us: Decimal, processed: int, good: int, rates_known: bool) -> Ratios:
    """Availability, performance, quality and OEE. OEE is 0, never null, when planned
    production time is positive and nothing ran or nothing good was made: the worst shifts
    stay in every chart and every average."""
    with localcontext() as ctx:
        ctx.prec = 34
        availability = Decimal(run_us) / Decimal(planned_us) if planned_us > 0 else None
        performance = ideal_us / Decimal(run_us) if run_us > 0 and rates_known else None
        quality = Decimal(good) / Decimal(processed) if processed > 0 else None
        oee: Decimal | None = None
        if planned_us > 0 and (run_us == 0 or (rates_known and good == 0)):
            oee = Decimal(0)
        elif availability is not None and performance is not None and quality is not None:
            oee = availability * performance * quality
    return availability, performance, quality, oee


@dataclass
class Figures:
    """What one group (a shift, a product, a week, or the whole range) adds up to."""

    known_us: int = 0
    run_us: int = 0
    planned_stop_us: int = 0
    unscheduled_us: int = 0
    no_data_us: int = 0
    downtime: dict[tuple[str, str, bool], int] = field(default_factory=lambda: defaultdict(int))
    stop_counts: dict[tuple[str, str, bool], int] = field(default_factory=lambda: defaultdict(int))
    unplanned_stops: int = 0
    processed: int = 0
    defective: int = 0
    startup_rejects: int = 0
    qa_rejected: int = 0
    reworked: int = 0
    resets: int = 0
    units_at_rate: dict[Decimal, int] = field(default_factory=lambda: defaultdict(int))  # units per ideal rate
    missing_rate: set[str] = field(default_factory=set)

    @property
    def ideal_minutes(self) -> Decimal:
        """The ideal run time of the units counted, in minutes: Σ units ÷ their ideal rate."""
        with localcontext() as ctx:
            ctx.prec = 34
            return sum((Decimal(units) / rate for rate, units in self.units_at_rate.items()), Decimal(0))

    def as_json(self) -> dict[str, Any]:
        planned_us = self.known_us - self.planned_stop_us - self.unscheduled_us
        calendar_us = self.known_us + self.no_data_us
        good = max(self.processed - self.defective - self.reworked, 0)  # first pass: rework is not good
        rates_known = not (self.missing_rate and self.processed > 0)
        with localcontext() as ctx:
            ctx.prec = 34
            ideal_us = self.ideal_minutes * 60 * US
            availability, performance, quality, oee = factors(planned_us, self.run_us, ideal_us, self.processed, good,
                                                              rates_known)
            utilisation = Decimal(planned_us) / Decimal(calendar_us) if calendar_us > 0 else None
            teep = oee * utilisation if oee is not None and utilisation is not None else None
            unplanned_us = planned_us - self.run_us
            mtbf = Decimal(self.run_us) / self.unplanned_stops if self.unplanned_stops else None
            mttr = Decimal(unplanned_us) / self.unplanned_stops if self.unplanned_stops else None
            speed_loss_us = (Decimal(self.run_us) - ideal_us).to_integral_value() if rates_known else None
        losses: dict[str, int] = defaultdict(int)
        for (_, category, planned), us in self.downtime.items():
            if not planned:
                losses[category] += us
        by_duration = sorted(self.downtime.items(), key=lambda kv: (-kv[1], kv[0]))
        by_frequency = sorted(self.stop_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "calendar_s": seconds(calendar_us), "planned_production_s": seconds(planned_us),
            "run_s": seconds(self.run_us), "downtime_s": seconds(unplanned_us),
            "planned_stop_s": seconds(self.planned_stop_us), "not_scheduled_s": seconds(self.unscheduled_us),
            "no_data_s": seconds(self.no_data_us),
            "total_count": self.processed, "good_count": good, "defective_count": self.defective,
            "startup_rejects": min(self.startup_rejects, self.defective),
            "production_rejects": self.defective - min(self.startup_rejects, self.defective) - self.qa_rejected,
            "qa_rejected_count": self.qa_rejected, "reworked_count": self.reworked,
            "count_unit": "units", "counter_resets": self.resets,
            "ideal_run_s": seconds(int(ideal_us.to_integral_value())) if rates_known else None,
            "availability": ratio(availability), "performance": ratio(performance), "quality": ratio(quality),
            "oee": ratio(oee), "utilisation": ratio(utilisation), "teep": ratio(teep),
            "stops": self.unplanned_stops,
            "mtbf_s": None if mtbf is None else seconds(int(mtbf.to_integral_value())),
            "mttr_s": None if mttr is None else seconds(int(mttr.to_integral_value())),
            "losses_s": {c.value: seconds(losses.get(c.value, 0)) for c in
                         (LossCategory.BREAKDOWN, LossCategory.SETUP, LossCategory.MINOR_STOP,
                          LossCategory.UNCLASSIFIED)}
            | {"speed_loss": None if speed_loss_us is None else seconds(int(speed_loss_us))},
            "downtime_by_reason": [{"reason": r, "category": c, "planned": p, "seconds": seconds(us),
                                    "stops": self.stop_counts.get((r, c, p), 0)} for (r, c, p), us in by_duration],
            "stops_by_reason": [{"reason": r, "category": c, "planned": p, "stops": n}
                                for (r, c, p), n in by_frequency],
            "missing_ideal_rate": sorted(self.missing_rate),
        }


@dataclass(frozen=True)
class _Run:
    start: datetime
    end: datetime | None
    product: str
    batch_id: str
    rejected: bool


def _batches(line_id: str, start: datetime, end: datetime) -> list[_Run]:
    """Batches on the line overlapping the range, by start: the product made is the item of their work order."""
    rows = db.session.execute(
        select(Batch.id, Batch.created_at, Batch.completed_at, Batch.decided_at, Batch.status, WorkOrder.item)
        .join(WorkOrder, WorkOrder.id == Batch.work_order_id)
        .where(func.coalesce(Batch.line, WorkOrder.line) == line_id, Batch.created_at < end)
        .order_by(Batch.created_at, Batch.id)
    ).all()
    runs = []
    for batch_id, created, completed, decided, status, item in rows:
        finish = completed or decided
        if finish is None or finish > start:
            runs.append(_Run(created, finish, item, batch_id, status == BatchStatus.REJECTED.value))
    return runs


class _Runs:
    """Which batch runs on the line at a time: the one started last among those running."""

    def __init__(self, runs: list[_Run]) -> None:
        self.runs = runs  # by start
        self.starts = [r.start for r in runs]
        self.reach: list[datetime | None] = []  # the latest end among runs[:i + 1] (None: one is still open)
        latest: datetime | None = None
        open_ = False
        for r in runs:
            open_ = open_ or r.end is None
            latest = r.end if latest is None or (r.end is not None and r.end > latest) else latest
            self.reach.append(None if open_ else latest)

    def at(self, t: datetime) -> _Run | None:
        i = bisect.bisect_right(self.starts, t) - 1
        while i >= 0:
            run = self.runs[i]
            if run.end is None or t < run.end:
                return run
            reach = self.reach[i]
            if reach is not None and reach <= t:
                return None  # every earlier run ended by t
            i -= 1
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


NEVER = datetime.max.replace(tzinfo=UTC)  # an empty span: lo = hi, so the first sample looks up
EARLIEST = datetime.min.replace(tzinfo=UTC)


def _between(bounds: list[datetime], t: datetime) -> tuple[datetime, datetime]:
    """The span ``[lo, hi)`` of ``bounds`` that holds ``t``."""
    i = bisect.bisect_right(bounds, t)
    return (bounds[i - 1] if i > 0 else EARLIEST), (bounds[i] if i < len(bounds) else NEVER)


def has_reported(line_id: str) -> bool:
    """Whether the line ever reported a state or counters to the MES."""
    return any(db.session.execute(select(model.id).where(model.line_id == line_id).limit(1)).first()
               for model in (LineStateInterval, CounterSample))


def known_lines() -> list[str]:
    """Lines that have reported a state or counters, by id."""
    a = db.session.execute(select(LineStateInterval.line_id).distinct()).scalars()
    b = db.session.execute(select(CounterSample.line_id).distinct()).scalars()
    return sorted(set(a) | set(b))


def shift_json(shift: Shift, zone: ZoneInfo) -> dict[str, Any]:
    return {"name": shift.name, "date": shift.day.isoformat(), "start": format_at(shift.start),
            "end": format_at(shift.end), "start_local": shift.start.astimezone(zone).isoformat(),
            "end_local": shift.end.astimezone(zone).isoformat(), "length_s": seconds(micros(shift.end - shift.start))}


def _week(shift: Shift) -> str:
    year, week, _ = shift.day.isocalendar()
    return f"{year}-W{week:02d}"


def oee(line_id: str, start: datetime, end: datetime, group: str = "shift") -> dict[str, Any]:
    """OEE of ``line_id`` over ``[start, end)`` grouped by ``shift``, ``product`` or ``week``,
    with the whole range as ``total``. Time after the server's now is not counted."""
    line_id = line_id_of(line_id)
    if group not in GROUPS:
        raise ValidationFailed(f"group must be one of {', '.join(GROUPS)}.", field="group")
    start, end = checked_range(start, end)
    if not has_reported(line_id):
        raise NotFound(f"Line {line_id} has never reported a state or counters to the MES.")
    zone = plant_zone()
    now = utcnow()
    until = min(end, now)
    cal = calendars(line_id)
    tree = reason_tree()
    plc = plc_map(tree)

    rows, nxt = intervals_around(line_id, start, max(until, start))
    stops = group_stops(rows, nxt)
    attach_reasons(stops)
    how: dict[str, tuple[Any, Classification]] = {}
    for s in stops:
        c = classify(s, tree, plc, cal.minor_stop_s(s.start), now)
        for i in s.intervals:
            how[i.id] = (s, c)
    intervals = [r for r in rows if r.started_at < until] if until > start else []
    interval_starts = [r.started_at for r in intervals]
    interval_states = [r.state for r in intervals]
    runs = _batches(line_id, start, until) if until > start else []
    running = _Runs(runs)
    shifts = shifts_between(start, end)
    shift_starts = [s.start for s in shifts]
    shift_keys = [_week(s) if group == "week" else s.label for s in shifts]  # computed once, not per sample
    shift_by_label = {s.label: s for s in shifts}
    rates = _Rates(db.session.execute(select(IdealRate).where(IdealRate.line_id == line_id)
                                      .order_by(IdealRate.effective_from, IdealRate.recorded_at)).scalars())

    def shift_at(t: datetime) -> Shift:
        return shifts[max(bisect.bisect_right(shift_starts, t) - 1, 0)]

    def interval_at(t: datetime) -> int:
        """The index of the interval in effect at ``t``, -1 before the first."""
        return bisect.bisect_right(interval_starts, t) - 1

    def key_at(t: datetime) -> str:
        if group != "product":
            return shift_keys[max(bisect.bisect_right(shift_starts, t) - 1, 0)]
        run = running.at(t)
        return run.product if run else NO_PRODUCT

    total = Figures()
    groups: dict[str, Figures] = {}
    if group == "shift":
        for s in shifts:
            groups[s.label] = Figures()
    elif group == "week":
        for s in shifts:
            groups.setdefault(_week(s), Figures())

    def figures(key: str) -> Figures:
        if key not in groups:
            groups[key] = Figures()
        return groups[key]

    # time: cut the range wherever the state, the product, the shift or the calendar changes
    cuts = {start, until} if until > start else {start}
    cuts.update(t for t in interval_starts if start < t < until)
    for run in runs:
        cuts.update(t for t in (run.start, run.end) if t is not None and start < t < until)
    cuts.update(s.start for s in shifts if start < s.start < until)
    cuts.update(cal.cuts(start, until))
    points = sorted(cuts)
    for a, b in zip(points, points[1:], strict=False):
        us = micros(b - a)
        n = interval_at(a)
        state = interval_states[n] if n >= 0 else UNKNOWN_STATE
        targets = (total, figures(key_at(a)))
        if state == UNKNOWN_STATE:
            for fig in targets:
                fig.no_data_us += us
            continue
        if state == RUNNING_STATE:
            for fig in targets:
                fig.known_us += us
                fig.run_us += us
            continue
        stop, c = how[intervals[n].id]
        window = cal.maintenance_at(a)
        scheduled = cal.scheduled(shift_at(a), a)
        first = a == stop.start  # a stop counts once, where it started (not again in a later range)
        for fig in targets:
            fig.known_us += us
            if window is not None:
                fig.planned_stop_us += us
                fig.downtime[(window, MAINTENANCE.category.value, True)] += us
                continue
            if not scheduled:
                fig.unscheduled_us += us
                continue
            key = (c.label, c.category.value, c.planned)
            fig.downtime[key] += us
            if first:
                fig.stop_counts[key] += 1
            if c.planned:
                fig.planned_stop_us += us
            elif first:
                fig.unplanned_stops += 1

    # counts: a sample at t reports the units made up to t
    samples = db.session.execute(
        select(CounterSample.at, CounterSample.processed_delta, CounterSample.defective_delta,
               CounterSample.processed_reset, CounterSample.defective_reset, CounterSample.reworked_delta)
        .where(CounterSample.line_id == line_id, CounterSample.at > start, CounterSample.at <= until)
        .order_by(CounterSample.seq)
    ).all()
    with localcontext() as ctx:
        ctx.prec = 34
        # the batch, the group and the ideal rate change only at a few known times: look them up
        # again only when a sample crosses one (a bisection per crossing, not per sample)
        context_bounds = sorted({s.start for s in shifts} | {r.start for r in runs}
                                | {r.end for r in runs if r.end is not None})
        rate_bounds = sorted({r.effective_from for rows_ in rates.by_product.values() for r in rows_})
        lo = hi = rate_lo = rate_hi = NEVER
        run: _Run | None = None
        product: str | None = None
        group_fig = total
        rate: Decimal | None = None
        for at, dp, dd, reset_p, reset_d, dr in samples:
            t = at - EPSILON
            if not lo <= t < hi:
                lo, hi = _between(context_bounds, t)
                run = running.at(t)
                product = run.product if run else None
                group_fig = figures(key_at(t))
                rate_lo = rate_hi = NEVER
            if dp and not rate_lo <= at < rate_hi:
                rate_lo, rate_hi = _between(rate_bounds, at)
                rate = rates.at(product, at)
            startup = 0
            if dd:
                n = interval_at(t)
                if n >= 0 and interval_states[n] == RUNNING_STATE and \
                        (t - interval_starts[n]).total_seconds() < cal.startup_s(t):
                    startup = dd
            qa_rejected = max(dp - dd, 0) if run is not None and run.rejected else 0
            for fig in (total, group_fig):
                fig.processed += dp
                fig.defective += dd + qa_rejected
                fig.qa_rejected += qa_rejected
                fig.reworked += dr if qa_rejected == 0 else 0  # a rejected batch's units are all defective
                fig.startup_rejects += startup
                fig.resets += int(reset_p or reset_d)
                if dp:
                    if rate is None:
                        fig.missing_rate.add(product or NO_PRODUCT)
                    else:
                        fig.units_at_rate[rate] += dp

    out_groups = []
    for key, fig in groups.items():
        item: dict[str, Any] = {"key": key, "label": key}
        if group == "shift":
            shift = shift_by_label[key]
            item["shift"] = shift_json(shift, zone)
            item["scheduled"] = cal.scheduled(shift, shift.start)
        elif group == "product":
            item["product"] = None if key == NO_PRODUCT else key
        item.update(fig.as_json())
        out_groups.append(item)
    target = cal.target(max(until, start) - EPSILON)
    return {"line": line_id, "from": format_at(start), "to": format_at(end), "counted_to": format_at(max(until, start)),
            "group": group, "timezone": zone.key, "oee_target": None if target is None else q.fmt(target),
            "total": total.as_json(), "groups": out_groups}


def compare_lines(start: datetime, end: datetime, lines: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The whole-range figures of each line (every line that reported, by default), with its target."""
    chosen = known_lines() if lines is None else [line_id_of(x) for x in lines]
    out = []
    for line in chosen:
        result = oee(line, start, end, "week")
        out.append({"line": line, "oee_target": result["oee_target"], **result["total"]})
    return out

