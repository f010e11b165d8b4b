"""``signature``: a signature gate (Part 11 e-signature), optionally by a second person."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mes.recipes import checks
from mes.recipes.model import MEANINGS, ROLES, MasterRecipe, SignatureStep, Step, StepRef
from mes.steps.base import KioskPage, Report, StepKind, ref
from mes.steps.context import StepContext


def performers(batch_id: str, step_ids: list[str]) -> set[str]:
    """Who recorded anything on these steps of the batch."""
    from sqlalchemy import select

    from mes.db import db
    from mes.execution.models import BatchStep, StepRecord

    if not step_ids:
        return set()
    return set(db.session.execute(select(StepRecord.recorded_by).join(BatchStep, BatchStep.id == StepRecord.batch_step_id)
                                  .where(BatchStep.batch_id == batch_id, BatchStep.step_id.in_(step_ids))).scalars())


def batch_step_record(batch_step_id: str) -> dict[str, Any]:
    """What a signature gate signs: the step, its attempt and the current values of the steps it covers
    (the e-signature record provider ``batch_step``, registered when the kinds load)."""
    from mes.db import db
    from mes.errors import NotFound
    from mes.execution import operations as ex
    from mes.execution.models import BatchStep

    step = db.session.get(BatchStep, batch_step_id)
    if step is None:
        raise NotFound(f"No batch step {batch_step_id}.")
    batch = ex.get_batch(step.batch_id)
    spec = ex.control_recipe(batch).step(step.step_id)
    covers = list(getattr(spec, "covers", ()) or ())
    covered = {}
    for sid in covers:
        recs = ex._current_records(ex.get_step(batch.id, sid))
        covered[sid] = [ex._record_json(r) for r in recs]
    return {"batch": batch.id, "recipe_hash": batch.recipe_hash, "step": step.step_id, "attempt": step.attempt,
            "covers": covered}


class Signature(StepKind):
    """A person with one of ``roles`` signs with ``meaning`` (badge and PIN at the kiosk);
    ``second_person``: not anyone who performed the steps it covers."""

    name = "signature"
    step_class = SignatureStep
    required = ("meaning", "roles")
    converters = {"roles": tuple, "covers": tuple}

    def __init__(self) -> None:
        from mes.signatures import operations as esig

        esig.record_provider("batch_step")(batch_step_record)

    def properties(self) -> dict[str, Any]:
        """Meaning, roles, second person, covered steps."""
        return {"meaning": {"enum": list(MEANINGS)},
                "roles": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(ROLES)}},
                "second_person": {"type": "boolean"},
                "covers": {"type": "array", "minItems": 1, "uniqueItems": True, "items": ref("id")}}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """released/rejected by qa only; second person verifies something, not 'performed';
        ``covers`` names earlier steps."""
        step: SignatureStep = sref.step  # type: ignore[assignment]
        path = sref.path
        if step.meaning in ("released", "rejected") and set(step.roles) != {"qa"}:
            report(path + ("roles",), f"only qa may sign {step.meaning!r}; roles must be [qa]")
        if step.second_person and step.meaning == "performed":
            report(path + ("second_person",), "a 'performed' signature is by the performer; second-person verification needs "
                                              "meaning 'verified' (or reviewed/approved)")
        if step.second_person and not step.covers and sref.index == 0:
            report(path + ("second_person",), "nothing to verify: put the gate after the steps it verifies or list them in covers")
        if unique_ids:
            for other in step.covers:
                checks.earlier(recipe, sref, other, path + ("covers",), report, "covers step")

    def second_person(self, spec: Step) -> bool:
        """A second-person verification is signed by another person at the kiosk."""
        return bool(spec.second_person)  # type: ignore[attr-defined]

    def complete(self, ctx: StepContext) -> None:
        """Signed in the step's transaction by the session's user (credentials in the payload)."""
        from sqlalchemy import select

        from mes.db import db
        from mes.errors import Forbidden
        from mes.execution.models import BatchStep
        from mes.signatures import operations as esig
        from mes.signatures.credentials import credentials_from
        from mes.users.permissions import Permission

        spec: SignatureStep = ctx.spec  # type: ignore[assignment]
        session_row = ctx.signer_session()
        if session_row is None:
            raise Forbidden("A signature step is signed by a person in an interactive session.")
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
            people = performers(ctx.batch.id, earlier)
            if user.id in people:
                ctx.refuse("Second-person verification must be done by a different person than the one who "
                           f"performed {', '.join(earlier)}.", code="self_verification")
            performed_by = sorted(people)[0] if people else None
        entry = esig.sign(session_row, creds, "batch_step", ctx.step.id, spec.meaning, role=role,
                          terminal=ctx.actor.terminal, batch=ctx.batch.id, performed_by=performed_by,
                          permission=Permission.BATCH_VERIFY if spec.second_person else Permission.ESIG_SIGN,
                          comment=ctx.payload.get("comment"),
                          acknowledged=ctx.payload.get("esig_acknowledged") is True, commit=False)
        sig = json.loads(entry.entry_bytes)["signature"]
        ctx.record("signature", {"signer": sig["signer"], "name": sig["name"], "meaning": sig["meaning"], "role": role,
                                 "record_hash": sig["record_hash"], "audit_seq": entry.seq,
                                 "second_person": spec.second_person, "performed_by": performed_by})
        ctx.result = {"signer": sig["signer"], "meaning": sig["meaning"], "audit_seq": entry.seq}

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """Meaning, roles, whether the signer still acknowledges, and whether another person verifies."""
        assert isinstance(spec, SignatureStep)
        return {"meaning": spec.meaning, "roles": ", ".join(spec.roles),
                "needs_ack": page.user.esig_acknowledged_at is None}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """Badge, PIN and the first signature's acknowledgement (the engine checks all three)."""
        return {"badge": form.get("badge", "").strip(), "pin": form.get("pin", "").strip(),
                "esig_acknowledged": form.get("esig_ack") == "1"}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """Signed by the operator, or by the verifier's session (second person, or a role the
        operator does not hold)."""
        assert isinstance(spec, SignatureStep)
        signer = _sim_signer(sim, spec)
        signer.acknowledge_esig()
        assert signer.login_with is not None
        return {**signer.login_with.sign_fields(), "comment": "Simulated operator run."}, signer, f"signed ({spec.meaning})"


def _sim_signer(sim: Any, spec: SignatureStep) -> Any:
    from mes.execution.sim_operator import SimulationStopped

    assert sim.operator is not None
    candidates: list[Any] = [] if spec.second_person else [sim.operator]
    verifier = sim._verifier()
    if verifier is not None:
        candidates.append(verifier)
    for c in candidates:
        if set(spec.roles) & c.roles:
            return c
    raise SimulationStopped(
        f"Step {spec.id} needs a signature by {' or '.join(spec.roles)}"
        + (" (a second person)" if spec.second_person else "")
        + "; give --verifier-badge / --verifier-pin of someone with that role.")
