"""Batches and the ordering of their steps: the locked reads of the completion path, the
control recipe, starting a batch, and the rules that say which step may be done now
(predecessors completed, :func:`blocks`: no open major/critical deviation before it).

Step state is stored and recomputed after each change by :func:`_refresh` (``pending`` /
``ready`` / ``blocked``; ``in_progress`` and ``completed`` are set by the step actions).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert, select

from mes.audit.log import Actor, Event, record
from mes.db import as_utc, db, driver_queries
from mes.errors import Conflict, NotFound
from mes.execution import common, recipes_store
from mes.execution.common import (
    BLOCKING,
    WORK_ORDER_STARTED,
    StepBlocked,
    StepNotReady,
    _at,
    _locked,
    _new_id,
)
from mes.execution.models import (
    Batch,
    BatchStatus,
    BatchStep,
    Deviation,
    DeviationStatus,
    StepRecord,
    StepRequest,
    StepState,
    WorkOrder,
    WorkOrderStatus,
)
from mes.execution.work_orders import _wo_transition
from mes.quantities import result_converter, to_text, with_places
from mes.recipes.scaling import ControlRecipe, recipe_hash, scale
from mes.users.operations import check_terminal_line
from mes.validation import get_or_404


@dataclass(slots=True)
class OpenStep:
    """A step not completed yet, as the completion path reads it (Core, no identity map).

    Same attribute names as :class:`BatchStep`, so the ordering rules and the step handlers
    take either; its changes are written back by :func:`_write_step_changes`."""

    id: str
    batch_id: str
    step_id: str
    seq: int
    kind: str
    title: str
    up_index: int
    stage_index: int
    op_index: int
    step_index: int
    state: str
    attempt: int
    version: int
    started_at: datetime | None
    completed_at: datetime | None = None
    completed_by: str | None = None
    result: dict[str, Any] | None = None


_OPEN_STEP_COLUMNS = ("id", "batch_id", "step_id", "seq", "kind", "title", "up_index", "stage_index", "op_index",
                      "step_index", "state", "attempt", "version", "started_at")


@functools.cache
def _stmt(name: str) -> Any:
    """The completion path's statements, built once: SQLAlchemy then finds each compiled
    form by the statement object's memoised cache key instead of rebuilding the statement
    and its key on every request (values go in as bound parameters)."""
    s = BatchStep.__table__
    if name == "write_step":
        return s.update().where(s.c.id == bindparam("b_id")).values(
            state=bindparam("b_state"), version=bindparam("b_version"), started_at=bindparam("b_started_at"),
            completed_at=bindparam("b_completed_at"), completed_by=bindparam("b_completed_by"),
            result=bindparam("b_result", type_=s.c.result.type))
    if name == "move_step":
        return s.update().where(s.c.id == bindparam("b_id")).values(state=bindparam("b_state"))
    if name == "insert_request":
        return insert(StepRequest.__table__)
    if name == "insert_records":
        return insert(StepRecord.__table__)
    raise KeyError(name)


@dataclass(frozen=True, slots=True)
class LockedBatch:
    """The batch row as the completion path reads it, under its lock (not the control
    recipe document: the engine uses the cached control recipe, checked by hash)."""

    id: str
    work_order_id: str
    recipe_version_id: str
    recipe_hash: str
    batch_size: Decimal  # places as written
    unit: str
    status: str
    line: str | None
    version: int


@dataclass(frozen=True, slots=True)
class Blocker:
    """A deviation that may block steps (an open one), as the completion path reads it;
    :func:`blocks` decides whether it does."""

    id: str
    severity: str
    description: str
    step_seq: int | None
    status: str


#: What the ordering rules and the step handlers take: the ORM rows, or what the
#: completion path reads through the driver (same attribute names).
BatchLike = Batch | LockedBatch
StepLike = BatchStep | OpenStep
BlockerLike = Deviation | Blocker
B = TypeVar("B", Deviation, Blocker)


#: The candidates :func:`blocks` looks at on the completion path: the batch's open deviations
#: (the rule itself is Python's, in one place).
_BLOCKERS_SQL = "SELECT id, severity, description, step_seq, status FROM deviations WHERE batch_id = ? AND status = ?"
_READ_FOR_COMPLETION = (
    "SELECT id, work_order_id, recipe_version_id, recipe_hash, batch_size, unit, status, line, version, batch_size_places "
    "FROM batches WHERE id = ?",
    f"SELECT {', '.join(_OPEN_STEP_COLUMNS)} FROM batch_steps "
    f"WHERE batch_id = ? AND state <> '{StepState.COMPLETED.value}' ORDER BY seq",
    _BLOCKERS_SQL,
)


def _read_for_completion(batch_id: str) -> tuple[LockedBatch, list[OpenStep], list[Blocker]]:
    """Lock the batch row, then read its open steps and its open deviations.

    Three statements in one round trip on PostgreSQL (:func:`~mes.db.driver_queries`: the
    reads see everything committed before the lock was granted)."""
    db.session.flush()
    conn = db.session.connection()
    lock_sql, steps_sql, blockers_sql = _READ_FOR_COMPLETION
    if conn.dialect.name == "postgresql":
        lock_sql += " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE already holds the one write lock
    found, steps, blockers = driver_queries(conn, [(lock_sql, (batch_id,)), (steps_sql, (batch_id,)),
                                                   (blockers_sql, (batch_id, DeviationStatus.OPEN.value))])
    if not found:
        raise NotFound(f"Batch {batch_id} is not known.")
    row = found[0]
    size = with_places(result_converter(conn.dialect.name)(row[4]), row[-1])
    return (LockedBatch(*row[:4], size, *row[5:-1]), [OpenStep(*row[:-1], as_utc(row[-1])) for row in steps],
            [Blocker(*row) for row in blockers])


_CONTROL: dict[str, ControlRecipe] = {}


def control_recipe(batch: BatchLike) -> ControlRecipe:
    """The frozen control recipe of a batch (rebuilt from its master and size, checked by hash)."""
    cached = _CONTROL.get(batch.recipe_hash)
    if cached is None:
        rv = recipes_store.get_version(batch.recipe_version_id)
        cached = scale(recipes_store.master_of(rv), Decimal(batch.batch_size), batch.unit)
        if recipe_hash(cached.to_dict()) != batch.recipe_hash:
            raise Conflict(f"The control recipe of batch {batch.id} no longer matches its stored hash.")
        _CONTROL[batch.recipe_hash] = cached
    return cached


def get_batch(batch_id: str) -> Batch:
    """The batch ``batch_id`` (NotFound if none)."""
    return get_or_404(Batch, batch_id, "Batch")


def steps_of(batch_id: str, *, fresh: bool = False) -> list[BatchStep]:
    """The batch's steps in document order; ``fresh`` re-reads rows already in the session."""
    stmt = select(BatchStep).where(BatchStep.batch_id == batch_id).order_by(BatchStep.seq)
    if fresh:
        stmt = stmt.execution_options(populate_existing=True)
    return list(db.session.execute(stmt).scalars())


def _step_writes(step: OpenStep, rows: list[OpenStep], states_before: dict[str, str]) -> list[tuple[Any, Any]]:
    """The statements that write the completed (or recorded) step and the states the
    refresh changed; the batch row lock serialises every change of the batch's steps, so
    the step is written as read under it."""
    writes: list[tuple[Any, Any]] = [(_stmt("write_step"), {
        "b_id": step.id, "b_state": step.state, "b_version": step.version, "b_started_at": step.started_at,
        "b_completed_at": step.completed_at, "b_completed_by": step.completed_by, "b_result": step.result})]
    moved = [{"b_id": r.id, "b_state": r.state} for r in rows if r is not step and r.state != states_before[r.id]]
    if moved:
        writes.append((_stmt("move_step"), moved))
    return writes


def get_step(batch_id: str, step_id: str) -> BatchStep:
    """The step ``step_id`` of batch ``batch_id`` (NotFound if none)."""
    step = db.session.get(BatchStep, f"{batch_id}:{step_id}")
    if step is None:
        raise NotFound(f"Batch {batch_id} has no step {step_id}.")
    return step


def start_batch(actor: Actor, work_order_id: str, *, batch_id: str | None = None) -> Batch:
    """Start a batch for a dispatched work order: freeze the control recipe and create the steps."""
    wo = _locked(WorkOrder, work_order_id)
    if wo.status != WorkOrderStatus.DISPATCHED.value:
        raise Conflict(f"Work order {wo.id} is {wo.status}; a batch starts only from a dispatched work order.")
    check_terminal_line(actor.terminal, wo.line)
    rv = recipes_store.usable_version(wo.recipe_version_id)
    control = scale(recipes_store.master_of(rv), Decimal(wo.quantity), wo.unit)
    data = control.to_dict()
    h = recipe_hash(data)
    _CONTROL.setdefault(h, control)
    batch_id = batch_id or _new_id("B")
    if db.session.get(Batch, batch_id) is not None:
        raise Conflict(f"Batch {batch_id} exists already.")
    now = common.clock()
    batch = Batch(id=batch_id, work_order_id=wo.id, recipe_version_id=rv.id, control_recipe=data, recipe_hash=h,
                  batch_size=wo.quantity, unit=wo.unit, status=BatchStatus.IN_PROGRESS.value, line=wo.line, version=1,
                  created_at=now, created_by=actor.id)
    db.session.add(batch)
    db.session.flush()
    rows = []
    for seq, ref in enumerate(control.steps()):
        rows.append(BatchStep(id=f"{batch_id}:{ref.step.id}", batch_id=batch_id, step_id=ref.step.id, seq=seq,
                              kind=ref.step.kind, title=ref.step.title[:300], up_index=ref.up_index,
                              stage_index=ref.stage[1], op_index=ref.op_index, step_index=ref.index,
                              state=StepState.PENDING.value, attempt=1, version=1))
    db.session.add_all(rows)
    db.session.flush()
    ready = _refresh(batch, rows, [])
    _wo_transition(actor, wo, (WorkOrderStatus.DISPATCHED.value,), WorkOrderStatus.IN_PROGRESS, "work_order.started",
                   extra={"batch": batch_id},
                   event=Event(WORK_ORDER_STARTED, "work_order", wo.id,
                               {"work_order_id": wo.id, "erp_ref": wo.erp_ref, "item": wo.item,
                                "planned_qty": {"value": to_text(wo.quantity), "uom": wo.unit}, "line": wo.line,
                                "batch_id": batch_id, "started_at": _at(now)}, correlation_id=wo.id, time=now))
    record(actor, "batch.started", ("batch", batch_id), batch=batch_id,
           after={"work_order": wo.id, "recipe_version": rv.id, "recipe_hash": h, "batch_size": to_text(wo.quantity),
                  "unit": wo.unit, "steps": len(rows), "status": batch.status, "ready": ready})
    db.session.commit()
    return batch


def _blocking_deviations(batch_id: str) -> list[Blocker]:
    """The batch's open deviations: the candidates :func:`blocks` decides on."""
    db.session.flush()  # a driver read does not autoflush: see deviations raised or closed in this transaction
    [rows] = driver_queries(db.session.connection(), [(_BLOCKERS_SQL, (batch_id, DeviationStatus.OPEN.value))])
    return [Blocker(*row) for row in rows]


def blocks(deviation: BlockerLike, step: StepLike) -> bool:
    """The plant rule "a major/critical open deviation blocks the next step", in its one place.

    An open major or critical deviation blocks every step after the one it was raised on;
    one raised on the whole batch blocks every step. It does not block its own step: the
    refused entry recorded nothing and may be done again correctly (QA may still order the
    step repeated). So a deviation on the last step blocks no step; like every open
    deviation it still blocks review and release (:func:`~mes.execution.release.release_blockers`)."""
    return (deviation.status == DeviationStatus.OPEN.value and deviation.severity in BLOCKING
            and (deviation.step_seq is None or deviation.step_seq < step.seq))


def blocker_of(step: StepLike, deviations: Iterable[B]) -> B | None:
    """The first of ``deviations`` that :func:`blocks` ``step``, or None."""
    return next((d for d in deviations if blocks(d, step)), None)


def blocks_any(deviation: BlockerLike, steps: Iterable[StepLike]) -> bool:
    """Whether ``deviation`` :func:`blocks` one of ``steps`` still to be done (not completed)."""
    return any(blocks(deviation, s) for s in steps if s.state != StepState.COMPLETED.value)


def _precedes(a: StepLike, b: StepLike) -> bool:
    """Whether step ``a`` comes before ``b`` (earlier in its operation, or an earlier stage)."""
    if (a.up_index, a.op_index) == (b.up_index, b.op_index):
        return a.step_index < b.step_index
    return (a.up_index, a.stage_index) < (b.up_index, b.stage_index)


def open_predecessors(step: StepLike, rows: Sequence[StepLike]) -> list[StepLike]:
    """The steps of ``rows`` that come before ``step`` and are not completed."""
    return [r for r in rows if r.state != StepState.COMPLETED.value and _precedes(r, step)]


def _refresh(batch: BatchLike, rows: Sequence[StepLike], blockers: Sequence[BlockerLike] | None = None) -> list[str]:
    """Recompute pending/ready/blocked; returns the ids of steps that became ready."""
    if blockers is None:
        blockers = _blocking_deviations(batch.id)
    # a step is free when all steps of earlier (unit procedure, stage) groups and the earlier
    # steps of its own operation are completed
    open_groups = sorted({(r.up_index, r.stage_index) for r in rows if r.state != StepState.COMPLETED.value})
    first_open = open_groups[0] if open_groups else None
    first_open_in_op: dict[tuple[int, int], int] = {}
    for r in rows:
        if r.state != StepState.COMPLETED.value:
            key = (r.up_index, r.op_index)
            first_open_in_op[key] = min(first_open_in_op.get(key, r.step_index), r.step_index)
    became_ready = []
    for r in rows:
        if r.state in (StepState.COMPLETED.value, StepState.IN_PROGRESS.value):
            continue
        free = ((r.up_index, r.stage_index) <= first_open if first_open else True) \
            and first_open_in_op.get((r.up_index, r.op_index)) == r.step_index
        new = StepState.PENDING.value
        if free:
            new = StepState.BLOCKED.value if blocker_of(r, blockers) else StepState.READY.value
        if new != r.state:
            if new == StepState.READY.value:
                became_ready.append(r.step_id)
            r.state = new
    return became_ready


def _check_can_act(batch: BatchLike, step: StepLike, rows: Sequence[StepLike],
                   blockers: Sequence[BlockerLike] | None = None) -> None:
    """Refuse to act on ``step`` of ``batch`` unless it is its turn and nothing blocks it."""
    if batch.status != BatchStatus.IN_PROGRESS.value:
        raise Conflict(f"Batch {batch.id} is {batch.status}; its steps cannot be done.")
    if step.state == StepState.COMPLETED.value:
        raise Conflict(f"Step {step.step_id} is already completed.", step_state=step.state)
    before = open_predecessors(step, rows)
    if before:
        names = ", ".join(r.step_id for r in before[:5]) + (" …" if len(before) > 5 else "")
        raise StepNotReady(f"Step {step.step_id} cannot be done before the steps that come first: {names}.",
                           open_predecessors=[r.step_id for r in before])
    blocker = blocker_of(step, _blocking_deviations(batch.id) if blockers is None else blockers)
    if blocker is not None:
        raise StepBlocked(f"Step {step.step_id} is blocked by open {blocker.severity} deviation {blocker.id} "
                          f"({blocker.description}); QA must disposition it first.", deviation_id=blocker.id)
