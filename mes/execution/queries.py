"""Read-only queries over the execution records, for screens (the kiosk) and reports.

Nothing here writes, locks or commits: each function reads in the caller's session and
returns model rows or plain values. Every change goes through
:mod:`mes.execution.operations`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, select

from mes.db import db
from mes.execution.models import Batch, BatchStatus, Deviation, DeviationStatus, WorkOrder, WorkOrderStatus
from mes.materials.models import Container, Hold, Lot

ACTIVE_ORDER_STATES: tuple[str, ...] = (WorkOrderStatus.DISPATCHED.value, WorkOrderStatus.IN_PROGRESS.value)


def active_lines() -> set[str]:
    """Lines with work: a work order dispatched to them or in progress there, or a running batch."""
    found = set(db.session.execute(select(WorkOrder.line).where(
        WorkOrder.status.in_(ACTIVE_ORDER_STATES), WorkOrder.line.is_not(None))).scalars())
    found |= set(db.session.execute(select(Batch.line).where(
        Batch.status == BatchStatus.IN_PROGRESS.value, Batch.line.is_not(None))).scalars())
    return {str(line) for line in found}


def dispatched_orders(line: str) -> list[WorkOrder]:
    """Work orders dispatched to ``line`` and not started yet (the only ones that may start a
    batch), earliest due date first."""
    return list(db.session.execute(select(WorkOrder).where(
        WorkOrder.line == line, WorkOrder.status == WorkOrderStatus.DISPATCHED.value)
        .order_by(WorkOrder.due_date, WorkOrder.id)).scalars())


def batches_on_line(line: str, statuses: Iterable[str] = (BatchStatus.IN_PROGRESS.value,)) -> list[Batch]:
    """Batches on ``line`` in one of ``statuses`` (default: running), oldest first."""
    return list(db.session.execute(select(Batch).where(Batch.line == line, Batch.status.in_(tuple(statuses)))
                                   .order_by(Batch.created_at, Batch.id)).scalars())


def container_by_label(label: str) -> Container | None:
    """The material container whose label (its id) is ``label``; None for any other label (a lot's)."""
    label = label.strip()
    return db.session.get(Container, label) if label else None


# ------------------------------------------------------------------ QA workstation lists

SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2}


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows, the total matching, the page number and size."""

    rows: list[Any]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _paged(q: Any, page: int, per_page: int) -> Page:
    total = db.session.execute(select(func.count()).select_from(q.order_by(None).subquery())).scalar() or 0
    rows = list(db.session.execute(q.limit(per_page).offset((page - 1) * per_page)).scalars())
    return Page(rows, int(total), page, per_page)


def _day_bounds(since: date | None, until: date | None, column: Any) -> list[Any]:
    out = []
    if since is not None:
        out.append(column >= datetime.combine(since, time.min, UTC))
    if until is not None:
        out.append(column < datetime.combine(until + timedelta(days=1), time.min, UTC))
    return out


def list_batches(*, status: str | None = None, product: str | None = None, line: str | None = None,
                 since: date | None = None, until: date | None = None, page: int = 1, per_page: int = 50) -> Page:
    """Batches, newest first, by state, product (the work order's item), line and start date (UTC days)."""
    q = select(Batch).join(WorkOrder, WorkOrder.id == Batch.work_order_id)
    if status:
        q = q.where(Batch.status == status)
    if product:
        q = q.where(WorkOrder.item == product)
    if line:
        q = q.where(Batch.line == line)
    q = q.where(*_day_bounds(since, until, Batch.created_at))
    return _paged(q.order_by(Batch.created_at.desc(), Batch.id.desc()), page, per_page)


def product_of(batch: Batch) -> str:
    """The product (item code) the batch makes."""
    return str(db.session.get(WorkOrder, batch.work_order_id).item)  # type: ignore[union-attr]


def list_work_orders(*, status: str | None = None, product: str | None = None, line: str | None = None,
                     page: int = 1, per_page: int = 50) -> Page:
    """Work orders, newest first, by state, product and line."""
    q = select(WorkOrder)
    if status:
        q = q.where(WorkOrder.status == status)
    if product:
        q = q.where(WorkOrder.item == product)
    if line:
        q = q.where(WorkOrder.line == line)
    return _paged(q.order_by(WorkOrder.created_at.desc(), WorkOrder.id.desc()), page, per_page)


def list_deviations(*, status: str | None = None, severity: str | None = None, batch: str | None = None,
                    page: int = 1, per_page: int = 50) -> Page:
    """Deviations: open first, then by severity (critical first), then oldest first."""
    q = select(Deviation)
    if status:
        q = q.where(Deviation.status == status)
    if severity:
        q = q.where(Deviation.severity == severity)
    if batch:
        q = q.where(Deviation.batch_id == batch)
    rank = case(SEVERITY_ORDER, value=Deviation.severity, else_=3)
    open_first = case((Deviation.status == DeviationStatus.OPEN.value, 0), else_=1)
    return _paged(q.order_by(open_first, rank, Deviation.raised_at, Deviation.id), page, per_page)


def lots_on_hold(*, item: str | None = None, page: int = 1, per_page: int = 50) -> Page:
    """Active holds on lots (with their lot), oldest hold first."""
    q = select(Hold).join(Lot, Lot.id == Hold.lot_id).where(Hold.released_at.is_(None))
    if item:
        q = q.where(Lot.item_code == item)
    return _paged(q.order_by(Hold.placed_at, Hold.id), page, per_page)
