"""Items, lots and their QA status, holds, and whether a lot may be used
(:func:`check_usable`, the one answer the kiosk, the API and the engine get).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import and_, exists, or_, select

from mes import quantities as q
from mes.audit.log import Actor, record
from mes.db import db, utcnow
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.materials.common import (
    _append_lock_first,
    _commit,
    _iso,
    _locked,
    _quantity,
    _same_dimension,
    _short,
    _to_storage,
)
from mes.materials.models import (
    Container,
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
from mes.verdict import Verdict

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


UNIT_MAX = 8
"""The longest unit symbol material records keep (their ``uom`` columns are 8 characters)."""


def base_unit(unit: object) -> str:
    """An item's base unit: a unit of mass, volume or count known to the plant's units (the
    shipped file and ``MES_UNITS_FILE``). The database keeps no list of units, so a plant's
    own unit (a box, a cubic metre) can be one; this is where the unit is checked."""
    if not isinstance(unit, str) or not unit.strip():
        raise ValidationFailed("The base unit is required.", field="base_uom")
    if unit in q.MATERIAL_UNITS and len(unit) > UNIT_MAX:
        raise ValidationFailed(f"The base unit {unit} is longer than {UNIT_MAX} characters, the most a material "
                               f"record keeps; give it a shorter symbol in the units file.", field="base_uom")
    if unit in q.MATERIAL_UNITS:
        return unit
    units = ", ".join(q.MATERIAL_UNITS)
    if unit in q.UNITS:
        raise ValidationFailed(f"The base unit {unit} measures {q.dimension(unit)}; an item is counted in a unit "
                               f"of mass, volume or count: {units}.", field="base_uom")
    hint = q.suggest_unit(unit)
    meant = f" Did you mean {hint}?" if hint in q.MATERIAL_UNITS else ""
    raise ValidationFailed(f"The base unit {unit!r} is not a known unit.{meant} An item is counted in one of "
                           f"{units}; a plant adds its own units in its units file (MES_UNITS_FILE).",
                           field="base_uom")


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
    base_uom = base_unit(base_uom)
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


def container_received(container: Container) -> Decimal:
    """What the container was received with, in the unit on its label, places as written."""
    exact = q.convert(container.received_qty, container.storage_uom, container.uom)
    return q.with_places(exact, container.received_places or 0)


def container_remaining(container: Container) -> Decimal:
    """What is left in the container, in the unit on its label (exact), with at least the
    places its received quantity was written with (``50.00`` kg stays ``50.00``)."""
    exact = q.convert(container.remaining_qty, container.storage_uom, container.uom)
    return q.with_places(exact, container.received_places or 0)


def stock_in(rows: Sequence[Container], unit: str) -> Decimal:
    """What is left over ``rows`` in ``unit`` (exact), with at least the places the largest
    written received quantity has in ``unit`` (50.00 kg + 20.0 kg -> ``70.00`` kg)."""
    storage = q.storage_unit(unit)
    total = sum((c.remaining_qty for c in rows), Decimal(0))
    places = max((q.decimal_places(q.convert(container_received(c), c.uom, unit)) for c in rows), default=0)
    return q.with_places(q.convert(total, storage, unit), places)


def lot_remaining(lot_id: str) -> tuple[Decimal, str]:
    """What is left of the lot over all its containers, in the item's base unit (exact),
    places as written (see :func:`stock_in`)."""
    lot = get_lot(lot_id)
    item = get_item(lot.item_code)
    return stock_in(containers_of(lot_id), item.base_uom), item.base_uom


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
                     remaining_qty=stored, received_places=q.decimal_places(amount), created_at=utcnow(),
                     location=optional_text(spec.location, "The location", f"containers/{index}/location") or location)


def _container_json(c: Container) -> dict[str, Any]:
    return {"id": c.id, "received": q.as_json(container_received(c), c.uom, keep_places=True),
            "remaining": q.as_json(container_remaining(c), c.uom, keep_places=True), "location": c.location}


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
    if expiry_date is not None and plant_date(now) > expiry_date:
        raise Conflict(f"The lot expired on {expiry_date.isoformat()}; an expired lot is not received. "
                       "Send it back to the supplier.", expiry_date=expiry_date.isoformat())
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


def lot_record(lot_id: str) -> dict[str, Any]:
    """What QA signs when releasing or rejecting a lot (the e-signature record provider
    ``lot``): the lot's identity, dates and origin, not its status, which the signature changes."""
    lot = get_lot(lot_id)
    return {"lot": lot.id, "item": lot.item_code, "supplier": lot.supplier, "supplier_lot": lot.supplier_lot,
            "manufactured_date": _iso(lot.manufactured_date), "expiry_date": _iso(lot.expiry_date),
            "retest_date": _iso(lot.retest_date), "produced_by_batch": lot.produced_by_batch}


def lot_signatures(lot_id: str) -> list[dict[str, Any]]:
    """QA's e-signatures on the lot, each as shown (Part 11 §11.50: printed name, date and time
    with zone, meaning) with its comment and whether it still verifies against the lot."""
    import json

    from mes.audit.models import AuditEntry
    from mes.signatures import operations as esig

    current = esig.record_hash(lot_record(lot_id))
    out = []
    for row in db.session.execute(select(AuditEntry).where(
            AuditEntry.action == "esig.signed", AuditEntry.entity_type == "lot",
            AuditEntry.entity_id == lot_id).order_by(AuditEntry.seq)).scalars():
        entry = json.loads(row.entry_bytes)
        check = esig.check_entry(entry, current)
        out.append({"signer": check.signer, "name": check.name, "meaning": check.meaning, "at": check.at,
                    "role": entry["actor"]["role"], "comment": (entry.get("after") or {}).get("comment"),
                    "valid": check.valid})
    return out


def _expired(lot: Lot, at: datetime | None = None) -> bool:
    """Whether the lot is past its expiry date (judged by the plant's local date)."""
    return lot.expiry_date is not None and plant_date(at or utcnow()) > lot.expiry_date


def _set_status(actor: Actor, lot: Lot, new: LotStatus, reason: str, action: str,
                extra: dict[str, Any] | None = None) -> None:
    old = lot.status
    lot.status = new.value
    lot.status_changed_at = utcnow()
    lot.status_changed_by = actor.id
    lot.status_reason = reason
    record(actor, action, ("lot", lot.id), before={"status": old}, after={"status": new.value, **(extra or {})},
           reason=reason)


def _signed_status_change(session_row: Any, credentials: Any, lot_id: str, new: LotStatus, reason: str, action: str,
                          terminal: str | None, acknowledged: bool) -> Lot:
    """QA's e-signed disposition of a lot (meaning ``released`` or ``rejected``, the reason as
    the signature's comment), refused for a lot whose status its batch decides."""
    from mes.signatures import operations as esig
    from mes.users.operations import actor_for
    from mes.users.permissions import Permission

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
    if new == LotStatus.RELEASED:
        _check_releasable_by_hand(lot)
    meaning = "released" if new == LotStatus.RELEASED else "rejected"
    user = esig.signing_session(session_row).user
    esig.sign(session_row, credentials, "lot", lot.id, meaning, role="qa", terminal=terminal,
              permission=Permission.MATERIAL_RELEASE, comment=reason, acknowledged=acknowledged, commit=False)
    _set_status(actor_for(user, "qa", terminal), lot, new, reason, action, {"esig_meaning": meaning})
    return lot


def _check_releasable_by_hand(lot: Lot) -> None:
    """A lot the plant made is released by its batch's disposition, never by hand; an expired
    lot is never released."""
    if lot.produced_by_batch is not None:
        from mes.execution.models import Batch, BatchStatus  # the record of the batch that made it

        batch = db.session.get(Batch, lot.produced_by_batch)
        if batch is not None and batch.status != BatchStatus.RELEASED.value:
            raise Conflict(f"Lot {lot.id} was made by batch {batch.id}, which is {batch.status}: the lot is released "
                           "with the batch's disposition, not by hand.", batch=batch.id, batch_status=batch.status)
    if _expired(lot):
        assert lot.expiry_date is not None
        raise Conflict(f"Lot {lot.id} expired on {lot.expiry_date.isoformat()}; an expired lot is not released.",
                       expiry_date=lot.expiry_date.isoformat())


def release_lot(session_row: Any, credentials: Any, lot_id: str, reason: str, *, terminal: str | None,
                acknowledged: bool = False) -> Lot:
    """QA releases a lot from quarantine with an e-signature (meaning ``released``, the reason
    as its comment). Refused for an expired lot and for a lot the plant made (its batch's
    disposition releases it: :func:`dispose_produced_lot`)."""
    lot = _signed_status_change(session_row, credentials, lot_id, LotStatus.RELEASED, reason,
                                "material.lot.released", terminal, acknowledged)
    _commit(f"Lot {lot_id} changed at the same moment; reload and try again.")
    return lot


def reject_lot(session_row: Any, credentials: Any, lot_id: str, reason: str, *, terminal: str | None,
               acknowledged: bool = False) -> Lot:
    """QA rejects a lot (from quarantine or after release) with an e-signature; final."""
    lot = _signed_status_change(session_row, credentials, lot_id, LotStatus.REJECTED, reason,
                                "material.lot.rejected", terminal, acknowledged)
    _commit(f"Lot {lot_id} changed at the same moment; reload and try again.")
    return lot


def dispose_produced_lot(actor: Actor, lot_id: str, batch_id: str, disposition: str, reason: str | None,
                         conditions: str | None = None) -> Lot:
    """The batch's disposition carried to the lot it made, in the release's transaction (no
    commit): ``released`` releases it, ``conditionally_released`` releases it under the
    conditions (a conditional release that flags every consuming batch until QA declares
    them met), ``rejected`` rejects it."""
    _append_lock_first()
    lot = _locked(select(Lot).where(Lot.id == lot_id))
    if lot is None:
        raise NotFound(f"Lot {lot_id} is not known to the MES.")
    if lot.produced_by_batch != batch_id:
        raise Conflict(f"Lot {lot_id} was not made by batch {batch_id}.")
    why = reason or f"Disposition of batch {batch_id}: {disposition.replace('_', ' ')}"
    if disposition == "rejected":
        if lot.status != LotStatus.REJECTED.value:
            _set_status(actor, lot, LotStatus.REJECTED, why, "material.lot.rejected", {"batch": batch_id})
        return lot
    if lot.status == LotStatus.REJECTED.value:
        raise Conflict(f"Lot {lot_id} was rejected; a rejected lot is never released again.")
    if lot.status != LotStatus.RELEASED.value:
        _set_status(actor, lot, LotStatus.RELEASED, why, "material.lot.released",
                    {"batch": batch_id, "disposition": disposition, "conditions": conditions})
    if disposition == "conditionally_released":
        now = utcnow()
        hold = Hold(id=f"H-{uuid.uuid4().hex[:10].upper()}", lot_id=lot.id, scope=HoldScope.ALL.value,
                    reason=f"Batch {batch_id} released under conditions", placed_by=actor.id, placed_at=now,
                    released_at=now, released_by=actor.id, disposition=HoldDisposition.CONDITIONAL_RELEASE.value,
                    conditions=conditions, release_reason=why)
        db.session.add(hold)
        record(actor, "material.hold.released", ("lot", lot.id), before=None,
               after={**_hold_json(hold), "active": False, "batch": batch_id}, reason=why)
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
class Usability(Verdict):
    """Whether a lot may be consumed now, and if not the sentence that says why.

    ``code`` is one of ``ok``, ``unknown_lot``, ``wrong_item``, ``rejected``, ``quarantine``,
    ``expired``, ``retest_due``, ``on_hold``, ``empty``. ``conditional`` marks a lot that
    may be used under a conditional release: the consuming batch will be flagged.
    """

    json_fields: ClassVar[tuple[str, ...]] = ("code", "reason", "conditional", "hold_id", "ncr_id")

    lot_id: str
    code: str
    reason: str
    conditional: bool = False
    hold_id: str | None = None
    ncr_id: str | None = None


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
