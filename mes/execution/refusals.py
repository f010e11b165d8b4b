"""Everything refused leaves a trace (issue 14): the one service function that records a
refused step request — what was tried and why it was refused — as an audit entry of the
batch, in a transaction of its own that commits although the attempted change was rolled
back; and the query that lists those refusals for review by exception.

The kiosk, the API and the simulated operator all complete steps through
:func:`mes.execution.step_requests.complete_step`, which calls :func:`record_refusal` for
every refusal of a step kind's rule (held or expired lot at the scan, unsuitable scale, a
weight outside its window, a self-verification attempt, wrong equipment ...).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes.audit.log import Actor, record
from mes.audit.models import AuditEntry
from mes.db import db
from mes.errors import MESError
from mes.execution.models import BatchStep

REFUSED = "batch.step.refused"
"""The audit action of a refused step request."""

#: payload members never written to the audit log (credentials of a signature)
_SECRET_PARTS = ("pin", "password", "badge", "secret", "token", "credential")
_TEXT_MAX = 200


def _safe(value: Any, depth: int = 0) -> Any:
    """``value`` in the audit log's value space (no floats, short strings, shallow)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if len(value) <= _TEXT_MAX else value[:_TEXT_MAX] + "…"
    if isinstance(value, int) and abs(value) < 2 ** 53:
        return value
    if isinstance(value, float | int | Decimal):
        return str(value)
    if depth < 2 and isinstance(value, dict):
        return {str(k)[:64]: _safe(v, depth + 1) for k, v in list(value.items())[:30]
                if not any(p in str(k).lower() for p in _SECRET_PARTS)}
    if depth < 2 and isinstance(value, list | tuple):
        return [_safe(v, depth + 1) for v in list(value)[:30]]
    return str(value)[:_TEXT_MAX]


def tried(payload: Any) -> dict[str, Any]:
    """What the request tried, as the audit entry keeps it (credentials left out)."""
    return _safe(payload) if isinstance(payload, dict) else {"payload": _safe(payload)}


def record_refusal(actor: Actor, batch_id: str, step_id: str, payload: Any, error: MESError, *,
                   deviation_id: str | None = None, commit: bool = True) -> None:
    """Audit one refused request of step ``step_id``: what was tried (``payload``), the
    reason (the sentence the operator saw), its code and the deviation it raised, if any.
    With ``commit`` the entry is its own transaction (the caller rolled the attempt back);
    without, it joins the caller's (a refusal that commits its deviation)."""
    if error.extra.get("replayed"):
        return  # the first answer was recorded when it was given
    step = db.session.get(BatchStep, f"{batch_id}:{step_id}")
    if step is None:
        return  # nothing to attach it to (unknown step: a NotFound, not a refusal)
    details = {k: _safe(v) for k, v in error.extra.items() if k not in ("code", "deviation_id")}
    record(actor, REFUSED, ("batch_step", step.id), batch=batch_id,
           after={"step": step.step_id, "kind": step.kind, "attempt": step.attempt, "tried": tried(payload),
                  "reason": error.detail, "code": str(error.extra.get("code") or error.slug),
                  "deviation": deviation_id, "details": details})
    if commit:
        db.session.commit()


def refusals_of(batch_id: str, step_id: str | None = None) -> list[dict[str, Any]]:
    """The batch's refused requests (of one step if given), oldest first: step, attempt,
    what was tried, reason, code, deviation, by whom and when."""
    q = select(AuditEntry).where(AuditEntry.batch_id == batch_id, AuditEntry.action == REFUSED)
    if step_id is not None:
        q = q.where(AuditEntry.entity_id == f"{batch_id}:{step_id}")
    out = []
    for entry in db.session.execute(q.order_by(AuditEntry.seq)).scalars():
        data = json.loads(entry.entry_bytes)
        out.append({**data["after"], "by": entry.actor_id, "at": data["at"], "audit_seq": entry.seq})
    return out
