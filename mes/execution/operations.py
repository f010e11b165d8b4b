"""The batch execution engine: work orders, batches, steps, deviations, corrections,
review by exception and release.

Every change is one transaction with its audit entry (and outbox event where events.md
names one). Functions take the acting :class:`~mes.audit.log.Actor` (and, to sign, the
user's session row and :class:`~mes.signatures.operations.Credentials`) explicitly; the
API, the kiosk and the CLI are thin shells.

Ordering (Part 11 §11.10(f)): a step may be started, completed or signed only when every
step that precedes it in the control recipe (:meth:`MasterRecipe.precedes`: earlier in its
operation, or in an earlier stage) is completed, and no open major/critical deviation of
an earlier step (or of the whole batch) blocks it. Step state is stored and recomputed
after each change (``pending`` / ``ready`` / ``blocked``; ``in_progress`` and
``completed`` are set by the step actions).

Concurrency: every mutating call locks the batch row, then the step row (``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), checks the
caller's ``expected_version`` and the idempotency key *after* taking the lock, so of two
terminals racing on one step exactly one wins and the other gets :class:`Conflict`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from mes.audit import canonical
from mes.audit.log import Actor, Event, record
from mes.audit.models import AuditEntry, AuditReview
from mes.db import as_utc, db, driver_queries, utcnow
from mes.equipment import operations as equipment
from mes.equipment.labels import confirm_labels
from mes.errors import Conflict, Forbidden, MESError, NotFound, ValidationFailed
from mes.execution import recipes_store
from mes.execution.models import (
    Batch,
    BatchStatus,
    BatchStep,
    Deviation,
    Disposition,
    Severity,
    StepRecord,
    StepRequest,
    StepState,
    WorkOrder,
    WorkOrderStatus,
)
from mes.gateway.store import CapturedReading, ReadingStore
from mes.materials import operations as materials
from mes.recipes import model as rm
from mes.recipes.formula import FormulaError
from mes.recipes.scaling import ControlRecipe, recipe_hash, scale
from mes.recipes.units import Duration, UnitError, convert, decimal_places, parse_decimal, to_text
from mes.signatures import operations as esig
from mes.users.models import UserSession
from mes.users.operations import actor_for
from mes.users.permissions import Permission

WORK_ORDER_STARTED = "mes.work_order.started.v1"
DEVIATION_RAISED = "mes.deviation.raised.v1"
DEVIATION_CLOSED = "mes.deviation.closed.v1"
BATCH_COMPLETED = "mes.batch.completed.v1"
BATCH_RELEASED = "mes.batch.released.v1"
BLOCKING = (Severity.MAJOR.value, Severity.CRITICAL.value)
DEFAULT_MAX_READING_AGE_MS = 3000
#: Equipment check codes that raise a deviation (issue #4: equipment not clean or out of
#: calibration); every other refusal only refuses, with the reason.
NOT_CLEAN = ("dirty", "clean_expired")
OUT_OF_CALIBRATION = ("not_calibrated", "calibration_failed", "calibration_expired")
OPEN_BATCH = (BatchStatus.CREATED.value, BatchStatus.IN_PROGRESS.value)
#: The signer's session for a signature step: the row, or a function that loads it (only a
#: signature step calls it, so other completions never load the session row).
SessionSource = UserSession | Callable[[], UserSession | None] | None


def clock() -> datetime:
    """The server clock the engine stamps step times with (tests replace it)."""
    return utcnow()


class StepNotReady(Conflict):
    slug, title = "step-not-ready", "The step cannot be done yet"


class StepBlocked(Conflict):
    slug, title = "step-blocked", "The step is blocked by an open deviation"


class StepRefused(Conflict):
    slug, title = "step-refused", "The entry was refused"


class _RefuseWithDeviation(Exception):
    """Internal: refuse the request (nothing of it recorded) and raise a deviation."""

    def __init__(self, detail: str, severity: str, category: str, evidence: dict[str, Any]) -> None:
        super().__init__(detail)
        self.detail, self.severity, self.category, self.evidence = detail, severity, category, evidence


def _text(value: str | None, what: str, field_name: str) -> str:
    if value is None or not str(value).strip():
        raise ValidationFailed(f"{what} is required.", field=field_name)
    return str(value).strip()


def _dec(value: Any, field_name: str, *, signed: bool = False) -> Decimal:
    try:
        return parse_decimal(value, signed=signed)
    except (ValueError, TypeError):
        raise ValidationFailed(f"{field_name} must be a decimal number written as a string, e.g. \"12.5\".",
                               field=field_name) from None


def _at(value: datetime | None) -> str | None:
    return canonical.format_at(value) if value else None


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12].upper()}"


# ------------------------------------------------------------------------ work orders


def get_work_order(work_order_id: str) -> WorkOrder:
    wo = db.session.get(WorkOrder, work_order_id)
    if wo is None:
        raise NotFound(f"Work order {work_order_id} is not known.")
    return wo


def work_order_json(wo: WorkOrder) -> dict[str, Any]:
    batches = db.session.execute(select(Batch.id).where(Batch.work_order_id == wo.id)).scalars().all()
    return {"id": wo.id, "item": wo.item, "quantity": {"value": wo.quantity, "uom": wo.unit},
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
    wo = WorkOrder(id=wo_id, item=item, quantity=to_text(amount), unit=unit, recipe_version_id=rv.id, line=line,
                   due_date=due_date, erp_ref=erp_ref, status=WorkOrderStatus.CREATED.value, created_at=utcnow(),
                   created_by=actor.id)
    db.session.add(wo)
    record(actor, "work_order.created", ("work_order", wo_id),
           after={"item": item, "quantity": wo.quantity, "unit": unit, "recipe_version": rv.id, "line": line,
                  "due_date": due_date.isoformat() if due_date else None, "erp_ref": erp_ref, "status": wo.status})
    db.session.commit()
    return wo


def _wo_transition(actor: Actor, wo: WorkOrder, allowed: tuple[str, ...], to: WorkOrderStatus, action: str,
                   reason: str | None = None, extra: dict[str, Any] | None = None, event: Event | None = None) -> None:
    if wo.status not in allowed:
        raise Conflict(f"Work order {wo.id} is {wo.status}; it cannot become {to.value}.")
    before = wo.status
    wo.status = to.value
    record(actor, action, ("work_order", wo.id), before={"status": before},
           after={"status": wo.status, **(extra or {})}, reason=reason, event=event)


def release_work_order(actor: Actor, work_order_id: str) -> WorkOrder:
    wo = _locked(WorkOrder, work_order_id)
    recipes_store.usable_version(wo.recipe_version_id)
    _wo_transition(actor, wo, (WorkOrderStatus.CREATED.value,), WorkOrderStatus.RELEASED, "work_order.released")
    db.session.commit()
    return wo


def dispatch_work_order(actor: Actor, work_order_id: str, line: str) -> WorkOrder:
    wo = _locked(WorkOrder, work_order_id)
    line = _text(line, "The line", "line")
    _wo_transition(actor, wo, (WorkOrderStatus.RELEASED.value, WorkOrderStatus.DISPATCHED.value),
                   WorkOrderStatus.DISPATCHED, "work_order.dispatched", extra={"line": line})
    wo.line = line
    db.session.commit()
    return wo


def cancel_work_order(actor: Actor, work_order_id: str, reason: str) -> WorkOrder:
    wo = _locked(WorkOrder, work_order_id)
    reason = _text(reason, "A reason", "reason")
    _wo_transition(actor, wo, (WorkOrderStatus.CREATED.value, WorkOrderStatus.RELEASED.value,
                               WorkOrderStatus.DISPATCHED.value), WorkOrderStatus.CANCELLED, "work_order.cancelled",
                   reason=reason)
    db.session.commit()
    return wo


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
    batch_size: str
    unit: str
    status: str
    line: str | None
    version: int


@dataclass(frozen=True, slots=True)
class Blocker:
    """An open major/critical deviation, as the ordering rules read it."""

    id: str
    severity: str
    description: str
    step_seq: int | None


#: What the ordering rules and the step handlers take: the ORM rows, or what the
#: completion path reads through the driver (same attribute names).
BatchLike = Batch | LockedBatch
StepLike = BatchStep | OpenStep
BlockerLike = Deviation | Blocker


_BLOCKERS_SQL = ("SELECT id, severity, description, step_seq FROM deviations "
                 f"WHERE batch_id = ? AND status = 'open' AND severity IN ({', '.join(repr(s) for s in BLOCKING)})")
_READ_FOR_COMPLETION = (
    "SELECT id, work_order_id, recipe_version_id, recipe_hash, batch_size, unit, status, line, version "
    "FROM batches WHERE id = ?",
    f"SELECT {', '.join(_OPEN_STEP_COLUMNS)} FROM batch_steps "
    f"WHERE batch_id = ? AND state <> '{StepState.COMPLETED.value}' ORDER BY seq",
    _BLOCKERS_SQL,
)


def _read_for_completion(batch_id: str) -> tuple[LockedBatch, list[OpenStep], list[Blocker]]:
    """Lock the batch row, then read its open steps and its open blocking deviations.

    Three statements in one round trip on PostgreSQL (:func:`~mes.db.driver_queries`: the
    reads see everything committed before the lock was granted)."""
    db.session.flush()
    conn = db.session.connection()
    lock_sql, steps_sql, blockers_sql = _READ_FOR_COMPLETION
    if conn.dialect.name == "postgresql":
        lock_sql += " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE already holds the one write lock
    found, steps, blockers = driver_queries(conn, [(sql, (batch_id,)) for sql in (lock_sql, steps_sql, blockers_sql)])
    if not found:
        raise NotFound(f"Batch {batch_id} is not known.")
    return (LockedBatch(*found[0]), [OpenStep(*row[:-1], as_utc(row[-1])) for row in steps],
            [Blocker(*row) for row in blockers])


def _locked(model: Any, key: str) -> Any:
    pk = model.__mapper__.primary_key[0]
    row = db.session.execute(select(model).where(pk == key).with_for_update()
                             .execution_options(populate_existing=True)).scalar()
    if row is None:
        raise NotFound(f"{model.__name__} {key} is not known.")
    return row


# ---------------------------------------------------------------------------- batches


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
    batch = db.session.get(Batch, batch_id)
    if batch is None:
        raise NotFound(f"Batch {batch_id} is not known.")
    return batch


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
    step = db.session.get(BatchStep, f"{batch_id}:{step_id}")
    if step is None:
        raise NotFound(f"Batch {batch_id} has no step {step_id}.")
    return step


def start_batch(actor: Actor, work_order_id: str, *, batch_id: str | None = None) -> Batch:
    """Start a batch for a dispatched work order: freeze the control recipe and create the steps."""
    wo = _locked(WorkOrder, work_order_id)
    if wo.status != WorkOrderStatus.DISPATCHED.value:
        raise Conflict(f"Work order {wo.id} is {wo.status}; a batch starts only from a dispatched work order.")
    rv = recipes_store.usable_version(wo.recipe_version_id)
    control = scale(recipes_store.master_of(rv), Decimal(wo.quantity), wo.unit)
    data = control.to_dict()
    h = recipe_hash(data)
    _CONTROL.setdefault(h, control)
    batch_id = batch_id or _new_id("B")
    if db.session.get(Batch, batch_id) is not None:
        raise Conflict(f"Batch {batch_id} exists already.")
    now = clock()
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
                                "planned_qty": {"value": wo.quantity, "uom": wo.unit}, "line": wo.line,
                                "batch_id": batch_id, "started_at": _at(now)}, correlation_id=wo.id, time=now))
    record(actor, "batch.started", ("batch", batch_id), batch=batch_id,
           after={"work_order": wo.id, "recipe_version": rv.id, "recipe_hash": h, "batch_size": wo.quantity,
                  "unit": wo.unit, "steps": len(rows), "status": batch.status, "ready": ready})
    db.session.commit()
    return batch


# ---------------------------------------------------------------------- step ordering


def _blocking_deviations(batch_id: str) -> list[Blocker]:
    """The batch's open major/critical deviations."""
    db.session.flush()  # a driver read does not autoflush: see deviations raised or closed in this transaction
    [rows] = driver_queries(db.session.connection(), [(_BLOCKERS_SQL, (batch_id,))])
    return [Blocker(*row) for row in rows]


def _blocker_for(step: StepLike, blockers: Sequence[BlockerLike]) -> BlockerLike | None:
    """The open major/critical deviation that blocks ``step``: one raised on an earlier step,
    or on the batch as a whole."""
    return next((d for d in blockers if d.step_seq is None or d.step_seq < step.seq), None)


def _precedes(a: StepLike, b: StepLike) -> bool:
    if (a.up_index, a.op_index) == (b.up_index, b.op_index):
        return a.step_index < b.step_index
    return (a.up_index, a.stage_index) < (b.up_index, b.stage_index)


def open_predecessors(step: StepLike, rows: Sequence[StepLike]) -> list[StepLike]:
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
            new = StepState.BLOCKED.value if _blocker_for(r, blockers) else StepState.READY.value
        if new != r.state:
            if new == StepState.READY.value:
                became_ready.append(r.step_id)
            r.state = new
    return became_ready


def _check_can_act(batch: BatchLike, step: StepLike, rows: Sequence[StepLike],
                   blockers: Sequence[BlockerLike] | None = None) -> None:
    if batch.status != BatchStatus.IN_PROGRESS.value:
        raise Conflict(f"Batch {batch.id} is {batch.status}; its steps cannot be done.")
    if step.state == StepState.COMPLETED.value:
        raise Conflict(f"Step {step.step_id} is already completed.", step_state=step.state)
    before = open_predecessors(step, rows)
    if before:
        names = ", ".join(r.step_id for r in before[:5]) + (" …" if len(before) > 5 else "")
        raise StepNotReady(f"Step {step.step_id} cannot be done before the steps that come first: {names}.",
                           open_predecessors=[r.step_id for r in before])
    blocker = _blocker_for(step, _blocking_deviations(batch.id) if blockers is None else blockers)
    if blocker is not None:
        raise StepBlocked(f"Step {step.step_id} is blocked by open {blocker.severity} deviation {blocker.id} "
                          f"({blocker.description}); QA must disposition it first.", deviation_id=blocker.id)


# --------------------------------------------------------------------- step requests


@dataclass
class _Ctx:
    actor: Actor
    batch: LockedBatch
    step: OpenStep
    rows: list[OpenStep]  # the steps not completed yet
    control: ControlRecipe
    spec: rm.Step
    payload: dict[str, Any]
    now: datetime
    session_row: SessionSource = None
    readings: ReadingStore | None = None
    max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS
    records: list[StepRecord] = field(default_factory=list)
    deviations: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    # writes of other features (consumption, produced lot, equipment status) in this
    # step's transaction, run after every check passed
    effects: list[Callable[[], None]] = field(default_factory=list)


def _replay(key: str, batch_step_id: str, action: str) -> dict[str, Any] | None:
    req = db.session.get(StepRequest, key)
    if req is None:
        return None
    if req.batch_step_id != batch_step_id or req.action != action:
        raise Conflict("This Idempotency-Key was already used for another request; use a new key.")
    if req.outcome == "refused":
        raise StepRefused(req.result["detail"], deviation_id=req.result.get("deviation_id"), replayed=True)
    return {**req.result, "replayed": True}


def _check_key(key: str) -> str:
    if not key or not isinstance(key, str) or len(key) > 200:
        raise ValidationFailed("An idempotency key (1 to 200 characters) is required.", field="Idempotency-Key")
    return key


def start_step(actor: Actor, batch_id: str, step_id: str, idempotency_key: str, expected_version: int) -> dict[str, Any]:
    """Start a step (timers: the server clock starts now); idempotent like :func:`complete_step`."""
    key = _check_key(idempotency_key)
    batch = _locked(Batch, batch_id)
    step = _locked(BatchStep, f"{batch_id}:{step_id}")
    replay = _replay(key, step.id, "start")
    if replay is not None:
        db.session.rollback()
        return replay
    rows = steps_of(batch_id)
    _check_can_act(batch, step, rows)
    if step.state == StepState.IN_PROGRESS.value:
        raise Conflict(f"Step {step_id} is already in progress.")
    if step.version != expected_version:
        raise Conflict(f"Step {step_id} changed (version {step.version}, you had {expected_version}); reload it.")
    now = clock()
    step.state, step.started_at, step.version = StepState.IN_PROGRESS.value, now, step.version + 1
    result = {"batch": batch_id, "step": step_id, "state": step.state, "started_at": _at(now), "version": step.version}
    db.session.add(StepRequest(key=key, batch_id=batch_id, batch_step_id=step.id, action="start", actor_id=actor.id,
                               outcome="ok", result=result, created_at=now))
    record(actor, "batch.step.started", ("batch_step", step.id), batch=batch_id,
           before={"state": StepState.READY.value}, after={"state": step.state, "started_at": _at(now)})
    _commit_request(key)
    return result


def _commit_request(key: str) -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("The same request was recorded by another terminal at the same moment.", key=key) from None


def complete_step(actor: Actor, batch_id: str, step_id: str, payload: dict[str, Any], idempotency_key: str,
                  expected_version: int, *, session_row: SessionSource = None,
                  readings: ReadingStore | None = None,
                  max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS) -> dict[str, Any]:
    """Complete (or, for a weigh step with ``more``, add one container to) a step.

    The same ``idempotency_key`` records once and returns the same result; a stale
    ``expected_version`` is a Conflict. Kind-specific ``payload`` (values as decimal
    strings): see the handlers below. A weigh step names the scale (``device_id``); the
    weight is the latest reading of that device in ``readings`` (the gateway's store), never
    a value sent by the client, and is refused when older than ``max_reading_age_ms``.
    Refusals that raise a deviation (out-of-tolerance weight, unusable lot at the scale,
    equipment not clean or out of calibration) record nothing of the refused entry but
    commit the deviation, and raise :class:`StepRefused` naming it. Everything a completion
    writes (step records, consumptions, produced lot, equipment status, audit entries,
    outbox events) is one transaction.
    """
    key = _check_key(idempotency_key)
    if not isinstance(payload, dict):
        raise ValidationFailed("The payload is an object.", field="payload")
    try:
        return _complete(actor, batch_id, step_id, payload, key, expected_version, session_row, readings,
                         max_reading_age_ms)
    except _RefuseWithDeviation as refusal:
        db.session.rollback()
        return _refuse(actor, batch_id, step_id, key, refusal)
    except MESError:
        db.session.rollback()
        raise
    except IntegrityError:
        db.session.rollback()
        replay = _replay(key, f"{batch_id}:{step_id}", "complete")
        if replay is not None:
            return replay
        raise Conflict(f"Step {step_id} was changed by someone else at the same moment; reload it.") from None


def _refuse(actor: Actor, batch_id: str, step_id: str, key: str, refusal: _RefuseWithDeviation) -> dict[str, Any]:
    batch = _locked(Batch, batch_id)
    step = _locked(BatchStep, f"{batch_id}:{step_id}")
    replay = _replay(key, step.id, "complete")
    if replay is not None:
        return replay
    dev = _new_deviation(actor, batch, step, refusal.severity, refusal.category, refusal.detail, refusal.evidence,
                         automatic=True)
    db.session.add(StepRequest(key=key, batch_id=batch_id, batch_step_id=step.id, action="complete",
                               actor_id=actor.id, outcome="refused",
                               result={"detail": refusal.detail, "deviation_id": dev.id}, created_at=clock()))
    _refresh(batch, steps_of(batch_id))
    _commit_request(key)
    raise StepRefused(refusal.detail, deviation_id=dev.id, severity=dev.severity)


def _complete(actor: Actor, batch_id: str, step_id: str, payload: dict[str, Any], key: str, expected_version: int,
              session_row: SessionSource, readings: ReadingStore | None = None,
              max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS) -> dict[str, Any]:
    """One completion, in the order that keeps the locks short: the batch row (it serialises
    every change of the batch, so the step rows need no lock of their own), the steps and
    open blocking deviations in one query each, the checks and the handler in memory, then
    the writes; the audit log's global append lock is taken by the first audit entry, at the
    end (a weighing takes it when it consumes, before it locks the lot).

    A repeated request is found without a query of its own on the way that records: the
    step's version moved on with the first one, so the repeat is refused before it writes,
    and only then is its key looked up and the first answer returned; two requests with one
    key at the same moment collide on the key's primary key at commit (see complete_step)."""
    try:
        return _complete_locked(actor, batch_id, step_id, payload, key, expected_version, session_row, readings,
                                max_reading_age_ms)
    except MESError:
        db.session.rollback()  # what this attempt wrote is gone; only a committed first request counts
        replay = _replay(key, f"{batch_id}:{step_id}", "complete")
        db.session.rollback()
        if replay is None:
            raise
        return replay


def _complete_locked(actor: Actor, batch_id: str, step_id: str, payload: dict[str, Any], key: str,
                     expected_version: int, session_row: SessionSource, readings: ReadingStore | None,
                     max_reading_age_ms: int) -> dict[str, Any]:
    # ordering and states depend only on the steps not completed yet
    batch, rows, blockers = _read_for_completion(batch_id)
    step = next((r for r in rows if r.step_id == step_id), None)
    if step is None:
        get_step(batch_id, step_id)  # NotFound, else it is completed
        raise Conflict(f"Step {step_id} is already completed.", step_state=StepState.COMPLETED.value)
    _check_can_act(batch, step, rows, blockers)
    if step.version != expected_version:
        raise Conflict(f"Step {step_id} changed (version {step.version}, you had {expected_version}); reload it.",
                       version=step.version)
    control = control_recipe(batch)
    ctx = _Ctx(actor, batch, step, rows, control, control.step(step.step_id), payload, clock(), session_row,
               readings, max_reading_age_ms)
    HANDLERS[step.kind](ctx)
    comment = payload.get("comment")
    before_state = step.state
    states_before = {r.id: r.state for r in rows}
    for rec in ctx.records:
        rec.comment = comment if isinstance(comment, str) and comment.strip() else None
    step.version += 1
    if step.started_at is None:
        step.started_at = ctx.now
    if ctx.complete:
        step.state, step.completed_at, step.completed_by = StepState.COMPLETED.value, ctx.now, actor.id
        step.result = ctx.result
    else:
        step.state = StepState.IN_PROGRESS.value
    result = {"batch": batch_id, "step": step_id, "state": step.state, "version": step.version,
              "attempt": step.attempt, **ctx.result}
    deviations = []
    for spec in ctx.deviations:
        dev = _new_deviation(actor, batch, step, spec["severity"], spec["category"], spec["description"],
                             spec["evidence"], automatic=True, commit_record=False)
        deviations.append(dev)
    if deviations:
        result["deviations"] = [d.id for d in deviations]
    ready = _refresh(batch, rows, blockers + [d for d in deviations if d.severity in BLOCKING])
    result["ready"] = ready
    writes = _step_writes(step, rows, states_before)
    writes.append((_stmt("insert_request"), {
        "key": key, "batch_id": batch_id, "batch_step_id": step.id, "action": "complete", "actor_id": actor.id,
        "outcome": "ok", "result": result, "created_at": ctx.now}))
    for effect in ctx.effects:  # consumption, produced lot, equipment status: same transaction
        effect()
    if ctx.records:
        writes.append((_stmt("insert_records"), [_record_row(r) for r in ctx.records]))
    # the step's writes go with the audit entry's lock and log-end read (one round trip on
    # PostgreSQL); all of it commits or none
    record(actor, "batch.step.completed" if ctx.complete else "batch.step.recorded", ("batch_step", step.id),
           batch=batch_id, before={"state": before_state, "version": expected_version},
           after={"state": step.state, "version": step.version, "kind": step.kind, "attempt": step.attempt,
                  "records": [_record_json(r) for r in ctx.records], "ready": ready,
                  "deviations": [d.id for d in deviations]}, statements=writes)
    for dev in deviations:
        _record_deviation(actor, dev)
    if ctx.complete and all(r.state == StepState.COMPLETED.value for r in rows):
        result["batch_state"] = _complete_batch(actor, _locked(Batch, batch_id), ctx.now)
    db.session.commit()
    return result


def _record_row(r: StepRecord) -> dict[str, Any]:
    """The column values of a new step record (written with one Core insert per completion)."""
    return {"id": r.id, "batch_id": r.batch_id, "batch_step_id": r.batch_step_id, "attempt": r.attempt,
            "kind": r.kind, "value": r.value, "unit": r.unit, "data": r.data, "flags": list(r.flags or []),
            "comment": r.comment, "corrects": r.corrects, "superseded_by": r.superseded_by, "reason": r.reason,
            "recorded_at": r.recorded_at, "recorded_by": r.recorded_by}


def _complete_batch(actor: Actor, batch: Batch, now: datetime) -> str:
    batch.status, batch.completed_at, batch.version = BatchStatus.COMPLETED.value, now, batch.version + 1
    record(actor, "batch.completed", ("batch", batch.id), batch=batch.id,
           before={"status": BatchStatus.IN_PROGRESS.value}, after={"status": batch.status},
           event=Event(BATCH_COMPLETED, "batch", batch.id,
                       {"batch_id": batch.id, "work_order_id": batch.work_order_id, "completed_at": _at(now)},
                       correlation_id=batch.work_order_id, time=now))
    _release_claims(actor, batch.id)
    return batch.status


def claimed_equipment(batch_id: str) -> list[str]:
    """Equipment a passing ``claim`` check marked in use by the batch (current records)."""
    rows = db.session.execute(select(StepRecord.data).join(BatchStep, BatchStep.id == StepRecord.batch_step_id).where(
        StepRecord.batch_id == batch_id, StepRecord.kind == "equipment", StepRecord.superseded_by.is_(None),
        StepRecord.attempt == BatchStep.attempt)).scalars()
    return sorted({d["equipment_id"] for d in rows if d.get("claimed")})


def _release_claims(actor: Actor, batch_id: str) -> None:
    """At the batch's end the equipment it held in use becomes dirty (the ordinary end of use)."""
    for equipment_id in claimed_equipment(batch_id):
        eq = equipment.get_equipment(equipment_id)
        if eq.status == equipment.S.IN_USE.value and eq.status_reason == _claim_reason(batch_id):
            equipment.set_status(actor, equipment_id, equipment.S.DIRTY.value, f"batch {batch_id} ended",
                                 batch=batch_id, commit=False)


def _claim_reason(batch_id: str) -> str:
    return f"in use by batch {batch_id}"


# ------------------------------------------------------------------------ step kinds


def _rec(ctx: _Ctx, kind: str, data: dict[str, Any], value: Decimal | None = None, unit: str | None = None,
         flags: list[str] | None = None) -> StepRecord:
    rec = StepRecord(id=_new_id("R"), batch_id=ctx.batch.id, batch_step_id=ctx.step.id, attempt=ctx.step.attempt,
                     kind=kind, value=to_text(value) if value is not None else None, unit=unit, data=data,
                     flags=flags or [], recorded_at=ctx.now, recorded_by=ctx.actor.id)
    ctx.records.append(rec)
    return rec


def _deviate(ctx: _Ctx, category: str, description: str, evidence: dict[str, Any],
             severity: str = Severity.MAJOR.value) -> None:
    ctx.deviations.append({"severity": severity, "category": category, "description": description,
                           "evidence": evidence})


def _places_ok(value: Decimal, precision: int, field_name: str) -> Decimal:
    if decimal_places(value) > precision:
        raise ValidationFailed(f"{field_name} has more than {precision} decimal place(s).", field=field_name)
    return value.quantize(Decimal(1).scaleb(-precision)) if precision >= 0 else value


def _limits_text(low: Decimal | None, high: Decimal | None, unit: str) -> str:
    lo = to_text(low) if low is not None else "-"
    hi = to_text(high) if high is not None else "-"
    return f"{lo} to {hi} {unit}"


def _instruction(ctx: _Ctx) -> None:
    if ctx.payload.get("confirm") is not True:
        raise ValidationFailed("Confirm the instruction (confirm: true).", field="confirm")
    _rec(ctx, "confirmation", {"confirmed": True})
    ctx.result = {"confirmed": True}


def _numeric(ctx: _Ctx) -> None:
    spec: rm.NumericStep = ctx.spec  # type: ignore[assignment]
    value = _places_ok(_dec(ctx.payload.get("value"), "value", signed=True), spec.precision, "value")
    ok = spec.in_limits(value)
    _rec(ctx, "value", {"low": _opt(spec.low), "high": _opt(spec.high), "target": _opt(spec.target)}, value, spec.unit,
         [] if ok else ["out_of_limits"])
    ctx.result = {"value": to_text(value), "unit": spec.unit, "in_limits": ok}
    if not ok:
        _deviate(ctx, "limits_missed", f"{spec.title}: {to_text(value)} {spec.unit} is outside "
                 f"{_limits_text(spec.low, spec.high, spec.unit)}",
                 {"step": spec.id, "value": to_text(value), "unit": spec.unit, "low": _opt(spec.low),
                  "high": _opt(spec.high)})


def _opt(value: Decimal | None) -> str | None:
    return to_text(value) if value is not None else None


def _capture(ctx: _Ctx, spec: rm.WeighStep) -> tuple[Decimal, dict[str, Any], CapturedReading]:
    """The weight of a weigh step, taken on the server (capture rules, issue #5).

    The client names the scale (``device_id``, optionally the ``sequence`` of the reading it
    showed); the value is the latest reading the gateway stored for that device. Refused,
    with the reason: an unregistered or unusable scale, no reading, an unstable, faulty or
    stale reading (older than ``max_reading_age_ms``), a reading older than the one the
    kiosk showed, a scale out of calibration (raises a deviation), or one whose capacity,
    minimum weight, readability or accuracy class does not suit the weighing. Returns the
    net weight in the step's unit, the record of the reading (raw device reply, identity,
    equipment) and the reading itself.
    """
    assert spec.unit is not None and spec.target is not None
    if "reading" in ctx.payload:
        raise ValidationFailed("The server takes the weight from the scale; send the scale's device_id, "
                               "not a reading.", field="reading")
    device_id = _text(ctx.payload.get("device_id"), "The scale (device_id)", "device_id")
    seen = ctx.payload.get("sequence")
    if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
        raise ValidationFailed("sequence is the number of the reading the kiosk showed (a whole number).",
                               field="sequence")
    evidence: dict[str, Any] = {"step": spec.id, "device_id": device_id}
    eq = equipment.equipment_for_device(device_id)
    if eq is None:
        raise StepRefused(f"Scale {device_id} is not registered in the MES and must not be used. "
                          "Use a registered scale or tell the supervisor.", code="unknown_device", device_id=device_id)
    evidence["equipment_id"] = eq.id
    if ctx.readings is None:
        raise StepRefused("No device gateway feeds this server, so no weight can be taken from a scale. "
                          "Tell the supervisor.", code="no_gateway", device_id=device_id)
    captured = ctx.readings.latest(device_id)
    if captured is None:
        raise StepRefused(f"{eq.label} has sent no reading. Check that the scale is on and connected, then weigh "
                          "again.", code="no_reading", device_id=device_id, equipment_id=eq.id)
    if seen is not None and captured.sequence < seen:
        raise StepRefused(f"The server has not received the reading the kiosk showed from {eq.label} yet "
                          f"(it has reading {captured.sequence}, the kiosk showed {seen}). Weigh again.",
                          code="reading_behind", device_id=device_id, equipment_id=eq.id)
    # the age is measured on the real clock: the gateway stamps readings with it
    seen_as = {**captured.to_json(), "timestamp": captured.at.isoformat()}
    checked = equipment.check_reading(seen_as, Decimal(ctx.max_reading_age_ms) / 1000, utcnow(),
                                      require_stable=spec.stable_reading)
    if not checked.ok:
        raise StepRefused(checked.reason, code=checked.code, device_id=device_id, equipment_id=eq.id)
    value = Decimal(checked.details["value"])
    try:
        net = convert(value, captured.unit, spec.unit)
    except UnitError as exc:
        raise StepRefused(f"{eq.label} weighs in {captured.unit}; this step cannot use it ({exc}).",
                          code="wrong_unit", device_id=device_id) from None
    if net <= 0:
        raise StepRefused(f"{eq.label} shows no load ({to_text(value)} {captured.unit}). Put the container on the "
                          "scale and weigh again.", code="no_load", device_id=device_id)
    # capacity and minimum weight against the target (one container) or this container's net
    # (in the unit the recipe states the scale requirement in, so the reason reads as the recipe)
    weighed = convert(net if spec.multiple_containers else spec.target, spec.unit, spec.scale.unit)
    suits = equipment.check_scale_for_weighing(
        device_id, weighed, spec.scale.unit, readability_required=spec.scale.readability,
        accuracy_class_required=spec.scale.accuracy_class, at=ctx.now)
    reading = {**checked.details["reading"], "raw_hex": captured.raw.hex(), "seen_sequence": seen}
    if not suits.ok:
        if suits.code in OUT_OF_CALIBRATION:
            raise _RefuseWithDeviation(suits.reason, Severity.MINOR.value, "equipment_out_of_calibration",
                                       {**evidence, "check": suits.as_json(), "reading": reading})
        raise StepRefused(suits.reason, code=suits.code, device_id=device_id, equipment_id=eq.id)
    reading["calibration"] = suits.details.get("calibration")
    reading["accuracy_class"] = suits.details.get("accuracy_class")
    reading["readability"] = suits.details.get("readability")
    return net, reading, captured


def _weigh(ctx: _Ctx) -> None:
    spec: rm.WeighStep = ctx.spec  # type: ignore[assignment]
    low, high = spec.window()
    unit = spec.unit
    assert unit is not None
    lot_id = _text(ctx.payload.get("lot_id"), "The lot", "lot_id")
    container_id = _text(ctx.payload.get("container_id"), "The container", "container_id")
    more = ctx.payload.get("more") is True
    earlier = _current_records(ctx.step, "container")
    if more and not spec.multiple_containers:
        raise ValidationFailed(f"Step {spec.id} takes one container only.", field="more")
    if spec.max_containers and len(earlier) + 1 > spec.max_containers:
        raise ValidationFailed(f"Step {spec.id} takes at most {spec.max_containers} containers.", field="lot_id")
    net, reading, captured = _capture(ctx, spec)
    total = sum((Decimal(r.value) for r in earlier), Decimal(0)) + net
    evidence = {"step": spec.id, "lot": lot_id, "container": container_id, "reading": reading,
                "net": to_text(net), "total": to_text(total), "unit": unit, "low": to_text(low), "high": to_text(high)}
    usable = materials.check_usable(lot_id, spec.item)
    if not usable.ok:
        raise _RefuseWithDeviation(f"{usable.reason}", Severity.MINOR.value, "unusable_lot",
                                   {**evidence, "usability": usable.as_json()})
    if total > high or (not more and total < low):
        raise _RefuseWithDeviation(
            f"{spec.title}: net weight {to_text(total)} {unit} is outside the tolerance window "
            f"{to_text(low)} to {to_text(high)} {unit} (target {to_text(spec.target)} {unit}); nothing was recorded. "
            "Correct the weighing.", Severity.MAJOR.value, "out_of_tolerance", evidence)
    rec = _rec(ctx, "container", {"lot": lot_id, "container": container_id, "reading": reading, "item": spec.item,
                                  "equipment_id": reading["equipment_id"]}, net, unit)
    ctx.complete = not more
    ctx.result = {"net": to_text(net), "total": to_text(total), "unit": unit, "low": to_text(low), "high": to_text(high),
                  "containers": len(earlier) + 1, "complete": not more, "device_id": captured.device_id,
                  "sequence": captured.sequence, "value": reading["value"], "reading_unit": captured.unit}
    if not more:
        _rec(ctx, "value", {"containers": len(earlier) + 1, "target": _opt(spec.target)}, total, unit)
    actor, batch, wo, line = ctx.actor, ctx.batch.id, ctx.batch.work_order_id, ctx.batch.line

    def take() -> None:
        used = materials.consume(actor, lot_id, container_id, reading["value"], captured.unit, batch, spec.id, wo,
                                 line, item_code=spec.item, commit=False)
        rec.data = {**rec.data, "consumption": used.id}

    ctx.effects.append(take)


def _identify(ctx: _Ctx) -> None:
    spec: rm.IdentifyStep = ctx.spec  # type: ignore[assignment]
    lot_id = _text(ctx.payload.get("lot_id"), "The scanned lot", "lot_id")
    data: dict[str, Any] = {"lot": lot_id, "item": spec.item, "scan": spec.scan}
    if spec.scan == "dispensed":
        dispensed = [c for c in materials.consumptions(lot_id=lot_id, batch_id=ctx.batch.id)
                     if c.item_code == spec.item and materials.reversal_of(c.id) is None
                     and (spec.dispensed_by is None or c.step_id == spec.dispensed_by)]
        if not dispensed:
            where = f" by step {spec.dispensed_by}" if spec.dispensed_by else ""
            raise StepRefused(f"Lot {lot_id} was not dispensed{where} for {spec.item} in batch {ctx.batch.id}. "
                              "Scan the container dispensed for this batch.", lot_id=lot_id)
        data["dispensed_by"] = sorted({c.step_id or "" for c in dispensed})
    else:
        usable = materials.check_usable(lot_id, spec.item)
        if not usable.ok:
            raise StepRefused(usable.reason, code=usable.code, lot_id=lot_id, hold_id=usable.hold_id)
        data["conditional"] = usable.conditional
    _rec(ctx, "identification", data)
    ctx.result = {"lot": lot_id, "item": spec.item}


def _equipment(ctx: _Ctx) -> None:
    """Equipment check against the registry: class, required states (clean within
    ``max_since_cleaning``, calibrated, qualified, not in use). Not clean or out of
    calibration refuses and raises a deviation; any other failure refuses with the reason.
    With ``claim`` the equipment becomes in use by the batch until the batch ends."""
    spec: rm.EquipmentCheckStep = ctx.spec  # type: ignore[assignment]
    equipment_id = _text(ctx.payload.get("equipment_id"), "The equipment id", "equipment_id")
    label_states = confirm_labels(spec.required_states, ctx.payload.get("label_states"))
    max_since = timedelta(seconds=spec.max_since_cleaning.seconds) if spec.max_since_cleaning else None
    check = equipment.check_equipment(equipment_id, spec.required_states, ctx.now,
                                      equipment_class=spec.equipment_class, max_since_cleaning=max_since)
    evidence = {"step": spec.id, "equipment_id": equipment_id, "equipment_class": spec.equipment_class,
                "required": list(spec.required_states), "label_states": label_states, "check": check.as_json()}
    if not check.ok:
        if check.code in NOT_CLEAN:
            raise _RefuseWithDeviation(check.reason, Severity.MINOR.value, "equipment_not_clean", evidence)
        if check.code in OUT_OF_CALIBRATION:
            raise _RefuseWithDeviation(check.reason, Severity.MINOR.value, "equipment_out_of_calibration", evidence)
        raise StepRefused(check.reason, code=check.code, equipment_id=equipment_id)
    _rec(ctx, "equipment", {"equipment_id": equipment_id, "equipment_class": spec.equipment_class,
                            "required": list(spec.required_states),
                            "max_since_cleaning": spec.max_since_cleaning.iso if spec.max_since_cleaning else None,
                            "registry_checked": True, "registry": check.details, "claimed": spec.claim,
                            "label_states": label_states})
    ctx.result = {"equipment_id": equipment_id, "status": check.details.get("status"), "claimed": spec.claim}
    if spec.claim:
        actor, batch_id = ctx.actor, ctx.batch.id
        ctx.effects.append(lambda: equipment.set_status(actor, equipment_id, equipment.S.IN_USE.value,
                                                        _claim_reason(batch_id), batch=batch_id, commit=False))


def _timer(ctx: _Ctx) -> None:
    spec: rm.TimerStep = ctx.spec  # type: ignore[assignment]
    if spec.from_step:
        origin = get_step(ctx.batch.id, spec.from_step)
        if origin.completed_at is None:
            raise StepNotReady(f"The hold time counts from step {spec.from_step}, which is not completed.")
        start = origin.completed_at
    else:
        if ctx.step.state != StepState.IN_PROGRESS.value or ctx.step.started_at is None:
            raise StepNotReady(f"Start the timer of step {spec.id} first.")
        start = ctx.step.started_at
    seconds = int((ctx.now - start).total_seconds())
    elapsed = Duration(max(0, seconds))
    ok = spec.in_limits(elapsed)
    data = {"started_at": _at(start), "stopped_at": _at(ctx.now), "elapsed": elapsed.iso,
            "minimum": spec.minimum.iso if spec.minimum else None, "maximum": spec.maximum.iso if spec.maximum else None,
            "from_step": spec.from_step}
    _rec(ctx, "timer", data, Decimal(elapsed.seconds), "s", [] if ok else ["out_of_limits"])
    ctx.result = {**data, "in_limits": ok}
    if not ok:
        what = "hold time exceeded" if spec.maximum and elapsed > spec.maximum else "time outside window"
        _deviate(ctx, "hold_time_exceeded" if spec.from_step else "time_out_of_window",
                 f"{spec.title}: {what} ({elapsed.human}; allowed "
                 f"{spec.minimum.human if spec.minimum else '0 s'} to {spec.maximum.human if spec.maximum else 'no limit'})",
                 {"step": spec.id, **data})


def _values(batch_id: str) -> dict[str, Decimal]:
    """Current (not superseded) values of completed value steps: step id -> Decimal."""
    rows = db.session.execute(
        select(BatchStep.step_id, StepRecord.value).join(StepRecord, StepRecord.batch_step_id == BatchStep.id).where(
            BatchStep.batch_id == batch_id, StepRecord.kind == "value", StepRecord.superseded_by.is_(None),
            StepRecord.attempt == BatchStep.attempt)).all()
    return {sid: Decimal(v) for sid, v in rows if v is not None}


values_of = _values  # public: what the kiosk shows is what the calculations compute with


def _calculation(ctx: _Ctx) -> None:
    spec: rm.CalculationStep = ctx.spec  # type: ignore[assignment]
    values = _values(ctx.batch.id)
    inputs = {ref: values.get(ref) for ref in spec.references}
    missing = [k for k, v in inputs.items() if v is None]
    if missing:
        raise StepNotReady(f"The formula needs values not recorded yet: {', '.join(missing)}.")
    try:
        result = spec.compute(values)
    except FormulaError as exc:
        raise StepRefused(f"The calculation cannot be done: {exc}") from None
    ok = spec.in_limits(result)
    shown = {k: to_text(v) for k, v in inputs.items() if v is not None}
    _rec(ctx, "value", {"formula": spec.formula, "inputs": shown, "low": _opt(spec.low), "high": _opt(spec.high)},
         result, spec.unit, [] if ok else ["out_of_limits"])
    ctx.result = {"formula": spec.formula, "inputs": shown, "value": to_text(result), "unit": spec.unit,
                  "in_limits": ok}
    if not ok:
        _deviate(ctx, "limits_missed", f"{spec.title}: {to_text(result)} {spec.unit} is outside "
                 f"{_limits_text(spec.low, spec.high, spec.unit)}",
                 {"step": spec.id, "formula": spec.formula, "inputs": shown, "value": to_text(result)})


def _sample(ctx: _Ctx) -> None:
    spec: rm.SampleCheckStep = ctx.spec  # type: ignore[assignment]
    raw = ctx.payload.get("results")
    if not isinstance(raw, list) or len(raw) != spec.samples:
        raise ValidationFailed(f"Enter exactly {spec.samples} results.", field="results")
    results = [_places_ok(_dec(v, f"results/{i}"), spec.precision, f"results/{i}") for i, v in enumerate(raw)]
    verdict = spec.evaluate(results)
    data = {"results": [to_text(r) for r in results], "mean": to_text(verdict.mean),
            "out_of_limits": list(verdict.out_of_limits), "mean_ok": verdict.mean_ok,
            "low": _opt(spec.low), "high": _opt(spec.high), "mean_low": _opt(spec.mean_low), "mean_high": _opt(spec.mean_high)}
    _rec(ctx, "value", data, verdict.mean, spec.unit, [] if verdict.ok else ["out_of_limits"])
    ctx.result = {**data, "unit": spec.unit, "in_limits": verdict.ok}
    if not verdict.ok:
        _deviate(ctx, "limits_missed", f"{spec.title}: results outside the limits "
                 f"(individual {_limits_text(spec.low, spec.high, spec.unit)}, mean {to_text(verdict.mean)})",
                 {"step": spec.id, **data})


def _performers(batch_id: str, step_ids: list[str]) -> set[str]:
    if not step_ids:
        return set()
    return set(db.session.execute(select(StepRecord.recorded_by).join(BatchStep, BatchStep.id == StepRecord.batch_step_id)
                                  .where(BatchStep.batch_id == batch_id, BatchStep.step_id.in_(step_ids))).scalars())


@esig.record_provider("batch_step")
def batch_step_record(batch_step_id: str) -> dict[str, Any]:
    """What a signature gate signs: the step, its attempt and the current values of the steps it covers."""
    step = db.session.get(BatchStep, batch_step_id)
    if step is None:
        raise NotFound(f"No batch step {batch_step_id}.")
    batch = get_batch(step.batch_id)
    spec = control_recipe(batch).step(step.step_id)
    covers = list(getattr(spec, "covers", ()) or ())
    covered = {}
    for sid in covers:
        recs = _current_records(get_step(batch.id, sid))
        covered[sid] = [_record_json(r) for r in recs]
    return {"batch": batch.id, "recipe_hash": batch.recipe_hash, "step": step.step_id, "attempt": step.attempt,
            "covers": covered}


def _signature(ctx: _Ctx) -> None:
    spec: rm.SignatureStep = ctx.spec  # type: ignore[assignment]
    session_row = ctx.session_row() if callable(ctx.session_row) else ctx.session_row
    if session_row is None:
        raise Forbidden("A signature step is signed by a person in an interactive session.")
    from mes.audit.blueprint import credentials_from

    creds = credentials_from(ctx.payload)
    user = session_row.user
    role = next((r for r in spec.roles if r in user.role_names()), None)
    if role is None:
        raise Forbidden(f"This signature needs the role {' or '.join(spec.roles)}.")
    performed_by = None
    if spec.second_person:
        earlier = list(spec.covers) or list(db.session.execute(
            select(BatchStep.step_id).where(BatchStep.batch_id == ctx.batch.id, BatchStep.seq < ctx.step.seq)
            .order_by(BatchStep.seq.desc()).limit(1)).scalars())
        people = _performers(ctx.batch.id, earlier)
        if user.id in people:
            raise Conflict("Second-person verification must be done by a different person than the one who "
                           f"performed {', '.join(earlier)}.")
        performed_by = sorted(people)[0] if people else None
    entry = esig.sign(session_row, creds, "batch_step", ctx.step.id, spec.meaning, role=role,
                      terminal=ctx.actor.terminal, batch=ctx.batch.id, performed_by=performed_by,
                      permission=Permission.BATCH_VERIFY if spec.second_person else Permission.ESIG_SIGN,
                      comment=ctx.payload.get("comment"), acknowledged=ctx.payload.get("esig_acknowledged") is True,
                      commit=False)
    sig = json.loads(entry.entry_bytes)["signature"]
    _rec(ctx, "signature", {"signer": sig["signer"], "name": sig["name"], "meaning": sig["meaning"], "role": role,
                            "record_hash": sig["record_hash"], "audit_seq": entry.seq,
                            "second_person": spec.second_person, "performed_by": performed_by})
    ctx.result = {"signer": sig["signer"], "meaning": sig["meaning"], "audit_seq": entry.seq}


def _produce(ctx: _Ctx) -> None:
    spec: rm.ProduceOutputStep = ctx.spec  # type: ignore[assignment]
    qty = _dec(ctx.payload.get("quantity"), "quantity")
    if qty <= 0:
        raise ValidationFailed("The quantity produced must be above zero.", field="quantity")
    unit = ctx.payload.get("unit") or spec.unit
    try:
        actual = convert(qty, unit, spec.unit)
    except UnitError as exc:
        raise ValidationFailed(f"The unit cannot be used: {exc}", field="unit") from None
    theoretical = spec.quantity
    if spec.theoretical_from:
        value = _values(ctx.batch.id).get(spec.theoretical_from)
        if value is None:
            raise StepNotReady(f"The theoretical quantity comes from step {spec.theoretical_from}, not recorded yet.")
        theoretical = value
    percent = spec.yield_percent(actual, theoretical)
    ok = spec.yield_in_limits(percent)
    lot_id = ctx.payload.get("lot_id") or f"{ctx.batch.id}-{spec.item}"[:64]
    data = {"item": spec.item, "lot": lot_id, "theoretical": to_text(theoretical), "yield": to_text(percent),
            "yield_low": to_text(spec.yield_low), "yield_high": to_text(spec.yield_high)}
    _rec(ctx, "value", data, actual, spec.unit, [] if ok else ["out_of_limits"])
    ctx.result = {**data, "quantity": to_text(actual), "unit": spec.unit, "in_limits": ok}
    if not ok:
        _deviate(ctx, "yield_out_of_limits", f"{spec.title}: yield {to_text(percent)} % is outside "
                 f"{to_text(spec.yield_low)} to {to_text(spec.yield_high)} %", {"step": spec.id, **data})
    actor, batch, wo = ctx.actor, ctx.batch.id, ctx.batch.work_order_id
    ctx.effects.append(lambda: materials.produce(actor, spec.item, lot_id, to_text(qty), unit, batch,
                                                 work_order_id=wo, commit=False) and None)


HANDLERS: dict[str, Callable[[_Ctx], None]] = {
    "instruction": _instruction, "numeric": _numeric, "weigh": _weigh, "identify": _identify,
    "equipment_check": _equipment, "timer": _timer, "calculation": _calculation, "sample_check": _sample,
    "signature": _signature, "produce_output": _produce,
}


# --------------------------------------------------------------------------- records


def _current_records(step: BatchStep, kind: str | None = None) -> list[StepRecord]:
    stmt = select(StepRecord).where(StepRecord.batch_step_id == step.id, StepRecord.attempt == step.attempt,
                                    StepRecord.superseded_by.is_(None)).order_by(StepRecord.recorded_at, StepRecord.id)
    if kind:
        stmt = stmt.where(StepRecord.kind == kind)
    return list(db.session.execute(stmt).scalars())


def _record_json(r: StepRecord) -> dict[str, Any]:
    return {"id": r.id, "kind": r.kind, "attempt": r.attempt, "value": r.value, "unit": r.unit, "data": r.data,
            "flags": list(r.flags or []), "comment": r.comment, "corrects": r.corrects, "superseded_by": r.superseded_by,
            "reason": r.reason, "recorded_at": _at(r.recorded_at), "recorded_by": r.recorded_by}


def records_of(batch_id: str) -> list[StepRecord]:
    return list(db.session.execute(select(StepRecord).where(StepRecord.batch_id == batch_id)
                                   .order_by(StepRecord.recorded_at, StepRecord.id)).scalars())


CORRECTABLE = ("value",)
CORRECTABLE_STEPS = ("numeric",)


def correct_value(actor: Actor, batch_id: str, record_id: str, new_value: str, reason: str) -> StepRecord:
    """Correct a recorded numeric entry: a new record with the new value and the reason; the
    old one stays, marked superseded (Annex 11 §8.2). Limits are checked again, and every
    completed calculation that used the value (directly or through another calculation) is
    recomputed the same way: a new record flagged ``recomputed``, the old one kept."""
    reason = _text(reason, "A reason for the correction", "reason")
    batch = _locked(Batch, batch_id)
    if batch.status in (BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        raise Conflict(f"Batch {batch_id} is {batch.status}; its record is closed.")
    old = _locked(StepRecord, record_id)
    if old.batch_id != batch_id:
        raise NotFound(f"Record {record_id} is not part of batch {batch_id}.")
    if old.superseded_by is not None:
        raise Conflict(f"Record {record_id} was already corrected by {old.superseded_by}; correct that one.")
    step = _locked(BatchStep, old.batch_step_id)
    if old.kind not in CORRECTABLE or step.kind not in CORRECTABLE_STEPS:
        raise Conflict("Only manually entered values can be corrected; weighings are reversed and repeated, "
                       "calculations and signatures are never edited.")
    spec: rm.NumericStep = control_recipe(batch).step(step.step_id)  # type: ignore[assignment]
    value = _places_ok(_dec(new_value, "value", signed=True), spec.precision, "value")
    if old.value is not None and Decimal(old.value) == value:
        raise ValidationFailed("The corrected value is the same as the recorded one.", field="value")
    ok = spec.in_limits(value)
    now = clock()
    new = StepRecord(id=_new_id("R"), batch_id=batch_id, batch_step_id=step.id, attempt=old.attempt, kind=old.kind,
                     value=to_text(value), unit=old.unit, data=dict(old.data),
                     flags=["correction"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                     reason=reason, recorded_at=now, recorded_by=actor.id)
    db.session.add(new)
    old.superseded_by = new.id
    old.flags = sorted(set(old.flags or []) | {"corrected"})
    step.version += 1
    db.session.flush()
    record(actor, "batch.value.corrected", ("step_record", old.id), batch=batch_id,
           before={"value": old.value, "unit": old.unit, "record": old.id},
           after={"value": new.value, "unit": new.unit, "record": new.id, "in_limits": ok}, reason=reason)
    if not ok:
        dev = _new_deviation(actor, batch, step, Severity.MAJOR.value, "limits_missed",
                             f"{spec.title}: corrected value {to_text(value)} {spec.unit} is outside "
                             f"{_limits_text(spec.low, spec.high, spec.unit)}",
                             {"record": new.id, "corrects": old.id}, automatic=True, commit_record=False)
        _record_deviation(actor, dev)
    if _recompute_after(actor, batch, step.step_id, reason, now) or not ok:
        _refresh(batch, steps_of(batch_id))
    db.session.commit()
    return new


def _recompute_after(actor: Actor, batch: Batch, changed_step: str, why: str, now: datetime) -> list[StepRecord]:
    """Recompute the completed calculations that depend on ``changed_step`` (transitively),
    in document order; each changed result is a new record superseding the old one, audited
    as ``batch.value.recomputed``, with a deviation when it now misses its limits."""
    control = control_recipe(batch)
    changed = {changed_step}
    out: list[StepRecord] = []
    for row in steps_of(batch.id):
        if row.kind == "produce_output" and row.state == StepState.COMPLETED.value:
            produced = _recompute_yield(actor, batch, row, control.step(row.step_id), changed, why, now)
            out.extend([produced] if produced is not None else [])
            continue
        if row.kind != "calculation" or row.state != StepState.COMPLETED.value:
            continue
        spec: rm.CalculationStep = control.step(row.step_id)  # type: ignore[assignment]
        if not changed & set(spec.references):
            continue
        old = next(iter(_current_records(row, "value")), None)
        if old is None:
            continue
        values = _values(batch.id)
        try:
            result = spec.compute(values)
        except FormulaError as exc:
            raise Conflict(f"The correction makes calculation {spec.id} impossible ({exc}); nothing was changed.") \
                from None
        changed.add(row.step_id)
        if old.value is not None and Decimal(old.value) == result:
            continue
        ok = spec.in_limits(result)
        inputs = {ref: to_text(values[ref]) for ref in spec.references if ref in values}
        new = StepRecord(id=_new_id("R"), batch_id=batch.id, batch_step_id=row.id, attempt=old.attempt, kind="value",
                         value=to_text(result), unit=old.unit,
                         data={**old.data, "inputs": inputs, "recomputed_because": changed_step},
                         flags=["recomputed"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                         reason=f"recomputed after the correction of {changed_step}: {why}", recorded_at=now,
                         recorded_by=actor.id)
        db.session.add(new)
        old.superseded_by = new.id
        old.flags = sorted(set(old.flags or []) | {"corrected"})
        row.result = {**(row.result or {}), "value": new.value, "inputs": inputs, "in_limits": ok,
                      "recomputed": True}
        row.version += 1
        db.session.flush()
        record(actor, "batch.value.recomputed", ("step_record", old.id), batch=batch.id,
               before={"value": old.value, "unit": old.unit, "record": old.id},
               after={"value": new.value, "unit": new.unit, "record": new.id, "inputs": inputs, "in_limits": ok,
                      "formula": spec.formula}, reason=new.reason)
        if not ok:
            dev = _new_deviation(actor, batch, row, Severity.MAJOR.value, "limits_missed",
                                 f"{spec.title}: recomputed {to_text(result)} {spec.unit} is outside "
                                 f"{_limits_text(spec.low, spec.high, spec.unit)}",
                                 {"record": new.id, "corrects": old.id, "formula": spec.formula, "inputs": inputs},
                                 automatic=True, commit_record=False)
            _record_deviation(actor, dev)
        out.append(new)
    return out


def _recompute_yield(actor: Actor, batch: Batch, row: BatchStep, spec: rm.ProduceOutputStep, changed: set[str],
                     why: str, now: datetime) -> StepRecord | None:
    """A completed produce-output step whose theoretical quantity comes from a changed step:
    the quantity produced stays what was weighed, the theoretical and the yield are computed
    again (a new record superseding the old, audited, with a deviation when the yield now
    misses its limits)."""
    if not spec.theoretical_from or spec.theoretical_from not in changed:
        return None
    old = next(iter(_current_records(row, "value")), None)
    if old is None or old.value is None:
        return None
    theoretical = _values(batch.id).get(spec.theoretical_from)
    if theoretical is None:
        return None
    actual = Decimal(old.value)
    try:
        percent = spec.yield_percent(actual, theoretical)
    except (ArithmeticError, ValueError) as exc:
        raise Conflict(f"The correction makes the yield of step {spec.id} impossible to compute ({exc}); "
                       "nothing was changed.") from None
    if old.data.get("theoretical") == to_text(theoretical) and old.data.get("yield") == to_text(percent):
        return None
    ok = spec.yield_in_limits(percent)
    data = {**old.data, "theoretical": to_text(theoretical), "yield": to_text(percent),
            "recomputed_because": spec.theoretical_from}
    new = StepRecord(id=_new_id("R"), batch_id=batch.id, batch_step_id=row.id, attempt=old.attempt, kind="value",
                     value=old.value, unit=old.unit, data=data,
                     flags=["recomputed"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                     reason=f"yield recomputed after the correction of {spec.theoretical_from}: {why}",
                     recorded_at=now, recorded_by=actor.id)
    db.session.add(new)
    old.superseded_by = new.id
    old.flags = sorted(set(old.flags or []) | {"corrected"})
    row.result = {**(row.result or {}), "theoretical": data["theoretical"], "yield": data["yield"], "in_limits": ok,
                  "recomputed": True}
    row.version += 1
    db.session.flush()
    record(actor, "batch.value.recomputed", ("step_record", old.id), batch=batch.id,
           before={"value": old.value, "unit": old.unit, "record": old.id, "theoretical": old.data.get("theoretical"),
                   "yield": old.data.get("yield")},
           after={"value": new.value, "unit": new.unit, "record": new.id, "theoretical": data["theoretical"],
                  "yield": data["yield"], "in_limits": ok}, reason=new.reason)
    if not ok:
        dev = _new_deviation(actor, batch, row, Severity.MAJOR.value, "yield_out_of_limits",
                             f"{spec.title}: recomputed yield {data['yield']} % is outside "
                             f"{to_text(spec.yield_low)} to {to_text(spec.yield_high)} %",
                             {"record": new.id, "corrects": old.id, "step": spec.id,
                              "theoretical": data["theoretical"], "yield": data["yield"]},
                             automatic=True, commit_record=False)
        _record_deviation(actor, dev)
    return new


# ------------------------------------------------------------------------ deviations


def _new_deviation(actor: Actor, batch: BatchLike, step: StepLike | None, severity: str, category: str, description: str,
                   evidence: dict[str, Any], *, automatic: bool, commit_record: bool = True) -> Deviation:
    if severity not in {s.value for s in Severity}:
        raise ValidationFailed("The severity is minor, major or critical.", field="severity")
    dev = Deviation(id=_new_id("DEV"), batch_id=batch.id, batch_step_id=step.id if step else None,
                    step_seq=step.seq if step else None, severity=severity, category=category[:40],
                    description=description, evidence=evidence, automatic=automatic, status="open",
                    raised_at=clock(), raised_by=actor.id)
    db.session.add(dev)
    db.session.flush()
    if commit_record:
        _record_deviation(actor, dev)
    return dev


def _affected_lots(dev: Deviation) -> list[str]:
    ev = dev.evidence or {}
    lots = [ev[k] for k in ("lot",) if isinstance(ev.get(k), str)]
    return sorted(set(lots))


def _record_deviation(actor: Actor, dev: Deviation) -> None:
    step_id = dev.batch_step_id.split(":", 1)[1] if dev.batch_step_id else None
    record(actor, "deviation.raised", ("deviation", dev.id), batch=dev.batch_id,
           after={"step": step_id, "severity": dev.severity, "category": dev.category, "description": dev.description,
                  "automatic": dev.automatic, "evidence": dev.evidence},
           event=Event(DEVIATION_RAISED, "batch", dev.batch_id,
                       {"deviation_id": dev.id, "batch_id": dev.batch_id, "step_id": step_id, "severity": dev.severity,
                        "category": dev.category, "description": dev.description,
                        "affected_lot_ids": _affected_lots(dev)}, time=dev.raised_at))


def raise_deviation(actor: Actor, batch_id: str, severity: str, category: str, description: str, *,
                    step_id: str | None = None, evidence: dict[str, Any] | None = None) -> Deviation:
    """Raise a deviation by hand (on a step or on the whole batch)."""
    description = _text(description, "A description", "description")
    category = _text(category, "A category", "category")
    batch = _locked(Batch, batch_id)
    if batch.status not in (BatchStatus.IN_PROGRESS.value, BatchStatus.COMPLETED.value, BatchStatus.REVIEWED.value):
        raise Conflict(f"Batch {batch_id} is {batch.status}; deviations can no longer be raised on it.")
    step = get_step(batch_id, step_id) if step_id else None
    dev = _new_deviation(actor, batch, step, severity, category, description, evidence or {}, automatic=False)
    _refresh(batch, steps_of(batch_id))
    db.session.commit()
    return dev


def get_deviation(deviation_id: str) -> Deviation:
    dev = db.session.get(Deviation, deviation_id)
    if dev is None:
        raise NotFound(f"Deviation {deviation_id} is not known.")
    return dev


def deviations_of(batch_id: str) -> list[Deviation]:
    return list(db.session.execute(select(Deviation).where(Deviation.batch_id == batch_id)
                                   .order_by(Deviation.raised_at, Deviation.id)).scalars())


@esig.record_provider("deviation")
def deviation_record(deviation_id: str) -> dict[str, Any]:
    dev = get_deviation(deviation_id)
    return {"id": dev.id, "batch": dev.batch_id, "step": dev.batch_step_id, "severity": dev.severity,
            "category": dev.category, "description": dev.description, "evidence": dev.evidence,
            "disposition": dev.disposition, "disposition_reason": dev.disposition_reason, "qms_ref": dev.qms_ref}


def deviation_json(dev: Deviation) -> dict[str, Any]:
    return {**deviation_record(dev.id), "step": dev.batch_step_id.split(":", 1)[1] if dev.batch_step_id else None,
            "status": dev.status, "automatic": dev.automatic, "raised_at": _at(dev.raised_at),
            "raised_by": dev.raised_by, "closed_at": _at(dev.closed_at), "closed_by": dev.closed_by,
            "blocking": dev.status == "open" and dev.severity in BLOCKING}


def disposition_deviation(session_row: UserSession, credentials: esig.Credentials, deviation_id: str,
                          disposition: str, reason: str, *, terminal: str | None,
                          qms_ref: str | None = None) -> Deviation:
    """QA closes a deviation with a disposition, e-signed (meaning ``approved``).

    ``use_as_is`` / ``rework``: closed, the batch goes on. ``repeat_step``: the step gets a
    new attempt (earlier records stay, no longer current) if no later step was done.
    ``scrap`` / ``reject_batch``: the batch is rejected.
    """
    if disposition not in {d.value for d in Disposition}:
        raise ValidationFailed(f"The disposition is one of {', '.join(d.value for d in Disposition)}.",
                               field="disposition")
    reason = _text(reason, "A reason", "reason")
    dev = get_deviation(deviation_id)
    batch = _locked(Batch, dev.batch_id)
    dev = _locked(Deviation, deviation_id)
    if dev.status != "open":
        raise Conflict(f"Deviation {deviation_id} is already closed ({dev.disposition}).")
    user = session_row.user
    if "qa" not in user.role_names():
        raise Forbidden("Only QA dispositions deviations.")
    actor = actor_for(user, "qa", terminal)
    rows = steps_of(batch.id)
    step = next((r for r in rows if r.id == dev.batch_step_id), None)
    if disposition == Disposition.REPEAT_STEP.value:
        if step is None:
            raise ValidationFailed("repeat_step needs a deviation raised on a step.", field="disposition")
        later = [r.step_id for r in rows if r.seq > step.seq and r.state == StepState.COMPLETED.value]
        if later:
            raise Conflict(f"Step {step.step_id} cannot be repeated: later steps are done ({', '.join(later[:5])}).")
        if batch.status != BatchStatus.IN_PROGRESS.value:
            raise Conflict(f"Batch {batch.id} is {batch.status}; steps cannot be repeated.")
    dev.disposition, dev.disposition_reason, dev.qms_ref = disposition, reason, qms_ref
    db.session.flush()
    esig.sign(session_row, credentials, "deviation", dev.id, "approved", role="qa", terminal=terminal,
              batch=batch.id, permission=Permission.DEVIATION_DISPOSE, comment=reason, commit=False)
    now = clock()
    dev.status, dev.closed_at, dev.closed_by = "closed", now, user.id
    record(actor, "deviation.closed", ("deviation", dev.id), batch=batch.id, before={"status": "open"},
           after={"status": "closed", "disposition": disposition, "qms_ref": qms_ref}, reason=reason,
           event=Event(DEVIATION_CLOSED, "batch", batch.id,
                       {"deviation_id": dev.id, "disposition": disposition, "qms_ref": qms_ref}, time=now))
    if disposition == Disposition.REPEAT_STEP.value and step is not None:
        before = {"state": step.state, "attempt": step.attempt}
        step.attempt, step.state, step.version = step.attempt + 1, StepState.PENDING.value, step.version + 1
        step.started_at = step.completed_at = step.completed_by = None
        step.result = None
        record(actor, "batch.step.repeated", ("batch_step", step.id), batch=batch.id, before=before,
               after={"state": step.state, "attempt": step.attempt}, reason=f"deviation {dev.id}: {reason}")
    elif disposition in (Disposition.SCRAP.value, Disposition.REJECT_BATCH.value) and batch.status not in (
            BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        before_status = batch.status
        batch.status, batch.decided_at, batch.decided_by = BatchStatus.REJECTED.value, now, user.id
        record(actor, "batch.rejected", ("batch", batch.id), batch=batch.id, before={"status": before_status},
               after={"status": batch.status, "deviation": dev.id}, reason=reason)
        _release_claims(actor, batch.id)
    if batch.status == BatchStatus.IN_PROGRESS.value:
        _refresh(batch, rows)
    db.session.commit()
    return dev


# ----------------------------------------------------------------- review and release


def exceptions(batch_id: str) -> list[dict[str, Any]]:
    """Review by exception: everything QA must look at, with where and why."""
    get_batch(batch_id)
    out: list[dict[str, Any]] = []
    for dev in deviations_of(batch_id):
        out.append({"type": "deviation", "id": dev.id, "severity": dev.severity, "status": dev.status,
                    "step": deviation_json(dev)["step"], "text": dev.description, "disposition": dev.disposition})
    step_names = {s.id: s.step_id for s in steps_of(batch_id)}
    for r in records_of(batch_id):
        flags = set(r.flags or [])
        where = step_names.get(r.batch_step_id)
        if "out_of_limits" in flags:
            out.append({"type": "out_of_limits", "record": r.id, "step": where, "value": r.value, "unit": r.unit})
        if "correction" in flags:
            out.append({"type": "correction", "record": r.id, "corrects": r.corrects, "step": where,
                        "value": r.value, "reason": r.reason, "by": r.recorded_by})
        if "recomputed" in flags:
            out.append({"type": "recomputation", "record": r.id, "corrects": r.corrects, "step": where,
                        "value": r.value, "reason": r.reason})
        if "late" in flags:
            out.append({"type": "late_entry", "record": r.id, "step": where})
        if r.comment:
            out.append({"type": "comment", "record": r.id, "step": where, "text": r.comment})
    for req in db.session.execute(select(StepRequest).where(StepRequest.batch_id == batch_id,
                                                            StepRequest.outcome == "refused")
                                  .order_by(StepRequest.created_at)).scalars():
        out.append({"type": "refused_attempt", "step": step_names.get(req.batch_step_id), "text": req.result["detail"],
                    "deviation": req.result.get("deviation_id"), "by": req.actor_id})
    for s in steps_of(batch_id):
        if s.attempt > 1:
            out.append({"type": "repeated_step", "step": s.step_id, "attempts": s.attempt})
    for lot in materials.open_conditional_lots(batch_id):
        out.append({"type": "conditional_lot", "lot": lot})
    return out


def ebr_sha256(batch_id: str) -> str:
    """SHA-256 of the canonical electronic batch record: control recipe hash, steps, records, deviations."""
    batch = get_batch(batch_id)
    content = {"batch": batch.id, "work_order": batch.work_order_id, "recipe_hash": batch.recipe_hash,
               "steps": [{"step": s.step_id, "state": s.state, "attempt": s.attempt} for s in steps_of(batch_id)],
               "records": [_record_json(r) for r in records_of(batch_id)],
               "deviations": [deviation_record(d.id) for d in deviations_of(batch_id)]}
    return hashlib.sha256(canonical.canonical_json(content)).hexdigest()


@esig.record_provider("batch")
def batch_record(batch_id: str) -> dict[str, Any]:
    batch = get_batch(batch_id)
    return {"batch": batch.id, "work_order": batch.work_order_id, "recipe_hash": batch.recipe_hash,
            "ebr_sha256": ebr_sha256(batch_id)}


def release_blockers(batch_id: str) -> list[str]:
    """Why the batch cannot be released now (empty: it can)."""
    batch = get_batch(batch_id)
    problems = []
    open_steps = [s.step_id for s in steps_of(batch_id) if s.state != StepState.COMPLETED.value]
    if open_steps:
        problems.append(f"{len(open_steps)} step(s) are not completed ({', '.join(open_steps[:5])})")
    open_devs = [d.id for d in deviations_of(batch_id) if d.status == "open"]
    if open_devs:
        problems.append(f"deviation(s) {', '.join(open_devs)} are not resolved")
    lots = materials.open_conditional_lots(batch_id)
    if lots:
        problems.append(f"conditionally released lot(s) {', '.join(lots)} still have open conditions")
    if not _reviewed_trail(batch.id):
        problems.append("no signed audit-trail review covers the batch's current record")
    return problems


def _reviewed_trail(batch_id: str) -> bool:
    reviews = db.session.execute(select(AuditReview).where(AuditReview.batch_id == batch_id)
                                 .order_by(AuditReview.through_seq.desc())).scalars().all()
    for review in reviews:
        if not any(c.valid and c.meaning == "reviewed" for c in esig.signatures_for("audit_review", review.id)):
            continue
        later = db.session.execute(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.batch_id == batch_id, AuditEntry.seq > review.through_seq,
            AuditEntry.entity_type.not_in(("audit_review", "batch")))).scalar()  # the review's and QA's own signatures
        if not later:
            return True
    return False


def review_batch(session_row: UserSession, credentials: esig.Credentials, batch_id: str, *, terminal: str | None,
                 comment: str | None = None) -> Batch:
    """QA signs the batch record as reviewed (meaning ``reviewed``): completed → reviewed."""
    batch = _locked(Batch, batch_id)
    if batch.status != BatchStatus.COMPLETED.value:
        raise Conflict(f"Batch {batch_id} is {batch.status}; only a completed batch is reviewed.")
    problems = release_blockers(batch_id)
    if problems:
        raise Conflict(f"Batch {batch_id} cannot be reviewed: " + "; ".join(problems) + ".", problems=problems)
    actor = actor_for(session_row.user, "qa", terminal)
    esig.sign(session_row, credentials, "batch", batch_id, "reviewed", role="qa", terminal=terminal, batch=batch_id,
              permission=Permission.BATCH_REVIEW, comment=comment, commit=False)
    batch.status, batch.version = BatchStatus.REVIEWED.value, batch.version + 1
    record(actor, "batch.reviewed", ("batch", batch_id), batch=batch_id, before={"status": BatchStatus.COMPLETED.value},
           after={"status": batch.status})
    db.session.commit()
    return batch


def release_batch(session_row: UserSession, credentials: esig.Credentials, batch_id: str, decision: str, *,
                  terminal: str | None, comment: str | None = None) -> Batch:
    """QA releases or rejects a reviewed batch with an e-signature; posts ``mes.batch.released.v1``.

    Refused while steps are open, deviations unresolved, conditional lots open, or no signed
    audit-trail review covers the batch's record."""
    if decision not in ("released", "rejected"):
        raise ValidationFailed("The decision is released or rejected.", field="decision")
    batch = _locked(Batch, batch_id)
    if decision == "released":
        if batch.status != BatchStatus.REVIEWED.value:
            problems = release_blockers(batch_id)
            detail = f"Batch {batch_id} is {batch.status}; it must be completed and reviewed before release"
            raise Conflict(detail + (": " + "; ".join(problems) if problems else "") + ".", problems=problems)
        problems = release_blockers(batch_id)
        if problems:
            raise Conflict(f"Batch {batch_id} cannot be released: " + "; ".join(problems) + ".", problems=problems)
    elif batch.status in (BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        raise Conflict(f"Batch {batch_id} is already {batch.status}.")
    actor = actor_for(session_row.user, "qa", terminal)
    ebr = ebr_sha256(batch_id)
    entry = esig.sign(session_row, credentials, "batch", batch_id, decision, role="qa", terminal=terminal,
                      batch=batch_id, permission=Permission.BATCH_RELEASE, comment=comment, commit=False)
    sig = json.loads(entry.entry_bytes)["signature"]
    now = clock()
    before = batch.status
    batch.status = BatchStatus.RELEASED.value if decision == "released" else BatchStatus.REJECTED.value
    batch.decided_at, batch.decided_by, batch.version = now, session_row.user_id, batch.version + 1
    lot = db.session.execute(select(StepRecord.data).join(BatchStep, BatchStep.id == StepRecord.batch_step_id).where(
        StepRecord.batch_id == batch_id, BatchStep.kind == "produce_output", StepRecord.superseded_by.is_(None),
        StepRecord.kind == "value")).scalars().first()
    lot_id = lot.get("lot") if lot else None
    record(actor, f"batch.{decision}", ("batch", batch_id), batch=batch_id, before={"status": before},
           after={"status": batch.status, "lot": lot_id, "ebr_sha256": ebr}, reason=comment,
           event=Event(BATCH_RELEASED, "batch", batch_id,
                       {"batch_id": batch_id, "lot_id": lot_id, "disposition": decision, "conditions": None,
                        "esig": {"signer": sig["signer"], "name": sig["name"], "meaning": sig["meaning"],
                                 "signed_at": sig["at"], "record_hash": sig["record_hash"]},
                        "ebr_sha256": ebr}, correlation_id=batch.work_order_id, time=now))
    if batch.status == BatchStatus.REJECTED.value:
        _release_claims(actor, batch_id)
    wo = _locked(WorkOrder, batch.work_order_id)
    if wo.status == WorkOrderStatus.IN_PROGRESS.value:
        _wo_transition(actor, wo, (WorkOrderStatus.IN_PROGRESS.value,), WorkOrderStatus.COMPLETED,
                       "work_order.completed", extra={"batch": batch_id, "decision": decision})
    db.session.commit()
    return batch


# ----------------------------------------------------------------------------- views


def step_json(step: BatchStep, *, records: bool = False) -> dict[str, Any]:
    out = {"id": step.step_id, "seq": step.seq, "kind": step.kind, "title": step.title, "state": step.state,
           "attempt": step.attempt, "version": step.version, "started_at": _at(step.started_at),
           "completed_at": _at(step.completed_at), "completed_by": step.completed_by, "result": step.result}
    if records:
        out["records"] = [_record_json(r) for r in db.session.execute(
            select(StepRecord).where(StepRecord.batch_step_id == step.id)
            .order_by(StepRecord.recorded_at, StepRecord.id)).scalars()]
    return out


def batch_json(batch: Batch, *, steps: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": batch.id, "work_order": batch.work_order_id, "recipe_version": batch.recipe_version_id,
        "recipe_hash": batch.recipe_hash, "batch_size": {"value": batch.batch_size, "uom": batch.unit},
        "status": batch.status, "line": batch.line, "version": batch.version, "created_at": _at(batch.created_at),
        "completed_at": _at(batch.completed_at), "decided_at": _at(batch.decided_at), "decided_by": batch.decided_by,
        "deviations": [deviation_json(d) for d in deviations_of(batch.id)],
    }
    if steps:
        out["steps"] = [step_json(s, records=True) for s in steps_of(batch.id)]
    return out
