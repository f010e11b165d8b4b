"""``timer``: a timed interval (from the step's start, or a hold time from an earlier step)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from mes.quantities import Duration
from mes.recipes import checks
from mes.recipes.model import MasterRecipe, Step, StepRef, TimerStep
from mes.steps.base import Expectation, KioskPage, Report, StepKind, duration, ref
from mes.steps.context import StepContext, at_text


class Timer(StepKind):
    """The server clock times the step; outside ``[minimum, maximum]`` it is flagged and a
    major deviation is raised."""

    name = "timer"
    step_class = TimerStep
    converters = {"minimum": duration, "maximum": duration}
    sim_timed = False

    def properties(self) -> dict[str, Any]:
        """Minimum, maximum, the step the hold time counts from."""
        return {"minimum": ref("duration"), "maximum": ref("duration"), "from_step": ref("id")}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """A minimum and/or a maximum, minimum <= maximum, ``from_step`` earlier."""
        step: TimerStep = sref.step  # type: ignore[assignment]
        path = sref.path
        if step.minimum is None and step.maximum is None:
            report(path, "a timer needs a minimum, a maximum or both")
        if step.maximum is not None and step.maximum.seconds == 0:
            report(path + ("maximum",), "the maximum must be longer than zero")
        if step.minimum is not None and step.maximum is not None and step.minimum > step.maximum:
            report(path + ("maximum",), f"the maximum {step.maximum.iso} is shorter than the minimum {step.minimum.iso}")
        if step.from_step is not None and unique_ids:
            checks.earlier(recipe, sref, step.from_step, path + ("from_step",), report, "from_step")

    def complete(self, ctx: StepContext) -> None:
        """Stops the timer now: elapsed since the step's start (or ``from_step``'s completion)."""
        from mes.execution.models import StepState

        spec: TimerStep = ctx.spec  # type: ignore[assignment]
        if spec.from_step:
            start = ctx.completed_at(spec.from_step)
            if start is None:
                ctx.not_ready(f"The hold time counts from step {spec.from_step}, which is not completed.")
        else:
            if ctx.step.state != StepState.IN_PROGRESS.value or ctx.step.started_at is None:
                ctx.not_ready(f"Start the timer of step {spec.id} first.")
            start = ctx.step.started_at
        seconds = int((ctx.now - start).total_seconds())
        elapsed = Duration(max(0, seconds))
        ok = spec.in_limits(elapsed)
        data = {"started_at": at_text(start), "stopped_at": at_text(ctx.now), "elapsed": elapsed.iso,
                "minimum": spec.minimum.iso if spec.minimum else None, "maximum": spec.maximum.iso if spec.maximum else None,
                "from_step": spec.from_step}
        ctx.record("timer", data, Decimal(elapsed.seconds), "s", [] if ok else ["out_of_limits"])
        ctx.result = {**data, "in_limits": ok}
        if not ok:
            what = "hold time exceeded" if spec.maximum and elapsed > spec.maximum else "time outside window"
            ctx.deviate("hold_time_exceeded" if spec.from_step else "time_out_of_window",
                        f"{spec.title}: {what} ({elapsed.human}; allowed "
                        f"{spec.minimum.human if spec.minimum else '0 s'} to {spec.maximum.human if spec.maximum else 'no limit'})",
                        {"step": spec.id, **data})

    def expectation(self, spec: Step) -> Expectation:
        """The time window (minimum to maximum), as durations."""
        assert isinstance(spec, TimerStep)
        return Expectation(low=spec.minimum.human if spec.minimum else "",
                           high=spec.maximum.human if spec.maximum else "")

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """When the timer started (server clock), its window, and whether the form starts it."""
        assert isinstance(spec, TimerStep)
        started = page.completed_at_text(spec.from_step) if spec.from_step else page.at_text(page.step.started_at)
        now = page.now_text()
        early = bool(started and spec.minimum
                     and (datetime.fromisoformat(now) - datetime.fromisoformat(started)).total_seconds() < spec.minimum.seconds)
        return {"started": started, "early": early,
                "minimum": spec.minimum.seconds if spec.minimum else None,
                "maximum": spec.maximum.seconds if spec.maximum else None,
                "minimum_text": spec.minimum.human if spec.minimum else "",
                "maximum_text": spec.maximum.human if spec.maximum else "",
                "server_now": now,
                "start_action": not started and not spec.from_step}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """Stop the timer (the simulator waited for :meth:`sim_wait` first)."""
        return {}, sim.operator, "timer stopped"

    def sim_wait(self, spec: Step) -> timedelta | None:
        """When to stop a timer: a little after its minimum. The client's estimate of the server
        clock errs late (requests take time), so the target sits in the first fifth of the window.
        A hold time (``from_step``) is not waited for."""
        assert isinstance(spec, TimerStep)
        if spec.from_step:
            return None
        low = spec.minimum.seconds if spec.minimum else 0
        if spec.maximum is not None:
            extra = min((spec.maximum.seconds - low) / 5, 300)
        else:
            extra = min(max(low * 0.1, 5), 300)
        return timedelta(seconds=low + extra)
