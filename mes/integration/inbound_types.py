"""The inbound command types (``shared/specs/events.md`` §4) and what each does.

Every handler validates its ``data`` with a JSON Schema, then calls the one service-layer
function that owns the rule (holds: :mod:`mes.materials.lots`; deviations:
:mod:`mes.execution.deviations`; work orders: :mod:`mes.execution.work_orders`), as the
peer's system actor. Nothing here decides what a hold or a disposition means.

Guard against over-automation: a QMS hold changes no record already made. It stops the
*next* consumption of the lot (the usability check every consumption makes, in the
consuming transaction), and the operator is told why, there and on the line's screens
(a ``lot_hold`` realtime notice naming the hold, the NCR and the reason).
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import jsonschema
from sqlalchemy import exists, select

from mes.db import db
from mes.errors import Conflict, Forbidden, ValidationFailed
from mes.integration.inbound import Command, Handler
from mes.integration.inbound_models import InboundPeer
from mes.validation import ID_JSON_PATTERN

HOLD_PLACED = "qms.lot.hold_placed.v1"
HOLD_RELEASED = "qms.lot.hold_released.v1"
DEVIATION_DISPOSITIONED = "qms.deviation.dispositioned.v1"
WORK_ORDER_RELEASED = "erp.work_order.released.v1"

_ID = {"type": "string", "pattern": ID_JSON_PATTERN}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 2000}
_SHORT = {"type": "string", "minLength": 1, "maxLength": 64}


def _obj(props: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


SCHEMAS: dict[str, dict[str, Any]] = {
    HOLD_PLACED: _obj({"lot_id": _ID, "hold_id": _ID, "scope": {"enum": ["consumption", "shipment", "all"]},
                       "reason": _TEXT, "ncr_id": {"type": ["string", "null"], "maxLength": 64}},
                      ("lot_id", "hold_id", "scope", "reason")),
    HOLD_RELEASED: _obj({"hold_id": _ID, "disposition": {"enum": ["release", "conditional_release", "reject"]},
                         "conditions": {"type": ["string", "null"], "maxLength": 2000}, "approved_by": _SHORT,
                         "reason": _TEXT},
                        ("hold_id", "disposition", "approved_by")),
    DEVIATION_DISPOSITIONED: _obj({"deviation_id": {"type": "string", "minLength": 1, "maxLength": 64},
                                   "disposition": {"enum": ["use_as_is", "rework", "scrap", "reject_batch",
                                                            "repeat_step"]},
                                   "capa_id": {"type": ["string", "null"], "maxLength": 64}, "approved_by": _SHORT,
                                   "reason": _TEXT, "qms_ref": {"type": ["string", "null"], "maxLength": 64}},
                                  ("deviation_id", "disposition", "approved_by")),
    WORK_ORDER_RELEASED: _obj({"work_order_id": _ID, "item": _ID,
                               "quantity": _obj({"value": {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,6})?$"},
                                                 "uom": {"type": "string", "minLength": 1, "maxLength": 8}},
                                                ("value", "uom")),
                               "bom_version": {"type": "string", "minLength": 1, "maxLength": 100},
                               "due_date": {"type": ["string", "null"], "maxLength": 10},
                               "line": {"type": ["string", "null"], "maxLength": 64}},
                              ("work_order_id", "item", "quantity", "bom_version")),
}
ENVELOPE = _obj({"specversion": {"const": "1.0"}, "id": {"type": "string", "minLength": 1, "maxLength": 255},
                 "source": {"type": "string", "minLength": 1, "maxLength": 500},
                 "type": {"type": "string", "minLength": 1, "maxLength": 100},
                 "time": {"type": "string", "maxLength": 40}, "subject": {"type": "string", "maxLength": 200},
                 "datacontenttype": {"const": "application/json"}, "dataschema": {"type": "string", "maxLength": 500},
                 "correlationid": {"type": "string", "maxLength": 200}, "data": {"type": "object"}},
                ("specversion", "id", "source", "type", "data"))
ENVELOPE["additionalProperties"] = {"type": ["string", "integer", "boolean", "null"]}  # CloudEvents extensions


def _first_error(schema: dict[str, Any], value: Any, what: str) -> None:
    error = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or what
        raise ValidationFailed(f"The {what} is not valid at {where}: {error.message[:300]}", field=where)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the member {k!r} is given twice")
        out[k] = v
    return out


def parse_event(body: bytes, peer: InboundPeer) -> dict[str, Any]:
    """The CloudEvent in ``body`` (structured mode), checked: envelope, type the peer may send, data."""
    try:
        event = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationFailed(f"The body is not a JSON CloudEvent: {str(exc)[:200]}") from None
    if not isinstance(event, dict):
        raise ValidationFailed("The body is not a JSON CloudEvent object.")
    _first_error(ENVELOPE, event, "CloudEvent")
    if event["type"] not in HANDLERS:
        raise ValidationFailed(f"The MES takes the command types {', '.join(sorted(HANDLERS))}; not "
                               f"{event['type'][:100]}.", field="type")
    if peer.types() and event["type"] not in peer.types():
        raise Forbidden(f"Peer {peer.id} may not send {event['type']}.")
    _first_error(SCHEMAS[event["type"]], event["data"], "data")
    return event


def dispatch(command: Command) -> None:
    HANDLERS[command.event["type"]](command)


# ------------------------------------------------------------------- handlers


def _running_batches_consuming(lot_id: str) -> list[tuple[str, str | None]]:
    """In-progress batches that have consumed ``lot_id`` (not reversed), with their line."""
    from mes.execution.models import Batch, BatchStatus, WorkOrder
    from mes.materials.models import Consumption, ConsumptionReversal

    rows = db.session.execute(
        select(Batch.id, WorkOrder.line).join(WorkOrder, WorkOrder.id == Batch.work_order_id).where(
            Batch.status == BatchStatus.IN_PROGRESS.value,
            exists().where(Consumption.batch_id == Batch.id, Consumption.lot_id == lot_id,
                           ~exists().where(ConsumptionReversal.consumption_id == Consumption.id)))
        .order_by(Batch.id)).all()
    return [(r[0], r[1]) for r in rows]


def _tell_lines(lot_id: str, batches: list[tuple[str, str | None]], payload: dict[str, Any]) -> None:
    """A realtime notice to the lines running the batches (best effort: the usability check
    at the next consumption is the guard; this only tells the operator sooner)."""
    from mes import realtime

    for line in sorted({line for _, line in batches if line}):
        try:
            realtime.publish("lot_hold", {**payload, "lot_id": lot_id,
                                          "batches": [b for b, bl in batches if bl == line]}, realtime.line_room(line))
        except Exception:  # noqa: BLE001 - a notice that cannot be sent changes nothing recorded
            pass


def _hold_placed(c: Command) -> None:
    from mes.materials import lots

    d = c.data
    batches = _running_batches_consuming(d["lot_id"])
    c.answer({"hold_id": d["hold_id"], "lot_id": d["lot_id"], "scope": d["scope"], "ncr_id": d.get("ncr_id"),
              "running_batches": [b for b, _ in batches],
              "effect": "the next consumption of the lot is refused; records already made are not changed"})
    hold = lots.place_hold(c.actor, d["lot_id"], d["scope"], d["reason"], ncr_id=d.get("ncr_id"), hold_id=d["hold_id"])
    if hold.blocks_consumption:
        why = lots.check_usable(d["lot_id"]).reason
        _tell_lines(d["lot_id"], batches, {"hold_id": hold.id, "ncr_id": hold.ncr_id, "active": True, "message": why})


def _hold_released(c: Command) -> None:
    from mes.materials import lots

    d = c.data
    hold = lots.get_hold(d["hold_id"])
    reason = d.get("reason") or f"QMS disposition {d['disposition'].replace('_', ' ')}"
    c.answer({"hold_id": hold.id, "lot_id": hold.lot_id, "disposition": d["disposition"],
              "approved_by": d["approved_by"],
              "effect": {"release": "the lot is usable again (if nothing else stops it)",
                         "conditional_release": "the lot may be used; every batch that consumes it is flagged "
                                                "and cannot be released until QA declares the conditions met",
                         "reject": "the lot is rejected"}[d["disposition"]]})
    lots.release_hold(c.actor, hold.id, d["disposition"], f"{reason} (approved by {d['approved_by']})",
                      conditions=d.get("conditions"))
    batches = _running_batches_consuming(hold.lot_id)
    _tell_lines(hold.lot_id, batches, {"hold_id": hold.id, "active": False, "disposition": d["disposition"],
                                       "message": lots.check_usable(hold.lot_id).reason})


def _deviation_dispositioned(c: Command) -> None:
    from mes.execution import deviations

    d = c.data
    reason = d.get("reason") or f"QMS disposition {d['disposition'].replace('_', ' ')}"
    c.answer({"deviation_id": d["deviation_id"], "disposition": d["disposition"], "capa_id": d.get("capa_id"),
              "approved_by": d["approved_by"]})
    deviations.disposition_from_qms(c.actor, d["deviation_id"], d["disposition"], reason,
                                    qms_ref=d.get("qms_ref") or d.get("capa_id"), approved_by=d["approved_by"],
                                    capa_id=d.get("capa_id"))


def _work_order_released(c: Command) -> None:
    """Create the work order from ERP's (its id is ERP's, ``erp_ref`` too) and release it; a
    repeat of a work order already here only releases it if it is still created."""
    from mes.execution import work_orders as wos
    from mes.execution.models import WorkOrder, WorkOrderStatus

    d = c.data
    due = None
    if d.get("due_date"):
        try:
            due = date.fromisoformat(d["due_date"])
        except ValueError:
            raise ValidationFailed("due_date is a date such as 2026-12-24.", field="due_date") from None
    result = {"work_order_id": d["work_order_id"], "erp_ref": d["work_order_id"], "status": "released"}
    existing = db.session.get(WorkOrder, d["work_order_id"])
    if existing is None:
        wos.create_work_order(c.actor, d["item"], d["quantity"]["value"], d["quantity"]["uom"], d["bom_version"],
                              work_order_id=d["work_order_id"], line=d.get("line") or None, due_date=due,
                              erp_ref=d["work_order_id"])
    elif existing.erp_ref != d["work_order_id"]:
        raise Conflict(f"Work order {existing.id} exists already and did not come from ERP.")
    elif existing.status != WorkOrderStatus.CREATED.value:
        result["status"] = existing.status
        c.answer(result)
        db.session.commit()
        return
    c.answer(result)
    wos.release_work_order(c.actor, d["work_order_id"])


HANDLERS: dict[str, Handler] = {
    HOLD_PLACED: _hold_placed,
    HOLD_RELEASED: _hold_released,
    DEVIATION_DISPOSITIONED: _deviation_dispositioned,
    WORK_ORDER_RELEASED: _work_order_released,
}
