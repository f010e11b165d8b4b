"""``identify``: scan a stock lot of an item, or a container dispensed for this batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mes.recipes import checks
from mes.recipes.model import SCAN_MODES, IdentifyStep, MasterRecipe, Step, StepRef
from mes.steps.base import Report, StepKind, ref
from mes.steps.context import StepContext


class Identify(StepKind):
    """``scan: lot``: a released, unexpired lot not on hold; ``scan: dispensed``: a
    container an earlier weigh step (``dispensed_by``) dispensed into this batch."""

    name = "identify"
    step_class = IdentifyStep
    required = ("item",)

    def properties(self) -> dict[str, Any]:
        """Item, scan mode, the weigh step that dispensed it."""
        return {"item": ref("code"), "scan": {"enum": list(SCAN_MODES)}, "dispensed_by": ref("id")}

    def bom_items(self, step: Step) -> tuple[str, ...]:
        """The item identified."""
        return (step.item,)  # type: ignore[attr-defined]

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """A BOM item; ``scan: dispensed`` needs an earlier weigh step of the item."""
        step: IdentifyStep = sref.step  # type: ignore[assignment]
        path = sref.path
        if recipe.bom_line(step.item) is None:
            report(path + ("item",), f"no bill-of-materials line for item {step.item!r}")
        elif step.dispensed_by is not None:
            if step.scan != "dispensed":
                report(path + ("dispensed_by",), "dispensed_by needs scan: dispensed")
            elif unique_ids:
                source = checks.earlier(recipe, sref, step.dispensed_by, path + ("dispensed_by",), report, "dispensed_by")
                if source is not None and not any(w is source.step for w in recipe.weigh_steps(step.item)):
                    report(path + ("dispensed_by",), f"step {step.dispensed_by!r} does not weigh {step.item!r}")
        elif step.scan == "dispensed" and unique_ids:
            if not any(recipe.precedes(w.id, step.id) for w in recipe.weigh_steps(step.item)):
                report(path + ("scan",), f"scan: dispensed needs a weigh step for {step.item!r} that completes before this step")

    def complete(self, ctx: StepContext) -> None:
        """``lot_id``: checked usable (lot) or dispensed into this batch (dispensed)."""
        from mes.materials import operations as materials

        spec: IdentifyStep = ctx.spec  # type: ignore[assignment]
        lot_id = ctx.text("lot_id", "The scanned lot")
        data: dict[str, Any] = {"lot": lot_id, "item": spec.item, "scan": spec.scan}
        if spec.scan == "dispensed":
            dispensed = [c for c in materials.consumptions(lot_id=lot_id, batch_id=ctx.batch.id)
                         if c.item_code == spec.item and materials.reversal_of(c.id) is None
                         and (spec.dispensed_by is None or c.step_id == spec.dispensed_by)]
            if not dispensed:
                where = f" by step {spec.dispensed_by}" if spec.dispensed_by else ""
                ctx.refuse(f"Lot {lot_id} was not dispensed{where} for {spec.item} in batch {ctx.batch.id}. "
                           "Scan the container dispensed for this batch.", lot_id=lot_id)
            data["dispensed_by"] = sorted({c.step_id or "" for c in dispensed})
        else:
            usable = materials.check_usable(lot_id, spec.item)
            if not usable.ok:
                ctx.refuse(usable.reason, code=usable.code, lot_id=lot_id, hold_id=usable.hold_id)
            data["conditional"] = usable.conditional
        ctx.record("identification", data)
        ctx.result = {"lot": lot_id, "item": spec.item}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The scanned lot."""
        return {"lot_id": form.get("lot_id", "").strip()}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """The lot chosen for the item, or the lot dispensed into this batch."""
        from mes.execution.sim_operator import SimulationStopped, dispensed_lots

        assert isinstance(spec, IdentifyStep)
        if spec.scan == "dispensed":
            lots = dispensed_lots(batch, spec.item, spec.dispensed_by)
            if not lots:
                raise SimulationStopped(f"Step {spec.id}: nothing of {spec.item} was dispensed into the batch.")
            return {"lot_id": lots[0]}, sim.operator, f"scanned dispensed lot {lots[0]}"
        lot = sim.chosen_lots.get(spec.item) or sim._pick_lot(spec.item, None, None)[0]
        sim.chosen_lots[spec.item] = lot
        return {"lot_id": lot}, sim.operator, f"scanned lot {lot} ({spec.item})"
