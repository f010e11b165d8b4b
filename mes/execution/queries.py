"""Read-only queries over the execution records, for screens (the kiosk) and reports.

Nothing here writes, locks or commits: each function reads in the caller's session and
returns model rows or plain values. Every change goes through
:mod:`mes.execution.operations`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from mes.db import db
from mes.execution.models import Batch, BatchStatus, WorkOrder, WorkOrderStatus
from mes.materials.models import Container

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
