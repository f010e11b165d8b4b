"""What the integration owner watches: each endpoint's delivery state, the alarms on dead
letters and on a backlog older than ``MES_INTEGRATION_BACKLOG_ALARM_SECONDS``, and the
reconciliation of a work order (what the MES consumed and produced against what each
endpoint acknowledged). Read-only except for the alarms, which are audited."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, func, select

from mes import quantities as q
from mes.audit.log import Actor
from mes.db import as_utc, db, utcnow
from mes.errors import NotFound
from mes.integration.models import Delivery, DeliveryStatus, OutboxEvent, WebhookEndpoint

MONITOR_ACTOR = Actor.system("integration-monitor")
DEFAULT_BACKLOG_ALARM_S = 900
LATENCY_SAMPLE = 500
BACKLOG_ALARM = "integration.backlog"
DEAD_LETTER_ALARM = "integration.dead_letter"


def _age_s(since: datetime | None, now: datetime) -> int | None:
    return None if since is None else max(0, int((now - as_utc(since)).total_seconds()))


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def endpoint_status(now: datetime | None = None) -> list[dict[str, Any]]:
    """Per endpoint: pending (waiting or retrying), in flight (leased by a relay), failed (at least
    one attempt failed, still retrying), dead-lettered, the oldest undelivered event's age, the
    commit-to-acknowledgement latency of its recent deliveries, and its last error."""
    now = now or utcnow()
    pending = Delivery.status == DeliveryStatus.PENDING.value
    leased = and_(pending, Delivery.claimed_until.is_not(None), Delivery.claimed_until > now)
    counts = {r.endpoint_id: r for r in db.session.execute(
        select(Delivery.endpoint_id,
               func.sum(case((and_(pending, ~leased), 1), else_=0)).label("pending"),
               func.sum(case((leased, 1), else_=0)).label("in_flight"),
               func.sum(case((and_(pending, Delivery.attempts > 0), 1), else_=0)).label("failed"),
               func.sum(case((Delivery.status == DeliveryStatus.DEAD.value, 1), else_=0)).label("dead"),
               func.sum(case((Delivery.status == DeliveryStatus.DELIVERED.value, 1), else_=0)).label("delivered"))
        .group_by(Delivery.endpoint_id))}
    oldest = dict(db.session.execute(
        select(Delivery.endpoint_id, func.min(OutboxEvent.created_at))
        .join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
        .where(Delivery.status != DeliveryStatus.DELIVERED.value).group_by(Delivery.endpoint_id)).all())
    out = []
    for ep in db.session.execute(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).scalars():
        c = counts.get(ep.id)
        recent = db.session.execute(
            select(Delivery.delivered_at, OutboxEvent.created_at).join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
            .where(Delivery.endpoint_id == ep.id, Delivery.status == DeliveryStatus.DELIVERED.value)
            .order_by(Delivery.delivered_at.desc()).limit(LATENCY_SAMPLE)).all()
        latencies = [(as_utc(d) - as_utc(c_at)).total_seconds() * 1000 for d, c_at in recent if d and c_at]
        error = db.session.execute(
            select(Delivery.event_id, Delivery.last_status, Delivery.last_error, Delivery.attempts)
            .where(Delivery.endpoint_id == ep.id, Delivery.status != DeliveryStatus.DELIVERED.value,
                   Delivery.last_error.is_not(None))
            .order_by(Delivery.attempts.desc(), Delivery.position.desc()).limit(1)).first()
        out.append({
            "id": ep.id, "url": ep.url, "state": ep.state, "state_reason": ep.state_reason,
            "pending": int(c.pending or 0) if c else 0, "in_flight": int(c.in_flight or 0) if c else 0,
            "failed": int(c.failed or 0) if c else 0, "dead": int(c.dead or 0) if c else 0,
            "delivered": int(c.delivered or 0) if c else 0,
            "oldest_undelivered_age_s": _age_s(oldest.get(ep.id), now),
            "latency_ms": {"p50": _round(_percentile(latencies, 0.5)), "p95": _round(_percentile(latencies, 0.95)),
                           "samples": len(latencies)},
            "last_error": None if error is None else {"event_id": error.event_id, "status": error.last_status,
                                                      "error": error.last_error, "attempts": error.attempts},
        })
    return out


def _round(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def integration_alarms() -> list[dict[str, Any]]:
    """The open (unacknowledged) integration alarms, newest first."""
    from mes.users.models import Alarm

    rows = db.session.execute(select(Alarm).where(Alarm.acknowledged_at.is_(None),
                                                  Alarm.kind.in_((BACKLOG_ALARM, DEAD_LETTER_ALARM)))
                              .order_by(Alarm.id.desc())).scalars()
    return [{"id": a.id, "kind": a.kind, "message": a.message, "details": a.details,
             "raised_at": as_utc(a.raised_at).isoformat()} for a in rows]


def watch_backlog(limit_s: int, now: datetime | None = None) -> list[str]:
    """Raise an alarm for each endpoint whose oldest undelivered event is older than ``limit_s``
    (once while it stays unacknowledged). Returns the endpoints alarmed now."""
    from mes.users.operations import raise_alarm

    now = now or utcnow()
    open_for = {(a["details"] or {}).get("endpoint") for a in integration_alarms() if a["kind"] == BACKLOG_ALARM}
    raised = []
    for ep in endpoint_status(now):
        age = ep["oldest_undelivered_age_s"]
        if age is None or age <= limit_s or ep["id"] in open_for:
            continue
        waiting = ep["pending"] + ep["in_flight"] + ep["dead"]
        raise_alarm(MONITOR_ACTOR, BACKLOG_ALARM,
                    f"Endpoint {ep['id']} has {waiting} undelivered event(s); the oldest waits for "
                    f"{timedelta(seconds=age)} (limit {timedelta(seconds=limit_s)})"
                    + (f"; last error: {ep['last_error']['error']}" if ep["last_error"] else "") + ".",
                    {"endpoint": ep["id"], "oldest_age_s": age, "undelivered": waiting}, commit=False)
        raised.append(ep["id"])
    db.session.commit()
    return raised


# ---------------------------------------------------------------------- reconcile


def _add(totals: dict[tuple[str, str, str], Decimal], lot: str, item: str, qty: dict[str, str], sign: int = 1) -> None:
    totals[(lot, item, qty["uom"])] += sign * Decimal(qty["value"])


def _rows(totals: dict[tuple[str, str, str], Decimal]) -> list[dict[str, Any]]:
    return [{"lot_id": lot, "item": item, "qty": {"value": q.to_text(v), "uom": uom}}
            for (lot, item, uom), v in sorted(totals.items()) if v != 0]


def reconcile(work_order_id: str) -> dict[str, Any]:
    """What the MES consumed and produced for a work order (its material records) against what
    each endpoint acknowledged (its delivered events), with the events each has not acknowledged."""
    from mes.execution.models import Batch, WorkOrder
    from mes.materials.lots import container_received, containers_of
    from mes.materials.models import Consumption, ConsumptionReversal, Lot

    wo = db.session.get(WorkOrder, work_order_id)
    if wo is None:
        raise NotFound(f"There is no work order {work_order_id}.")
    batches = list(db.session.execute(select(Batch.id).where(Batch.work_order_id == wo.id).order_by(Batch.id)).scalars())
    consumed: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    reversed_ids = set(db.session.execute(select(ConsumptionReversal.consumption_id)).scalars())
    for c in db.session.execute(select(Consumption).where(Consumption.batch_id.in_(batches))).scalars():
        if c.id not in reversed_ids:
            _add(consumed, c.lot_id, c.item_code, q.as_json(c.qty, c.uom, keep_places=True))
    produced: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for lot in db.session.execute(select(Lot).where(Lot.produced_by_batch.in_(batches))).scalars():
        for container in containers_of(lot.id):
            _add(produced, lot.id, lot.item_code, {"value": q.to_text(container_received(container)),
                                                   "uom": container.uom})
    subjects = [f"batch/{b}" for b in batches] + [f"work_order/{wo.id}"]
    events = {r.id: r for r in db.session.execute(
        select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.subject, OutboxEvent.sequence, OutboxEvent.body)
        .where(OutboxEvent.subject.in_(subjects)).order_by(OutboxEvent.position))}
    parsed = {i: json.loads(r.body) for i, r in events.items()}
    endpoints = []
    for ep in db.session.execute(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).scalars():
        status = dict(db.session.execute(select(Delivery.event_id, Delivery.status).where(
            Delivery.endpoint_id == ep.id, Delivery.event_id.in_(list(events)))).all()) if events else {}
        acked_consumed: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        acked_produced: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        not_acked = []
        for event_id, row in events.items():
            state = status.get(event_id)
            if state != DeliveryStatus.DELIVERED.value:
                if not ep.types() or row.type in ep.types():
                    not_acked.append({"event_id": event_id, "type": row.type, "subject": row.subject,
                                      "sequence": row.sequence, "status": state or "not owed (sent before the endpoint "
                                                                                    "was added; replay it)"})
                continue
            data = parsed[event_id]["data"]
            if row.type == "mes.material.consumed.v1":
                _add(acked_consumed, data["lot_id"], data["item"], data["qty"])
            elif row.type == "mes.material.consumption_reversed.v1":
                _add(acked_consumed, data["lot_id"], data["item"], data["qty"], -1)
            elif row.type == "mes.finished_goods.produced.v1":
                _add(acked_produced, data["lot_id"], data["item"], data["qty"])
        c_rows, p_rows = _rows(acked_consumed), _rows(acked_produced)
        endpoints.append({"id": ep.id, "event_types": sorted(ep.types()), "consumed": c_rows, "produced": p_rows,
                          "consumed_matches": c_rows == _rows(consumed), "produced_matches": p_rows == _rows(produced),
                          "acknowledged": sum(1 for s in status.values() if s == DeliveryStatus.DELIVERED.value),
                          "not_acknowledged": not_acked})
    return {"work_order_id": wo.id, "item": wo.item, "batches": batches, "events": len(events),
            "mes": {"consumed": _rows(consumed), "produced": _rows(produced)}, "endpoints": endpoints}
