"""Deviations: raised automatically by the engine or by hand, dispositioned by QA with an
e-signature. Whether one blocks a step is :func:`mes.execution.batches.blocks`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from mes.audit.log import Actor, Event, record
from mes.db import db
from mes.errors import Conflict, Forbidden, ValidationFailed
from mes.execution import common
from mes.execution.batches import BatchLike, StepLike, _refresh, blocks_any, get_step, steps_of
from mes.execution.claims import _release_claims
from mes.execution.common import DEVIATION_CLOSED, DEVIATION_RAISED, _at, _locked, _new_id, _text
from mes.execution.models import (
    Batch,
    BatchStatus,
    BatchStep,
    Deviation,
    DeviationStatus,
    Disposition,
    Severity,
    StepState,
)
from mes.signatures import operations as esig
from mes.users.models import UserSession
from mes.users.operations import actor_for
from mes.users.permissions import Permission
from mes.validation import get_or_404


def _new_deviation(actor: Actor, batch: BatchLike, step: StepLike | None, severity: str, category: str, description: str,
                   evidence: dict[str, Any], *, automatic: bool, commit_record: bool = True) -> Deviation:
    """Add an open deviation (audited and its event posted now, or by the caller with
    :func:`_record_deviation` when ``commit_record`` is False); the caller commits."""
    if severity not in {s.value for s in Severity}:
        raise ValidationFailed("The severity is minor, major or critical.", field="severity")
    dev = Deviation(id=_new_id("DEV"), batch_id=batch.id, batch_step_id=step.id if step else None,
                    step_seq=step.seq if step else None, severity=severity, category=category[:40],
                    description=description, evidence=evidence, automatic=automatic, status=DeviationStatus.OPEN.value,
                    raised_at=common.clock(), raised_by=actor.id)
    db.session.add(dev)
    db.session.flush()
    if commit_record:
        _record_deviation(actor, dev)
    return dev


def _affected_lots(dev: Deviation) -> list[str]:
    """The lots the deviation's evidence names (for the outbox event)."""
    ev = dev.evidence or {}
    lots = [ev[k] for k in ("lot",) if isinstance(ev.get(k), str)]
    return sorted(set(lots))


def _record_deviation(actor: Actor, dev: Deviation) -> None:
    """The audit entry and outbox event of a raised deviation."""
    step_id = _step_name(dev)
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
    """The deviation ``deviation_id`` (NotFound if none)."""
    return get_or_404(Deviation, deviation_id, "Deviation")


def deviations_of(batch_id: str) -> list[Deviation]:
    """The batch's deviations, open and closed, in the order raised."""
    return list(db.session.execute(select(Deviation).where(Deviation.batch_id == batch_id)
                                   .order_by(Deviation.raised_at, Deviation.id)).scalars())


@esig.record_provider("deviation")
def deviation_record(deviation_id: str) -> dict[str, Any]:
    """What a disposition signs: the deviation and its decision."""
    dev = get_deviation(deviation_id)
    return {"id": dev.id, "batch": dev.batch_id, "step": dev.batch_step_id, "severity": dev.severity,
            "category": dev.category, "description": dev.description, "evidence": dev.evidence,
            "disposition": dev.disposition, "disposition_reason": dev.disposition_reason, "qms_ref": dev.qms_ref}


def _step_name(dev: Deviation) -> str | None:
    """The recipe step id the deviation was raised on (None: the whole batch)."""
    return dev.batch_step_id.split(":", 1)[1] if dev.batch_step_id else None


def deviation_json(dev: Deviation, steps: Sequence[BatchStep] | None = None) -> dict[str, Any]:
    """The deviation as the API shows it; ``blocking``: it blocks a step still to be done
    (:func:`~mes.execution.batches.blocks`). ``steps``: the batch's steps, if the caller has them."""
    rows = steps_of(dev.batch_id) if steps is None else steps
    return {**deviation_record(dev.id), "step": _step_name(dev),
            "status": dev.status, "automatic": dev.automatic, "raised_at": _at(dev.raised_at),
            "raised_by": dev.raised_by, "closed_at": _at(dev.closed_at), "closed_by": dev.closed_by,
            "blocking": blocks_any(dev, rows)}


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
    if dev.status != DeviationStatus.OPEN.value:
        raise Conflict(f"Deviation {deviation_id} is already closed ({dev.disposition}).")
    user = session_row.user
    if "qa" not in user.role_names():
        raise Forbidden("Only QA dispositions deviations.")
    actor = actor_for(user, "qa", terminal)
    rows, step = _check_disposition(batch, dev, disposition)
    dev.disposition, dev.disposition_reason, dev.qms_ref = disposition, reason, qms_ref
    db.session.flush()
    esig.sign(session_row, credentials, "deviation", dev.id, "approved", role="qa", terminal=terminal,
              batch=batch.id, permission=Permission.DEVIATION_DISPOSE, comment=reason, commit=False)
    _close(actor, batch, dev, rows, step, disposition, reason, qms_ref, user.id)
    db.session.commit()
    return dev


def _check_disposition(batch: Batch, dev: Deviation, disposition: str) -> tuple[list[BatchStep], BatchStep | None]:
    """The batch's steps and the deviation's step, if the disposition may be carried out now."""
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
    return rows, step


def _close(actor: Actor, batch: Batch, dev: Deviation, rows: list[BatchStep], step: BatchStep | None,
           disposition: str, reason: str, qms_ref: str | None, closed_by: str,
           extra: dict[str, Any] | None = None) -> None:
    """Close the deviation with its disposition and carry the disposition out (the caller commits)."""
    dev.disposition, dev.disposition_reason, dev.qms_ref = disposition, reason, qms_ref
    now = common.clock()
    dev.status, dev.closed_at, dev.closed_by = DeviationStatus.CLOSED.value, now, closed_by
    record(actor, "deviation.closed", ("deviation", dev.id), batch=batch.id, before={"status": DeviationStatus.OPEN.value},
           after={"status": dev.status, "disposition": disposition, "qms_ref": qms_ref, **(extra or {})}, reason=reason,
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
        batch.status, batch.decided_at, batch.decided_by = BatchStatus.REJECTED.value, now, closed_by
        record(actor, "batch.rejected", ("batch", batch.id), batch=batch.id, before={"status": before_status},
               after={"status": batch.status, "deviation": dev.id}, reason=reason)
        _release_claims(actor, batch.id)
    if batch.status == BatchStatus.IN_PROGRESS.value:
        _refresh(batch, rows)


def disposition_from_qms(actor: Actor, deviation_id: str, disposition: str, reason: str, *, qms_ref: str | None,
                         approved_by: str, capa_id: str | None = None) -> Deviation:
    """QMS closes a deviation with a disposition its own approver signed there
    (``qms.deviation.dispositioned.v1``), recorded by the integration's system actor: the same
    rules as :func:`disposition_deviation` (repeat only if no later step is done; scrap and
    reject_batch reject the batch), with ``approved_by`` and ``capa_id`` in the audit entry."""
    if disposition not in {d.value for d in Disposition}:
        raise ValidationFailed(f"The disposition is one of {', '.join(d.value for d in Disposition)}.",
                               field="disposition")
    reason = _text(reason, "A reason", "reason")
    approved_by = _text(approved_by, "The approver", "approved_by")
    dev = get_deviation(deviation_id)
    batch = _locked(Batch, dev.batch_id)
    dev = _locked(Deviation, deviation_id)
    if dev.status != DeviationStatus.OPEN.value:
        raise Conflict(f"Deviation {deviation_id} is already closed ({dev.disposition}).")
    rows, step = _check_disposition(batch, dev, disposition)
    _close(actor, batch, dev, rows, step, disposition, reason, qms_ref, actor.id,
           {"approved_by": approved_by, "capa_id": capa_id})
    db.session.commit()
    return dev
