"""Step requests: starting and completing a step, idempotent by key, checked against the
step's version, dispatched to the step kind's handler (:meth:`mes.steps.base.StepKind.complete`, found in :mod:`mes.steps.registry`).

Concurrency: every mutating call locks the batch row (``SELECT … FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), checks the caller's
``expected_version`` and the idempotency key *after* taking the lock, so of two terminals
racing on one step exactly one wins and the other gets :class:`Conflict`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from mes.audit.log import Actor, Event, record
from mes.db import db
from mes.errors import Conflict, Forbidden, MESError, ValidationFailed
from mes.execution import common
from mes.execution.batches import (
    _check_can_act,
    _read_for_completion,
    _refresh,
    _step_writes,
    _stmt,
    control_recipe,
    get_step,
    steps_of,
)
from mes.execution.claims import _release_claims
from mes.execution.common import (
    BATCH_COMPLETED,
    DEFAULT_MAX_FAILED_WEIGHINGS,
    DEFAULT_MAX_READING_AGE_MS,
    INSPECTION_RECORDED,
    SessionSource,
    StepRefused,
    _at,
    _locked,
    _RefuseWithDeviation,
)
from mes.execution.deviations import _new_deviation, _record_deviation
from mes.execution.models import Batch, BatchStatus, BatchStep, StepRequest, StepState
from mes.execution.records import _record_json, _record_row
from mes.execution.refusals import record_refusal
from mes.gateway.store import ReadingStore
from mes.steps import registry as step_kinds
from mes.steps.context import StepContext
from mes.users.operations import check_terminal_line


class IdempotencyKeyReused(ValidationFailed):
    """The key was used for another request (another step, action or payload): refused, as
    the events contract refuses an inbound command whose key came with a different body."""

    slug, title = "idempotency-key-reused", "The Idempotency-Key was used for another request"


_SECRETS = frozenset({"pin", "password", "secret"})


def request_hash(batch_step_id: str, action: str, expected_version: int, payload: dict[str, Any] | None) -> str:
    """SHA-256 of the canonical request (sorted keys, no spaces, UTF-8): what makes two
    requests under one key the same request. The signer's secrets (PIN, password) are left
    out: a hash of a short PIN would let anyone reading the table find it."""
    kept = {k: v for k, v in (payload or {}).items() if k not in _SECRETS}
    body = {"step": batch_step_id, "action": action, "expected_version": expected_version, "payload": kept}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _replay(key: str, batch_step_id: str, action: str, request_sha256: str) -> dict[str, Any] | None:
    """The first answer to the same request with this key (None: a new key); a key used for
    another request (another step, action or payload) is refused (422), never replayed."""
    req = db.session.get(StepRequest, key)
    if req is None:
        return None
    same = req.batch_step_id == batch_step_id and req.action == action and (
        req.request_sha256 is None or req.request_sha256 == request_sha256)
    if not same:
        raise IdempotencyKeyReused("This Idempotency-Key was already used for a different request (another step, "
                                   "action or value); nothing was recorded. Send a new request with a new key.",
                                   field="Idempotency-Key")
    if req.outcome == "refused":
        raise StepRefused(req.result["detail"], deviation_id=req.result.get("deviation_id"), replayed=True)
    return {**req.result, "replayed": True}


def _check_key(key: str) -> str:
    """The idempotency key, checked."""
    if not key or not isinstance(key, str) or len(key) > 200:
        raise ValidationFailed("An idempotency key (1 to 200 characters) is required.", field="Idempotency-Key")
    return key


def start_step(actor: Actor, batch_id: str, step_id: str, idempotency_key: str, expected_version: int) -> dict[str, Any]:
    """Start a step (timers: the server clock starts now); idempotent like :func:`complete_step`."""
    key = _check_key(idempotency_key)
    batch = _locked(Batch, batch_id)
    check_terminal_line(actor.terminal, batch.line)
    step = _locked(BatchStep, f"{batch_id}:{step_id}")
    digest = request_hash(step.id, "start", expected_version, None)
    replay = _replay(key, step.id, "start", digest)
    if replay is not None:
        db.session.rollback()
        return replay
    rows = steps_of(batch_id)
    _check_can_act(batch, step, rows)
    if step.state == StepState.IN_PROGRESS.value:
        raise Conflict(f"Step {step_id} is already in progress.")
    if step.version != expected_version:
        raise Conflict(f"Step {step_id} changed (version {step.version}, you had {expected_version}); reload it.")
    now = common.clock()
    step.state, step.started_at, step.version = StepState.IN_PROGRESS.value, now, step.version + 1
    result = {"batch": batch_id, "step": step_id, "state": step.state, "started_at": _at(now), "version": step.version}
    db.session.add(StepRequest(key=key, batch_id=batch_id, batch_step_id=step.id, action="start", actor_id=actor.id,
                               outcome="ok", result=result, created_at=now, request_sha256=digest))
    record(actor, "batch.step.started", ("batch_step", step.id), batch=batch_id,
           before={"state": StepState.READY.value}, after={"state": step.state, "started_at": _at(now)})
    _commit_request(key)
    return result


def _commit_request(key: str) -> None:
    """Commit a step request; a key recorded by another terminal at the same moment is a Conflict."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("The same request was recorded by another terminal at the same moment.", key=key) from None


def complete_step(actor: Actor, batch_id: str, step_id: str, payload: dict[str, Any], idempotency_key: str,
                  expected_version: int, *, session_row: SessionSource = None,
                  readings: ReadingStore | None = None,
                  max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS,
                  max_failed_weighings: int = DEFAULT_MAX_FAILED_WEIGHINGS) -> dict[str, Any]:
    """Complete (or, for a weigh step with ``more``, add one container to) a step.

    The same ``idempotency_key`` records once and returns the same result; a stale
    ``expected_version`` is a Conflict. Kind-specific ``payload`` (values as decimal
    strings): see the handlers below. A weigh step names the scale (``device_id``); the
    weight is the latest reading of that device in ``readings`` (the gateway's store), never
    a value sent by the client, and is refused when older than ``max_reading_age_ms`` or
    when it is not the reading the operator confirmed (``sequence``, ``value``).
    Every refusal of a rule is audited in a transaction of its own
    (:func:`~mes.execution.refusals.record_refusal`) and listed for review by exception.
    Refusals that raise a deviation (unusable lot at the scale, equipment not clean or out
    of calibration, a weight out of tolerance reported by the operator or refused
    ``max_failed_weighings`` times) record nothing of the refused entry but
    commit the deviation, and raise :class:`StepRefused` naming it. Everything a completion
    writes (step records, consumptions, produced lot, equipment status, audit entries,
    outbox events) is one transaction.
    """
    key = _check_key(idempotency_key)
    if not isinstance(payload, dict):
        raise ValidationFailed("The payload is an object.", field="payload")
    digest = request_hash(f"{batch_id}:{step_id}", "complete", expected_version, payload)
    try:
        return _complete(actor, batch_id, step_id, payload, key, expected_version, session_row, readings,
                         max_reading_age_ms, max_failed_weighings, digest)
    except _RefuseWithDeviation as refusal:
        db.session.rollback()
        return _refuse(actor, batch_id, step_id, key, refusal, digest, payload)
    except (StepRefused, Forbidden) as refused:  # a rule refused it: the refusal is audited on its own
        db.session.rollback()
        record_refusal(actor, batch_id, step_id, payload, refused)
        raise
    except MESError:
        db.session.rollback()
        raise
    except IntegrityError:
        db.session.rollback()
        replay = _replay(key, f"{batch_id}:{step_id}", "complete", digest)
        if replay is not None:
            return replay
        raise Conflict(f"Step {step_id} was changed by someone else at the same moment; reload it.") from None


def _refuse(actor: Actor, batch_id: str, step_id: str, key: str, refusal: _RefuseWithDeviation,
            digest: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Commit the refusal's deviation, its audit entry (:func:`record_refusal`) and the refused
    request (nothing else), then raise StepRefused."""
    batch = _locked(Batch, batch_id)
    step = _locked(BatchStep, f"{batch_id}:{step_id}")
    replay = _replay(key, step.id, "complete", digest)
    if replay is not None:
        return replay
    dev = _new_deviation(actor, batch, step, refusal.severity, refusal.category, refusal.detail, refusal.evidence,
                         automatic=True)
    db.session.add(StepRequest(key=key, batch_id=batch_id, batch_step_id=step.id, action="complete",
                               actor_id=actor.id, outcome="refused",
                               result={"detail": refusal.detail, "deviation_id": dev.id}, created_at=common.clock(),
                               request_sha256=digest))
    _refresh(batch, steps_of(batch_id))
    record_refusal(actor, batch_id, step_id, payload, StepRefused(refusal.detail, code=refusal.category),
                   deviation_id=dev.id, commit=False)
    _commit_request(key)
    raise StepRefused(refusal.detail, deviation_id=dev.id, severity=dev.severity)


def _complete(actor: Actor, batch_id: str, step_id: str, payload: dict[str, Any], key: str, expected_version: int,
              session_row: SessionSource, readings: ReadingStore | None = None,
              max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS,
              max_failed_weighings: int = DEFAULT_MAX_FAILED_WEIGHINGS, digest: str = "") -> dict[str, Any]:
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
                                max_reading_age_ms, max_failed_weighings, digest)
    except MESError:
        db.session.rollback()  # what this attempt wrote is gone; only a committed first request counts
        replay = _replay(key, f"{batch_id}:{step_id}", "complete", digest)
        db.session.rollback()
        if replay is None:
            raise
        return replay


def _complete_locked(actor: Actor, batch_id: str, step_id: str, payload: dict[str, Any], key: str,
                     expected_version: int, session_row: SessionSource, readings: ReadingStore | None,
                     max_reading_age_ms: int, max_failed_weighings: int = DEFAULT_MAX_FAILED_WEIGHINGS,
                     digest: str = "") -> dict[str, Any]:
    # ordering and states depend only on the steps not completed yet
    batch, rows, blockers = _read_for_completion(batch_id)
    check_terminal_line(actor.terminal, batch.line)
    step = next((r for r in rows if r.step_id == step_id), None)
    if step is None:
        get_step(batch_id, step_id)  # NotFound, else it is completed
        raise Conflict(f"Step {step_id} is already completed.", step_state=StepState.COMPLETED.value)
    _check_can_act(batch, step, rows, blockers)
    if step.version != expected_version:
        raise Conflict(f"Step {step_id} changed (version {step.version}, you had {expected_version}); reload it.",
                       version=step.version)
    control = control_recipe(batch)
    ctx = StepContext(actor, batch, step, rows, control, control.step(step.step_id), payload, common.clock(), session_row,
                      readings, max_reading_age_ms, max_failed_weighings=max_failed_weighings)
    step_kinds.get(step.kind).complete(ctx)
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
    ready = _refresh(batch, rows, [*blockers, *deviations])
    result["ready"] = ready
    writes = _step_writes(step, rows, states_before)
    writes.append((_stmt("insert_request"), {
        "key": key, "batch_id": batch_id, "batch_step_id": step.id, "action": "complete", "actor_id": actor.id,
        "outcome": "ok", "result": result, "created_at": ctx.now, "request_sha256": digest}))
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
                  "deviations": [d.id for d in deviations]}, statements=writes,
           event=None if ctx.inspection is None else Event(
               INSPECTION_RECORDED, "batch", batch_id, ctx.inspection, correlation_id=batch.work_order_id, time=ctx.now))
    for dev in deviations:
        _record_deviation(actor, dev)
    if ctx.complete and all(r.state == StepState.COMPLETED.value for r in rows):
        result["batch_state"] = _complete_batch(actor, _locked(Batch, batch_id), ctx.now)
    db.session.commit()
    return result


def _complete_batch(actor: Actor, batch: Batch, now: datetime) -> str:
    """The last step completed: the batch is completed, its claimed equipment dirty."""
    batch.status, batch.completed_at, batch.version = BatchStatus.COMPLETED.value, now, batch.version + 1
    record(actor, "batch.completed", ("batch", batch.id), batch=batch.id,
           before={"status": BatchStatus.IN_PROGRESS.value}, after={"status": batch.status},
           event=Event(BATCH_COMPLETED, "batch", batch.id,
                       {"batch_id": batch.id, "work_order_id": batch.work_order_id, "completed_at": _at(now)},
                       correlation_id=batch.work_order_id, time=now))
    _release_claims(actor, batch.id)
    return batch.status
