"""Review by exception, the electronic batch record's hash, and QA's review and release
(or rejection) of a completed batch, each e-signed."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func, select

from mes.audit import canonical, log
from mes.audit.log import Actor, record
from mes.audit.models import AuditEntry, AuditReview
from mes.db import db
from mes.errors import Conflict, MESError, NotFound, ValidationFailed
from mes.execution import common
from mes.execution.batches import get_batch, steps_of
from mes.execution.claims import _release_claims
from mes.execution.common import _locked, _new_id
from mes.execution.deviations import _step_name, deviation_record, deviations_of
from mes.execution.models import (
    Batch,
    BatchStatus,
    BatchStep,
    DeviationStatus,
    ExceptionReview,
    StepRecord,
    StepRequest,
    StepState,
    WorkOrder,
    WorkOrderStatus,
)
from mes.execution.overrides import overrides_of
from mes.execution.records import _record_json, records_of
from mes.execution.refusals import refusals_of
from mes.execution.work_orders import _wo_transition
from mes.materials import operations as materials
from mes.materials.models import LotStatus
from mes.quantities import to_text_or_none
from mes.signatures import operations as esig
from mes.steps import registry as step_kinds
from mes.users.models import UserSession
from mes.users.operations import actor_for
from mes.users.permissions import Permission

#: refusal codes that mean the device, not the operator, failed during capture
DEVICE_FAULT_CODES = frozenset({"no_gateway", "no_reading", "device_not_connected", "reading_behind", "bad_reading",
                                "no_value", "stale", "stale_reading", "device_error"})


def _found(batch_id: str) -> list[dict[str, Any]]:
    """Every exception of the batch, each with a stable ``key`` (what a review marks), the
    step it belongs to and the audit entity whose entries show it."""
    out: list[dict[str, Any]] = []
    steps = steps_of(batch_id)
    step_names = {s.id: s.step_id for s in steps}
    for dev in deviations_of(batch_id):
        out.append({"type": "deviation", "key": f"deviation:{dev.id}", "id": dev.id, "severity": dev.severity,
                    "status": dev.status, "step": _step_name(dev), "text": dev.description,
                    "disposition": dev.disposition, "disposition_reason": dev.disposition_reason,
                    "audit_entity": dev.id})
    for r in records_of(batch_id):
        flags = set(r.flags or [])
        where = step_names.get(r.batch_step_id)
        if "out_of_limits" in flags:
            out.append({"type": "out_of_limits", "key": f"out_of_limits:{r.id}", "record": r.id, "step": where,
                        "value": to_text_or_none(r.value), "unit": r.unit, "audit_entity": r.batch_step_id})
        if "correction" in flags:
            old = db.session.get(StepRecord, r.corrects) if r.corrects else None
            out.append({"type": "correction", "key": f"correction:{r.id}", "record": r.id, "corrects": r.corrects,
                        "step": where, "value": to_text_or_none(r.value), "old_value": to_text_or_none(
                            old.value) if old is not None else None, "unit": r.unit, "reason": r.reason,
                        "by": r.recorded_by, "audit_entity": r.corrects})
        if "recomputed" in flags:
            out.append({"type": "recomputation", "key": f"recomputation:{r.id}", "record": r.id, "corrects": r.corrects,
                        "step": where, "value": to_text_or_none(r.value), "reason": r.reason,
                        "audit_entity": r.corrects})
        if "late" in flags:
            out.append({"type": "late_entry", "key": f"late_entry:{r.id}", "record": r.id, "step": where,
                        "audit_entity": r.batch_step_id})
        if r.comment:
            out.append({"type": "comment", "key": f"comment:{r.id}", "record": r.id, "step": where, "text": r.comment,
                        "audit_entity": r.batch_step_id})
    for req in db.session.execute(select(StepRequest).where(StepRequest.batch_id == batch_id,
                                                            StepRequest.outcome == "refused")
                                  .order_by(StepRequest.created_at)).scalars():
        digest = hashlib.sha256(req.key.encode()).hexdigest()[:16]
        out.append({"type": "refused_attempt", "key": f"refused_request:{digest}", "step": step_names.get(
            req.batch_step_id), "text": req.result["detail"], "deviation": req.result.get("deviation_id"),
            "by": req.actor_id, "audit_entity": req.batch_step_id})
    for ref in refusals_of(batch_id):  # refusals that raised no deviation (those are listed above)
        if ref.get("deviation") is None:
            out.append({"type": "refused_attempt", "key": f"refused:{ref['audit_seq']}", "step": ref["step"],
                        "text": ref["reason"], "code": ref["code"], "device_fault": ref["code"] in DEVICE_FAULT_CODES,
                        "tried": ref["tried"], "deviation": None, "by": ref["by"], "at": ref["at"],
                        "audit_entity": f"{batch_id}:{ref['step']}", "audit_seq": ref["audit_seq"]})
    for s in steps:
        if s.attempt > 1:
            out.append({"type": "repeated_step", "key": f"repeated_step:{s.step_id}:{s.attempt}", "step": s.step_id,
                        "attempts": s.attempt, "audit_entity": s.id})
    for lot in materials.open_conditional_lots(batch_id):
        out.append({"type": "conditional_lot", "key": f"conditional_lot:{lot}", "lot": lot, "step": None,
                    "audit_entity": lot})
    out.extend(overrides_of(batch_id))
    return out


def exceptions(batch_id: str) -> list[dict[str, Any]]:
    """Review by exception: everything QA must look at, with where and why, and whether (by
    whom, when) QA marked it reviewed."""
    get_batch(batch_id)
    found = _found(batch_id)
    reviews = {r.exception_key: r for r in db.session.execute(
        select(ExceptionReview).where(ExceptionReview.batch_id == batch_id)).scalars()}
    for e in found:
        rev = reviews.get(e["key"])
        e["reviewed"] = None if rev is None else {"by": rev.reviewed_by, "at": rev.reviewed_at.isoformat(),
                                                  "note": rev.note}
    return found


def unreviewed_exceptions(batch_id: str) -> list[dict[str, Any]]:
    """The batch's exceptions QA has not marked reviewed yet."""
    return [e for e in exceptions(batch_id) if e["reviewed"] is None]


def mark_exception_reviewed(actor: Actor, batch_id: str, key: str, note: str | None = None) -> ExceptionReview:
    """QA marks one current exception of the batch reviewed (once; audited), as a person who took
    no part in the batch; a refusal is audited (:data:`QA_REFUSED`)."""
    try:
        return _mark_exception_reviewed(actor, batch_id, key, note)
    except (Conflict, NotFound) as exc:
        if db.session.get(Batch, batch_id) is not None:
            refused_qa_action(actor, batch_id, "exception_review", exc, {"exception": key})
        raise


def _mark_exception_reviewed(actor: Actor, batch_id: str, key: str, note: str | None) -> ExceptionReview:
    batch = _locked(Batch, batch_id)
    independent_of(batch_id, actor.id, "review its exceptions")
    if batch.status in (BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        raise Conflict(f"Batch {batch_id} is already {batch.status}; its exceptions are closed.")
    found = next((e for e in _found(batch_id) if e["key"] == key), None)
    if found is None:
        raise NotFound(f"Batch {batch_id} has no exception {key}.")
    note = note.strip() if isinstance(note, str) and note.strip() else None
    existing = db.session.execute(select(ExceptionReview).where(
        ExceptionReview.batch_id == batch_id, ExceptionReview.exception_key == key)).scalar_one_or_none()
    if existing is not None:
        raise Conflict(f"Exception {key} of batch {batch_id} was already reviewed by {existing.reviewed_by}.")
    row = ExceptionReview(id=_new_id("EXR"), batch_id=batch_id, exception_key=key, exception_type=found["type"],
                          note=note, reviewed_at=common.clock(), reviewed_by=actor.id)
    db.session.add(row)
    record(actor, "batch.exception.reviewed", ("exception_review", row.id), batch=batch_id,
           after={"exception": key, "type": found["type"], "step": found.get("step"), "note": note})
    db.session.commit()
    return row


#: audit actions on a step that mean its actor performed or verified it (not QA's dispositions)
PERFORMING_ACTIONS = ("batch.step.started", "batch.step.completed", "batch.step.recorded", "esig.signed")


def performed_or_verified(batch_id: str, user_id: str) -> list[str]:
    """Steps of the batch that ``user_id`` performed, recorded a value of, or signed/verified."""
    steps = {s.id: s for s in steps_of(batch_id)}
    mine = {s.id for s in steps.values() if s.completed_by == user_id}
    mine |= set(db.session.execute(select(StepRecord.batch_step_id).where(
        StepRecord.batch_id == batch_id, StepRecord.recorded_by == user_id)).scalars())
    mine |= set(db.session.execute(select(AuditEntry.entity_id).where(
        AuditEntry.batch_id == batch_id, AuditEntry.actor_id == user_id,
        AuditEntry.entity_type == "batch_step", AuditEntry.action.in_(PERFORMING_ACTIONS))).scalars())
    return [steps[i].step_id for i in sorted(mine & set(steps), key=lambda i: steps[i].seq)]


def independent_of(batch_id: str, user_id: str, act: str) -> None:
    """Segregation of duties (issue 19): a person who performed or verified a step of the batch
    may not ``act`` on it (review its exceptions or its audit trail, review, release or reject
    it). Raises Conflict with the steps named."""
    own = performed_or_verified(batch_id, user_id)
    if own:
        problem = sod_problem(user_id, own, act)
        raise Conflict(f"Batch {batch_id}: {problem}.", problems=[problem])


def sod_problem(user_id: str, own: list[str], act: str) -> str:
    """The refusal's sentence: who, the steps they took part in, and what they may not do."""
    return f"segregation of duties: {user_id} performed or verified step(s) {', '.join(own[:5])} of this batch " \
           f"and may not {act}"


def unreleased_consumed_lots(batch_id: str) -> list[str]:
    """Lots the batch consumed (not reversed) that are not released now, or are on an active hold."""
    out = []
    for lot_id in dict.fromkeys(c.lot_id for c in materials.consumptions(batch_id=batch_id)
                                if materials.reversal_of(c.id) is None):
        lot = materials.get_lot(lot_id)
        if lot.status != LotStatus.RELEASED.value or any(
                h.active for h in materials.holds_of(lot_id, active_only=True)):
            out.append(lot_id)
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


def release_blockers(batch_id: str, releaser: str | None = None, act: str = "release it") -> list[str]:
    """Why the batch cannot be released now (empty: it can); with ``releaser`` (the QA user
    about to sign; ``act``: what they would do) also segregation of duties: they performed and
    verified no step of it (:func:`independent_of`)."""
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
    unreleased = [lot for lot in unreleased_consumed_lots(batch_id) if lot not in lots]
    if unreleased:
        problems.append(f"consumed lot(s) {', '.join(unreleased)} are not released")
    broken = broken_gates(batch_id)
    if broken:
        problems.append(f"signature gate(s) {', '.join(broken)} no longer match the values they signed "
                        "(changed after signing)")
    unreviewed = unreviewed_exceptions(batch_id)
    if unreviewed:
        problems.append(f"{len(unreviewed)} exception(s) are not reviewed "
                        f"({', '.join(e['key'] for e in unreviewed[:5])})")
    if not _reviewed_trail(batch.id):
        problems.append("no signed audit-trail review covers the batch's current record")
    if releaser is not None:
        own = performed_or_verified(batch_id, releaser)
        if own:
            problems.append(sod_problem(releaser, own, act))
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
            AuditEntry.entity_type.not_in(("audit_review", "batch", "exception_review")))).scalar()  # QA's own review work
        if not later:
            return True
    return False


def review_batch(session_row: UserSession, credentials: esig.Credentials, batch_id: str, *, terminal: str | None,
                 comment: str | None = None) -> Batch:
    """QA signs the batch record as reviewed (meaning ``reviewed``): completed → reviewed, by a
    QA person who took no part in it. A refusal is audited (:data:`QA_REFUSED`)."""
    try:
        return _review_batch(session_row, credentials, batch_id, terminal=terminal, comment=comment)
    except (Conflict, ValidationFailed) as exc:
        refused_qa_action(actor_for(session_row.user, "qa", terminal), batch_id, "review", exc)
        raise


def _review_batch(session_row: UserSession, credentials: esig.Credentials, batch_id: str, *, terminal: str | None,
                  comment: str | None) -> Batch:
    batch = _locked(Batch, batch_id)
    if batch.status != BatchStatus.COMPLETED.value:
        raise Conflict(f"Batch {batch_id} is {batch.status}; only a completed batch is reviewed.")
    problems = release_blockers(batch_id, session_row.user_id, "review it")
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
    e-signature, in two steps (issue 19): the decision commits with its release checkpoint,
    then the eBR is generated over that checkpoint once the witnesses cosigned it, with
    ``mes.batch.released.v1`` (:mod:`mes.ebr.finishing`; pending if they do not answer in
    ``MES_EBR_WITNESS_WAIT_SECONDS``, finished by the background job). The decision carries to the lot the batch
    made (:func:`mes.materials.operations.dispose_produced_lot`): released, released under the
    conditions, or rejected; the work order is closed.

    Release is refused while steps are open, deviations unresolved, conditional lots open, or
    no signed audit-trail review covers the batch's record; each refusal is audited
    (:data:`RELEASE_REFUSED`, :func:`_refused_release`)."""
    try:
        batch = _release_batch(session_row, credentials, batch_id, decision, terminal=terminal, comment=comment,
                               conditions=conditions)
    except (Conflict, ValidationFailed) as exc:
        _refused_release(session_row, batch_id, decision, terminal, exc)
        raise
    from mes.ebr.finishing import finish_after_decision  # step 2: the eBR over the witnessed release checkpoint

    finish_after_decision(actor_for(session_row.user, "qa", terminal), batch_id)
    return batch


#: The audit action of a refused release or rejection (nothing an operator tries vanishes).
RELEASE_REFUSED = "batch.release.refused"


def _refused_release(session_row: UserSession, batch_id: str, decision: Any, terminal: str | None,
                     error: Conflict | ValidationFailed) -> None:
    """Audit a refused release of an existing batch, in a transaction of its own (the
    attempt itself is rolled back): the decision tried, the reason shown and the blockers."""
    _refused(actor_for(session_row.user, "qa", terminal), batch_id, RELEASE_REFUSED, {"decision": decision}, error)


#: The audit action of a refused QA review: of the batch, of one of its exceptions or of its
#: audit trail (as a release's refusal, a record of what was tried, why, and by whom).
QA_REFUSED = "batch.qa.refused"


def refused_qa_action(actor: Actor, batch_id: str, tried: str, error: MESError,
                      detail: dict[str, Any] | None = None) -> None:
    """Audit a refused QA review of an existing batch in a transaction of its own (the attempt is rolled back)."""
    _refused(actor, batch_id, QA_REFUSED, {"tried": tried, **(detail or {})}, error)


def _refused(actor: Actor, batch_id: str, action: str, tried: dict[str, Any], error: MESError) -> None:
    from mes.execution.refusals import _safe

    db.session.rollback()
    if db.session.get(Batch, batch_id) is None:
        return  # nothing to attach it to
    record(actor, action, ("batch", batch_id), batch=batch_id,
           after={**{k: _safe(v) for k, v in tried.items()}, "reason": error.detail, "code": error.slug,
                  "problems": _safe(list(error.extra.get("problems") or []))})
    db.session.commit()


def _release_batch(session_row: UserSession, credentials: esig.Credentials, batch_id: str, decision: str, *,
                   terminal: str | None, comment: str | None, conditions: str | None) -> Batch:
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
            problems = release_blockers(batch_id, session_row.user_id)
            detail = f"Batch {batch_id} is {batch.status}; it must be completed and reviewed before release"
            raise Conflict(detail + (": " + "; ".join(problems) if problems else "") + ".", problems=problems)
        problems = release_blockers(batch_id, session_row.user_id)
        if problems:
            raise Conflict(f"Batch {batch_id} cannot be released: " + "; ".join(problems) + ".", problems=problems)
    elif batch.status in (BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        raise Conflict(f"Batch {batch_id} is already {batch.status}.")
    else:
        independent_of(batch_id, session_row.user_id, "reject it")
    from mes.ebr.operations import preflight

    preflight()  # a release whose eBR could not be produced is refused before anything is signed
    actor = actor_for(session_row.user, "qa", terminal)
    ebr = ebr_sha256(batch_id)
    meaning = "rejected" if decision == "rejected" else "released"
    signed_comment = comment if conditions is None else f"Conditions: {conditions}" + (f" — {comment}" if comment else "")
    entry = esig.sign(session_row, credentials, "batch", batch_id, meaning, role="qa", terminal=terminal,
                      batch=batch_id, permission=Permission.BATCH_RELEASE, comment=signed_comment, commit=False)
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
    if lot_id is not None:  # the batch's disposition is its lot's
        materials.dispose_produced_lot(actor, lot_id, batch_id, decision, comment, conditions)
    if batch.status == BatchStatus.REJECTED.value:
        _release_claims(actor, batch_id)
    wo = _locked(WorkOrder, batch.work_order_id)
    if wo.status == WorkOrderStatus.IN_PROGRESS.value:
        _wo_transition(actor, wo, (WorkOrderStatus.IN_PROGRESS.value,), WorkOrderStatus.COMPLETED,
                       "work_order.completed", extra={"batch": batch_id, "decision": decision})
    # the decision's entry last, then the release checkpoint over it and all before it; the
    # appends above hold the log's lock, so the entry's seq, and the checkpoint's size, are known
    release_size = log.tree_size(db.session) + 1
    record(actor, f"batch.{meaning}", ("batch", batch_id), batch=batch_id, before={"status": before},
           after={"status": batch.status, "lot": lot_id, "ebr_sha256": ebr, "disposition": decision,
                  "conditions": conditions, "esig_seq": entry.seq, "release_checkpoint_size": release_size},
           reason=comment)
    _publish_release_checkpoint(release_size)
    db.session.commit()
    return batch


def _publish_release_checkpoint(size: int) -> None:
    """Sign the release checkpoint in the decision's transaction (refused with a sentence if
    the log fails its check before signing): no witness sees it before it is committed."""
    try:
        log.publish_checkpoint(db.session)
    except ValueError as exc:  # LogTampered
        raise Conflict(f"The release checkpoint cannot be signed: {exc}") from None
    cp = log.latest_checkpoint(db.session)
    if cp is None or cp.size != size:
        raise Conflict("The release checkpoint cannot be signed: the audit log failed its check before signing.")
