"""``sample_check``: an in-process check on several samples, each and the mean within limits."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mes.quantities import to_text
from mes.recipes import checks
from mes.recipes.model import MasterRecipe, SampleCheckStep, Step, StepRef
from mes.steps.base import KioskPage, Report, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext, limits_text, opt, places_ok

_LIMITS = ("target", "low", "high", "mean_low", "mean_high")


class SampleCheck(StepKind):
    """``samples`` results; the recorded value is their mean (one more decimal)."""

    name = "sample_check"
    step_class = SampleCheckStep
    required = ("samples", "unit", "precision")
    converters = {name: decimal_or_none for name in _LIMITS}

    def properties(self) -> dict[str, Any]:
        """Sample count, unit, precision, individual and mean limits."""
        return {"samples": {"type": "integer", "minimum": 1, "maximum": 100},
                "unit": ref("unit"), "precision": ref("precision"),
                "target": ref("signed_decimal"), "low": ref("signed_decimal"), "high": ref("signed_decimal"),
                "mean_low": ref("signed_decimal"), "mean_high": ref("signed_decimal")}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """Limits ordered (mean limits inside individual limits) and precise enough."""
        step: SampleCheckStep = sref.step  # type: ignore[assignment]
        path = sref.path
        checks.ordered(report, path, [("low", step.low), ("target", step.target), ("high", step.high)])
        checks.ordered(report, path, [("low", step.low), ("mean_low", step.mean_low), ("mean_high", step.mean_high),
                                      ("high", step.high)])
        checks.ordered(report, path, [("mean_low", step.mean_low), ("target", step.target), ("mean_high", step.mean_high)])
        for name in ("target", "low", "high"):
            checks.decimals(report, path, name, getattr(step, name), step.precision)
        for name in ("mean_low", "mean_high"):
            checks.decimals(report, path, name, getattr(step, name), step.precision + 1)

    def complete(self, ctx: StepContext) -> None:
        """``results``: exactly ``samples`` decimal strings; out of limits: flagged, deviation."""
        from mes.errors import ValidationFailed

        spec: SampleCheckStep = ctx.spec  # type: ignore[assignment]
        raw = ctx.payload.get("results")
        if not isinstance(raw, list) or len(raw) != spec.samples:
            raise ValidationFailed(f"Enter exactly {spec.samples} results.", field="results")
        results = [places_ok(ctx.decimal(v, f"results/{i}"), spec.precision, f"results/{i}") for i, v in enumerate(raw)]
        verdict = spec.evaluate(results)
        data = {"results": [to_text(r) for r in results], "mean": to_text(verdict.mean),
                "out_of_limits": list(verdict.out_of_limits), "mean_ok": verdict.mean_ok,
                "low": opt(spec.low), "high": opt(spec.high), "mean_low": opt(spec.mean_low), "mean_high": opt(spec.mean_high)}
        ctx.record("value", data, verdict.mean, spec.unit, [] if verdict.ok else ["out_of_limits"])
        ctx.result = {**data, "unit": spec.unit, "in_limits": verdict.ok}
        ctx.inspected(results, spec.unit, {"low": opt(spec.low), "high": opt(spec.high), "mean_low": opt(spec.mean_low),
                                           "mean_high": opt(spec.mean_high), "target": opt(spec.target)},
                      verdict.ok, list(verdict.out_of_limits), verdict.mean)
        if not verdict.ok:
            ctx.deviate("limits_missed", f"{spec.title}: results outside the limits "
                        f"(individual {limits_text(spec.low, spec.high, spec.unit)}, mean {to_text(verdict.mean)})",
                        {"step": spec.id, **data})

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """Individual and mean limits as phrases."""
        assert isinstance(spec, SampleCheckStep)
        return {"limits": page.limits_text(spec.low, spec.high, spec.unit),
                "mean_limits": page.limits_text(spec.mean_low, spec.mean_high, spec.unit)}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The results entered, separated by ``;``."""
        return {"results": [r for r in form.get("results", "").split(";") if r.strip()]}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """Results scattered around the middle of the limits, all passing."""
        assert isinstance(spec, SampleCheckStep)
        shown = [str(r) for r in sim_results(sim, spec)]
        return {"results": shown}, sim.operator, f"{len(shown)} results {shown[0]}..{shown[-1]} {spec.unit}"


def sim_results(sim: Any, spec: SampleCheckStep) -> list[Decimal]:
    """Results the simulated operator enters: random around the middle, within the limits."""
    from mes.execution.sim_operator import midpoint, quantize

    centre = midpoint(spec.low, spec.high, spec.target, Decimal(1))
    spread = (spec.high - spec.low) / 20 if spec.low is not None and spec.high is not None else Decimal(0)
    for _ in range(20):
        results = [quantize(centre + spread * Decimal(sim.rng.uniform(-1, 1)), spec.precision)
                   for _ in range(spec.samples)]
        try:
            if spec.evaluate(results).ok:
                return results
        except Exception:  # noqa: BLE001
            break
    return [quantize(centre, spec.precision)] * spec.samples
