"""StepKind.expectation: what each step asks for (target and limits, places as the recipe
wrote them), read by the kiosk's batch summary (issue 15)."""

from __future__ import annotations

from decimal import Decimal

from mes.quantities import to_text
from mes.recipes.loader import load_recipe
from mes.recipes.model import NumericStep, ProduceOutputStep, TimerStep, WeighStep
from mes.recipes.scaling import scale
from mes.steps import registry
from mes.steps.base import Expectation
from tests.recipes.helpers import PARACETAMOL


def _steps() -> list:
    control = scale(load_recipe(PARACETAMOL), Decimal("200000"), "pcs")  # resolved, as a batch has it
    return [ref.step for ref in control.recipe.steps()]


def test_each_kind_says_its_target_and_limits_as_written() -> None:
    steps = _steps()
    weigh = next(s for s in steps if isinstance(s, WeighStep))
    low, high = weigh.window()
    assert registry.kind_of(weigh).expectation(weigh) == Expectation(
        to_text(weigh.target), to_text(low), to_text(high), weigh.unit or "", weigh.unit or "")
    timer = next(s for s in steps if isinstance(s, TimerStep))
    assert registry.kind_of(timer).expectation(timer) == Expectation(low=timer.minimum.human, high=timer.maximum.human)
    numeric = next(s for s in steps if isinstance(s, NumericStep) and (s.low is not None or s.high is not None))
    got = registry.kind_of(numeric).expectation(numeric)
    assert (got.low, got.high, got.unit) == (to_text(numeric.low) if numeric.low is not None else "",
                                             to_text(numeric.high) if numeric.high is not None else "", numeric.unit)
    output = next(s for s in steps if isinstance(s, ProduceOutputStep))
    got = registry.kind_of(output).expectation(output)
    assert (got.low, got.high, got.limits_unit) == (to_text(output.yield_low), to_text(output.yield_high), "%")
    # a step without a target or limits asks for nothing
    instruction = next(s for s in steps if s.kind == "instruction")
    assert registry.kind_of(instruction).expectation(instruction) == Expectation()
