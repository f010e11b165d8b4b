"""``calculation``: a value computed by a formula from earlier steps' values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mes.quantities import to_text
from mes.recipes import checks
from mes.recipes.formula import FormulaError, parse_formula
from mes.recipes.model import CalculationStep, MasterRecipe, Step, StepRef
from mes.steps.base import KioskPage, Report, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext, limits_text, opt


class Calculation(StepKind):
    """The server computes ``formula`` from recorded values, rounds HALF_EVEN to
    ``precision``; outside the limits it is flagged and a major deviation is raised."""

    name = "calculation"
    step_class = CalculationStep
    required = ("formula", "unit", "precision")
    converters = {"low": decimal_or_none, "high": decimal_or_none}

    def properties(self) -> dict[str, Any]:
        """Formula, unit, precision, signed limits."""
        return {"formula": {"type": "string", "minLength": 1, "maxLength": 500},
                "unit": ref("unit"), "precision": ref("precision"),
                "low": ref("signed_decimal"), "high": ref("signed_decimal")}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """Limits ordered and precise enough; the formula parses and references only
        value-recording steps that always complete before this one."""
        step: CalculationStep = sref.step  # type: ignore[assignment]
        path = sref.path
        checks.ordered(report, path, [("low", step.low), ("high", step.high)])
        for name in ("low", "high"):
            checks.decimals(report, path, name, getattr(step, name), step.precision)
        try:
            formula = parse_formula(step.formula)
        except FormulaError as exc:
            report(path + ("formula",), f"{exc.message} in formula {step.formula!r}")
            return
        if not unique_ids:
            return
        for name in formula.references:
            target = checks.earlier(recipe, sref, name, path + ("formula",), report, "step")
            if target is not None and not target.step.produces_value:
                report(path + ("formula",), f"step {name!r} is a {target.step.kind} step and records no value")

    def complete(self, ctx: StepContext) -> None:
        """Computed on the server from the current values (not ready until all are recorded)."""
        spec: CalculationStep = ctx.spec  # type: ignore[assignment]
        values = ctx.values()
        inputs = {r: values.get(r) for r in spec.references}
        missing = [k for k, v in inputs.items() if v is None]
        if missing:
            ctx.not_ready(f"The formula needs values not recorded yet: {', '.join(missing)}.")
        try:
            result = spec.compute(values)
        except FormulaError as exc:
            ctx.refuse(f"The calculation cannot be done: {exc}")
        ok = spec.in_limits(result)
        shown = {k: to_text(v) for k, v in inputs.items() if v is not None}
        ctx.record("value", {"formula": spec.formula, "inputs": shown, "low": opt(spec.low), "high": opt(spec.high)},
                   result, spec.unit, [] if ok else ["out_of_limits"])
        ctx.result = {"formula": spec.formula, "inputs": shown, "value": to_text(result), "unit": spec.unit,
                      "in_limits": ok}
        if not ok:
            ctx.deviate("limits_missed", f"{spec.title}: {to_text(result)} {spec.unit} is outside "
                        f"{limits_text(spec.low, spec.high, spec.unit)}",
                        {"step": spec.id, "formula": spec.formula, "inputs": shown, "value": to_text(result)})

    def recompute(self, actor: Any, batch: Any, row: Any, spec: Step, changed: set[str], cause: str,
                  why: str, now: datetime) -> Any:
        """A completed calculation that used a changed value is computed again: a new record
        flagged ``recomputed`` supersedes the old one (audited as ``batch.value.recomputed``),
        with a deviation when the result now misses its limits."""

        from mes.audit.log import record
        from mes.db import db
        from mes.errors import Conflict
        from mes.execution.common import _new_id
        from mes.execution.deviations import _new_deviation, _record_deviation
        from mes.execution.models import Severity, StepRecord
        from mes.execution.records import _current_records, _values

        assert isinstance(spec, CalculationStep)
        if not changed & set(spec.references):
            return None
        old = next(iter(_current_records(row, "value")), None)
        if old is None:
            return None
        values = _values(batch.id)
        try:
            result = spec.compute(values)
        except FormulaError as exc:
            raise Conflict(f"The correction makes calculation {spec.id} impossible ({exc}); nothing was changed.") \
                from None
        changed.add(row.step_id)
        if old.value is not None and old.value == result:
            return None
        ok = spec.in_limits(result)
        inputs = {ref: to_text(values[ref]) for ref in spec.references if ref in values}
        new = StepRecord(id=_new_id("R"), batch_id=batch.id, batch_step_id=row.id, attempt=old.attempt, kind="value",
                         value=result, unit=old.unit,
                         data={**old.data, "inputs": inputs, "recomputed_because": cause},
                         flags=["recomputed"] + ([] if ok else ["out_of_limits"]), comment=None, corrects=old.id,
                         reason=f"recomputed after the correction of {cause}: {why}", recorded_at=now,
                         recorded_by=actor.id)
        db.session.add(new)
        old.superseded_by = new.id
        old.flags = sorted(set(old.flags or []) | {"corrected"})
        row.result = {**(row.result or {}), "value": to_text(result), "inputs": inputs, "in_limits": ok,
                      "recomputed": True}
        row.version += 1
        db.session.flush()
        record(actor, "batch.value.recomputed", ("step_record", old.id), batch=batch.id,
               before={"value": to_text(old.value), "unit": old.unit, "record": old.id},
               after={"value": to_text(result), "unit": new.unit, "record": new.id, "inputs": inputs, "in_limits": ok,
                      "formula": spec.formula}, reason=new.reason)
        if not ok:
            dev = _new_deviation(actor, batch, row, Severity.MAJOR.value, "limits_missed",
                                 f"{spec.title}: recomputed {to_text(result)} {spec.unit} is outside "
                                 f"{limits_text(spec.low, spec.high, spec.unit)}",
                                 {"record": new.id, "corrects": old.id, "formula": spec.formula, "inputs": inputs},
                                 automatic=True, commit_record=False)
            _record_deviation(actor, dev)
        return new

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """The inputs recorded so far and a preview of the result (the server computes again)."""
        assert isinstance(spec, CalculationStep)
        values = page.values()
        inputs = [(r, page.dec(values.get(r))) for r in spec.references]
        preview = None
        if all(values.get(r) is not None for r in spec.references):
            try:
                preview = page.dec(spec.compute(values))
            except Exception:  # noqa: BLE001 - the server computes again on Record
                preview = None
        return {"inputs": inputs, "preview": preview, "limits": page.limits_text(spec.low, spec.high, spec.unit)}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """Nothing to send: the server calculates."""
        return {}, sim.operator, "calculated"
