"""HTTP API for materials: items, lots, QA release and rejection, holds, consumption
reversal and lot genealogy (a thin shell over :mod:`mes.materials.operations`).

Quantities travel as ``{"value": "12.50", "uom": "kg"}`` with the value a decimal
string; request bodies carry ``qty`` as a decimal string and ``uom`` beside it.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from mes.audit.blueprint import SIGN_FIELDS
from mes.errors import Forbidden, ValidationFailed
from mes.materials import operations as ops
from mes.materials.models import HoldDisposition, HoldScope, ItemKind, LotStatus
from mes.quantities import DECIMAL_PATTERN, MATERIAL_UNITS
from mes.signatures.credentials import credentials_from
from mes.users.permissions import Permission as P
from mes.validation import ID_JSON_PATTERN
from mes.web import STR, created, endpoint, obj, parse_date, principal

bp = Blueprint("materials", __name__)
API = "/api/v1"
TAGS = ("materials",)

ID = {"type": "string", "pattern": ID_JSON_PATTERN}
TEXT_Q = {"type": "string"}  # a filter: an unknown value matches nothing
LOTS_Q = {"limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
          "status": {"schema": {"type": "string", "enum": [s.value for s in LotStatus]}},
          "item": {"schema": TEXT_Q}, "supplier_lot": {"schema": TEXT_Q}, "batch": {"schema": TEXT_Q},
          "after": {"schema": TEXT_Q, "description": "The last lot id of the previous page."}}
TRACE_Q = {"direction": {"schema": {"type": "string", "enum": ["backward", "forward"], "default": "backward"}},
           "max_depth": {"schema": {"type": "integer", "minimum": 1, "maximum": 100}}}
DECIMAL = {"type": "string", "pattern": DECIMAL_PATTERN}
UOM = {"enum": list(MATERIAL_UNITS)}
DATE = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
DAYS = {"type": "integer", "minimum": 1, "maximum": 36500}
REASON = obj({"reason": STR}, ("reason",))



def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be a whole number.", field=name) from None
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}.", field=name)
    return value


# ------------------------------------------------------------------------- items

ITEM_SCHEMA = obj(
    {"code": ID, "name": STR, "base_uom": UOM, "kind": {"enum": [k.value for k in ItemKind]},
     "shelf_life_days": DAYS, "retest_days": DAYS},
    ("code", "name", "base_uom", "kind"),
)


@bp.get(f"{API}/items")
@endpoint(P.MATERIAL_VIEW, tags=TAGS, query={"kind": {"schema": TEXT_Q, "description": "One of " + ", ".join(k.value for k in ItemKind)
                                                                 + "; another value matches nothing."}})
def items_list() -> Response:
    """List items (material master), optionally of one kind."""
    kind = request.args.get("kind") or None
    return jsonify({"items": [ops.item_json(i) for i in ops.list_items(kind=kind)]})


@bp.post(f"{API}/items")
@endpoint(P.MATERIAL_MANAGE, schema=ITEM_SCHEMA, tags=TAGS)
def items_create() -> Response:
    """Create an item."""
    b = g.body
    item = ops.create_item(principal().actor(P.MATERIAL_MANAGE), b["code"], b["name"], b["base_uom"], b["kind"],
                           shelf_life_days=b.get("shelf_life_days"), retest_days=b.get("retest_days"))
    return created({"item": ops.item_json(item)})


@bp.get(f"{API}/items/<code>")
@endpoint(P.MATERIAL_VIEW, tags=TAGS)
def items_get(code: str) -> Response:
    """One item."""
    return jsonify({"item": ops.item_json(ops.get_item(code))})


# -------------------------------------------------------------------------- lots

CONTAINER_SCHEMA = obj({"label": ID, "qty": DECIMAL, "uom": UOM, "location": STR}, ("qty", "uom"))
LOT_SCHEMA = obj(
    {"id": ID, "item": ID, "supplier": STR, "supplier_lot": STR, "manufactured_date": DATE, "expiry_date": DATE,
     "retest_date": DATE, "location": STR,
     "containers": {"type": "array", "items": CONTAINER_SCHEMA, "minItems": 1, "maxItems": 500}},
    ("item", "containers"),
)


@bp.get(f"{API}/lots")
@endpoint(P.MATERIAL_VIEW, tags=TAGS, query=LOTS_Q)
def lots_list() -> Response:
    """List lots by id, filtered by item, status, supplier lot or producing batch; paged with ``after``."""
    status = request.args.get("status") or None
    if status is not None and status not in {s.value for s in LotStatus}:
        raise ValidationFailed(f"status must be one of {', '.join(s.value for s in LotStatus)}.", field="status")
    limit = _int_arg("limit", 100, 1, 1000)
    rows = ops.list_lots(item_code=request.args.get("item") or None, status=status,
                         supplier_lot=request.args.get("supplier_lot") or None,
                         produced_by_batch=request.args.get("batch") or None,
                         after=request.args.get("after") or None, limit=limit)
    return jsonify({"lots": [ops.lot_json(lot) for lot in rows],
                    "next_after": rows[-1].id if len(rows) == limit else None})


@bp.post(f"{API}/lots")
@endpoint(P.MATERIAL_MANAGE, schema=LOT_SCHEMA, tags=TAGS)
def lots_receive() -> Response:
    """Receive a lot into quarantine with its containers."""
    b = g.body
    containers = [ops.ContainerIn(c["qty"], c["uom"], c.get("label"), c.get("location")) for c in b["containers"]]
    lot = ops.receive_lot(
        principal().actor(P.MATERIAL_MANAGE), b["item"], containers, lot_id=b.get("id"), supplier=b.get("supplier"),
        supplier_lot=b.get("supplier_lot"), manufactured_date=parse_date(b.get("manufactured_date"), "manufactured_date"),
        expiry_date=parse_date(b.get("expiry_date"), "expiry_date"), retest_date=parse_date(b.get("retest_date"), "retest_date"),
        location=b.get("location"),
    )
    return created({"lot": ops.lot_json(lot, detail=True)})


@bp.get(f"{API}/lots/<lot_id>")
@endpoint(P.MATERIAL_VIEW, tags=TAGS, query={"item": {"schema": TEXT_Q}})
def lots_get(lot_id: str) -> Response:
    """One lot with containers, holds and whether it may be used now (as ``?item=CODE``)."""
    lot = ops.get_lot(lot_id)
    return jsonify({"lot": ops.lot_json(lot, detail=True, item_code=request.args.get("item") or None)})


SIGNED_REASON = obj({"reason": STR, "esig_acknowledged": {"type": "boolean"}, **SIGN_FIELDS}, ("reason",))


def _signer() -> tuple[object, str | None]:
    who = principal()
    if who.session is None:
        raise Forbidden("Only a person in an interactive session can sign; API tokens cannot.")
    return who.session, who.terminal.id if who.terminal else None


@bp.post(f"{API}/lots/<lot_id>/release")
@endpoint(P.MATERIAL_RELEASE, terminal=True, schema=SIGNED_REASON, tags=TAGS)
def lots_release(lot_id: str) -> Response:
    """QA: release a lot from quarantine with an e-signature (meaning ``released``; the reason
    is the signature's comment). A lot the plant made is released by its batch's disposition."""
    session_row, terminal = _signer()
    lot = ops.release_lot(session_row, credentials_from(g.body), lot_id, g.body["reason"], terminal=terminal,
                          acknowledged=g.body.get("esig_acknowledged") is True)
    return jsonify({"lot": ops.lot_json(lot, detail=True)})


@bp.post(f"{API}/lots/<lot_id>/reject")
@endpoint(P.MATERIAL_RELEASE, terminal=True, schema=SIGNED_REASON, tags=TAGS)
def lots_reject(lot_id: str) -> Response:
    """QA: reject a lot with an e-signature (meaning ``rejected``; final)."""
    session_row, terminal = _signer()
    lot = ops.reject_lot(session_row, credentials_from(g.body), lot_id, g.body["reason"], terminal=terminal,
                         acknowledged=g.body.get("esig_acknowledged") is True)
    return jsonify({"lot": ops.lot_json(lot, detail=True)})


@bp.post(f"{API}/lots/<lot_id>/retest-date")
@endpoint(P.MATERIAL_RELEASE, schema=obj({"retest_date": DATE, "reason": STR}, ("retest_date", "reason")), tags=TAGS)
def lots_retest_date(lot_id: str) -> Response:
    """QA: set the next retest date after a retest."""
    retest = parse_date(g.body["retest_date"], "retest_date")
    assert retest is not None
    lot = ops.set_retest_date(principal().actor(P.MATERIAL_RELEASE), lot_id, retest, g.body["reason"])
    return jsonify({"lot": ops.lot_json(lot, detail=True)})


@bp.get(f"{API}/lots/<lot_id>/consumptions")
@endpoint(P.MATERIAL_VIEW, tags=TAGS)
def lots_consumptions(lot_id: str) -> Response:
    """Every consumption from a lot, with its reversal if any."""
    ops.get_lot(lot_id)
    return jsonify({"consumptions": [ops.consumption_json(c) for c in ops.consumptions(lot_id=lot_id)]})


@bp.get(f"{API}/lots/<lot_id>/trace")
@endpoint(P.MATERIAL_VIEW, tags=TAGS, query=TRACE_Q)
def lots_trace(lot_id: str) -> Response:
    """Lot genealogy: ``direction=backward`` (what went in) or ``forward`` (what it went into)."""
    direction = request.args.get("direction", "backward")
    if direction not in ("backward", "forward"):
        raise ValidationFailed("direction must be backward or forward.", field="direction")
    depth = _int_arg("max_depth", ops.MAX_TRACE_DEPTH, 1, 100)
    trace = ops.trace_backward(lot_id, depth) if direction == "backward" else ops.trace_forward(lot_id, depth)
    return jsonify({"trace": trace.as_json()})


# ------------------------------------------------------------------------- holds

HOLD_SCHEMA = obj({"scope": {"enum": [s.value for s in HoldScope]}, "reason": STR, "ncr_id": STR, "hold_id": ID},
                  ("scope", "reason"))
HOLD_RELEASE_SCHEMA = obj({"disposition": {"enum": [d.value for d in HoldDisposition]}, "reason": STR,
                           "conditions": STR}, ("disposition", "reason"))


@bp.post(f"{API}/lots/<lot_id>/holds")
@endpoint(P.MATERIAL_MANAGE, schema=HOLD_SCHEMA, tags=TAGS)
def holds_place(lot_id: str) -> Response:
    """Put a lot on hold (scope consumption, shipment or all)."""
    b = g.body
    hold = ops.place_hold(principal().actor(P.MATERIAL_MANAGE), lot_id, b["scope"], b["reason"],
                          ncr_id=b.get("ncr_id"), hold_id=b.get("hold_id"))
    return created({"hold": ops.hold_json(hold)})


@bp.post(f"{API}/holds/<hold_id>/release")
@endpoint(P.MATERIAL_RELEASE, schema=HOLD_RELEASE_SCHEMA, tags=TAGS)
def holds_release(hold_id: str) -> Response:
    """QA: release a hold (release, conditional_release with conditions, or reject)."""
    b = g.body
    hold = ops.release_hold(principal().actor(P.MATERIAL_RELEASE), hold_id, b["disposition"], b["reason"],
                            conditions=b.get("conditions"))
    return jsonify({"hold": ops.hold_json(hold)})


@bp.post(f"{API}/holds/<hold_id>/conditions-met")
@endpoint(P.MATERIAL_RELEASE, schema=REASON, tags=TAGS)
def holds_conditions_met(hold_id: str) -> Response:
    """QA: declare the conditions of a conditional release met."""
    hold = ops.meet_conditions(principal().actor(P.MATERIAL_RELEASE), hold_id, g.body["reason"])
    return jsonify({"hold": ops.hold_json(hold)})


# ------------------------------------------------------------------ consumptions


@bp.get(f"{API}/consumptions/<consumption_id>")
@endpoint(P.MATERIAL_VIEW, tags=TAGS)
def consumptions_get(consumption_id: str) -> Response:
    """One consumption, with its reversal if any."""
    return jsonify({"consumption": ops.consumption_json(ops.get_consumption(consumption_id))})


@bp.post(f"{API}/consumptions/<consumption_id>/reverse")
@endpoint(P.MATERIAL_MANAGE, schema=REASON, tags=TAGS)
def consumptions_reverse(consumption_id: str) -> Response:
    """Reverse a consumption (once, with a reason): the quantity goes back to its container."""
    ops.reverse_consumption(principal().actor(P.MATERIAL_MANAGE), consumption_id, g.body["reason"])
    return jsonify({"consumption": ops.consumption_json(ops.get_consumption(consumption_id))})
