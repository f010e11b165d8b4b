"""Consumption from containers, its reversal, and produced lots: each with its audit entry
and outbox event in one transaction (see :mod:`mes.materials.operations` for the locking).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import exists, or_, select

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import Actor, Event, record
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.integration.models import OutboxEvent
from mes.materials.common import (
    CONSUMED,
    CONSUMPTION_REVERSED,
    PRODUCED,
    InsufficientQuantity,
    LotNotUsable,
    _append_lock_first,
    _commit,
    _finish,
    _iso,
    _locked,
    _quantity,
    _same_dimension,
    _to_storage,
)
from mes.materials.lots import (
    ContainerIn,
    _new_container,
    _usability,
    container_remaining,
    get_item,
)
from mes.materials.models import (
    Consumption,
    ConsumptionReversal,
    Container,
    GenealogyLink,
    Hold,
    HoldDisposition,
    Lot,
    LotStatus,
)
from mes.plant_time import plant_date
from mes.validation import get_or_404, identifier, optional_text, required_text

# ----------------------------------------------------------------------- consumption


def consume(
    actor: Actor,
    lot_id: str,
    container_id: str,
    qty: Decimal | str | int,
    unit: str,
    batch_id: str,
    step_id: str | None = None,
    work_order_id: str | None = None,
    location: str | None = None,
    *,
    item_code: str | None = None,
    commit: bool = True,
) -> Consumption:
    """Take ``qty`` ``unit`` from a container of a lot into a batch step.

    Refused with :class:`LotNotUsable` (the usability sentence) when the lot may not be
    used (as ``item_code``, if given), with :class:`InsufficientQuantity` when the container
    holds less; both are 409 Conflicts. Writes the consumption, its audit entry and the
    ``mes.material.consumed.v1`` event in one transaction. With ``commit=False`` the
    caller's transaction carries them (flushed, not committed), so a batch step and its
    consumptions commit or roll back together.
    """
    amount = _quantity(qty, unit)
    batch_id = identifier(batch_id, "batch id", "batch_id")
    _append_lock_first()
    lot = _locked(select(Lot).where(Lot.id == lot_id), shared=True)
    if lot is None:
        raise NotFound(f"Lot {lot_id} is not known to the MES. Check the label and scan again.")
    container = _locked(select(Container).where(Container.id == container_id))
    if container is None:
        raise NotFound(f"Container {container_id} is not known to the MES. Check the label and scan again.")
    if container.lot_id != lot.id:
        raise ValidationFailed(f"Container {container_id} belongs to lot {container.lot_id}, not to lot {lot.id}. "
                               "Check the label.", field="container_id")
    now = utcnow()
    usable = _usability(lot, item_code, now)
    if not usable.ok:
        raise LotNotUsable(usable.reason, code=usable.code, lot_id=lot.id, hold_id=usable.hold_id)
    deducted = _to_storage(amount, unit, container.storage_uom)
    if deducted > container.remaining_qty:
        left = container_remaining(container)
        if left == 0:
            message = f"Container {container.id} of lot {lot.id} is empty. Use another container."
        else:
            message = (f"Container {container.id} of lot {lot.id} holds only {q.to_text(left)} {container.uom}; "
                       f"{q.fmt(amount, keep_places=True)} {unit} cannot be taken from it.")
        raise InsufficientQuantity(message, lot_id=lot.id, container_id=container.id,
                                   remaining=q.as_json(left, container.uom, keep_places=True))
    before_left = container_remaining(container)
    container.remaining_qty = container.remaining_qty - deducted
    consumption = Consumption(
        id=str(uuid.uuid4()), lot_id=lot.id, container_id=container.id, item_code=lot.item_code, qty=amount, uom=unit,
        deducted_qty=deducted, storage_uom=container.storage_uom, batch_id=batch_id,
        step_id=optional_text(step_id, "The step id", "step_id"),
        work_order_id=optional_text(work_order_id, "The work order id", "work_order_id"),
        location=optional_text(location, "The location", "location"), conditional=usable.conditional,
        conditional_hold_id=usable.hold_id if usable.conditional else None, consumed_at=now, consumed_by=actor.id,
    )
    db.session.add(consumption)
    qty_json = q.as_json(amount, unit, keep_places=True)
    data = {
        "work_order_id": consumption.work_order_id, "batch_id": batch_id, "step_id": consumption.step_id,
        "lot_id": lot.id, "item": lot.item_code, "qty": qty_json, "material_use": "Consumed",
        "location": consumption.location, "consumed_at": format_at(now), "performed_by": actor.id,
        "container_id": container.id, "consumption_id": consumption.id, "conditional": usable.conditional,
    }
    record(actor, "material.consumed", ("consumption", consumption.id), batch=batch_id,
           before={"container": container.id, "remaining": q.as_json(before_left, container.uom, keep_places=True)},
           after={"lot": lot.id, "item": lot.item_code, "container": container.id, "qty": qty_json,
                  "remaining": q.as_json(container_remaining(container), container.uom, keep_places=True), "step": consumption.step_id,
                  "work_order": consumption.work_order_id, "location": consumption.location,
                  "conditional": usable.conditional, "conditional_hold": consumption.conditional_hold_id},
           event=Event(CONSUMED, "batch", batch_id, data, correlation_id=consumption.work_order_id, time=now))
    _finish(commit, f"Container {container.id} of lot {lot.id} was changed by someone else at the same moment; "
            "nothing was taken. Check the container and try again.")
    return consumption


def get_consumption(consumption_id: str) -> Consumption:
    return get_or_404(Consumption, consumption_id, "Consumption")


def reversal_of(consumption_id: str) -> ConsumptionReversal | None:
    return db.session.execute(
        select(ConsumptionReversal).where(ConsumptionReversal.consumption_id == consumption_id)
    ).scalar()


def consumptions(*, lot_id: str | None = None, batch_id: str | None = None) -> list[Consumption]:
    stmt = select(Consumption).order_by(Consumption.consumed_at, Consumption.id)
    if lot_id:
        stmt = stmt.where(Consumption.lot_id == lot_id)
    if batch_id:
        stmt = stmt.where(Consumption.batch_id == batch_id)
    return list(db.session.execute(stmt).scalars())


def consumed_event_id(consumption_id: str) -> str | None:
    """The id of the ``mes.material.consumed.v1`` event a consumption posted."""
    return db.session.execute(
        select(OutboxEvent.id).join(AuditEntry, AuditEntry.seq == OutboxEvent.audit_seq).where(
            AuditEntry.entity_type == "consumption", AuditEntry.entity_id == consumption_id,
            AuditEntry.action == "material.consumed")
    ).scalar()


def reverse_consumption(actor: Actor, consumption_id: str, reason: str) -> ConsumptionReversal:
    """Give a consumption's quantity back to its container (explicit, with a reason; at most
    once; refused once the batch has produced a lot from it). Posts
    ``mes.material.consumption_reversed.v1``. Nothing is deleted: the reversal is a record."""
    reason = required_text(reason, "A reason", "reason")
    _append_lock_first()
    consumption = _locked(select(Consumption).where(Consumption.id == consumption_id))
    if consumption is None:
        raise NotFound(f"Consumption {consumption_id} is not known.")
    earlier = reversal_of(consumption.id)
    if earlier is not None:
        raise Conflict(f"Consumption {consumption_id} was already reversed on {format_at(earlier.reversed_at)} by "
                       f"{earlier.reversed_by}; a consumption is reversed at most once.")
    produced = db.session.execute(
        select(GenealogyLink.child_lot_id).where(GenealogyLink.batch_id == consumption.batch_id,
                                                 GenealogyLink.parent_lot_id == consumption.lot_id).limit(1)
    ).scalar()
    if produced is not None:
        raise Conflict(f"Batch {consumption.batch_id} already produced lot {produced} from lot {consumption.lot_id}; "
                       "the consumption can no longer be reversed. Raise a deviation instead.")
    container = _locked(select(Container).where(Container.id == consumption.container_id))
    before_left = container_remaining(container)
    container.remaining_qty = container.remaining_qty + consumption.deducted_qty
    now = utcnow()
    reversal = ConsumptionReversal(id=str(uuid.uuid4()), consumption_id=consumption.id,
                                   restored_qty=consumption.deducted_qty, storage_uom=consumption.storage_uom,
                                   reason=reason, reversed_at=now, reversed_by=actor.id)
    db.session.add(reversal)
    qty_json = q.as_json(consumption.qty, consumption.uom, keep_places=True)
    data = {
        "consumed_event_id": consumed_event_id(consumption.id), "consumption_id": consumption.id,
        "work_order_id": consumption.work_order_id, "batch_id": consumption.batch_id, "step_id": consumption.step_id,
        "lot_id": consumption.lot_id, "item": consumption.item_code, "qty": qty_json, "reason": reason,
        "reversed_at": format_at(now), "performed_by": actor.id,
    }
    record(actor, "material.consumption.reversed", ("consumption", consumption.id), batch=consumption.batch_id,
           before={"reversed": False, "container": container.id,
                   "remaining": q.as_json(before_left, container.uom, keep_places=True)},
           after={"reversed": True, "reversal": reversal.id, "qty": qty_json, "container": container.id,
                  "remaining": q.as_json(container_remaining(container), container.uom, keep_places=True)},
           reason=reason,
           event=Event(CONSUMPTION_REVERSED, "batch", consumption.batch_id, data,
                       correlation_id=consumption.work_order_id, time=now))
    _commit(f"Consumption {consumption_id} was reversed by someone else at the same moment.")
    return reversal


def batches_consuming_conditionally(lot_id: str) -> list[str]:
    """Every batch that consumed lot ``lot_id`` under a conditional release (reversed
    consumptions excepted), in the order they first did."""
    rows = db.session.execute(
        select(Consumption.batch_id).where(
            Consumption.lot_id == lot_id, Consumption.conditional.is_(True),
            ~exists().where(ConsumptionReversal.consumption_id == Consumption.id),
        ).order_by(Consumption.consumed_at)
    ).scalars()
    return list(dict.fromkeys(rows))


def open_conditional_lots(batch_id: str) -> list[str]:
    """Lots batch ``batch_id`` consumed under a conditional release, or consumed before a hold
    that was then released conditionally (the hold's NCR covers that material too), whose
    conditions QA has not yet declared met: the batch must not be released while this is non-empty."""
    rows = db.session.execute(
        select(Consumption.lot_id).join(Hold, Hold.lot_id == Consumption.lot_id).where(
            Consumption.batch_id == batch_id, Hold.disposition == HoldDisposition.CONDITIONAL_RELEASE.value,
            Hold.conditions_met_at.is_(None),
            or_(Consumption.conditional_hold_id == Hold.id, Consumption.consumed_at < Hold.released_at),
            ~exists().where(ConsumptionReversal.consumption_id == Consumption.id),
        ).order_by(Consumption.lot_id)
    ).scalars()
    return list(dict.fromkeys(rows))


# ------------------------------------------------------------------------ production


def produce(
    actor: Actor,
    item_code: str,
    lot_id: str,
    qty: Decimal | str | int,
    unit: str,
    batch_id: str,
    *,
    work_order_id: str | None = None,
    consumption_ids: Sequence[str] | None = None,
    container_id: str | None = None,
    location: str | None = None,
    commit: bool = True,
) -> Lot:
    """Record lot ``lot_id`` of ``item_code`` produced by batch ``batch_id``, in quarantine,
    in one container, linked to the lots the batch consumed (``consumption_ids``, default
    every consumption of the batch that was not reversed) with the quantities consumed.
    Posts ``mes.finished_goods.produced.v1``. ``commit=False``: in the caller's transaction."""
    item = get_item(item_code)
    amount = _quantity(qty, unit)
    _same_dimension(unit, item.base_uom, item.code, "unit")
    batch_id = identifier(batch_id, "batch id", "batch_id")
    lot_id = identifier(lot_id, "lot id", "lot_id")
    work_order_id = optional_text(work_order_id, "The work order id", "work_order_id")
    if db.session.get(Lot, lot_id) is not None:
        raise Conflict(f"Lot {lot_id} exists already; lot ids are never reused.")
    not_reversed = ~exists().where(ConsumptionReversal.consumption_id == Consumption.id)
    stmt = select(Consumption).where(Consumption.batch_id == batch_id, not_reversed).order_by(Consumption.consumed_at)
    if consumption_ids is not None:
        wanted = list(dict.fromkeys(consumption_ids))
        stmt = stmt.where(Consumption.id.in_(wanted))
        used = list(db.session.execute(stmt).scalars())
        missing = sorted(set(wanted) - {c.id for c in used})
        if missing:
            raise ValidationFailed(f"These are not live consumptions of batch {batch_id}: {', '.join(missing)}.",
                                   field="consumption_ids")
    else:
        used = list(db.session.execute(stmt).scalars())
    if not used:
        raise ValidationFailed(f"Batch {batch_id} has no recorded consumptions; a produced lot must trace back "
                               "to what went into it.", field="consumption_ids")
    by_lot: dict[str, list[Consumption]] = defaultdict(list)
    for c in used:
        by_lot[c.lot_id].append(c)
    now = utcnow()
    today = plant_date(now)
    lot = Lot(id=lot_id, item_code=item.code, status=LotStatus.QUARANTINE.value, manufactured_date=today,
              expiry_date=today + timedelta(days=item.shelf_life_days) if item.shelf_life_days else None,
              retest_date=today + timedelta(days=item.retest_days) if item.retest_days else None,
              produced_by_batch=batch_id, created_at=now, created_by=actor.id)
    container = _new_container(lot, ContainerIn(amount, unit, container_id, location), item, 0, None)
    if db.session.get(Container, container.id) is not None:
        raise Conflict(f"Container label {container.id} is already in use.")
    links = []
    for parent, rows in by_lot.items():
        units = {c.uom for c in rows}
        # summed as written: 20.00 kg + 25.0 kg is 45.00 kg; mixed units in the storage
        # unit, each converted exactly with its places moving with the unit
        uom = rows[0].uom if len(units) == 1 else rows[0].storage_uom
        total = sum((q.convert(c.qty, c.uom, uom) for c in rows), Decimal(0))
        links.append(GenealogyLink(parent_lot_id=parent, child_lot_id=lot_id, batch_id=batch_id, qty=total, uom=uom,
                                   created_at=now))
    db.session.add(lot)
    db.session.flush()
    db.session.add(container)
    db.session.add_all(links)
    consumed_lot_ids = sorted(by_lot)
    qty_json = q.as_json(amount, unit, keep_places=True)
    conditional = sorted({c.lot_id for c in used if c.conditional})
    data = {
        "work_order_id": work_order_id, "batch_id": batch_id, "lot_id": lot_id, "item": item.code,
        "qty": qty_json, "material_use": "Produced", "consumed_lot_ids": consumed_lot_ids,
        "produced_at": format_at(now), "performed_by": actor.id,
    }
    record(actor, "material.lot.produced", ("lot", lot_id), batch=batch_id,
           after={"item": item.code, "status": lot.status, "qty": qty_json, "container": container.id,
                  "expiry_date": _iso(lot.expiry_date), "retest_date": _iso(lot.retest_date),
                  "inputs": [{"lot": link.parent_lot_id, "qty": q.as_json(link.qty, link.uom, keep_places=True)}
                             for link in links],
                  "conditional_inputs": conditional},
           event=Event(PRODUCED, "batch", batch_id, data, correlation_id=work_order_id, time=now))
    _finish(commit, f"Lot {lot_id} or container {container.id} was created by someone else at the same moment.")
    return lot
