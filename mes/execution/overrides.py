"""Overrides, for review by exception: a gate on a lot or on equipment lifted while the batch
ran, before the batch used that lot or equipment.

A lot's hold released or its retest date moved, or equipment put back into service by hand,
between the batch's start and its last use of that lot or equipment (in the audit log's order), may be exactly what let the batch go
on: QA sees what was lifted, by whom, when and why, beside the step that then used it. A
conditional release for this batch is not listed here: it is its own exception
(``conditional_lot``). The engine's own equipment claims (entries that name a batch) are not
overrides either. Read from the audit log's index columns, which verification checks against
each entry's bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from sqlalchemy import func, select

from mes.audit.models import AuditEntry
from mes.db import as_utc, db
from mes.execution.batches import steps_of
from mes.execution.models import StepRecord
from mes.materials import operations as materials

#: audit actions that lift a gate, by the entity type they are recorded on
LIFTING: Final = {"lot": ("material.hold.released", "material.lot.retest_date_set"),
                  "equipment": ("equipment.status_changed",)}
#: equipment statuses a hand-made change may put equipment back into use with
USABLE_EQUIPMENT: Final = ("available", "clean")
_WHAT: Final = {"material.hold.released": "Hold on lot {id} released",
                "material.lot.retest_date_set": "Retest date of lot {id} moved",
                "equipment.status_changed": "Equipment {id} put back into service by hand"}


def _seqs(batch_id: str, entity_type: str, action: str) -> dict[str, int]:
    """entity id -> the latest seq of the batch's ``action`` entries on ``entity_type``."""
    rows = db.session.execute(select(AuditEntry.entity_id, func.max(AuditEntry.seq)).where(
        AuditEntry.batch_id == batch_id, AuditEntry.entity_type == entity_type, AuditEntry.action == action)
        .group_by(AuditEntry.entity_id)).all()
    return {entity: int(seq) for entity, seq in rows}


def _last_uses(batch_id: str) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(entity type, id) -> (seq of the batch's last use of it, the step that used it) for every
    lot it consumed and every piece of equipment its records name. Uses are ordered by the
    audit log's sequence: one order for every writer, whatever their clocks say."""
    uses: dict[tuple[str, str], tuple[int, str | None]] = {}

    def used(key: tuple[str, str], seq: int | None, step: str | None) -> None:
        if seq is not None and (key not in uses or seq > uses[key][0]):
            uses[key] = (seq, step)

    consumed = _seqs(batch_id, "consumption", "material.consumed")
    for c in materials.consumptions(batch_id=batch_id):
        used(("lot", c.lot_id), consumed.get(c.id), c.step_id)
    completed = _seqs(batch_id, "batch_step", "batch.step.completed")
    step_ids = {s.id: s.step_id for s in steps_of(batch_id)}
    rows = db.session.execute(select(StepRecord.data, StepRecord.batch_step_id)
                              .where(StepRecord.batch_id == batch_id)).all()
    for data, step in rows:
        equipment = (data or {}).get("equipment_id")
        if isinstance(equipment, str) and equipment:
            used(("equipment", equipment), completed.get(step), step_ids.get(step))
    return uses


def overrides_of(batch_id: str) -> list[dict[str, Any]]:
    """The batch's overrides, oldest first, each an exception (``type`` ``override``) with the
    audit entry that lifted the gate (``audit_seq``) and the step that then used what it freed."""
    started = db.session.execute(select(func.min(AuditEntry.seq)).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action == "batch.started")).scalar()
    uses = _last_uses(batch_id)
    if started is None or not uses:
        return []
    out = []
    for kind, actions in LIFTING.items():
        ids = sorted(i for k, i in uses if k == kind)
        out.extend(_lifted(kind, actions, ids, int(started), uses))
    return sorted(out, key=lambda e: e["audit_seq"])


def _lifted(kind: str, actions: Iterable[str], ids: list[str], started: int,
            uses: dict[tuple[str, str], tuple[int, str | None]]) -> list[dict[str, Any]]:
    if not ids:
        return []
    rows = db.session.execute(select(AuditEntry.seq, AuditEntry.at, AuditEntry.action, AuditEntry.actor_id,
                                     AuditEntry.entity_id, AuditEntry.batch_id, AuditEntry.entry_bytes)
                              .where(AuditEntry.entity_type == kind, AuditEntry.entity_id.in_(ids),
                                     AuditEntry.action.in_(tuple(actions)), AuditEntry.seq > started)
                              .order_by(AuditEntry.seq)).all()
    out = []
    for seq, at, action, actor, entity, batch, data in rows:
        last_use, step = uses[(kind, entity)]
        entry = json.loads(bytes(data))
        after = entry.get("after") or {}
        if seq > last_use or batch is not None or after.get("batch") or not _lifts(action, after):
            continue  # after the last use, the engine's own claim, a conditional release (listed itself)
        what = _WHAT[action].format(id=entity)
        reason = entry.get("reason")
        out.append({"type": "override", "key": f"override:{seq}", "step": step, "action": action,
                    "entity": {"type": kind, "id": entity}, "before": entry.get("before"), "after": after,
                    "reason": reason, "by": actor, "at": as_utc(at).isoformat(),
                    "text": f"{what} while the batch ran, before it used it" + (f"; reason: {reason}" if reason else ""),
                    "audit_entity": entity, "audit_seq": seq})
    return out


def _lifts(action: str, after: dict[str, Any]) -> bool:
    """Whether the change made the lot or equipment usable (taking equipment out of service,
    or a hold released as a rejection, lifts nothing)."""
    if action == "equipment.status_changed":
        return after.get("status") in USABLE_EQUIPMENT
    if action == "material.hold.released":
        return after.get("disposition") != "reject"
    return True
