"""``numeric``: enter a number with a precision, in a unit, within optional limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mes.recipes import checks
from mes.recipes.model import MasterRecipe, NumericStep, Step, StepRef
from mes.recipes.units import to_text
from mes.steps.base import KioskPage, Report, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext, limits_text, opt, places_ok


class Numeric(StepKind):
    """A number the operator enters; outside ``low``/``high`` it is recorded, flagged and a
    major deviation is raised."""

    name = "numeric"
    step_class = NumericStep
    required = ("unit", "precision")
    converters = {"target": decimal_or_none, "low": decimal_or_none, "high": decimal_or_none}

    def properties(self) -> dict[str, Any]:
        """Unit, precision and signed limits."""
        return {"unit": ref("unit"), "precision": ref("precision"),
                "target": ref("signed_decimal"), "low": ref("signed_decimal"), "high": ref("signed_decimal")}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """Limits ordered and written with no more decimals than the step records."""
        step: NumericStep = sref.step  # type: ignore[assignment]
        checks.ordered(report, sref.path, [("low", step.low), ("target", step.target), ("high", step.high)])
        for name in ("target", "low", "high"):
            checks.decimals(report, sref.path, name, getattr(step, name), step.precision)

    def complete(self, ctx: StepContext) -> None:
        """``value`` (decimal string, at most ``precision`` decimals); out of limits: flagged, deviation."""
        spec: NumericStep = ctx.spec  # type: ignore[assignment]
        value = places_ok(ctx.decimal(ctx.payload.get("value"), "value", signed=True), spec.precision, "value")
        ok = spec.in_limits(value)
        ctx.record("value", {"low": opt(spec.low), "high": opt(spec.high), "target": opt(spec.target)}, value, spec.unit,
                   [] if ok else ["out_of_limits"])
        ctx.result = {"value": to_text(value), "unit": spec.unit, "in_limits": ok}
        if not ok:
            ctx.deviate("limits_missed", f"{spec.title}: {to_text(value)} {spec.unit} is outside "
                        f"{limits_text(spec.low, spec.high, spec.unit)}",
                        {"step": spec.id, "value": to_text(value), "unit": spec.unit, "low": opt(spec.low),
                         "high": opt(spec.high)})

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """The limits as a phrase."""
        assert isinstance(spec, NumericStep)
        return {"limits": page.limits_text(spec.low, spec.high, spec.unit)}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The value typed on the keypad."""
        return {"value": form.get("value", "").strip()}
