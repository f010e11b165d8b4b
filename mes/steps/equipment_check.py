"""``equipment_check``: equipment of a class in the required states (registry checked)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from mes.recipes.model import EQUIPMENT_STATES, EquipmentCheckStep, MasterRecipe, Step, StepRef
from mes.steps.base import Report, StepKind, duration, ref
from mes.steps.context import StepContext

NOT_CLEAN = ("dirty", "clean_expired")
"""Registry codes of equipment that is not clean (refused with a deviation)."""
OUT_OF_CALIBRATION = ("not_calibrated", "calibration_failed", "calibration_expired")
"""Registry codes of equipment out of calibration (refused with a deviation)."""


def claim_reason(batch_id: str) -> str:
    """The status reason of equipment a batch claimed: the engine's, which frees it at the batch's end."""
    from mes.execution.operations import _claim_reason

    return _claim_reason(batch_id)


class EquipmentCheck(StepKind):
    """The operator scans the equipment and ticks what its label shows; the engine checks
    the registry. With ``claim`` the equipment is in use by the batch until it ends."""

    name = "equipment_check"
    step_class = EquipmentCheckStep
    required = ("equipment_class", "required_states")
    converters = {"required_states": tuple, "max_since_cleaning": duration}

    def properties(self) -> dict[str, Any]:
        """Class, required states, cleaning age, claim."""
        return {"equipment_class": ref("title"),
                "required_states": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(EQUIPMENT_STATES)}},
                "max_since_cleaning": ref("duration"), "claim": {"type": "boolean"}}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """``max_since_cleaning`` needs ``clean`` and a length; ``claim`` needs ``not_in_use``."""
        step: EquipmentCheckStep = sref.step  # type: ignore[assignment]
        path = sref.path
        if step.max_since_cleaning is not None:
            if "clean" not in step.required_states:
                report(path + ("max_since_cleaning",), "max_since_cleaning needs 'clean' in required_states")
            if step.max_since_cleaning.seconds == 0:
                report(path + ("max_since_cleaning",), "max_since_cleaning must be longer than zero")
        if step.claim and "not_in_use" not in step.required_states:
            report(path + ("claim",), "claim needs 'not_in_use' in required_states")

    def complete(self, ctx: StepContext) -> None:
        """Equipment check against the registry: class, required states (clean within
        ``max_since_cleaning``, calibrated, qualified, not in use). Not clean or out of
        calibration refuses and raises a deviation; any other failure refuses with the reason.
        With ``claim`` the equipment becomes in use by the batch until the batch ends."""
        from mes.equipment import operations as equipment
        from mes.equipment.labels import confirm_labels
        from mes.execution.models import Severity

        spec: EquipmentCheckStep = ctx.spec  # type: ignore[assignment]
        equipment_id = ctx.text("equipment_id", "The equipment id")
        label_states = confirm_labels(spec.required_states, ctx.payload.get("label_states"))
        max_since = timedelta(seconds=spec.max_since_cleaning.seconds) if spec.max_since_cleaning else None
        check = equipment.check_equipment(equipment_id, spec.required_states, ctx.now,
                                          equipment_class=spec.equipment_class, max_since_cleaning=max_since)
        evidence = {"step": spec.id, "equipment_id": equipment_id, "equipment_class": spec.equipment_class,
                    "required": list(spec.required_states), "label_states": label_states, "check": check.as_json()}
        if not check.ok:
            if check.code in NOT_CLEAN:
                ctx.refuse_with_deviation(check.reason, Severity.MINOR.value, "equipment_not_clean", evidence)
            if check.code in OUT_OF_CALIBRATION:
                ctx.refuse_with_deviation(check.reason, Severity.MINOR.value, "equipment_out_of_calibration", evidence)
            ctx.refuse(check.reason, code=check.code, equipment_id=equipment_id)
        ctx.record("equipment", {"equipment_id": equipment_id, "equipment_class": spec.equipment_class,
                                 "required": list(spec.required_states),
                                 "max_since_cleaning": spec.max_since_cleaning.iso if spec.max_since_cleaning else None,
                                 "registry_checked": True, "registry": check.details, "claimed": spec.claim,
                                 "label_states": label_states})
        ctx.result = {"equipment_id": equipment_id, "status": check.details.get("status"), "claimed": spec.claim}
        if spec.claim:
            actor, batch_id = ctx.actor, ctx.batch.id
            ctx.effects.append(lambda: equipment.set_status(actor, equipment_id, equipment.S.IN_USE.value,
                                                            claim_reason(batch_id), batch=batch_id, commit=False))

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The scanned equipment and the label states the operator ticked (the engine checks them)."""
        ticked = form.getlist("states") if hasattr(form, "getlist") else form.get("states", [])
        return {"equipment_id": form.get("equipment_id", "").strip(), "label_states": list(ticked)}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """Free registered equipment of the class."""
        assert isinstance(spec, EquipmentCheckStep)
        eq = sim._pick_equipment(spec)
        # the operator reads the status label and confirms each state the step requires
        return {"equipment_id": eq, "label_states": list(spec.required_states)}, sim.operator, \
            f"{eq}: {', '.join(spec.required_states)}" + \
            (" (claimed for the batch)" if spec.claim else "")
