"""``instruction``: read and confirm."""

from __future__ import annotations

from typing import Any

from mes.recipes.model import InstructionStep, Step
from mes.steps.base import StepKind
from mes.steps.context import StepContext


class Instruction(StepKind):
    """The operator reads the instruction and confirms it was done."""

    name = "instruction"
    step_class = InstructionStep

    def complete(self, ctx: StepContext) -> None:
        """Needs ``confirm: true``; records a confirmation."""
        if ctx.payload.get("confirm") is not True:
            from mes.errors import ValidationFailed

            raise ValidationFailed("Confirm the instruction (confirm: true).", field="confirm")
        ctx.record("confirmation", {"confirmed": True})
        ctx.result = {"confirmed": True}

    def payload(self, spec: Step, form: Any) -> dict[str, Any]:
        """The kiosk's Done button confirms."""
        return {"confirm": True}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """Confirm."""
        return {"confirm": True}, sim.operator, "confirmed"
