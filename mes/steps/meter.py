"""``meter``: a process aid measured by volume (purified water from a point of use),
recorded without a lot when it has none, consumed from its lot (and so in the genealogy)
when it has one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mes.quantities import UnitError, dimension, to_text
from mes.recipes import checks
from mes.recipes.model import MasterRecipe, MeterStep, Step, StepRef
from mes.steps.base import Report, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext, check_limits, opt, places_ok


class Meter(StepKind):
    """The operator enters the metered volume; a lot only when the aid has one (checked
    usable, consumed from its container in the step's transaction). Outside ``low``/``high``
    the value is recorded, flagged and a major deviation raised."""

    name = "meter"
    step_class = MeterStep
    required = ("item", "unit", "precision")
    converters = {"low": decimal_or_none, "high": decimal_or_none}

    def properties(self) -> dict[str, Any]:
        """Item, volume unit, precision, limits and the point of use."""
        return {"item": ref("code"), "unit": ref("unit"), "precision": ref("precision"), "low": ref("decimal"),
                "high": ref("decimal"), "source": ref("title")}

    def bom_items(self, step: Step) -> tuple[str, ...]:
        """The process aid metered."""
        return (step.item,)  # type: ignore[attr-defined]

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """A processing-aid BOM line, metered by volume; limits ordered and within the precision."""
        step: MeterStep = sref.step  # type: ignore[assignment]
        line = recipe.bom_line(step.item)
        if line is None:
            report(sref.path + ("item",), f"no bill-of-materials line for item {step.item!r}")
        elif line.role != "processing_aid":
            report(sref.path + ("item",), f"item {step.item!r} is a {line.role}; only a processing aid is metered "
                                          "by volume (weigh the others)")
        try:
            is_volume = dimension(step.unit) == dimension("L")
        except UnitError:
            is_volume = False
        if not is_volume:
            report(sref.path + ("unit",), f"{step.unit!r} is not a volume unit (L, mL …)")
        checks.ordered(report, sref.path, [("low", step.low), ("high", step.high)])
        for name in ("low", "high"):
            checks.decimals(report, sref.path, name, getattr(step, name), step.precision)

    def complete(self, ctx: StepContext) -> None:
        """``volume`` (decimal string, at most ``precision`` decimals); ``lot_id`` (and
        ``container_id``) only when the aid has a lot."""
        from mes.materials import operations as materials

        spec: MeterStep = ctx.spec  # type: ignore[assignment]
        volume = places_ok(ctx.decimal(ctx.payload.get("volume"), "volume"), spec.precision, "volume")
        lot_id = ctx.payload.get("lot_id") or None
        data: dict[str, Any] = {"item": spec.item, "lot": None, "source": spec.source,
                                "low": opt(spec.low), "high": opt(spec.high)}
        if lot_id is not None:
            lot_id = ctx.text("lot_id", "The lot")
            usable = materials.check_usable(lot_id, spec.item)
            if not usable.ok:
                ctx.refuse(usable.reason, code=usable.code, lot_id=lot_id, hold_id=usable.hold_id)
            container_id = ctx.payload.get("container_id") or _container_for(lot_id, volume, spec.unit)
            data.update(lot=lot_id, container=container_id, conditional=usable.conditional)
        flags = check_limits(ctx, spec, volume)
        rec = ctx.record("value", data, volume, spec.unit, flags)
        if lot_id is not None:
            actor, batch, wo = ctx.actor, ctx.batch, ctx.batch.work_order_id

            def take() -> None:
                used = materials.consume(actor, lot_id, data["container"], volume, spec.unit, batch.id, spec.id, wo,
                                         batch.line, item_code=spec.item, commit=False)
                rec.data = {**rec.data, "consumption": used.id}

            ctx.effects.append(take)
        ctx.result = {"volume": to_text(volume), "unit": spec.unit, "lot": lot_id, "in_limits": not flags}

    def kiosk_context(self, spec: Step, page: Any) -> dict[str, Any]:
        """The limits as a phrase."""
        assert isinstance(spec, MeterStep)
        return {"limits": page.limits_text(spec.low, spec.high, spec.unit)}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The volume typed, and the lot scanned if the aid has one."""
        out = {"volume": form.get("volume", "").strip()}
        if form.get("lot_id", "").strip():
            out["lot_id"] = form["lot_id"].strip()
        return out

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """The middle of the limits (or the high limit), without a lot."""
        from decimal import Decimal

        from mes.execution.sim_operator import midpoint, quantize

        assert isinstance(spec, MeterStep)
        value = quantize(midpoint(spec.low, spec.high, None, Decimal(1)), spec.precision)
        return {"volume": to_text(value)}, sim.operator, f"metered {to_text(value)} {spec.unit}"


def _container_for(lot_id: str, volume: Any, unit: str) -> str:
    """The lot's first container that still holds ``volume`` ``unit`` (else its first container:
    the consumption then refuses the overdraw with its own sentence)."""
    from mes import quantities as q
    from mes.materials import operations as materials

    rows = materials.containers_of(lot_id)
    for c in rows:
        if q.convert(c.remaining_qty, c.storage_uom, unit) >= volume:
            return c.id
    return rows[0].id if rows else ""
