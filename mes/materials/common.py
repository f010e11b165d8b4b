"""Shared by the materials service: its outbox event types, errors and small helpers
(quantities in a lot's storage unit, committing, the append-lock-first row locks).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mes import quantities as q
from mes.audit.canonical import format_at
from mes.audit.log import ADVISORY_LOCK_KEY
from mes.db import db
from mes.errors import Conflict, ValidationFailed

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
