"""The JSON views of items, lots, holds and consumptions the API returns.
"""

from __future__ import annotations

from typing import Any

from mes import quantities as q
from mes.db import db
from mes.materials.common import (
    _iso,
)
from mes.materials.consumption import (
    batches_consuming_conditionally,
    reversal_of,
)
from mes.materials.lots import (
    _container_json,
    check_usable,
    containers_of,
    holds_of,
    lot_signatures,
    stock_in,
)
from mes.materials.models import (
    Consumption,
    Hold,
    Item,
    Lot,
)


def lot_json(lot: Lot, *, detail: bool = False, item_code: str | None = None) -> dict[str, Any]:
    """The API form of a lot; ``detail`` adds containers, holds and usability."""
    item = db.session.get(Item, lot.item_code)
    out: dict[str, Any] = {
        "id": lot.id, "item": lot.item_code, "item_name": item.name if item else None, "status": lot.status,
        "supplier": lot.supplier, "supplier_lot": lot.supplier_lot,
        "manufactured_date": _iso(lot.manufactured_date), "expiry_date": _iso(lot.expiry_date),
        "retest_date": _iso(lot.retest_date), "produced_by_batch": lot.produced_by_batch,
        "created_at": _iso(lot.created_at), "created_by": lot.created_by,
        "status_changed_at": _iso(lot.status_changed_at), "status_changed_by": lot.status_changed_by,
        "status_reason": lot.status_reason,
    }
    if detail:
        rows = containers_of(lot.id)
        if item is not None:
            out["remaining"] = q.as_json(stock_in(rows, item.base_uom), item.base_uom, keep_places=True)
        out["containers"] = [_container_json(c) for c in rows]
        out["holds"] = [hold_json(h) for h in holds_of(lot.id)]
        out["usability"] = check_usable(lot.id, item_code).as_json()
        out["batches_consuming_conditionally"] = batches_consuming_conditionally(lot.id)
        out["signatures"] = lot_signatures(lot.id)
    return out


def hold_json(h: Hold) -> dict[str, Any]:
    return {"id": h.id, "lot_id": h.lot_id, "scope": h.scope, "reason": h.reason, "ncr_id": h.ncr_id,
            "active": h.active, "placed_by": h.placed_by, "placed_at": _iso(h.placed_at),
            "released_by": h.released_by, "released_at": _iso(h.released_at), "disposition": h.disposition,
            "conditions": h.conditions, "release_reason": h.release_reason, "conditional": h.conditional,
            "conditions_met_at": _iso(h.conditions_met_at), "conditions_met_by": h.conditions_met_by}


def consumption_json(c: Consumption) -> dict[str, Any]:
    rev = reversal_of(c.id)
    return {"id": c.id, "lot_id": c.lot_id, "container_id": c.container_id, "item": c.item_code,
            "qty": q.as_json(c.qty, c.uom, keep_places=True), "batch_id": c.batch_id, "step_id": c.step_id,
            "work_order_id": c.work_order_id, "location": c.location, "conditional": c.conditional,
            "consumed_at": _iso(c.consumed_at), "consumed_by": c.consumed_by,
            "reversal": None if rev is None else {"id": rev.id, "reason": rev.reason, "reversed_at": _iso(rev.reversed_at),
                                                  "reversed_by": rev.reversed_by}}


def item_json(item: Item) -> dict[str, Any]:
    return {"code": item.code, "name": item.name, "kind": item.kind, "base_uom": item.base_uom,
            "shelf_life_days": item.shelf_life_days, "retest_days": item.retest_days, "active": item.active,
            "created_at": _iso(item.created_at)}
