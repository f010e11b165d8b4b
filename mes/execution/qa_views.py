"""What the QA workstation lists show of a batch, work order, deviation or hold (read-only):
each row as the API returns it and the pages render it."""

from __future__ import annotations

from typing import Any

from mes.db import db
from mes.execution.common import _at
from mes.execution.deviations import _step_name
from mes.execution.models import Batch, BatchStatus, Deviation
from mes.execution.queries import product_of
from mes.execution.release import exceptions, release_blockers
from mes.execution.work_orders import work_order_json
from mes.materials.models import Hold, Lot

#: states in which a batch waits for QA: its release blockers are worth showing
AWAITING_QA = (BatchStatus.COMPLETED.value, BatchStatus.REVIEWED.value)


def batch_row(batch: Batch) -> dict[str, Any]:
    """A batch in the QA list: state, product, line, dates, exception counts and release blockers."""
    found = exceptions(batch.id)
    return {"id": batch.id, "work_order": batch.work_order_id, "product": product_of(batch), "line": batch.line,
            "status": batch.status, "created_at": _at(batch.created_at), "completed_at": _at(batch.completed_at),
            "decided_at": _at(batch.decided_at),
            "exceptions": len(found), "unreviewed_exceptions": sum(1 for e in found if e["reviewed"] is None),
            "release_blockers": release_blockers(batch.id) if batch.status in AWAITING_QA else []}


def work_order_row(wo: Any) -> dict[str, Any]:
    """A work order in the QA list."""
    return work_order_json(wo)


def deviation_row(dev: Deviation, now: Any) -> dict[str, Any]:
    """A deviation in the QA list, with its age in hours."""
    age = (now - dev.raised_at).total_seconds() / 3600
    return {"id": dev.id, "batch": dev.batch_id, "step": _step_name(dev), "severity": dev.severity,
            "category": dev.category, "description": dev.description, "status": dev.status,
            "raised_at": _at(dev.raised_at), "raised_by": dev.raised_by, "age_hours": int(age),
            "disposition": dev.disposition, "closed_at": _at(dev.closed_at), "closed_by": dev.closed_by}


def hold_row(hold: Hold) -> dict[str, Any]:
    """An active hold in the QA list, with its lot's item and status."""
    lot = db.session.get(Lot, hold.lot_id)
    return {"hold": hold.id, "lot": hold.lot_id, "item": lot.item_code if lot else None,
            "lot_status": lot.status if lot else None, "scope": hold.scope, "reason": hold.reason,
            "ncr_id": hold.ncr_id, "placed_at": _at(hold.placed_at), "placed_by": hold.placed_by}


def _raw_reply(data: dict[str, Any]) -> str | None:
    """The instrument's raw reply kept with a captured value, as text (hex if not text)."""
    reading = data.get("reading") if isinstance(data.get("reading"), dict) else None
    raw = (reading or {}).get("raw_hex") or data.get("raw_hex")
    if not isinstance(raw, str):
        return None
    try:
        return bytes.fromhex(raw).decode("ascii").strip() or raw
    except (ValueError, UnicodeDecodeError):
        return raw


def _instrument(data: dict[str, Any]) -> str | None:
    reading = data.get("reading") if isinstance(data.get("reading"), dict) else {}
    found = [str(v) for v in (data.get("equipment_id"), reading.get("equipment_id"), data.get("device_id"),
                              reading.get("device_id")) if v]
    return " / ".join(dict.fromkeys(found)) or None


def full_record(batch_id: str) -> list[dict[str, Any]]:
    """The batch's record step by step, in document order: each step with its records (who,
    when, terminal, instrument, raw reply, flags), superseded ones too."""
    from sqlalchemy import select

    from mes.audit.models import AuditEntry
    from mes.execution.batches import steps_of
    from mes.execution.records import records_of
    from mes.quantities import to_text_or_none

    terminals: dict[str, str | None] = {}
    for entity, terminal in db.session.execute(select(AuditEntry.entity_id, AuditEntry.terminal_id).where(
            AuditEntry.batch_id == batch_id, AuditEntry.entity_type == "batch_step",
            AuditEntry.action.in_(("batch.step.completed", "batch.step.recorded", "esig.signed")))
            .order_by(AuditEntry.seq)):
        terminals[entity] = terminal
    by_step: dict[str, list[Any]] = {}
    for r in records_of(batch_id):
        by_step.setdefault(r.batch_step_id, []).append(r)
    out = []
    for s in steps_of(batch_id):
        out.append({"step": s.step_id, "seq": s.seq, "title": s.title, "kind": s.kind, "state": s.state,
                    "attempt": s.attempt, "completed_at": _at(s.completed_at), "completed_by": s.completed_by,
                    "terminal": terminals.get(s.id),
                    "records": [{"id": r.id, "kind": r.kind, "value": to_text_or_none(r.value), "unit": r.unit,
                                 "by": r.recorded_by, "at": _at(r.recorded_at), "flags": list(r.flags or []),
                                 "instrument": _instrument(r.data or {}), "raw": _raw_reply(r.data or {}),
                                 "comment": r.comment, "reason": r.reason, "corrects": r.corrects,
                                 "superseded_by": r.superseded_by, "attempt": r.attempt}
                                for r in by_step.get(s.id, [])]})
    return out
