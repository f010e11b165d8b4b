"""What a step kind's engine handler sees: :class:`StepContext`, and the shared helpers.

The engine builds one context per completion request (the batch row locked, the open
steps read) and calls ``kind.complete(ctx)``. The handler validates ``ctx.payload`` against
``ctx.spec``, records with :meth:`StepContext.record`, raises deviations with
:meth:`StepContext.deviate`, sets ``ctx.result``, and refuses by raising one of the
refusals offered here. It never touches the engine's internals; the few engine services a
kind needs (other steps' completion, this step's earlier records, recorded values) are
methods here. The engine is imported lazily (it imports this module).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

from mes.quantities import decimal_places, to_text
from mes.recipes import model as rm

if TYPE_CHECKING:
    from mes.audit.log import Actor
    from mes.execution.models import StepRecord
    from mes.gateway.store import ReadingStore
    from mes.recipes.scaling import ControlRecipe

__all__ = ["DEFAULT_MAX_FAILED_WEIGHINGS", "DEFAULT_MAX_READING_AGE_MS", "StepContext",
           "at_text", "inspected", "limits_text", "opt", "places_ok", "recorded_values"]

DEFAULT_MAX_READING_AGE_MS = 3000
"""How old a scale reading may be when a weight is captured (the engine's default)."""

DEFAULT_MAX_FAILED_WEIGHINGS = 3
"""Refused out-of-tolerance weighings of one step before the next raises a deviation
(``MES_WEIGH_MAX_FAILED_ATTEMPTS``; the engine's default)."""


@dataclass
class StepContext:
    """One completion request of one step (same positional order as the engine builds it)."""

    actor: Actor
    batch: Any  # the locked batch: id, work_order_id, line, recipe_hash ...
    step: Any  # the open batch step: id, step_id, seq, attempt, state, started_at ...
    rows: list[Any]  # the steps not completed yet
    control: ControlRecipe
    spec: rm.Step
    payload: dict[str, Any]
    now: datetime
    session_row: Any = None  # the signer's session row, or a callable returning it
    readings: ReadingStore | None = None
    max_reading_age_ms: int = DEFAULT_MAX_READING_AGE_MS
    records: list[StepRecord] = field(default_factory=list)
    deviations: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    # writes of other features (consumption, produced lot, equipment status) in this
    # step's transaction, run after every check passed
    effects: list[Callable[[], None]] = field(default_factory=list)
    max_failed_weighings: int = DEFAULT_MAX_FAILED_WEIGHINGS
    # an in-process check's results, limits and verdict: sent as mes.inspection.recorded.v1
    # with the completion (see :meth:`inspected`)
    inspection: dict[str, Any] | None = None

    # ---------------------------------------------------------------- recording

    def record(self, kind: str, data: dict[str, Any], value: Decimal | None = None, unit: str | None = None,
               flags: list[str] | None = None) -> StepRecord:
        """A new step record of this attempt (written by the engine with the completion)."""
        from mes.execution.models import StepRecord

        rec = StepRecord(id=f"R-{uuid.uuid4().hex[:12].upper()}", batch_id=self.batch.id, batch_step_id=self.step.id,
                         attempt=self.step.attempt, kind=kind, value=value,
                         unit=unit, data=data, flags=flags or [], recorded_at=self.now, recorded_by=self.actor.id)
        self.records.append(rec)
        return rec

    def inspected(self, results: list[Decimal], unit: str, limits: dict[str, str | None], ok: bool,
                  out_of_limits: list[int], mean: Decimal | None = None) -> None:
        """Report an in-process check to QMS with the completion (see :func:`inspected`)."""
        inspected(self, results, unit, limits, ok, out_of_limits, mean)

    def deviate(self, category: str, description: str, evidence: dict[str, Any], severity: str | None = None) -> None:
        """Raise a deviation with the completion (major unless told)."""
        from mes.execution.models import Severity

        self.deviations.append({"severity": severity or Severity.MAJOR.value, "category": category,
                                "description": description, "evidence": evidence})

    # ------------------------------------------------------------------ refusing

    def refuse(self, message: str, **details: Any) -> NoReturn:
        """Refuse the request; nothing is recorded (409 with ``details``)."""
        from mes.execution.operations import StepRefused

        raise StepRefused(message, **details)

    def refuse_with_deviation(self, detail: str, severity: str, category: str, evidence: dict[str, Any]) -> NoReturn:
        """Refuse the request and commit a deviation saying why (nothing else is recorded)."""
        from mes.execution.operations import _RefuseWithDeviation

        raise _RefuseWithDeviation(detail, severity, category, evidence)

    def not_ready(self, message: str) -> NoReturn:
        """Refuse: the step cannot be done yet (409)."""
        from mes.execution.operations import StepNotReady

        raise StepNotReady(message)

    # ------------------------------------------------------------ reading input

    def text(self, name: str, what: str) -> str:
        """The payload member ``name`` as required, non-blank text (ValidationFailed naming ``what``)."""
        from mes.execution.operations import _text

        return _text(self.payload.get(name), what, name)

    def decimal(self, value: Any, name: str, *, signed: bool = False) -> Decimal:
        """A decimal written as a string (ValidationFailed otherwise)."""
        from mes.execution.operations import _dec

        return _dec(value, name, signed=signed)

    # ------------------------------------------------------------ engine services

    def current_records(self, kind: str | None = None) -> list[StepRecord]:
        """This step's current records of this attempt (of one record kind if given)."""
        from mes.execution.operations import _current_records

        return _current_records(self.step, kind)

    def completed_at(self, step_id: str) -> datetime | None:
        """When another step of the batch was completed (None if it is not)."""
        from mes.execution.operations import get_step

        return get_step(self.batch.id, step_id).completed_at

    def values(self) -> dict[str, Decimal]:
        """Current recorded values of the batch's value steps, by step id."""
        return recorded_values(self.batch.id)

    def signer_session(self) -> Any:
        """The session row of the person completing the step, or None (not interactive)."""
        return self.session_row() if callable(self.session_row) else self.session_row


def inspected(ctx: StepContext, results: list[Decimal], unit: str, limits: dict[str, str | None], ok: bool,
              out_of_limits: list[int], mean: Decimal | None = None) -> None:
    """An in-process check's results, limits and verdict, sent to QMS as ``mes.inspection.recorded.v1``
    (events.md §1) with the step's completion, in the same transaction."""
    from mes.audit.canonical import format_at

    ctx.inspection = {
        "work_order_id": ctx.batch.work_order_id, "batch_id": ctx.batch.id, "step_id": ctx.spec.id,
        "characteristic": ctx.spec.title, "results": [{"value": to_text(r), "uom": unit} for r in results],
        "mean": None if mean is None else {"value": to_text(mean), "uom": unit},
        "limits": {"low": None, "high": None, "mean_low": None, "mean_high": None, **limits},
        "verdict": "pass" if ok else "fail", "out_of_limits": list(out_of_limits),
        "recorded_at": format_at(ctx.now), "performed_by": ctx.actor.id, "attempt": ctx.step.attempt,
    }


def places_ok(value: Decimal, precision: int, field_name: str) -> Decimal:
    """``value`` at exactly ``precision`` decimals; ValidationFailed if it has more."""
    from mes.errors import ValidationFailed

    if decimal_places(value) > precision:
        raise ValidationFailed(f"{field_name} has more than {precision} decimal place(s).", field=field_name)
    return value.quantize(Decimal(1).scaleb(-precision)) if precision >= 0 else value


def limits_text(low: Decimal | None, high: Decimal | None, unit: str) -> str:
    """``low to high unit`` with ``-`` for an open limit (deviation texts)."""
    lo = to_text(low) if low is not None else "-"
    hi = to_text(high) if high is not None else "-"
    return f"{lo} to {hi} {unit}"


def opt(value: Decimal | None) -> str | None:
    """A decimal as text, None stays None."""
    return to_text(value) if value is not None else None


def check_limits(ctx: StepContext, spec: rm.NumericStep | rm.MeterStep, value: Decimal) -> list[str]:
    """The record's flags for ``value`` against the step's ``low``/``high``: none within them;
    outside, ``out_of_limits``, and a major ``limits_missed`` deviation is raised with the
    completion (the value is recorded all the same)."""
    if spec.in_limits(value):
        return []
    ctx.deviate("limits_missed", f"{spec.title}: {to_text(value)} {spec.unit} is outside "
                f"{limits_text(spec.low, spec.high, spec.unit)}",
                {"step": spec.id, "value": to_text(value), "unit": spec.unit, "low": opt(spec.low),
                 "high": opt(spec.high)})
    return ["out_of_limits"]


def at_text(value: datetime | None) -> str | None:
    """A datetime as canonical UTC text (None stays None)."""
    from mes.audit import canonical

    return canonical.format_at(value) if value else None


def recorded_values(batch_id: str) -> dict[str, Decimal]:
    """Current (not superseded) values of completed value steps: step id -> Decimal (the
    engine's :func:`mes.execution.records._values`, the one home of that query)."""
    from mes.execution.records import _values

    return _values(batch_id)
