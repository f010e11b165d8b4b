"""``produce_output``: record the quantity produced; the yield is checked and the lot made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from mes.quantities import UnitError, convert, dimension, to_text
from mes.recipes import checks
from mes.recipes.model import MasterRecipe, ProduceOutputStep, Step, StepRef
from mes.steps.base import Expectation, KioskPage, Report, ScaleContext, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext

_DECIMALS = ("quantity", "expected_yield", "yield_low", "yield_high")


class ProduceOutput(StepKind):
    """Exactly one per recipe: the theoretical quantity scales with the batch (or comes from
    a calculation); a yield outside its limits is flagged and raises a major deviation."""

    name = "produce_output"
    step_class = ProduceOutputStep
    required = ("item", "quantity", "unit", "yield_low", "yield_high")
    converters = {name: decimal_or_none for name in _DECIMALS}

    def properties(self) -> dict[str, Any]:
        """Item, theoretical quantity, unit, yield limits."""
        return {"item": ref("code"), "name": ref("title"), "quantity": ref("decimal"), "unit": ref("unit"),
                "expected_yield": ref("decimal"), "yield_low": ref("decimal"), "yield_high": ref("decimal"),
                "theoretical_from": ref("id")}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """0 < yield_low <= expected <= yield_high; ``theoretical_from`` an earlier calculation
        in a compatible unit."""
        from mes.steps.registry import kind_of

        step: ProduceOutputStep = sref.step  # type: ignore[assignment]
        path = sref.path
        if step.quantity <= 0:
            report(path + ("quantity",), "the theoretical quantity must be greater than zero")
        if step.yield_low <= 0:
            report(path + ("yield_low",), "yield_low must be greater than zero")
        checks.ordered(report, path, [("yield_low", step.yield_low), ("expected_yield", step.expected_yield),
                                      ("yield_high", step.yield_high)])
        if step.theoretical_from is not None and unique_ids:
            target = checks.earlier(recipe, sref, step.theoretical_from, path + ("theoretical_from",), report, "theoretical_from")
            if target is not None:
                if kind_of(target.step).name != "calculation":
                    report(path + ("theoretical_from",), f"theoretical_from must name a calculation step, "
                                                         f"{step.theoretical_from!r} is a {target.step.kind} step")
                elif dimension(target.step.value_unit or "") != dimension(step.unit):
                    report(path + ("theoretical_from",), f"step {step.theoretical_from!r} computes {target.step.value_unit}, "
                                                         f"which cannot be compared with {step.unit}")

    def check_recipe(self, recipe: MasterRecipe, refs: Sequence[StepRef], report: Report) -> None:
        """Exactly one produce-output step."""
        outputs = [r for r in refs if r.step.kind == self.name]
        if not outputs:
            report(("procedure",), "the recipe has no produce_output step; exactly one is required", key=True)
        for extra in outputs[1:]:
            report(extra.path + ("kind",), f"a second produce_output step (the first is {outputs[0].step.id!r}); exactly one is required")

    def scale(self, step: Step, ctx: ScaleContext) -> Step:
        """The theoretical quantity scales with the batch."""
        from dataclasses import replace

        return replace(step, quantity=ctx.scaled(step.quantity))  # type: ignore[attr-defined]

    def complete(self, ctx: StepContext) -> None:
        """``quantity`` (and optional ``unit``, ``lot_id``): yield checked, the lot produced."""
        from mes.errors import ValidationFailed
        from mes.materials import operations as materials

        spec: ProduceOutputStep = ctx.spec  # type: ignore[assignment]
        qty = ctx.decimal(ctx.payload.get("quantity"), "quantity")
        if qty <= 0:
            raise ValidationFailed("The quantity produced must be above zero.", field="quantity")
        unit = ctx.payload.get("unit") or spec.unit
        try:
            actual = convert(qty, unit, spec.unit)
        except UnitError as exc:
            raise ValidationFailed(f"The unit cannot be used: {exc}", field="unit") from None
        theoretical: Decimal = spec.quantity
        if spec.theoretical_from:
            value = ctx.values().get(spec.theoretical_from)
            if value is None:
                ctx.not_ready(f"The theoretical quantity comes from step {spec.theoretical_from}, not recorded yet.")
            theoretical = value
        percent = spec.yield_percent(actual, theoretical)
        ok = spec.yield_in_limits(percent)
        lot_id = ctx.payload.get("lot_id") or f"{ctx.batch.id}-{spec.item}"[:64]
        data = {"item": spec.item, "lot": lot_id, "theoretical": to_text(theoretical), "yield": to_text(percent),
                "yield_low": to_text(spec.yield_low), "yield_high": to_text(spec.yield_high)}
        ctx.record("value", data, actual, spec.unit, [] if ok else ["out_of_limits"])
        ctx.result = {**data, "quantity": to_text(actual), "unit": spec.unit, "in_limits": ok}
        if not ok:
            ctx.deviate("yield_out_of_limits", f"{spec.title}: yield {to_text(percent)} % is outside "
                        f"{to_text(spec.yield_low)} to {to_text(spec.yield_high)} %", {"step": spec.id, **data})
        actor, batch, wo = ctx.actor, ctx.batch.id, ctx.batch.work_order_id
        ctx.effects.append(lambda: materials.produce(actor, spec.item, lot_id, to_text(qty), unit, batch,
                                                     work_order_id=wo, commit=False) and None)

    def recompute(self, actor: Any, batch: Any, row: Any, spec: Step, changed: set[str], cause: str,
                  why: str, now: datetime) -> Any:
        """A completed produce-output step whose theoretical quantity comes from a changed step:
        the quantity produced stays what was weighed, the theoretical and the yield are computed
        again (a new record superseding the old, audited, with a deviation when the yield now
        misses its limits)."""
        from mes.audit.log import record
        from mes.db import db
        from mes.errors import Conflict
        from mes.execution.common import _new_id
        from mes.execution.deviations import _new_deviation, _record_deviation
        from mes.execution.models import Severity, StepRecord
        from mes.execution.records import _current_records, _values

        assert isinstance(spec, ProduceOutputStep)
        if not spec.theoretical_from or spec.theoretical_from not in changed:
            return None
        old = next(iter(_current_records(row, "value")), None)
        if old is None or old.value is None:
            return None
        theoretical = _values(batch.id).get(spec.theoretical_from)
        if theoretical is None:
            return None
        actual = old.value
        try:
            percent = spec.yield_percent(actual, theoretical)
        except (ArithmeticError, ValueError) as exc:
            raise Conflict(f"The correction makes the yield of step {spec.id} impossible to compute ({exc}); "
                           "nothing was changed.") from None
        if old.data.get("theoretical") == to_text(theoretical) and old.data.get("yield") == to_text(percent):
            return None
        ok = spec.yield_in_limits(percent)
        data = {**old.data, "theoretical": to_text(theoretical), "yield": to_text(percent),
                "recomputed_because": spec.theoretical_from}
        new = StepRecord(id=_new_id("R"), batch_id=batch.id, batch_step_id=row.id, attempt=old.attempt, kind="value",
                         value=old.value, unit=old.unit, data=data,
                         flags=["recomputed"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                         reason=f"yield recomputed after the correction of {spec.theoretical_from}: {why}",
                         recorded_at=now, recorded_by=actor.id)
        db.session.add(new)
        old.superseded_by = new.id
        old.flags = sorted(set(old.flags or []) | {"corrected"})
        row.result = {**(row.result or {}), "theoretical": data["theoretical"], "yield": data["yield"], "in_limits": ok,
                      "recomputed": True}
        row.version += 1
        db.session.flush()
        record(actor, "batch.value.recomputed", ("step_record", old.id), batch=batch.id,
               before={"value": to_text(actual), "unit": old.unit, "record": old.id, "theoretical": old.data.get("theoretical"),
                       "yield": old.data.get("yield")},
               after={"value": to_text(actual), "unit": new.unit, "record": new.id, "theoretical": data["theoretical"],
                      "yield": data["yield"], "in_limits": ok}, reason=new.reason)
        if not ok:
            dev = _new_deviation(actor, batch, row, Severity.MAJOR.value, "yield_out_of_limits",
                                 f"{spec.title}: recomputed yield {data['yield']} % is outside "
                                 f"{to_text(spec.yield_low)} to {to_text(spec.yield_high)} %",
                                 {"record": new.id, "corrects": old.id, "step": spec.id,
                                  "theoretical": data["theoretical"], "yield": data["yield"]},
                                 automatic=True, commit_record=False)
            _record_deviation(actor, dev)
        return new

    def produced_lot(self, records: Sequence[Mapping[str, Any]]) -> str | None:
        """The output lot this step recorded."""
        return next((r["data"].get("lot") for r in records if r.get("data") and r["data"].get("lot")), None)


    def expectation(self, spec: Step) -> Expectation:
        """The theoretical quantity (as scaled; from its calculation when ``theoretical_from``)
        and the yield limits in percent."""
        assert isinstance(spec, ProduceOutputStep)
        return Expectation("" if spec.theoretical_from else to_text(spec.quantity), to_text(spec.yield_low),
                           to_text(spec.yield_high), spec.unit, "%")

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """The theoretical quantity (scaled, or from its calculation) and the yield limits."""
        assert isinstance(spec, ProduceOutputStep)
        theoretical = spec.quantity
        if spec.theoretical_from:
            theoretical = page.values().get(spec.theoretical_from, spec.quantity)
        return {"theoretical": page.dec(theoretical), "yield_limits": f"{page.dec(spec.yield_low)} – {page.dec(spec.yield_high)} %"}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The quantity typed on the keypad."""
        return {"quantity": form.get("value", "").strip()}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """The theoretical quantity at the expected yield (or mid yield limits)."""
        from mes.execution.sim_operator import _places, current_values, midpoint, quantize

        assert isinstance(spec, ProduceOutputStep)
        theoretical = spec.quantity
        if spec.theoretical_from:
            theoretical = current_values(batch).get(spec.theoretical_from, theoretical)
        expected = getattr(spec, "expected_yield", None) or midpoint(spec.yield_low, spec.yield_high, None, Decimal(100))
        qty = quantize(Decimal(theoretical) * Decimal(expected) / 100, max(3, _places(Decimal(theoretical))))
        return {"quantity": str(qty), "unit": spec.unit}, sim.operator, f"{qty} {spec.unit} ({expected} % yield)"
