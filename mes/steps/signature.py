"""``signature``: a signature gate (Part 11 e-signature), optionally by a second person."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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


def gate_permission(spec: SignatureStep) -> Any:
    """What signing the gate needs: ``batch.verify`` for a second-person verification, else
    ``esig.sign`` (never ``batch.execute``: QA signs a gate without executing the batch)."""
    from mes.users.permissions import Permission

    return Permission.BATCH_VERIFY if spec.second_person else Permission.ESIG_SIGN


def unreachable_roles(spec: SignatureStep) -> list[str]:
    """The gate's roles that can never sign it under the role × action matrix: a role without
    the gate's permission, or, for a 'performed' signature, a role that never performs
    (does not hold ``batch.execute``)."""
    from mes.users.permissions import Permission, allowed

    out = []
    for role in spec.roles:
        if not allowed({role}, gate_permission(spec)) or (
                spec.meaning == "performed" and not allowed({role}, Permission.BATCH_EXECUTE)):
            out.append(role)
    return out


def covered_steps(spec: SignatureStep, step: Any, steps: Iterable[Any]) -> list[str]:
    """The steps a gate binds and verifies: its ``covers``, or else the earlier steps of its
    own operation (``steps``: the batch's step rows, or any with the same position fields)."""
    if spec.covers:
        return list(spec.covers)
    return [r.step_id for r in sorted(steps, key=lambda r: r.step_index)
            if (r.up_index, r.op_index) == (step.up_index, step.op_index) and r.step_index < step.step_index]


def batch_step_record(batch_step_id: str) -> dict[str, Any]:
    """What a signature gate signs: the step, its attempt and the current values of the steps it
    binds (:func:`covered_steps`), so a value corrected after signing makes the signature fail
    verification (the e-signature record provider ``batch_step``, registered when the kinds load)."""
    from mes.db import db
    from mes.errors import NotFound
    from mes.execution import operations as ex
    from mes.execution.models import BatchStep

    step = db.session.get(BatchStep, batch_step_id)
    if step is None:
        raise NotFound(f"No batch step {batch_step_id}.")
    batch = ex.get_batch(step.batch_id)
    spec = ex.control_recipe(batch).step(step.step_id)
    covers = covered_steps(spec, step, ex.steps_of(batch.id)) if isinstance(spec, SignatureStep) else []
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
        for role in unreachable_roles(step):
            report(path + ("roles",), f"role {role!r} can never sign this gate: {role} does not hold "
                                      + ("batch.execute, and a 'performed' signature is by the performer"
                                         if step.meaning == "performed" else gate_permission(step).value))
        if unique_ids:
            for other in step.covers:
                checks.earlier(recipe, sref, other, path + ("covers",), report, "covers step")

    def second_person(self, spec: Step) -> bool:
        """A second-person verification is signed by another person at the kiosk."""
        return bool(spec.second_person)  # type: ignore[attr-defined]

    signs = True

    def signing_role(self, spec: Step, roles: set[str]) -> str | None:
        """The first of the gate's roles that ``roles`` holds and that may sign it."""
        from mes.users.permissions import allowed

        assert isinstance(spec, SignatureStep)
        permission = gate_permission(spec)
        return next((r for r in spec.roles if r in roles and allowed({r}, permission)), None)

    def complete(self, ctx: StepContext) -> None:
        """Signed in the step's transaction by the session's user (credentials in the payload)."""
        from sqlalchemy import select

        from mes.db import db
        from mes.errors import Forbidden
        from mes.execution.models import BatchStep
        from mes.signatures import operations as esig
        from mes.signatures.credentials import credentials_from

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
            earlier = covered_steps(spec, ctx.step, db.session.execute(
                select(BatchStep).where(BatchStep.batch_id == ctx.batch.id, BatchStep.up_index == ctx.step.up_index,
                                        BatchStep.op_index == ctx.step.op_index)).scalars())
            if not earlier:  # the first step of its operation: the step just before it
                earlier = list(db.session.execute(
                    select(BatchStep.step_id).where(BatchStep.batch_id == ctx.batch.id, BatchStep.seq < ctx.step.seq)
                    .order_by(BatchStep.seq.desc()).limit(1)).scalars())
            people = performers(ctx.batch.id, earlier)
            if user.id in people:
                ctx.refuse("Second-person verification must be done by a different person than the one who "
                           f"performed {', '.join(earlier)}.", code="self_verification")
            performed_by = sorted(people)[0] if people else None
        entry = esig.sign(session_row, creds, "batch_step", ctx.step.id, spec.meaning, role=role,
                          terminal=ctx.actor.terminal, batch=ctx.batch.id, performed_by=performed_by,
                          permission=gate_permission(spec),
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
        # signed by the signed-in person in the gate's role (kiosk.sign), or by another person
        # with their own badge and PIN here (kiosk.verify): a second person, or the role holder
        own = not spec.second_person and self.signing_role(spec, set(page.user.role_names())) is not None
        from mes.execution import operations as ex

        covered = covered_steps(spec, page.step, ex.steps_of(page.batch.id))
        return {"meaning": spec.meaning, "roles": ", ".join(spec.roles),
                "covered": page.recorded(covered),  # what is signed, beside the instruction
                "needs_ack": page.user.esig_acknowledged_at is None,
                "verify_form": not own, "sign_endpoint": "kiosk.sign", "signed_by_other": not own and not spec.second_person}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """Badge, PIN and the first signature's acknowledgement (the engine checks all three)."""
        return {"badge": form.get("badge", "").strip(), "pin": form.get("pin", "").strip(),
                "esig_acknowledged": form.get("esig_ack") == "1"}

    def simulate_step(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> str | None:
        """Signed through the gate endpoint (``/sign``) by the operator, or by the verifier's or
        QA's session (a second person, or a role the operator does not hold: QA signs a QA gate
        without executing the batch)."""
        import time

        assert isinstance(spec, SignatureStep)
        signer = _sim_signer(sim, spec)
        signer.acknowledge_esig()
        assert signer.login_with is not None
        sim._last_write = time.monotonic()
        out = signer.post(f"/api/v1/batches/{batch['id']}/steps/{step['id']}/sign",
                          {"expected_version": step["version"], "comment": "Simulated operator run.",
                           **signer.login_with.sign_fields()}, headers={"Idempotency-Key": signer.key()})
        return f"signed ({spec.meaning}) by {signer.user_id}" + sim.outcome(out)

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """The signature fields of the signer (see :meth:`simulate_step`, which the simulation uses)."""
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
    if "qa" in spec.roles:  # QA signs from the QA workstation's session
        qa = sim._qa()
        if qa is not None:
            candidates.append(qa)
    for c in candidates:
        if set(spec.roles) & c.roles:
            return c
    raise SimulationStopped(
        f"Step {spec.id} needs a signature by {' or '.join(spec.roles)}"
        + (" (a second person)" if spec.second_person else "")
        + "; give --verifier-badge / --verifier-pin (or --qa-user / --qa-password) of someone with that role.")
