"""``numeric``: enter a number with a precision, in a unit, within optional limits."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mes.quantities import to_text
from mes.recipes import checks
from mes.recipes.model import MasterRecipe, NumericStep, Step, StepRef
from mes.steps.base import KioskPage, Report, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext, check_limits, opt, places_ok


class Numeric(StepKind):
    """A number the operator enters; outside ``low``/``high`` it is recorded, flagged and a
    major deviation is raised."""

    name = "numeric"
    charted = True
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
        flags = check_limits(ctx, spec, value)
        ctx.record("value", {"low": opt(spec.low), "high": opt(spec.high), "target": opt(spec.target)}, value, spec.unit,
                   flags)
        ok = not flags
        ctx.result = {"value": to_text(value), "unit": spec.unit, "in_limits": ok}
        if spec.low is not None or spec.high is not None:  # a check against limits: QMS trends it
            ctx.inspected([value], spec.unit, {"low": opt(spec.low), "high": opt(spec.high), "target": opt(spec.target)},
                          ok, [] if ok else [0])

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """The limits as a phrase."""
        assert isinstance(spec, NumericStep)
        return {"limits": page.limits_text(spec.low, spec.high, spec.unit)}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The value typed on the keypad."""
        return {"value": form.get("value", "").strip()}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """A value mid-limits (or one that puts a later calculation mid-limits)."""
        from mes.quantities import to_text

        assert isinstance(spec, NumericStep)
        value = sim_value(sim, batch, spec)
        return {"value": to_text(value) if spec.precision == 0 else str(value)}, sim.operator, f"{value} {spec.unit}"


def sim_value(sim: Any, batch: dict[str, Any], spec: NumericStep) -> Decimal:
    """The value the simulated operator enters: mid-limits, or (without limits) one that
    puts the first later calculation using it mid-limits."""
    from mes.execution.sim_operator import midpoint, quantize

    if spec.target is None and spec.low is None and spec.high is None:
        solved = _solve_for(sim, batch, spec)
        if solved is not None:
            return solved
    return quantize(midpoint(spec.low, spec.high, spec.target, Decimal(1)), spec.precision)


def _solve_for(sim: Any, batch: dict[str, Any], spec: NumericStep) -> Decimal | None:
    """A value for ``spec`` that puts the first later calculation using it mid-limits."""
    from mes.execution.sim_operator import current_values, midpoint, quantize
    from mes.recipes.model import CalculationStep

    assert sim.recipe is not None
    values = current_values(batch)
    for sref in sim.recipe.steps():
        calc = sref.step
        if not isinstance(calc, CalculationStep) or spec.id not in calc.references:
            continue
        if calc.low is None and calc.high is None:
            continue
        if any(r not in values for r in calc.references if r != spec.id):
            continue
        goal = midpoint(calc.low, calc.high, None, Decimal(1))
        try:
            f = lambda v: calc.compute({**values, spec.id: v})  # noqa: E731, B023 - used in this iteration only
            a, b = Decimal(1), Decimal(1_000_000)  # far apart: the result's rounding does not matter
            fa, fb = f(a), f(b)
            for _ in range(6):  # secant steps (one is enough for a linear formula)
                if fa == fb:
                    break
                a, fa, b = b, fb, quantize(b + (goal - fb) * (b - a) / (fb - fa), spec.precision)
                fb = f(b)
                if b > 0 and calc.in_limits(fb):
                    return b
        except Exception:  # noqa: BLE001 - a formula we cannot invert: fall back
            continue
    return None
