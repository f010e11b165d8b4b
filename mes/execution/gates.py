"""Signature gates signed by whoever the recipe names: the kiosk, the API and the QA
workstation all sign a gate through :func:`sign_gate`, so a gate for QA alone (``roles:
[qa]``) is signed by a QA user who does not hold ``batch.execute``.

Above :mod:`~mes.execution.step_requests` in the engine's layering (it completes the step
through :func:`~mes.execution.step_requests.complete_step`, idempotent and version-checked).
"""

from __future__ import annotations

from typing import Any

from mes.errors import Conflict, Forbidden, ValidationFailed
from mes.execution.batches import control_recipe, get_batch, get_step
from mes.execution.step_requests import complete_step
from mes.steps import registry as step_kinds
from mes.users.models import UserSession
from mes.users.operations import actor_for


def sign_gate(session_row: UserSession, batch_id: str, step_id: str, payload: dict[str, Any], idempotency_key: str,
              expected_version: int, *, terminal: str | None) -> dict[str, Any]:
    """Sign signature gate ``step_id`` of the batch as the session's user, in the role of the
    gate that user holds (``payload``: password or badge and PIN, optional comment and
    acknowledgement). The signer needs the gate's role, not ``batch.execute``; the engine
    then checks the signer, the order of the steps and the second person as for any
    completion."""
    if session_row is None:
        raise Forbidden("A signature gate is signed by a person in an interactive session.")
    if not isinstance(payload, dict):
        raise ValidationFailed("The payload is an object.", field="payload")
    batch = get_batch(batch_id)
    step = get_step(batch_id, step_id)
    spec = control_recipe(batch).step(step.step_id)
    kind = step_kinds.kind_of(spec)
    if not kind.signs:
        raise Conflict(f"Step {step_id} is not a signature gate; it is done at the kiosk by production.")
    user = session_row.user
    role = kind.signing_role(spec, set(user.role_names()))
    if role is None:
        raise Forbidden(f"This signature needs the role {' or '.join(spec.roles)}.")  # type: ignore[attr-defined]
    actor = actor_for(user, role, terminal)
    return complete_step(actor, batch_id, step_id, payload, idempotency_key, expected_version, session_row=session_row)


def gates_awaiting(batch_id: str, roles: set[str]) -> list[dict[str, Any]]:
    """The batch's signature gates not signed yet that a person with ``roles`` may sign
    (ready ones first): what the QA workstation lists."""
    from mes.execution.batches import steps_of
    from mes.execution.models import StepState

    batch = get_batch(batch_id)
    control = control_recipe(batch)
    out = []
    for row in steps_of(batch_id):
        kind = step_kinds.get(row.kind)
        if not kind.signs or row.state == StepState.COMPLETED.value:
            continue
        spec: Any = control.step(row.step_id)
        if kind.signing_role(spec, roles) is None:
            continue
        out.append({"step": row.step_id, "title": row.title, "meaning": spec.meaning, "roles": list(spec.roles),
                    "state": row.state, "version": row.version, "second_person": spec.second_person})
    return sorted(out, key=lambda g: g["state"] != StepState.READY.value)
