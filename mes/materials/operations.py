"""Service layer for materials: items, lots and their QA status, holds, containers,
consumption and its reversal, produced lots and lot genealogy.

Every state change is one transaction with its audit entry (and, where events.md names
one, its outbox event): ``mes.material.consumed.v1``,
``mes.material.consumption_reversed.v1``, ``mes.finished_goods.produced.v1``. Functions
take the acting :class:`~mes.audit.log.Actor` explicitly and never look at a request, so
the API, the CLI and the batch execution engine are thin shells over them.

Whether a lot may be used is answered by :func:`check_usable` with a sentence the kiosk
shows as it is. :func:`consume` asks the same question again *inside* its transaction,
after taking the audit log's append lock and then locking the lot (shared) and the
container (exclusive) on PostgreSQL; on SQLite the whole transaction holds the database
write lock (``BEGIN IMMEDIATE``). So a hold placed, or the last kilogram taken, by someone
else a moment earlier is always seen, two consumptions racing for the same material cannot
both succeed, and a caller that recorded its own entry first cannot deadlock with us.
CHECK constraints keep container stock between zero and what was received even if code
were wrong.

Dates (expiry, retest, manufacture) are calendar dates at the plant (``MES_TIMEZONE``, see
:mod:`mes.plant_time`): a lot may be used through its expiry date and its retest date, and
not from the day after.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import ADVISORY_LOCK_KEY, Actor, Event, record
from mes.audit.models import AuditEntry
from mes.db import db, utcnow
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.integration.models import OutboxEvent
from mes.materials.models import (
    Consumption,
    ConsumptionReversal,
    Container,
    GenealogyLink,
    Hold,
    HoldDisposition,
    HoldScope,
    Item,
    ItemKind,
    Lot,
    LotStatus,
)
from mes.plant_time import plant_date
from mes.validation import NAME_MAX, TEXT_MAX, get_or_404, identifier, optional_text, required_text

MAX_TRACE_DEPTH = 32
CONSUMED = "mes.material.consumed.v1"
CONSUMPTION_REVERSED = "mes.material.consumption_reversed.v1"
PRODUCED = "mes.finished_goods.produced.v1"


class LotNotUsable(Conflict):
    """The lot may not be used now; ``detail`` is the sentence for the operator and
    ``extra["code"]`` the machine-readable reason (see :class:`Usability`)."""

    slug, title = "lot-not-usable", "The lot cannot be used"


class InsufficientQuantity(Conflict):
    """The container holds less than was asked for (or someone else took it first)."""

    slug, title = "insufficient-quantity", "Not enough material in the container"


# --------------------------------------------------------------------------- helpers


def _quantity(value: Any, unit: str, field_name: str = "qty") -> Decimal:
    """A positive quantity in a known unit."""
    try:
        amount = q.parse_quantity(value)
        q.material_dimension(unit)
    except q.QuantityError as exc:
        raise ValidationFailed(f"{exc}.", field=field_name) from None
    if amount <= 0:
        raise ValidationFailed("A quantity must be more than zero.", field=field_name)
    return amount


def _to_storage(amount: Decimal, unit: str, storage_uom: str, field_name: str = "qty") -> Decimal:
    d_unit, d_storage = q.material_dimension(unit), q.material_dimension(storage_uom)
    if d_unit != d_storage:
        raise ValidationFailed(f"{unit} ({d_unit}) cannot be converted to {storage_uom} ({d_storage}).", field=field_name)
    try:
        return q.storable(q.convert(amount, unit, storage_uom), storage_uom)
    except q.QuantityError as exc:
        raise ValidationFailed(f"{exc}.", field=field_name) from None


def _same_dimension(unit: str, base_uom: str, item_code: str, field_name: str) -> None:
    if q.dimension(unit) != q.dimension(base_uom):
        raise ValidationFailed(f"Item {item_code} is counted in {base_uom}; {unit} is a different kind of unit.",
                               field=field_name)


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_at(value)
    return value.isoformat()


def _commit(conflict_message: str) -> None:
    """Commit; a constraint the database enforces (stock below zero, a second reversal, a
    taken id) that another transaction won becomes a Conflict, with nothing recorded."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(conflict_message) from None


def _finish(commit: bool, conflict_message: str) -> None:
    """Commit (see :func:`_commit`), or with ``commit=False`` only flush into the caller's
    transaction: a constraint failure then raises the same Conflict and the caller rolls back."""
    if commit:
        _commit(conflict_message)
        return
    try:
        db.session.flush()
    except IntegrityError:
        raise Conflict(conflict_message) from None


def _append_lock_first() -> None:
    """Take the audit log's append lock now, before any row lock (PostgreSQL; re-entrant
    within a transaction; SQLite holds its write lock from ``BEGIN IMMEDIATE`` anyway).

    :func:`~mes.audit.log.record` takes this lock too. Taking it first makes every audited
    writer lock in one order, append lock then rows, so a caller that records its own entry
    before calling :func:`consume` in the same transaction (the batch engine does) cannot
    deadlock with a consumption or a hold that locked the lot or container first."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))


def _locked(stmt: Any, *, shared: bool = False) -> Any:
    """``SELECT … FOR UPDATE`` (``FOR SHARE`` if ``shared``) on PostgreSQL, re-reading the row;
    SQLite already holds the database write lock for the whole transaction."""
    return db.session.execute(
        stmt.with_for_update(read=shared).execution_options(populate_existing=True)
    ).scalar()


def _short(text_: str) -> str:
    return text_.strip().rstrip(".")


# ----------------------------------------------------------------------------- items


def get_item(code: str) -> Item:
    return get_or_404(Item, code, "Item")


def list_items(*, kind: str | None = None, include_inactive: bool = False) -> list[Item]:
    stmt = select(Item).order_by(Item.code)
    if kind:
        stmt = stmt.where(Item.kind == kind)
    if not include_inactive:
        stmt = stmt.where(Item.active.is_(True))
    return list(db.session.execute(stmt).scalars())


def create_item(
    actor: Actor,
    code: str,
    name: str,
    base_uom: str,
    kind: str,
    *,
    shelf_life_days: int | None = None,
    retest_days: int | None = None,
) -> Item:
    """Create an item (material master record)."""
    code = identifier(code, "item code", "code")
    name = required_text(name, "The item name", "name", NAME_MAX)
    if base_uom not in q.MATERIAL_UNITS:
        raise ValidationFailed(f"The base unit must be one of {', '.join(q.MATERIAL_UNITS)}.", field="base_uom")
    if kind not in {k.value for k in ItemKind}:
        raise ValidationFailed(f"The kind must be one of {', '.join(k.value for k in ItemKind)}.", field="kind")
    for value, name_ in ((shelf_life_days, "shelf_life_days"), (retest_days, "retest_days")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValidationFailed(f"{name_} must be a whole number of days above zero.", field=name_)
    if db.session.get(Item, code) is not None:
        raise Conflict(f"Item {code} exists already.")
    item = Item(code=code, name=name, base_uom=base_uom, kind=kind, shelf_life_days=shelf_life_days,
                retest_days=retest_days, active=True, created_at=utcnow(), created_by=actor.id)
    db.session.add(item)
    record(actor, "material.item.created", ("material_item", code),
           after={"name": name, "base_uom": base_uom, "kind": kind, "shelf_life_days": shelf_life_days,
                  "retest_days": retest_days})
    _commit(f"Item {code} exists already.")
    return item


# ------------------------------------------------------------------------------ lots


@dataclass(frozen=True)
class ContainerIn:
    """One container of a receipt: quantity and unit as on its label."""

    qty: Decimal | str | int
    uom: str
    label: str | None = None
    location: str | None = None


def get_lot(lot_id: str) -> Lot:
    return get_or_404(Lot, lot_id, detail=f"Lot {lot_id} is not known to the MES.")


def containers_of(lot_id: str) -> list[Container]:
    return list(db.session.execute(select(Container).where(Container.lot_id == lot_id).order_by(Container.id)).scalars())


def holds_of(lot_id: str, *, active_only: bool = False) -> list[Hold]:
    stmt = select(Hold).where(Hold.lot_id == lot_id).order_by(Hold.placed_at, Hold.id)
    if active_only:
        stmt = stmt.where(Hold.released_at.is_(None))
    return list(db.session.execute(stmt).scalars())


def container_remaining(container: Container) -> Decimal:
    """What is left in the container, in the unit on its label (exact)."""
    return q.convert(container.remaining_qty, container.storage_uom, container.uom)


def lot_remaining(lot_id: str) -> tuple[Decimal, str]:
    """What is left of the lot over all its containers, in the item's base unit (exact)."""
    lot = get_lot(lot_id)
    item = get_item(lot.item_code)
    total = sum((c.remaining_qty for c in containers_of(lot_id)), Decimal(0))
    return q.convert(total, q.storage_unit(item.base_uom), item.base_uom), item.base_uom


def list_lots(
    *,
    item_code: str | None = None,
    status: str | None = None,
    supplier_lot: str | None = None,
    produced_by_batch: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[Lot]:
    """Lots by id, filtered; ``after`` is the last id of the previous page."""
    stmt = select(Lot).order_by(Lot.id).limit(max(1, min(limit, 1000)))
    if item_code:
        stmt = stmt.where(Lot.item_code == item_code)
    if status:
        stmt = stmt.where(Lot.status == status)
    if supplier_lot:
        stmt = stmt.where(Lot.supplier_lot == supplier_lot)
    if produced_by_batch:
        stmt = stmt.where(Lot.produced_by_batch == produced_by_batch)
    if after:
        stmt = stmt.where(Lot.id > after)
    return list(db.session.execute(stmt).scalars())


def _new_container(lot: Lot, spec: ContainerIn, item: Item, index: int, location: str | None) -> Container:
    amount = _quantity(spec.qty, spec.uom, f"containers/{index}/qty")
    _same_dimension(spec.uom, item.base_uom, item.code, f"containers/{index}/uom")
    storage = q.storage_unit(spec.uom)
    stored = _to_storage(amount, spec.uom, storage, f"containers/{index}/qty")
    label = identifier(spec.label, "container label", f"containers/{index}/label") if spec.label else f"{lot.id}-C{index + 1:03d}"
    return Container(id=label, lot_id=lot.id, uom=spec.uom, storage_uom=storage, received_qty=stored,
                     remaining_qty=stored, created_at=utcnow(),
                     location=optional_text(spec.location, "The location", f"containers/{index}/location") or location)


def _container_json(c: Container) -> dict[str, Any]:
    return {"id": c.id, "received": q.as_json(q.convert(c.received_qty, c.storage_uom, c.uom), c.uom),
            "remaining": q.as_json(container_remaining(c), c.uom), "location": c.location}


def receive_lot(
    actor: Actor,
    item_code: str,
    containers: Sequence[ContainerIn],
    *,
    lot_id: str | None = None,
    supplier: str | None = None,
    supplier_lot: str | None = None,
    manufactured_date: date | None = None,
    expiry_date: date | None = None,
    retest_date: date | None = None,
    location: str | None = None,
) -> Lot:
    """Receive a lot into quarantine with its containers. Expiry and retest dates not given
    are worked out from the manufacture date and the item's shelf life / retest interval."""
    item = get_item(item_code)
    if not item.active:
        raise Conflict(f"Item {item.code} is inactive; lots of it cannot be received.")
    lot_id = identifier(lot_id, "lot id", "id") if lot_id else f"L-{uuid.uuid4().hex[:10].upper()}"
    if db.session.get(Lot, lot_id) is not None:
        raise Conflict(f"Lot {lot_id} exists already; lot ids are never reused.")
    if not containers:
        raise ValidationFailed("A lot needs at least one container.", field="containers")
    if manufactured_date is not None:
        if expiry_date is None and item.shelf_life_days:
            expiry_date = manufactured_date + timedelta(days=item.shelf_life_days)
        if retest_date is None and item.retest_days:
            retest_date = manufactured_date + timedelta(days=item.retest_days)
        if expiry_date is not None and expiry_date < manufactured_date:
            raise ValidationFailed("The expiry date is before the manufacture date.", field="expiry_date")
    if retest_date is not None and expiry_date is not None and retest_date > expiry_date:
        raise ValidationFailed("The retest date is after the expiry date.", field="retest_date")
    now = utcnow()
    supplier = optional_text(supplier, "The supplier", "supplier", NAME_MAX)
    supplier_lot = optional_text(supplier_lot, "The supplier lot", "supplier_lot", 100)
    location = optional_text(location, "The location", "location")
    lot = Lot(id=lot_id, item_code=item.code, status=LotStatus.QUARANTINE.value, supplier=supplier,
              supplier_lot=supplier_lot, manufactured_date=manufactured_date, expiry_date=expiry_date,
              retest_date=retest_date, created_at=now, created_by=actor.id)
    rows = [_new_container(lot, spec, item, i, location) for i, spec in enumerate(containers)]
    labels = [c.id for c in rows]
    if len(set(labels)) != len(labels):
        raise ValidationFailed("Two containers have the same label.", field="containers")
    taken = db.session.execute(select(Container.id).where(Container.id.in_(labels))).scalars().first()
    if taken is not None:
        raise Conflict(f"Container label {taken} is already in use.")
    db.session.add(lot)
    db.session.flush()
    db.session.add_all(rows)
    record(actor, "material.lot.received", ("lot", lot_id),
           after={"item": item.code, "status": lot.status, "supplier": lot.supplier, "supplier_lot": lot.supplier_lot,
                  "manufactured_date": _iso(manufactured_date), "expiry_date": _iso(expiry_date),
                  "retest_date": _iso(retest_date), "containers": [_container_json(c) for c in rows]})
    _commit(f"Lot {lot_id} or one of its container labels was taken at the same moment; try again.")
    return lot


def _status_change(actor: Actor, lot_id: str, new: LotStatus, reason: str, action: str) -> Lot:
    reason = required_text(reason, "A reason", "reason")
    _append_lock_first()
    lot = _locked(select(Lot).where(Lot.id == lot_id))
    if lot is None:
        raise NotFound(f"Lot {lot_id} is not known to the MES.")
    old = lot.status
    if old == new.value:
        raise Conflict(f"Lot {lot_id} is already {old}.")
    if old == LotStatus.REJECTED.value:
        raise Conflict(f"Lot {lot_id} was rejected; a rejected lot is never released again.")
    lot.status = new.value
    lot.status_changed_at = utcnow()
    lot.status_changed_by = actor.id
    lot.status_reason = reason
    record(actor, action, ("lot", lot_id), before={"status": old}, after={"status": new.value}, reason=reason)
    return lot


def release_lot(actor: Actor, lot_id: str, reason: str) -> Lot:
    """QA releases a lot from quarantine (a reason is required; audited)."""
    lot = _status_change(actor, lot_id, LotStatus.RELEASED, reason, "material.lot.released")
    _commit(f"Lot {lot_id} changed at the same moment; reload and try again.")
    return lot


def reject_lot(actor: Actor, lot_id: str, reason: str) -> Lot:
    """QA rejects a lot (from quarantine or after release); final."""
    lot = _status_change(actor, lot_id, LotStatus.REJECTED, reason, "material.lot.rejected")
    _commit(f"Lot {lot_id} changed at the same moment; reload and try again.")
    return lot


def set_retest_date(actor: Actor, lot_id: str, retest_date: date, reason: str) -> Lot:
    """QA records the next retest date after a retest (audited, with a reason)."""
    reason = required_text(reason, "A reason", "reason")
    _append_lock_first()
    lot = _locked(select(Lot).where(Lot.id == lot_id))
    if lot is None:
        raise NotFound(f"Lot {lot_id} is not known to the MES.")
    if lot.expiry_date is not None and retest_date > lot.expiry_date:
        raise ValidationFailed(f"The retest date is after the lot's expiry date {lot.expiry_date.isoformat()}.",
                               field="retest_date")
    before = _iso(lot.retest_date)
    lot.retest_date = retest_date
    record(actor, "material.lot.retest_date_set", ("lot", lot_id), before={"retest_date": before},
           after={"retest_date": _iso(retest_date)}, reason=reason)
    _commit(f"Lot {lot_id} changed at the same moment; reload and try again.")
    return lot


# ----------------------------------------------------------------------------- holds


def get_hold(hold_id: str) -> Hold:
    return get_or_404(Hold, hold_id, "Hold")


def _hold_json(h: Hold) -> dict[str, Any]:
    return {"hold_id": h.id, "scope": h.scope, "reason": h.reason, "ncr_id": h.ncr_id,
            "disposition": h.disposition, "conditions": h.conditions}


def place_hold(actor: Actor, lot_id: str, scope: str, reason: str, *, ncr_id: str | None = None,
               hold_id: str | None = None) -> Hold:
    """Put a lot on hold (QA, or QMS through ``qms.lot.hold_placed.v1`` with its hold id)."""
    reason = required_text(reason, "A reason", "reason")
    if scope not in {s.value for s in HoldScope}:
        raise ValidationFailed(f"The scope must be one of {', '.join(s.value for s in HoldScope)}.", field="scope")
    hold_id = identifier(hold_id, "hold id", "hold_id") if hold_id else f"H-{uuid.uuid4().hex[:10].upper()}"
    _append_lock_first()
    lot = _locked(select(Lot).where(Lot.id == lot_id))
    if lot is None:
        raise NotFound(f"Lot {lot_id} is not known to the MES.")
    if db.session.get(Hold, hold_id) is not None:
        raise Conflict(f"Hold {hold_id} exists already.")
    hold = Hold(id=hold_id, lot_id=lot.id, scope=scope, reason=reason, ncr_id=optional_text(ncr_id, "The NCR id", "ncr_id"),
                placed_by=actor.id, placed_at=utcnow())
    db.session.add(hold)
    record(actor, "material.hold.placed", ("lot", lot.id), after=_hold_json(hold), reason=reason)
    _commit(f"Hold {hold_id} exists already.")
    return hold


def _locked_hold(hold_id: str) -> tuple[Lot, Hold]:
    _append_lock_first()
    hold = get_hold(hold_id)
    lot = _locked(select(Lot).where(Lot.id == hold.lot_id))  # lock order: lot, then hold
    hold = _locked(select(Hold).where(Hold.id == hold_id))
    return lot, hold


def release_hold(actor: Actor, hold_id: str, disposition: str, reason: str, *,
                 conditions: str | None = None) -> Hold:
    """QA (or QMS through ``qms.lot.hold_released.v1``) releases a hold with a disposition:
    ``release``; ``conditional_release`` (consumption goes ahead, every consuming batch is
    flagged, ``conditions`` required); or ``reject`` (the lot is rejected as well)."""
    reason = required_text(reason, "A reason", "reason")
    if disposition not in {d.value for d in HoldDisposition}:
        raise ValidationFailed(f"The disposition must be one of {', '.join(d.value for d in HoldDisposition)}.",
                               field="disposition")
    conditions = optional_text(conditions, "The conditions", "conditions", TEXT_MAX)
    if disposition == HoldDisposition.CONDITIONAL_RELEASE.value and not conditions:
        raise ValidationFailed("A conditional release must state its conditions.", field="conditions")
    lot, hold = _locked_hold(hold_id)
    if not hold.active:
        raise Conflict(f"Hold {hold_id} was already released ({hold.disposition}).")
    before = _hold_json(hold)
    hold.released_at = utcnow()
    hold.released_by = actor.id
    hold.disposition = disposition
    hold.conditions = conditions
    hold.release_reason = reason
    record(actor, "material.hold.released", ("lot", lot.id), before={**before, "active": True},
           after={**_hold_json(hold), "active": False}, reason=reason)
    if disposition == HoldDisposition.REJECT.value and lot.status != LotStatus.REJECTED.value:
        old = lot.status
        lot.status = LotStatus.REJECTED.value
        lot.status_changed_at = hold.released_at
        lot.status_changed_by = actor.id
        lot.status_reason = reason
        record(actor, "material.lot.rejected", ("lot", lot.id), before={"status": old},
               after={"status": lot.status, "hold_id": hold.id}, reason=reason)
    _commit(f"Hold {hold_id} changed at the same moment; reload and try again.")
    return hold


def meet_conditions(actor: Actor, hold_id: str, reason: str) -> Hold:
    """QA declares the conditions of a conditional release met: the lot is fully usable
    again and batches that consumed it are no longer held back by it."""
    reason = required_text(reason, "A reason", "reason")
    lot, hold = _locked_hold(hold_id)
    if hold.disposition != HoldDisposition.CONDITIONAL_RELEASE.value:
        raise Conflict(f"Hold {hold_id} was not released conditionally.")
    if hold.conditions_met_at is not None:
        raise Conflict(f"The conditions of hold {hold_id} were already declared met.")
    hold.conditions_met_at = utcnow()
    hold.conditions_met_by = actor.id
    record(actor, "material.hold.conditions_met", ("lot", lot.id),
           before={"hold_id": hold.id, "conditional": True}, after={"hold_id": hold.id, "conditional": False},
           reason=reason)
    _commit(f"Hold {hold_id} changed at the same moment; reload and try again.")
    return hold


# ------------------------------------------------------------------------- usability


@dataclass(frozen=True)
class Usability:
    """Whether a lot may be consumed now, and if not the sentence that says why.

    ``code`` is one of ``ok``, ``unknown_lot``, ``wrong_item``, ``rejected``, ``quarantine``,
    ``expired``, ``retest_due``, ``on_hold``, ``empty``. ``conditional`` marks a lot that
    may be used under a conditional release: the consuming batch will be flagged.
    """

    lot_id: str
    code: str
    reason: str
    conditional: bool = False
    hold_id: str | None = None
    ncr_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"

    def __bool__(self) -> bool:
        return self.ok

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "code": self.code, "reason": self.reason, "conditional": self.conditional,
                "hold_id": self.hold_id, "ncr_id": self.ncr_id}


def _item_label(item: Item | None, code: str) -> str:
    return f"{item.name} ({code})" if item is not None else code


def _usability(lot: Lot, item_code: str | None, at: datetime) -> Usability:
    lid = lot.id
    if item_code is not None and lot.item_code != item_code:
        have, want = db.session.get(Item, lot.item_code), db.session.get(Item, item_code)
        return Usability(lid, "wrong_item",
                         f"Lot {lid} is {_item_label(have, lot.item_code)}, but this step needs "
                         f"{_item_label(want, item_code)}. Take the right material.")
    if lot.status == LotStatus.REJECTED.value:
        return Usability(lid, "rejected", f"Lot {lid} was rejected by QA and must not be used. "
                                          "Put it aside and tell QA.")
    if lot.status == LotStatus.QUARANTINE.value:
        return Usability(lid, "quarantine", f"Lot {lid} is in quarantine: QA has not released it yet. "
                                            "Do not use it; ask QA.")
    today = plant_date(at)
    if lot.expiry_date is not None and today > lot.expiry_date:
        return Usability(lid, "expired", f"Lot {lid} expired on {lot.expiry_date.isoformat()}. "
                                         "Do not use it; put it aside and tell QA.")
    if lot.retest_date is not None and today > lot.retest_date:
        return Usability(lid, "retest_due", f"Lot {lid} was due for retest on {lot.retest_date.isoformat()} "
                                            "and has not been retested. Do not use it; ask QA.")
    holds = list(db.session.execute(
        select(Hold).where(Hold.lot_id == lid, or_(
            Hold.released_at.is_(None),
            and_(Hold.disposition == HoldDisposition.CONDITIONAL_RELEASE.value, Hold.conditions_met_at.is_(None)),
        )).order_by(Hold.placed_at, Hold.id)
    ).scalars())
    blocking = next((h for h in holds if h.blocks_consumption), None)
    if blocking is not None:
        what = f"{blocking.ncr_id} {_short(blocking.reason)}" if blocking.ncr_id else _short(blocking.reason)
        return Usability(lid, "on_hold", f"Lot {lid} is on hold: {what}. QA can release the hold.",
                         hold_id=blocking.id, ncr_id=blocking.ncr_id)
    has_stock = db.session.execute(
        select(exists().where(Container.lot_id == lid, Container.remaining_qty > Decimal(0)))
    ).scalar()
    if not has_stock:
        return Usability(lid, "empty", f"Lot {lid} has no material left. Use another lot.")
    conditional = next((h for h in holds if h.conditional), None)
    if conditional is not None:
        ncr = f" ({conditional.ncr_id})" if conditional.ncr_id else ""
        return Usability(lid, "ok", f"Lot {lid} is released under conditions{ncr}: {_short(conditional.conditions or '')}. "
                                    "You may use it; this batch will be flagged for QA.",
                         conditional=True, hold_id=conditional.id, ncr_id=conditional.ncr_id)
    return Usability(lid, "ok", "")


def check_usable(lot_id: str, item_code: str | None = None, at: datetime | None = None) -> Usability:
    """Whether lot ``lot_id`` may be consumed as item ``item_code`` (None: any) at ``at``
    (default now), with the reason in words an operator acts on when it may not."""
    lot = db.session.get(Lot, lot_id)
    if lot is None:
        return Usability(lot_id, "unknown_lot", f"Lot {lot_id} is not known to the MES. "
                                                "Check the label and scan again.")
    return _usability(lot, item_code, at or utcnow())


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
            message = (f"Container {container.id} of lot {lot.id} holds only {q.with_unit(left, container.uom)}; "
                       f"{q.fmt(amount, keep_places=True)} {unit} cannot be taken from it.")
        raise InsufficientQuantity(message, lot_id=lot.id, container_id=container.id,
                                   remaining=q.as_json(left, container.uom))
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
           before={"container": container.id, "remaining": q.as_json(before_left, container.uom)},
           after={"lot": lot.id, "item": lot.item_code, "container": container.id, "qty": qty_json,
                  "remaining": q.as_json(container_remaining(container), container.uom), "step": consumption.step_id,
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
    qty_json = q.as_json(consumption.qty, consumption.uom)
    data = {
        "consumed_event_id": consumed_event_id(consumption.id), "consumption_id": consumption.id,
        "work_order_id": consumption.work_order_id, "batch_id": consumption.batch_id, "step_id": consumption.step_id,
        "lot_id": consumption.lot_id, "item": consumption.item_code, "qty": qty_json, "reason": reason,
        "reversed_at": format_at(now), "performed_by": actor.id,
    }
    record(actor, "material.consumption.reversed", ("consumption", consumption.id), batch=consumption.batch_id,
           before={"reversed": False, "container": container.id,
                   "remaining": q.as_json(before_left, container.uom)},
           after={"reversed": True, "reversal": reversal.id, "qty": qty_json, "container": container.id,
                  "remaining": q.as_json(container_remaining(container), container.uom)},
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
    """Lots batch ``batch_id`` consumed under a conditional release whose conditions QA has
    not yet declared met: the batch must not be released while this is non-empty."""
    rows = db.session.execute(
        select(Consumption.lot_id).join(Hold, Hold.id == Consumption.conditional_hold_id).where(
            Consumption.batch_id == batch_id, Consumption.conditional.is_(True), Hold.conditions_met_at.is_(None),
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
        if len(units) == 1:
            uom = rows[0].uom
            total = sum((c.qty for c in rows), Decimal(0))
        else:
            uom = rows[0].storage_uom
            total = sum((c.deducted_qty for c in rows), Decimal(0))
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
                  "inputs": [{"lot": link.parent_lot_id, "qty": q.as_json(link.qty, link.uom)} for link in links],
                  "conditional_inputs": conditional},
           event=Event(PRODUCED, "batch", batch_id, data, correlation_id=work_order_id, time=now))
    _finish(commit, f"Lot {lot_id} or container {container.id} was created by someone else at the same moment.")
    return lot


# ------------------------------------------------------------------------- genealogy


class TraceLot(NamedTuple):
    lot_id: str
    item_code: str
    item_name: str
    status: str
    depth: int  # links from the root (the root is 0), the shortest way

    def as_json(self) -> dict[str, Any]:
        return {"lot_id": self.lot_id, "item": self.item_code, "item_name": self.item_name, "status": self.status,
                "depth": self.depth}


class TraceLink(NamedTuple):
    """``qty`` ``uom`` of lot ``parent_lot_id`` went into lot ``child_lot_id`` in ``batch_id``."""

    parent_lot_id: str
    child_lot_id: str
    batch_id: str
    qty: Decimal
    uom: str

    def as_json(self) -> dict[str, Any]:
        return {"parent_lot_id": self.parent_lot_id, "child_lot_id": self.child_lot_id, "batch_id": self.batch_id,
                "qty": q.as_json(self.qty, self.uom)}


@dataclass
class Trace:
    """A lot's genealogy in one direction: ``backward`` (what went into it, down to raw
    materials) or ``forward`` (everything made from it). ``lots`` holds every lot reached,
    once, at its shortest distance from the root; ``links`` every link walked, nearest
    first. ``truncated`` says the depth limit cut the walk short. :meth:`walk` and
    :meth:`tree` give the tree view (a lot reached again is marked, not expanded again)."""

    root: TraceLot
    direction: str
    max_depth: int
    lots: dict[str, TraceLot]
    links: list[TraceLink]
    truncated: bool = False
    _next: dict[str, list[TraceLink]] | None = field(default=None, repr=False)

    def near(self, link: TraceLink) -> str:
        """The end of ``link`` closer to the root."""
        return link.child_lot_id if self.direction == "backward" else link.parent_lot_id

    def far(self, link: TraceLink) -> str:
        return link.parent_lot_id if self.direction == "backward" else link.child_lot_id

    def next_links(self, lot_id: str) -> list[TraceLink]:
        """The links one step further from the root, out of ``lot_id``."""
        if self._next is None:
            index: dict[str, list[TraceLink]] = defaultdict(list)
            backward = self.direction == "backward"
            for link in self.links:
                index[link.child_lot_id if backward else link.parent_lot_id].append(link)
            self._next = dict(index)
        return self._next.get(lot_id, [])

    def walk(self) -> Iterator[tuple[int, TraceLink | None, TraceLot, bool]]:
        """Depth-first ``(level, link, lot, repeated)`` for printing a tree; a lot whose
        subtree was already shown is yielded once more with ``repeated`` and not expanded."""
        shown: set[str] = set()
        stack: list[tuple[int, TraceLink | None, str]] = [(0, None, self.root.lot_id)]
        while stack:
            level, link, lot_id = stack.pop()
            lot = self.lots[lot_id]
            repeated = lot_id in shown
            yield level, link, lot, repeated
            if repeated:
                continue
            shown.add(lot_id)
            for nxt in reversed(self.next_links(lot_id)):
                stack.append((level + 1, nxt, self.far(nxt)))

    def tree(self) -> dict[str, Any]:
        """Nested ``{lot…, batch_id, qty, children}``; a lot shown before has ``"repeated": true``
        and no children, so the tree stays as small as the graph."""
        root: dict[str, Any] = {**self.root.as_json(), "children": []}
        path: list[dict[str, Any]] = [root]
        for level, link, lot, repeated in self.walk():
            if link is None:
                continue
            node = {**lot.as_json(), "batch_id": link.batch_id, "qty": q.as_json(link.qty, link.uom),
                    "repeated": repeated, "children": []}
            del path[level:]
            path[-1]["children"].append(node)
            path.append(node)
        return root

    def as_json(self) -> dict[str, Any]:
        return {"root": self.root.as_json(), "direction": self.direction, "max_depth": self.max_depth,
                "truncated": self.truncated, "lots": [lot.as_json() for lot in self.lots.values()],
                "links": [link.as_json() for link in self.links], "tree": self.tree()}


# One statement per trace, on SQLite and PostgreSQL alike. The walk visits each lot once
# per distinct depth (UNION drops repeated rows), so shared inputs keep it linear in the
# size of the answer, and a cycle (which production never makes) ends at the depth limit.
# It returns the links out of every lot reached (kind 0) and every lot reached with its
# item and status (kind 1); ``reached`` is materialised once for both.
_TRACE_SQL = """
WITH RECURSIVE walk(lot_id, depth) AS (
    SELECT id, 0 FROM material_lots WHERE id = :root
    UNION
    SELECT g.{far}, w.depth + 1
    FROM walk AS w JOIN material_genealogy AS g ON g.{near} = w.lot_id
    WHERE w.depth < :max_depth
),
reached AS (SELECT lot_id, MIN(depth) AS depth FROM walk GROUP BY lot_id)
SELECT 0 AS kind, r.depth, g.parent_lot_id, g.child_lot_id, g.batch_id, g.qty, g.uom
FROM reached AS r JOIN material_genealogy AS g ON g.{near} = r.lot_id
UNION ALL
SELECT 1, r.depth, r.lot_id, l.item_code, i.name, NULL, l.status
FROM reached AS r JOIN material_lots AS l ON l.id = r.lot_id JOIN material_items AS i ON i.code = l.item_code
"""
_TRACE_DIRECTIONS = {"backward": ("child_lot_id", "parent_lot_id"), "forward": ("parent_lot_id", "child_lot_id")}


def _trace_sql(direction: str, paramstyle: str) -> str:
    """The trace statement for the driver: sent as is (no SQL compiler, no Row objects;
    a trace returns thousands of rows and each object made is garbage to collect)."""
    near, far = _TRACE_DIRECTIONS[direction]
    mark = "?" if paramstyle == "qmark" else "%s"
    return _TRACE_SQL.format(near=near, far=far).replace(":root", mark).replace(":max_depth", mark)


@contextmanager
def _reading() -> Iterator[Session]:
    """The session for a read: on SQLite a transaction that does not take the write lock
    (unless the caller is already in one), ended afterwards if we started it."""
    session = db.session()
    started = not session.in_transaction()
    if started and db.engine.dialect.name == "sqlite":
        session.connection(execution_options={"mes_read_only": True})
    try:
        yield session
    finally:
        if started:
            session.rollback()


def _trace(lot_id: str, direction: str, max_depth: int) -> Trace:
    if direction not in _TRACE_DIRECTIONS:
        raise ValidationFailed("The direction is backward or forward.", field="direction")
    if not 1 <= max_depth <= 100:
        raise ValidationFailed("The depth limit is 1 to 100.", field="max_depth")
    with _reading() as session:
        conn = session.connection()
        rows = conn.exec_driver_sql(_trace_sql(direction, conn.dialect.paramstyle), (lot_id, max_depth)).fetchall()
        from_db = q.result_converter(conn.dialect.name)
    lots: dict[str, TraceLot] = {}
    walked: list[Any] = []
    truncated = False
    for row in rows:
        if row[0]:
            lots[row[2]] = TraceLot(row[2], row[3], row[4], row[6], row[1])
        elif row[1] < max_depth:
            walked.append(row)
        else:
            truncated = True
    if lot_id not in lots:
        raise NotFound(f"Lot {lot_id} is not known to the MES.")
    near, far = (3, 2) if direction == "backward" else (2, 3)
    walked.sort(key=lambda r: (r[1], r[near], r[far], r[4]))  # nearest first, then by lot and batch
    links = [TraceLink(r[2], r[3], r[4], from_db(r[5]), r[6]) for r in walked]
    return Trace(lots[lot_id], direction, max_depth, lots, links, truncated)


def trace_backward(lot_id: str, max_depth: int = MAX_TRACE_DEPTH) -> Trace:
    """Every lot that went into ``lot_id``, level by level, with quantities and batches."""
    return _trace(lot_id, "backward", max_depth)


def trace_forward(lot_id: str, max_depth: int = MAX_TRACE_DEPTH) -> Trace:
    """Every lot made from ``lot_id``, level by level (a recall's reach)."""
    return _trace(lot_id, "forward", max_depth)


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
            total = sum((c.remaining_qty for c in rows), Decimal(0))
            out["remaining"] = q.as_json(q.convert(total, q.storage_unit(item.base_uom), item.base_uom), item.base_uom)
        out["containers"] = [_container_json(c) for c in rows]
        out["holds"] = [hold_json(h) for h in holds_of(lot.id)]
        out["usability"] = check_usable(lot.id, item_code).as_json()
        out["batches_consuming_conditionally"] = batches_consuming_conditionally(lot.id)
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
            "qty": q.as_json(c.qty, c.uom), "batch_id": c.batch_id, "step_id": c.step_id,
            "work_order_id": c.work_order_id, "location": c.location, "conditional": c.conditional,
            "consumed_at": _iso(c.consumed_at), "consumed_by": c.consumed_by,
            "reversal": None if rev is None else {"id": rev.id, "reason": rev.reason, "reversed_at": _iso(rev.reversed_at),
                                                  "reversed_by": rev.reversed_by}}


def item_json(item: Item) -> dict[str, Any]:
    return {"code": item.code, "name": item.name, "kind": item.kind, "base_uom": item.base_uom,
            "shelf_life_days": item.shelf_life_days, "retest_days": item.retest_days, "active": item.active,
            "created_at": _iso(item.created_at)}
