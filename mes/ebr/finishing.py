"""The second step of a release (issue 19): the eBR over the *witnessed* release checkpoint.

QA's decision commits first (:func:`mes.execution.release.release_batch`, transaction 1)
with a checkpoint published over the log in that transaction, the release checkpoint, whose
size the decision's ``batch.<meaning>`` entry records (``release_checkpoint_size``). No
witness ever sees a checkpoint that could still roll back. After the commit the release
checkpoint itself (not merely the latest) is sent to every configured witness and the
request waits, at most ``MES_EBR_WITNESS_WAIT_SECONDS``, for each to cosign it; then
transaction 2 (:func:`finish_release`) builds the batch's audit proof bundle against it, with
the cosignature lines, generates, signs and stores the eBR, records ``ebr.generated`` and
emits ``mes.batch.released.v1`` with the PDF's SHA-256.

A witness that does not answer in time leaves the eBR pending, never the release half-done:
each server's background job (:func:`finish_pending`) generates it once every witness has
cosigned, or after ``MES_EBR_WITNESS_MAX_WAIT_SECONDS`` with the cosignatures received
(the ``ebr.generated`` entry and the eBR say which witnesses are missing; an audit alarm is
raised). The same job finishes a release whose process died between the two transactions.

A witness that has already cosigned a later checkpoint (another server's) can no longer
cosign the release checkpoint (it refuses anything smaller than what it holds): then every
witness is sent the latest checkpoint and the bundle is built against the first later
checkpoint all of them cosigned. It extends the release checkpoint (each witness checked
the consistency proof), so it covers every entry of the release, witnessed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mes.audit.log import Actor, Event, record
from mes.audit.models import AuditCheckpoint, AuditCosignature, AuditEntry
from mes.db import as_utc, db
from mes.ebr import operations as eo
from mes.ebr.models import EbrDocument
from mes.execution import common
from mes.execution.models import Batch, BatchStatus
from mes.witness import client

logger = logging.getLogger("mes.ebr")

#: the audit actions of QA's decision (transaction 1)
DECISION_ACTIONS = ("batch.released", "batch.rejected")
#: who finishes a pending release in the background
EBR_FINISHER = Actor.system("ebr-release")
#: batches decided before the two-step release (no release checkpoint recorded): never pending
_LEGACY: set[str] = set()
#: A pending eBR that still cannot be made (a time-stamp authority down, a key unreadable) this
#: long after QA's decision raises an audit alarm, once while it is open; before that, a
#: passing fault is only logged and retried at each poll.
STUCK_ALARM_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class Release:
    """A decided batch as its decision entry recorded it, and its release checkpoint."""

    batch_id: str
    checkpoint: AuditCheckpoint
    decision: dict[str, Any]
    lot_id: str | None
    esig_seq: int
    decided_at: datetime
    work_order: str


def _decision_after(batch_id: str) -> dict[str, Any] | None:
    """The ``after`` of the batch's decision entry (None before the decision)."""
    row = db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.batch_id == batch_id, AuditEntry.entity_type == "batch", AuditEntry.entity_id == batch_id,
        AuditEntry.action.in_(DECISION_ACTIONS)).order_by(AuditEntry.seq.desc()).limit(1)).scalar()
    return None if row is None else json.loads(bytes(row))["after"]


def release_of(batch_id: str) -> Release | None:
    """The release of ``batch_id`` as transaction 1 recorded it; None if it was not decided
    with a release checkpoint (undecided, or decided before the two-step release)."""
    batch = db.session.get(Batch, batch_id)
    if batch is None or batch.status not in (BatchStatus.RELEASED.value, BatchStatus.REJECTED.value):
        return None
    after = _decision_after(batch_id)
    if not after or "release_checkpoint_size" not in after:
        return None
    cp = db.session.execute(select(AuditCheckpoint).where(AuditCheckpoint.size == after["release_checkpoint_size"])
                            .order_by(AuditCheckpoint.id).limit(1)).scalar()
    if cp is None:
        raise RuntimeError(f"batch {batch_id}: no checkpoint of size {after['release_checkpoint_size']}")
    return Release(batch_id, cp, {"disposition": after["disposition"], "conditions": after.get("conditions")},
                   after.get("lot"), after["esig_seq"], as_utc(batch.decided_at), batch.work_order_id)


def bundle_checkpoint(release_cp: AuditCheckpoint) -> tuple[AuditCheckpoint, list[str], list[str]]:
    """The checkpoint the eBR's bundle is built against, the witnesses that cosigned it and
    those missing: the release checkpoint when every configured witness cosigned it, else
    the first later checkpoint they all cosigned (it covers the release), else the release
    checkpoint with the cosignatures it has."""
    names = [w.key.name for w in client.configured_witnesses()]
    if not names:
        return release_cp, [], []
    by_cp: dict[int, set[str]] = {}
    for cp_id, witness in db.session.execute(select(AuditCosignature.checkpoint_id, AuditCosignature.witness).where(
            AuditCosignature.checkpoint_id >= release_cp.id)):
        by_cp.setdefault(cp_id, set()).add(witness)
    for cp_id in sorted(by_cp):
        if set(names) <= by_cp[cp_id]:
            cp = release_cp if cp_id == release_cp.id else db.session.get(AuditCheckpoint, cp_id)
            return cp, names, []
    have = by_cp.get(release_cp.id, set())
    return release_cp, [n for n in names if n in have], [n for n in names if n not in have]


def cosign_round(release_cp: AuditCheckpoint) -> list[str]:
    """Send the release checkpoint to each witness that has not cosigned it; if one has
    moved past it, send the latest to all (:func:`bundle_checkpoint` then finds a later one
    every witness cosigned). The witnesses still missing."""
    cp_id = release_cp.id
    results = client.submit_checkpoint(cp_id)
    if any(r.status == 409 for r in results):
        client.sync_witnesses()
    cp = db.session.get(AuditCheckpoint, cp_id)
    missing = bundle_checkpoint(cp)[2]
    db.session.rollback()
    return missing


def wait_for_witnesses(release_cp: AuditCheckpoint, seconds: float) -> list[str]:
    """Submit the release checkpoint and wait, at most ``seconds``, until every configured
    witness has cosigned it (or a later one covering it). The witnesses still missing."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        missing = cosign_round(release_cp)
        left = deadline - time.monotonic()
        if not missing or left <= 0:
            return missing
        threading.Event().wait(min(delay, left))  # a witness down answers at once; retry, backing off
        delay = min(delay * 2, 1.0)
        release_cp = db.session.get(AuditCheckpoint, release_cp.id)


def finish_release(batch_id: str, actor: Actor, *, allow_missing: bool = False) -> EbrDocument | None:
    """Transaction 2: generate, sign and store the eBR of a decided batch against its
    witnessed release checkpoint, record ``ebr.generated`` (with the witnesses that cosigned
    and those missing) and emit ``mes.batch.released.v1`` with the PDF's SHA-256, in one
    transaction. Returns the stored document (the existing one if already finished); None,
    with nothing written, while a witness is missing and ``allow_missing`` is false."""
    db.session.rollback()
    common._locked(Batch, batch_id)  # two finishers (request and job, two servers) take turns
    existing = db.session.get(EbrDocument, batch_id)
    if existing is not None:
        db.session.rollback()
        return existing
    rel = release_of(batch_id)
    if rel is None:
        db.session.rollback()
        return None
    cp, cosigned, missing = bundle_checkpoint(rel.checkpoint)
    if missing and not allow_missing:
        db.session.rollback()
        return None
    witnesses = {"cosigned": cosigned, "missing": missing} if cosigned or missing else None
    made = eo.generate(batch_id, decision=rel.decision, checkpoint=cp, witnesses=witnesses)
    json_sha256 = hashlib.sha256(made.json_bytes).hexdigest()
    db.session.add(EbrDocument(batch_id=batch_id, sha256=made.sha256, pdf=made.pdf, json_sha256=json_sha256,
                               created_at=common.clock(), created_by=actor.id))
    sig = json.loads(bytes(db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.seq == rel.esig_seq)).scalar_one()))["signature"]
    record(actor, "ebr.generated", ("ebr", batch_id), batch=batch_id,
           after={"sha256": made.sha256, "json_sha256": json_sha256,
                  "bundle_sha256": hashlib.sha256(made.bundle).hexdigest(), "bytes": len(made.pdf),
                  "pades": eo.signing_paths().level, "pdfa": "PDF/A-3B",
                  "release_checkpoint_size": rel.checkpoint.size, "checkpoint_size": cp.size,
                  "witnesses_cosigned": cosigned, "witnesses_missing": missing},
           event=Event(common.BATCH_RELEASED, "batch", batch_id,
                       {"batch_id": batch_id, "lot_id": rel.lot_id, "disposition": rel.decision["disposition"],
                        "conditions": rel.decision["conditions"],
                        "esig": {"signer": sig["signer"], "name": sig["name"], "meaning": sig["meaning"],
                                 "signed_at": sig["at"], "record_hash": sig["record_hash"]},
                        "ebr_sha256": made.sha256}, correlation_id=rel.work_order, time=rel.decided_at))
    try:
        db.session.commit()
    except IntegrityError:  # another finisher stored it first (SQLite has no row lock)
        db.session.rollback()
        return db.session.get(EbrDocument, batch_id)
    if missing:
        from mes.audit.alarms import raise_audit_alarm

        raise_audit_alarm(f"The eBR of batch {batch_id} was generated without the cosignature of witness(es) "
                          f"{', '.join(missing)} of its release checkpoint (size {rel.checkpoint.size}): they did "
                          f"not cosign within MES_EBR_WITNESS_MAX_WAIT_SECONDS.",
                          {"batch": batch_id, "missing": missing, "size": rel.checkpoint.size})
    return db.session.get(EbrDocument, batch_id)


def finish_after_decision(actor: Actor, batch_id: str) -> EbrDocument | None:
    """Right after transaction 1 committed, in the same request: wait for the witnesses
    (bounded) and run transaction 2. Never raises: the decision stands whatever happens
    here, and a release left pending is finished by :func:`finish_pending`."""
    try:
        rel = release_of(batch_id)
        if rel is None:
            return None
        if client.configured_witnesses():
            missing = wait_for_witnesses(rel.checkpoint, current_app.config["MES_EBR_WITNESS_WAIT_SECONDS"])
            if missing:
                logger.warning("eBR pending: witnesses have not cosigned the release checkpoint",
                               extra={"batch": batch_id, "missing": missing})
                return None
        return finish_release(batch_id, actor)
    except Exception:  # noqa: BLE001 - the decision is committed; the background job finishes the eBR
        logger.exception("eBR generation after the release failed; it is left to the background job",
                         extra={"batch": batch_id})
        db.session.rollback()
        return None


def pending_batches() -> list[str]:
    """Decided batches (with a release checkpoint) whose eBR is not stored yet."""
    ids = db.session.execute(select(Batch.id).outerjoin(EbrDocument, EbrDocument.batch_id == Batch.id).where(
        Batch.status.in_((BatchStatus.RELEASED.value, BatchStatus.REJECTED.value)),
        EbrDocument.batch_id.is_(None)).order_by(Batch.decided_at)).scalars().all()
    out = []
    for batch_id in ids:
        if batch_id in _LEGACY:
            continue
        after = _decision_after(batch_id)
        if after is not None and "release_checkpoint_size" not in after:
            _LEGACY.add(batch_id)  # decided before the two-step release: its decision never changes
            continue
        out.append(batch_id)
    return out


def finish_pending() -> list[str]:
    """Finish every pending release whose witnesses have all cosigned, or whose decision is
    older than ``MES_EBR_WITNESS_MAX_WAIT_SECONDS`` (then with the cosignatures it has).
    Returns the batches finished now. Each batch on its own: one failure stops no other."""
    max_wait = timedelta(seconds=current_app.config["MES_EBR_WITNESS_MAX_WAIT_SECONDS"])
    done = []
    submit = bool(client.configured_witnesses())
    for batch_id in pending_batches():  # oldest decision first
        try:
            rel = release_of(batch_id)
            if rel is None:
                continue
            if submit:
                missing = cosign_round(rel.checkpoint)
                # a witness down (or slow to time out) is asked once per poll, not once per pending batch
                submit = not missing
            else:
                missing = bundle_checkpoint(rel.checkpoint)[2]
            overdue = common.clock() - rel.decided_at >= max_wait
            if missing and not overdue:
                continue
            doc = finish_release(batch_id, EBR_FINISHER, allow_missing=overdue)
            if doc is not None and doc.created_by == EBR_FINISHER.id:
                done.append(batch_id)
        except Exception as exc:  # noqa: BLE001 - retried at the next poll
            logger.exception("a pending eBR could not be finished", extra={"batch": batch_id})
            db.session.rollback()
            _alarm_if_stuck(batch_id, exc)
    return done


def _alarm_if_stuck(batch_id: str, exc: Exception) -> None:
    """An audit alarm (one while open) for a pending eBR that keeps failing past
    :data:`STUCK_ALARM_AFTER`: QA's decision is recorded but ERP hears nothing until it is made."""
    from mes.audit.alarms import raise_audit_alarm

    try:
        decided = as_utc(db.session.get(Batch, batch_id).decided_at)  # type: ignore[union-attr]
        db.session.rollback()
    except Exception:  # noqa: BLE001 - the database itself failing: the next poll tries again
        db.session.rollback()
        return
    if decided is None or common.clock() - decided < STUCK_ALARM_AFTER:
        return
    raise_audit_alarm(f"The electronic batch record of batch {batch_id} cannot be made: QA's decision is recorded, "
                      "the eBR and mes.batch.released.v1 wait for it; the MES retries every 15 s.",
                      {"batch": batch_id, "error": str(exc)[:500]})


def pending_detail(batch_id: str) -> str | None:
    """The plain sentence for a decided batch whose eBR is being finished; None otherwise."""
    if db.session.get(EbrDocument, batch_id) is not None:
        return None
    rel = release_of(batch_id)
    if rel is None:
        return None
    missing = bundle_checkpoint(rel.checkpoint)[2]
    if not missing:
        return (f"The electronic batch record of batch {batch_id} is being finished: QA's decision is recorded "
                "and the signed eBR is being generated; try again in a minute.")
    limit = current_app.config["MES_EBR_WITNESS_MAX_WAIT_SECONDS"]
    return (f"The electronic batch record of batch {batch_id} is being finished: QA's decision is recorded; "
            f"waiting for witness {', '.join(missing)} to cosign the release checkpoint (size "
            f"{rel.checkpoint.size}). It is generated as soon as they do, or {limit} s after the decision with "
            "the cosignatures received.")


def ebr_status(batch_id: str) -> dict[str, Any]:
    """What the API and the QA page say about the batch's eBR: generated (its SHA-256),
    pending (waiting for which witnesses, and the sentence), or none (not decided)."""
    doc = db.session.get(EbrDocument, batch_id)
    if doc is not None:
        return {"state": "generated", "sha256": doc.sha256}
    detail = pending_detail(batch_id)
    if detail is None:
        return {"state": "none"}
    rel = release_of(batch_id)
    missing = [] if rel is None else bundle_checkpoint(rel.checkpoint)[2]
    return {"state": "pending", "waiting_for": missing, "detail": detail}
