"""Material master data and stock: items, lots, containers, holds, consumptions, genealogy.

Nothing here is ever deleted (database triggers refuse it). Consumptions, their reversals
and genealogy links are immutable as well: a reversal is a record of its own, at most one
per consumption (a unique key), and the quantity it gives back goes onto the container.

Container stock is kept in the storage unit of its dimension (g, mL, pcs; see
:mod:`mes.quantities`) and can never go below zero or above what was received:
CHECK constraints refuse it in the database, whatever the code does.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db, utcnow
from mes.quantities import PLACES_DEFAULT, Quantity, written


class ItemKind(str, enum.Enum):
    RAW_MATERIAL = "raw_material"
    API = "api"
    EXCIPIENT = "excipient"
    PACKAGING = "packaging"
    INTERMEDIATE = "intermediate"
    FINISHED_GOOD = "finished_good"


class LotStatus(str, enum.Enum):
    QUARANTINE = "quarantine"
    RELEASED = "released"
    REJECTED = "rejected"


class HoldScope(str, enum.Enum):
    CONSUMPTION = "consumption"
    SHIPMENT = "shipment"
    ALL = "all"


class HoldDisposition(str, enum.Enum):
    RELEASE = "release"
    CONDITIONAL_RELEASE = "conditional_release"
    REJECT = "reject"


def _in(column: str, values: type[enum.Enum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Item(db.Model):
    """A material master record (from ERP or entered here)."""

    __tablename__ = "material_items"
    __table_args__ = (
        CheckConstraint(_in("kind", ItemKind), name="kind"),
    )

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    # any material unit of the plant's units file: checked by create_item, not by a closed list here
    base_uom: Mapped[str] = mapped_column(String(8))
    shelf_life_days: Mapped[int | None]
    retest_days: Mapped[int | None]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))


class Lot(db.Model):
    """A lot of one item: received from a supplier or produced by a batch."""

    __tablename__ = "material_lots"
    __table_args__ = (
        CheckConstraint(_in("status", LotStatus), name="status"),
        Index("ix_material_lots_item_status", "item_code", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_code: Mapped[str] = mapped_column(ForeignKey("material_items.code"))
    status: Mapped[str] = mapped_column(String(16), default=LotStatus.QUARANTINE.value)
    supplier: Mapped[str | None] = mapped_column(String(200))
    supplier_lot: Mapped[str | None] = mapped_column(String(100), index=True)
    manufactured_date: Mapped[date | None] = mapped_column(Date)
    expiry_date: Mapped[date | None] = mapped_column(Date)
    retest_date: Mapped[date | None] = mapped_column(Date)
    produced_by_batch: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    status_changed_at: Mapped[datetime | None]
    status_changed_by: Mapped[str | None] = mapped_column(String(100))
    status_reason: Mapped[str | None] = mapped_column(Text)


class Container(db.Model):
    """A labelled container of a lot; ``id`` is the label. Stock is kept in ``storage_uom``."""

    __tablename__ = "material_containers"
    __table_args__ = (
        CheckConstraint("received_qty > 0", name="received_positive"),
        CheckConstraint("remaining_qty >= 0", name="remaining_not_negative"),
        CheckConstraint("remaining_qty <= received_qty", name="remaining_at_most_received"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lot_id: Mapped[str] = mapped_column(ForeignKey("material_lots.id"), index=True)
    uom: Mapped[str] = mapped_column(String(8))  # the unit on the label
    storage_uom: Mapped[str] = mapped_column(String(8))  # g | mL | pcs
    received_qty: Mapped[Decimal] = mapped_column(Quantity())
    remaining_qty: Mapped[Decimal] = mapped_column(Quantity())
    # decimals written on the label quantity (in ``uom``): stock is shown with as many
    received_places: Mapped[int] = mapped_column(SmallInteger, server_default=PLACES_DEFAULT)
    location: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Hold(db.Model):
    """A hold on a lot (QMS or QA); active until released with a disposition."""

    __tablename__ = "material_holds"
    __table_args__ = (
        CheckConstraint(_in("scope", HoldScope), name="scope"),
        CheckConstraint(f"disposition IS NULL OR {_in('disposition', HoldDisposition)}", name="disposition"),
        Index("ix_material_holds_lot_active", "lot_id", "released_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lot_id: Mapped[str] = mapped_column(ForeignKey("material_lots.id"))
    scope: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    ncr_id: Mapped[str | None] = mapped_column(String(64))
    placed_by: Mapped[str] = mapped_column(String(100))
    placed_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(100))
    released_at: Mapped[datetime | None]
    disposition: Mapped[str | None] = mapped_column(String(24))
    conditions: Mapped[str | None] = mapped_column(Text)
    release_reason: Mapped[str | None] = mapped_column(Text)
    conditions_met_at: Mapped[datetime | None]
    conditions_met_by: Mapped[str | None] = mapped_column(String(100))

    @property
    def active(self) -> bool:
        return self.released_at is None

    @property
    def blocks_consumption(self) -> bool:
        return self.active and self.scope in (HoldScope.CONSUMPTION.value, HoldScope.ALL.value)

    @property
    def conditional(self) -> bool:
        """Released under conditions that QA has not yet declared met."""
        return self.disposition == HoldDisposition.CONDITIONAL_RELEASE.value and self.conditions_met_at is None


class Consumption(db.Model):
    """Material taken from a container into a batch (ISA-95 MaterialActual, use "Consumed")."""

    __tablename__ = "material_consumptions"
    __table_args__ = (
        CheckConstraint("qty > 0", name="qty_positive"),
        CheckConstraint("deducted_qty > 0", name="deducted_positive"),
        Index("ix_material_consumptions_batch_lot", "batch_id", "lot_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    lot_id: Mapped[str] = mapped_column(ForeignKey("material_lots.id"), index=True)
    container_id: Mapped[str] = mapped_column(ForeignKey("material_containers.id"), index=True)
    item_code: Mapped[str] = mapped_column(String(64))
    qty_stored: Mapped[Decimal] = mapped_column("qty", Quantity())
    qty_places: Mapped[int] = mapped_column(SmallInteger, server_default=PLACES_DEFAULT)
    qty = written("qty_stored", "qty_places")  # as entered, places as written
    uom: Mapped[str] = mapped_column(String(8))
    deducted_qty: Mapped[Decimal] = mapped_column(Quantity())  # taken off the container
    storage_uom: Mapped[str] = mapped_column(String(8))
    batch_id: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str | None] = mapped_column(String(64))
    work_order_id: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[str | None] = mapped_column(String(64))
    conditional: Mapped[bool] = mapped_column(default=False)
    conditional_hold_id: Mapped[str | None] = mapped_column(String(64))
    consumed_at: Mapped[datetime] = mapped_column(default=utcnow)
    consumed_by: Mapped[str] = mapped_column(String(100))


class ConsumptionReversal(db.Model):
    """The one reversal a consumption may have: explicit, with a reason."""

    __tablename__ = "material_consumption_reversals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consumption_id: Mapped[str] = mapped_column(ForeignKey("material_consumptions.id"), unique=True)
    restored_qty: Mapped[Decimal] = mapped_column(Quantity())
    storage_uom: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    reversed_at: Mapped[datetime] = mapped_column(default=utcnow)
    reversed_by: Mapped[str] = mapped_column(String(100))


class GenealogyLink(db.Model):
    """Lot ``parent_lot_id`` went into lot ``child_lot_id`` in batch ``batch_id``: ``qty`` ``uom``
    of the parent lot consumed by that batch. Immutable."""

    __tablename__ = "material_genealogy"
    __table_args__ = (
        UniqueConstraint("child_lot_id", "parent_lot_id", "batch_id", name="uq_material_genealogy_link"),
        Index("ix_material_genealogy_parent_child", "parent_lot_id", "child_lot_id"),
        CheckConstraint("parent_lot_id <> child_lot_id", name="not_self"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    parent_lot_id: Mapped[str] = mapped_column(ForeignKey("material_lots.id"))
    child_lot_id: Mapped[str] = mapped_column(ForeignKey("material_lots.id"))
    batch_id: Mapped[str] = mapped_column(String(64))
    qty_stored: Mapped[Decimal] = mapped_column("qty", Quantity())
    qty_places: Mapped[int] = mapped_column(SmallInteger, server_default=PLACES_DEFAULT)
    qty = written("qty_stored", "qty_places")  # places as the consumptions were written
    uom: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


IMMUTABLE_TABLES = ("material_consumptions", "material_consumption_reversals", "material_genealogy")
UNDELETABLE_TABLES = ("material_items", "material_lots", "material_containers", "material_holds")
