"""Work orders and their state machine: created → released → dispatched → in progress
(a batch started) → completed (its batch released or rejected); cancelled before a batch."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from mes.audit.log import Actor, Event, record
from mes.db import db, utcnow
from mes.errors import Conflict, ValidationFailed
from mes.execution import recipes_store
from mes.execution.common import _at, _dec, _locked, _new_id, _text
from mes.execution.models import Batch, WorkOrder, WorkOrderStatus
from mes.quantities import to_text
from mes.recipes.scaling import scale
from mes.validation import get_or_404


def get_work_order(work_order_id: str) -> WorkOrder:
    """The work order ``work_order_id`` (NotFound if none)."""
    return get_or_404(WorkOrder, work_order_id, "Work order")


def work_order_json(wo: WorkOrder) -> dict[str, Any]:
    """The work order as the API shows it, with the ids of its batches."""
    batches = db.session.execute(select(Batch.id).where(Batch.work_order_id == wo.id)).scalars().all()
    return {"id": wo.id, "item": wo.item, "quantity": {"value": to_text(wo.quantity), "uom": wo.unit},
            "recipe_version": wo.recipe_version_id, "line": wo.line,
            "due_date": wo.due_date.isoformat() if wo.due_date else None, "erp_ref": wo.erp_ref,
            "status": wo.status, "created_at": _at(wo.created_at), "created_by": wo.created_by, "batches": list(batches)}


def create_work_order(actor: Actor, item: str, quantity: str, unit: str, recipe_version_id: str, *,
                      work_order_id: str | None = None, line: str | None = None, due_date: date | None = None,
                      erp_ref: str | None = None) -> WorkOrder:
    """Create a work order for ``quantity`` ``unit`` of ``item`` by an approved/effective recipe version."""
    rv = recipes_store.usable_version(recipe_version_id)
    master = recipes_store.master_of(rv)
    item = _text(item, "The item", "item")
    if item != master.product.code:
        raise ValidationFailed(f"Recipe {rv.id} makes {master.product.code}, not {item}.", field="item")
    amount = _dec(quantity, "quantity")
    scale(master, amount, unit)  # refuses a size outside the validated range, a wrong unit
    wo_id = work_order_id or _new_id("WO")
    if db.session.get(WorkOrder, wo_id) is not None:
        raise Conflict(f"Work order {wo_id} exists already.")
    if erp_ref and db.session.execute(select(WorkOrder.id).where(WorkOrder.erp_ref == erp_ref)).first():
        raise Conflict(f"A work order for ERP reference {erp_ref} exists already.")
    wo = WorkOrder(id=wo_id, item=item, quantity=amount, unit=unit, recipe_version_id=rv.id, line=line,
                   due_date=due_date, erp_ref=erp_ref, status=WorkOrderStatus.CREATED.value, created_at=utcnow(),
                   created_by=actor.id)
    db.session.add(wo)
    record(actor, "work_order.created", ("work_order", wo_id),
           after={"item": item, "quantity": to_text(amount), "unit": unit, "recipe_version": rv.id, "line": line,
                  "due_date": due_date.isoformat() if due_date else None, "erp_ref": erp_ref, "status": wo.status})
    db.session.commit()
    return wo


def _wo_transition(actor: Actor, wo: WorkOrder, allowed: tuple[str, ...], to: WorkOrderStatus, action: str,
                   reason: str | None = None, extra: dict[str, Any] | None = None, event: Event | None = None) -> None:
    """Move ``wo`` from one of ``allowed`` to ``to``, audited (the caller commits)."""
    if wo.status not in allowed:
        raise Conflict(f"Work order {wo.id} is {wo.status}; it cannot become {to.value}.")
    before = wo.status
    wo.status = to.value
    record(actor, action, ("work_order", wo.id), before={"status": before},
           after={"status": wo.status, **(extra or {})}, reason=reason, event=event)


def release_work_order(actor: Actor, work_order_id: str) -> WorkOrder:
    """created → released (its recipe version must still be usable)."""
    wo = _locked(WorkOrder, work_order_id)
    recipes_store.usable_version(wo.recipe_version_id)
    _wo_transition(actor, wo, (WorkOrderStatus.CREATED.value,), WorkOrderStatus.RELEASED, "work_order.released")
    db.session.commit()
    return wo


def dispatch_work_order(actor: Actor, work_order_id: str, line: str) -> WorkOrder:
    """released (or dispatched) → dispatched to ``line``."""
    wo = _locked(WorkOrder, work_order_id)
    line = _text(line, "The line", "line")
    _wo_transition(actor, wo, (WorkOrderStatus.RELEASED.value, WorkOrderStatus.DISPATCHED.value),
                   WorkOrderStatus.DISPATCHED, "work_order.dispatched", extra={"line": line})
    wo.line = line
    db.session.commit()
    return wo


def cancel_work_order(actor: Actor, work_order_id: str, reason: str) -> WorkOrder:
    """Cancel a work order no batch has started from, with the reason."""
    wo = _locked(WorkOrder, work_order_id)
    reason = _text(reason, "A reason", "reason")
    _wo_transition(actor, wo, (WorkOrderStatus.CREATED.value, WorkOrderStatus.RELEASED.value,
                               WorkOrderStatus.DISPATCHED.value), WorkOrderStatus.CANCELLED, "work_order.cancelled",
                   reason=reason)
    db.session.commit()
    return wo
