"""Review by exception, the electronic batch record's hash, and QA's review and release
(or rejection) of a completed batch, each e-signed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select

from mes.audit import canonical
from mes.audit.log import Event, record
from mes.audit.models import AuditEntry, AuditReview
from mes.db import db
from mes.errors import Conflict, ValidationFailed
from mes.execution import common
from mes.execution.batches import get_batch, steps_of
from mes.execution.claims import _release_claims
from mes.execution.common import BATCH_RELEASED, _locked
from mes.execution.deviations import _step_name, deviation_record, deviations_of
from mes.execution.models import (
    Batch,
    BatchStatus,
    BatchStep,
    DeviationStatus,
    StepRecord,
    StepRequest,
    StepState,
    WorkOrder,
    WorkOrderStatus,
)
from mes.execution.records import _record_json, records_of
from mes.execution.refusals import refusals_of
from mes.execution.work_orders import _wo_transition
from mes.materials import operations as materials
from mes.quantities import to_text_or_none
from mes.signatures import operations as esig
from mes.steps import registry as step_kinds
from mes.users.models import UserSession
from mes.users.operations import actor_for
from mes.users.permissions import Permission


def exceptions(batch_id: str) -> list[dict[str, Any]]:
    """Review by exception: everything QA must look at, with where and why."""
    get_batch(batch_id)
    out: list[dict[str, Any]] = []
    for dev in deviations_of(batch_id):
        out.append({"type": "deviation", "id": dev.id, "severity": dev.severity, "status": dev.status,
                    "step": _step_name(dev), "text": dev.description, "disposition": dev.disposition})
    step_names = {s.id: s.step_id for s in steps_of(batch_id)}
    for r in records_of(batch_id):
        flags = set(r.flags or [])
        where = step_names.get(r.batch_step_id)
        if "out_of_limits" in flags:
            out.append({"type": "out_of_limits", "record": r.id, "step": where, "value": to_text_or_none(r.value), "unit": r.unit})
        if "correction" in flags:
            out.append({"type": "correction", "record": r.id, "corrects": r.corrects, "step": where,
                        "value": to_text_or_none(r.value), "reason": r.reason, "by": r.recorded_by})
        if "recomputed" in flags:
            out.append({"type": "recomputation", "record": r.id, "corrects": r.corrects, "step": where,
                        "value": to_text_or_none(r.value), "reason": r.reason})
        if "late" in flags:
            out.append({"type": "late_entry", "record": r.id, "step": where})
        if r.comment:
            out.append({"type": "comment", "record": r.id, "step": where, "text": r.comment})
    for req in db.session.execute(select(StepRequest).where(StepRequest.batch_id == batch_id,
                                                            StepRequest.outcome == "refused")
                                  .order_by(StepRequest.created_at)).scalars():
        out.append({"type": "refused_attempt", "step": step_names.get(req.batch_step_id), "text": req.result["detail"],
                    "deviation": req.result.get("deviation_id"), "by": req.actor_id})
    for ref in refusals_of(batch_id):  # refusals that raised no deviation (those are listed above)
        if ref.get("deviation") is None:
            out.append({"type": "refused_attempt", "step": ref["step"], "text": ref["reason"], "code": ref["code"],
                        "tried": ref["tried"], "deviation": None, "by": ref["by"], "at": ref["at"]})
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
    """What QA signs when reviewing or releasing: the batch and the hash of its eBR."""
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
    open_devs = [d.id for d in deviations_of(batch_id) if d.status == DeviationStatus.OPEN.value]
    if open_devs:
        problems.append(f"deviation(s) {', '.join(open_devs)} are not resolved")
    lots = materials.open_conditional_lots(batch_id)
    if lots:
        problems.append(f"conditionally released lot(s) {', '.join(lots)} still have open conditions")
    broken = broken_gates(batch_id)
    if broken:
        problems.append(f"signature gate(s) {', '.join(broken)} no longer match the values they signed "
                        "(changed after signing)")
    if not _reviewed_trail(batch.id):
        problems.append("no signed audit-trail review covers the batch's current record")
    problems.extend(esig.forged_signatures_in_batch(batch.id))  # issue 17: never release on a forged signature
    return problems


def broken_gates(batch_id: str) -> list[str]:
    """Completed signature gates whose signature fails verification now: a value they bound
    (the steps they cover, or the earlier steps of their operation) was corrected after signing."""
    signed = db.session.execute(select(AuditEntry.entity_id).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action == "esig.signed",
        AuditEntry.entity_type == "batch_step").distinct()).scalars().all()
    names = {s.id: s.step_id for s in steps_of(batch_id) if s.state == StepState.COMPLETED.value}
    broken = []
    for step_id in sorted(set(signed) & set(names), key=lambda i: list(names).index(i)):
        checks = esig.signatures_for("batch_step", step_id)
        if checks and not checks[-1].valid:
            broken.append(names[step_id])
    return broken


def _reviewed_trail(batch_id: str) -> bool:
    """Whether a signed audit-trail review covers every entry of the batch's record."""
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


DECISIONS = ("released", "conditionally_released", "rejected")


def release_batch(session_row: UserSession, credentials: esig.Credentials, batch_id: str, decision: str, *,
                  terminal: str | None, comment: str | None = None, conditions: str | None = None) -> Batch:
    """QA releases (outright or under ``conditions``) or rejects a reviewed batch with an
    e-signature; posts ``mes.batch.released.v1``. The decision carries to the lot the batch
    made (:func:`mes.materials.operations.dispose_produced_lot`): released, released under the
    conditions, or rejected; the work order is closed.

    Release is refused while steps are open, deviations unresolved, conditional lots open, or
    no signed audit-trail review covers the batch's record."""
    if decision not in DECISIONS:
        raise ValidationFailed("The decision is released, conditionally_released or rejected.", field="decision")
    conditions = conditions.strip() if isinstance(conditions, str) and conditions.strip() else None
    if decision == "conditionally_released" and conditions is None:
        raise ValidationFailed("A conditional release states its conditions.", field="conditions")
    if decision != "conditionally_released" and conditions is not None:
        raise ValidationFailed("Only a conditional release has conditions.", field="conditions")
    batch = _locked(Batch, batch_id)
    if decision != "rejected":
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
    meaning = "rejected" if decision == "rejected" else "released"
    signed_comment = comment if conditions is None else f"Conditions: {conditions}" + (f" — {comment}" if comment else "")
    entry = esig.sign(session_row, credentials, "batch", batch_id, meaning, role="qa", terminal=terminal,
                      batch=batch_id, permission=Permission.BATCH_RELEASE, comment=signed_comment, commit=False)
    sig = json.loads(entry.entry_bytes)["signature"]
    now = common.clock()
    before = batch.status
    batch.status = BatchStatus.REJECTED.value if decision == "rejected" else BatchStatus.RELEASED.value
    batch.decided_at, batch.decided_by, batch.version = now, session_row.user_id, batch.version + 1
    values = db.session.execute(select(BatchStep.kind, StepRecord.data).join(
        BatchStep, BatchStep.id == StepRecord.batch_step_id).where(
        StepRecord.batch_id == batch_id, StepRecord.superseded_by.is_(None), StepRecord.kind == "value")).all()
    # the lot this batch made: asked of each step's kind (the produce-output kind knows it)
    lot_id = next((lot for kind, data in values if (lot := step_kinds.get(kind).produced_lot([{"data": data or {}}]))),
                  None)
    record(actor, f"batch.{meaning}", ("batch", batch_id), batch=batch_id, before={"status": before},
           after={"status": batch.status, "lot": lot_id, "ebr_sha256": ebr, "disposition": decision,
                  "conditions": conditions}, reason=comment,
           event=Event(BATCH_RELEASED, "batch", batch_id,
                       {"batch_id": batch_id, "lot_id": lot_id, "disposition": decision, "conditions": conditions,
                        "esig": {"signer": sig["signer"], "name": sig["name"], "meaning": sig["meaning"],
                                 "signed_at": sig["at"], "record_hash": sig["record_hash"]},
                        "ebr_sha256": ebr}, correlation_id=batch.work_order_id, time=now))
    if lot_id is not None:  # the batch's disposition is its lot's
        materials.dispose_produced_lot(actor, lot_id, batch_id, decision, comment, conditions)
    if batch.status == BatchStatus.REJECTED.value:
        _release_claims(actor, batch_id)
    wo = _locked(WorkOrder, batch.work_order_id)
    if wo.status == WorkOrderStatus.IN_PROGRESS.value:
        _wo_transition(actor, wo, (WorkOrderStatus.IN_PROGRESS.value,), WorkOrderStatus.COMPLETED,
                       "work_order.completed", extra={"batch": batch_id, "decision": decision})
    db.session.commit()
    return batch
