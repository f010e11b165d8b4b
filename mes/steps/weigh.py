"""``weigh``: dispense a BOM item by weight, the weight taken by the server from a scale."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from mes.quantities import UnitError, convert, dimension, to_text
from mes.recipes import checks
from mes.recipes.errors import Path, Problem
from mes.recipes.model import SCALE_CLASSES, TARE_MODES, MasterRecipe, ScaleRequirement, Step, StepRef, Tolerance, WeighStep
from mes.steps.base import KioskPage, Report, ScaleContext, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext, opt


def _tolerance(data: Any) -> Tolerance | None:
    return None if data is None else Tolerance.from_file(data)


def _scale(value: Any) -> ScaleRequirement:
    return ScaleRequirement(readability=Decimal(value["readability"]), unit=value["unit"],
                            accuracy_class=value.get("accuracy_class"))


class Weigh(StepKind):
    """Net weight of one or more containers within the tolerance window around the target;
    outside it nothing is recorded and a major deviation is raised. Consumes the lot."""

    name = "weigh"
    step_class = WeighStep
    required = ("item", "scale")
    converters = {"target": decimal_or_none, "tolerance": _tolerance, "scale": _scale}

    def properties(self) -> dict[str, Any]:
        """Item, target, unit, tolerance, scale requirement, tare and container options."""
        return {"item": ref("code"), "target": ref("decimal"), "unit": ref("unit"), "tolerance": ref("tolerance"),
                "scale": ref("scale"), "stable_reading": {"type": "boolean"}, "tare": {"enum": list(TARE_MODES)},
                "multiple_containers": {"type": "boolean"}, "max_containers": {"type": "integer", "minimum": 1, "maximum": 999}}

    def bom_items(self, step: Step) -> tuple[str, ...]:
        """The item weighed."""
        return (step.item,)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ checks

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        """A BOM item measured by mass, weighed in a mass unit, with a sensible tolerance and
        a scale fine enough for it; container options consistent."""
        step: WeighStep = sref.step  # type: ignore[assignment]
        path = sref.path
        line = recipe.bom_line(step.item)
        if line is None:
            report(path + ("item",), f"no bill-of-materials line for item {step.item!r}")
            return
        if dimension(line.unit) != "mass":
            report(path + ("item",), f"item {step.item!r} is measured in {line.unit} on the bill of materials; "
                                     f"weigh steps dispense by mass (use identify plus a numeric entry)")
            return
        unit = step.unit or line.unit
        if dimension(unit) != "mass":
            report(path + ("unit",), f"a weigh step weighs in a mass unit (mg, g, kg), not {unit}")
            return
        if step.target is not None and step.target <= 0:
            report(path + ("target",), "the target must be greater than zero")
            return
        target = step.target if step.target is not None else convert(line.quantity, line.unit, unit)
        tolerance = step.tolerance or line.tolerance
        if tolerance is None:
            report(path, f"no tolerance: give one on this step or on the bill-of-materials line for {step.item!r}")
        else:
            why = checks.tolerance_problem(tolerance, target, unit)
            if why:
                report(path + ("tolerance",) if step.tolerance else path,
                       why if step.tolerance else f"the BOM tolerance for {step.item!r}: {why}")
            else:
                _scale_fits(step, target, unit, tolerance, path, report)
        if step.max_containers is not None and not step.multiple_containers:
            report(path + ("max_containers",), "max_containers needs multiple_containers: true")
        if step.tare == "none" and step.multiple_containers:
            report(path + ("tare",), "tare: none cannot add up several containers; tare each container or use preset tares")

    def check_recipe(self, recipe: MasterRecipe, refs: Sequence[StepRef], report: Report) -> None:
        """The weigh steps of an item add up to its BOM quantity (each has a target when split)."""
        by_item: dict[str, list[tuple[StepRef, WeighStep]]] = defaultdict(list)
        for sref in refs:
            if sref.step.kind == self.name:
                by_item[sref.step.item].append((sref, sref.step))  # type: ignore[attr-defined]
        for i, line in enumerate(recipe.bill_of_materials):
            weighs = by_item.get(line.item, [])
            if dimension(line.unit) != "mass" or not weighs:
                continue
            if any(dimension(w.unit or line.unit) != "mass" for _, w in weighs):
                continue  # reported on the step
            whole = [r for r, w in weighs if w.target is None]
            if whole and len(weighs) > 1:
                for r in whole:
                    report(r.path, f"item {line.item!r} is weighed in {len(weighs)} steps; give each of them a target")
                continue
            targets = [(w.target, w.unit or line.unit) for _, w in weighs if w.target is not None]
            if whole or len(targets) != len(weighs):
                continue
            total = sum((Fraction(convert(t, u, line.unit)) for t, u in targets), Fraction(0))
            if total != Fraction(line.quantity):
                shown = ", ".join(f"{to_text(t)} {u}" for t, u in targets)
                report(("bill_of_materials", i, "quantity"),
                       f"the weigh steps for {line.item!r} ({shown}) do not add up to {to_text(line.quantity)} {line.unit}")

    # ----------------------------------------------------------------- scaling

    def scale(self, step: Step, ctx: ScaleContext) -> Step:
        """Resolved: target (scaled), unit and tolerance written out; the scale must still
        resolve the tolerance at this batch size."""
        assert isinstance(step, WeighStep)
        if step.target is not None:
            resolved = ctx.master.resolved_weigh(replace(step, target=ctx.scaled(step.target)))
        else:
            resolved = ctx.scaled_master.resolved_weigh(step)
        assert resolved.target is not None and resolved.unit is not None and resolved.tolerance is not None
        where = f"step {step.id}"
        if resolved.target <= 0:
            ctx.problems.append(Problem(f"the scaled target of {step.id!r} rounds to zero", where))
            return resolved
        amount = Fraction(resolved.tolerance.amount(resolved.target, resolved.unit))
        readability = Fraction(convert(step.scale.readability, step.scale.unit, resolved.unit))
        if readability > amount:
            ctx.problems.append(Problem(
                f"at this batch size the tolerance of {step.id!r} is ±{to_text(resolved.tolerance.amount(resolved.target, resolved.unit))} "
                f"{resolved.unit}, finer than the required scale readability {to_text(step.scale.readability)} {step.scale.unit}", where))
        return resolved

    def control_members(self, step: Step) -> dict[str, Any]:
        """The inclusive net-weight window ``low``/``high``."""
        low, high = step.window()  # type: ignore[attr-defined]
        return {"low": to_text(low), "high": to_text(high)}

    # ------------------------------------------------------------------ engine

    def complete(self, ctx: StepContext) -> None:
        """One container (``more: true`` for another) of ``lot_id``/``container_id`` weighed on
        ``device_id``: the server takes the reading; the total must fall in the window."""
        from mes.errors import ValidationFailed
        from mes.execution.models import Severity
        from mes.materials import operations as materials

        spec: WeighStep = ctx.spec  # type: ignore[assignment]
        low, high = spec.window()
        unit = spec.unit
        assert unit is not None
        lot_id = ctx.text("lot_id", "The lot")
        container_id = ctx.text("container_id", "The container")
        more = ctx.payload.get("more") is True
        earlier = ctx.current_records("container")
        if more and not spec.multiple_containers:
            raise ValidationFailed(f"Step {spec.id} takes one container only.", field="more")
        if spec.max_containers and len(earlier) + 1 > spec.max_containers:
            raise ValidationFailed(f"Step {spec.id} takes at most {spec.max_containers} containers.", field="lot_id")
        net, reading, captured = capture(ctx, spec)
        total = sum((Decimal(r.value) for r in earlier), Decimal(0)) + net
        evidence = {"step": spec.id, "lot": lot_id, "container": container_id, "reading": reading,
                    "net": to_text(net), "total": to_text(total), "unit": unit, "low": to_text(low), "high": to_text(high)}
        usable = materials.check_usable(lot_id, spec.item)
        if not usable.ok:
            ctx.refuse_with_deviation(f"{usable.reason}", Severity.MINOR.value, "unusable_lot",
                                      {**evidence, "usability": usable.as_json()})
        if total > high or (not more and total < low):
            ctx.refuse_with_deviation(
                f"{spec.title}: net weight {to_text(total)} {unit} is outside the tolerance window "
                f"{to_text(low)} to {to_text(high)} {unit} (target {to_text(spec.target)} {unit}); nothing was recorded. "
                "Correct the weighing.", Severity.MAJOR.value, "out_of_tolerance", evidence)
        rec = ctx.record("container", {"lot": lot_id, "container": container_id, "reading": reading, "item": spec.item,
                                       "equipment_id": reading["equipment_id"]}, net, unit)
        ctx.complete = not more
        ctx.result = {"net": to_text(net), "total": to_text(total), "unit": unit, "low": to_text(low), "high": to_text(high),
                      "containers": len(earlier) + 1, "complete": not more, "device_id": captured.device_id,
                      "sequence": captured.sequence, "value": reading["value"], "reading_unit": captured.unit}
        if not more:
            ctx.record("value", {"containers": len(earlier) + 1, "target": opt(spec.target)}, total, unit)
        actor, batch, wo, line = ctx.actor, ctx.batch.id, ctx.batch.work_order_id, ctx.batch.line

        def take() -> None:
            used = materials.consume(actor, lot_id, container_id, reading["value"], captured.unit, batch, spec.id, wo,
                                     line, item_code=spec.item, commit=False)
            rec.data = {**rec.data, "consumption": used.id}

        ctx.effects.append(take)

    # ------------------------------------------------------------------- kiosk

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """Window, containers weighed, the line's scales (the chosen one first usable), the lot."""
        assert isinstance(spec, WeighStep)
        low, high = spec.window()
        weighed = page.containers_weighed()
        scales = page.scales_for(spec)
        chosen = page.args.get("device") or next((s["device_id"] for s in scales if s["ok"]), None)
        if page.args.get("lot"):
            lot = page.resolve_label(page.args["lot"], spec.item)
        else:
            identified = page.identified_lot(spec.item)
            lot = page.resolve_label(identified, spec.item) if identified else None
        return {"low": page.dec(low), "high": page.dec(high), "target": page.dec(spec.target), "unit": spec.unit,
                "weighed": weighed, "weighed_total": page.dec(sum((Decimal(w["value"]) for w in weighed), Decimal(0))),
                "scales": scales, "device": chosen, "scale": next((s for s in scales if s["device_id"] == chosen), None),
                "lot": lot}

    def kiosk_blocked(self, spec: Step, context: Mapping[str, Any]) -> dict[str, Any] | None:
        """Blocked when the line has scales and none suits the weighing."""
        scales = context["scales"]
        if scales and not any(s["ok"] for s in scales):
            return {"scale_problems": scales}
        return None

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """Scale, lot, container, and whether another container follows."""
        return {"device_id": form.get("device_id", "").strip(), "lot_id": form.get("lot_id", "").strip(),
                "container_id": form.get("container_id", "").strip(), "more": form.get("more") == "1"}

    # --------------------------------------------------------------- simulator

    def simulate_step(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> str | None:
        """Weigh container by container: a lot with enough stock, a scale that suits every
        piece, loaded through the gateway; the server takes each weight from the scale."""
        assert isinstance(spec, WeighStep)
        return _sim_weigh(sim, batch, step, spec)


def _sim_pick_scale(sim: Any, spec: WeighStep, pieces: list[Decimal]) -> dict[str, Any]:
    """A registered scale with a device that meets the step's requirement and suits every piece."""
    from mes.execution.sim_operator import API, SimulationStopped

    assert sim.operator is not None and spec.unit is not None
    rows = sim.operator.get(f"{API}/equipment", params={"kind": "scale"})["equipment"]
    classes = SCALE_CLASSES
    for eq in rows:
        sc = eq.get("scale") or {}
        if not sc.get("device_id") or eq["status"] == "maintenance" or not eq.get("active", True):
            continue
        read, cap, low = sc["readability"], sc["capacity"], sc["min_weight"]
        if convert(Decimal(read["value"]), read["uom"], spec.scale.unit) > spec.scale.readability:
            continue
        need = spec.scale.accuracy_class
        if need and (sc.get("accuracy_class") not in classes
                     or classes.index(sc["accuracy_class"]) > classes.index(need)):
            continue
        if any(convert(p, spec.unit, cap["uom"]) > Decimal(cap["value"])
               or convert(p, spec.unit, low["uom"]) < Decimal(low["value"]) for p in pieces):
            continue
        return eq  # type: ignore[no-any-return]
    raise SimulationStopped(f"Step {spec.id}: no registered scale meets {spec.scale} for "
                            f"{' + '.join(to_text(p) for p in pieces)} {spec.unit}.")


def _sim_weigh(sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: WeighStep) -> str:
    import time
    from decimal import ROUND_DOWN

    from mes.execution.sim_operator import SimulationStopped, _in_unit, _places, quantize

    assert sim.operator is not None and spec.target is not None and spec.unit is not None
    places = max(_places(spec.target), _places(convert(spec.scale.readability, spec.scale.unit, spec.unit)))
    already = sum((Decimal(r["value"]) for r in step.get("records", [])
                   if r["kind"] == "container" and r.get("superseded_by") is None
                   and r["attempt"] == step["attempt"]), Decimal(0))
    need = quantize(spec.target - already, places)
    lot, containers = sim._pick_lot(spec.item, need, spec.unit)
    sim.chosen_lots.setdefault(spec.item, lot)
    pieces: list[tuple[str, Decimal]] = []
    left = need
    for c in sorted(containers, key=lambda c: -_in_unit(c["remaining"], spec.unit)):
        have = quantize(_in_unit(c["remaining"], spec.unit), places, ROUND_DOWN)
        if have <= 0:
            continue
        take = min(have, left)
        pieces.append((c["id"], take))
        left -= take
        if left <= 0:
            break
    if left > 0:
        raise SimulationStopped(f"Lot {lot} cannot supply {to_text(need)} {spec.unit} for step {spec.id}.")
    if len(pieces) > 1 and not spec.multiple_containers:
        raise SimulationStopped(f"Step {spec.id} takes one container, and no container of lot {lot} holds "
                                f"{to_text(need)} {spec.unit}.")
    eq = _sim_pick_scale(sim, spec, [amount for _, amount in pieces])
    device, scale_unit = eq["scale"]["device_id"], eq["scale"]["readability"]["uom"]
    scale_places = _places(Decimal(eq["scale"]["readability"]["value"]))
    version = step["version"]
    shown = []
    out: dict[str, Any] = {}
    for i, (container, amount) in enumerate(pieces):
        more = i < len(pieces) - 1
        on_scale = quantize(convert(amount, spec.unit, scale_unit), scale_places, ROUND_DOWN)
        reading = sim.scales.weigh(device, on_scale, scale_unit)
        payload: dict[str, Any] = {"lot_id": lot, "container_id": container, "device_id": device,
                                   "sequence": reading["sequence"]}
        if more:
            payload["more"] = True
        sim._last_write = time.monotonic()
        out = sim.operator.complete_step(batch["id"], step["id"], version, payload)
        version = out["version"]
        shown.append(f"{out.get('value', reading['value'])} {out.get('reading_unit', reading['unit'])} "
                     f"from {container} on {device}")
    return f"lot {lot}: " + " + ".join(shown) + sim.outcome(out)


def _scale_fits(step: WeighStep, target: Decimal, unit: str, tolerance: Tolerance, path: Path, report: Report) -> None:
    scale = step.scale
    if dimension(scale.unit) != "mass":
        report(path + ("scale", "unit"), f"the scale readability is a mass, not {scale.unit}")
        return
    if scale.readability <= 0:
        report(path + ("scale", "readability"), "the readability must be greater than zero")
        return
    amount = Fraction(tolerance.amount(target, unit))
    if Fraction(convert(scale.readability, scale.unit, unit)) > amount:
        report(path + ("scale", "readability"),
               f"a scale with d = {to_text(scale.readability)} {scale.unit} cannot resolve the tolerance {tolerance} "
               f"of {to_text(target)} {unit}")


def capture(ctx: StepContext, spec: WeighStep) -> tuple[Decimal, dict[str, Any], Any]:
    """The weight of a weigh step, taken on the server (capture rules, issue #5).

    The client names the scale (``device_id``, optionally the ``sequence`` of the reading it
    showed); the value is the latest reading the gateway stored for that device. Refused,
    with the reason: an unregistered or unusable scale, no reading, an unstable, faulty or
    stale reading (older than ``max_reading_age_ms``), a reading older than the one the
    kiosk showed, a scale out of calibration (raises a deviation), or one whose capacity,
    minimum weight, readability or accuracy class does not suit the weighing. Returns the
    net weight in the step's unit, the record of the reading (raw device reply, identity,
    equipment) and the reading itself.
    """
    from mes.db import utcnow
    from mes.equipment import operations as equipment
    from mes.errors import ValidationFailed
    from mes.execution.models import Severity
    from mes.steps.equipment_check import OUT_OF_CALIBRATION

    assert spec.unit is not None and spec.target is not None
    if "reading" in ctx.payload:
        raise ValidationFailed("The server takes the weight from the scale; send the scale's device_id, "
                               "not a reading.", field="reading")
    device_id = ctx.text("device_id", "The scale (device_id)")
    seen = ctx.payload.get("sequence")
    if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
        raise ValidationFailed("sequence is the number of the reading the kiosk showed (a whole number).",
                               field="sequence")
    evidence: dict[str, Any] = {"step": spec.id, "device_id": device_id}
    eq = equipment.equipment_for_device(device_id)
    if eq is None:
        ctx.refuse(f"Scale {device_id} is not registered in the MES and must not be used. "
                   "Use a registered scale or tell the supervisor.", code="unknown_device", device_id=device_id)
    evidence["equipment_id"] = eq.id
    if ctx.readings is None:
        ctx.refuse("No device gateway feeds this server, so no weight can be taken from a scale. "
                   "Tell the supervisor.", code="no_gateway", device_id=device_id)
    captured = ctx.readings.latest(device_id)
    if captured is None:
        ctx.refuse(f"{eq.label} has sent no reading. Check that the scale is on and connected, then weigh "
                   "again.", code="no_reading", device_id=device_id, equipment_id=eq.id)
    from mes.gateway.capture import device_link_refusal

    unlinked = device_link_refusal(ctx.readings, captured, eq.label)
    if unlinked is not None:  # a silent scale's last reading is never taken, whatever its age
        ctx.refuse(unlinked, code="device_not_connected", device_id=device_id, equipment_id=eq.id)
    if seen is not None and captured.sequence < seen:
        ctx.refuse(f"The server has not received the reading the kiosk showed from {eq.label} yet "
                   f"(it has reading {captured.sequence}, the kiosk showed {seen}). Weigh again.",
                   code="reading_behind", device_id=device_id, equipment_id=eq.id)
    # the age is measured on the real clock: the gateway stamps readings with it
    seen_as = {**captured.to_json(), "timestamp": captured.at.isoformat()}
    checked = equipment.check_reading(seen_as, Decimal(ctx.max_reading_age_ms) / 1000, utcnow(),
                                      require_stable=spec.stable_reading)
    if not checked.ok:
        ctx.refuse(checked.reason, code=checked.code, device_id=device_id, equipment_id=eq.id)
    value = Decimal(checked.details["value"])
    try:
        net = convert(value, captured.unit, spec.unit)
    except UnitError as exc:
        from mes.execution.operations import StepRefused

        raise StepRefused(f"{eq.label} weighs in {captured.unit}; this step cannot use it ({exc}).",
                          code="wrong_unit", device_id=device_id) from None
    if net <= 0:
        ctx.refuse(f"{eq.label} shows no load ({to_text(value)} {captured.unit}). Put the container on the "
                   "scale and weigh again.", code="no_load", device_id=device_id)
    # capacity and minimum weight against the target (one container) or this container's net
    # (in the unit the recipe states the scale requirement in, so the reason reads as the recipe)
    weighed = convert(net if spec.multiple_containers else spec.target, spec.unit, spec.scale.unit)
    suits = equipment.check_scale_for_weighing(
        device_id, weighed, spec.scale.unit, readability_required=spec.scale.readability,
        accuracy_class_required=spec.scale.accuracy_class, at=ctx.now)
    reading = {**checked.details["reading"], "raw_hex": captured.raw.hex(), "seen_sequence": seen}
    if not suits.ok:
        if suits.code in OUT_OF_CALIBRATION:
            ctx.refuse_with_deviation(suits.reason, Severity.MINOR.value, "equipment_out_of_calibration",
                                      {**evidence, "check": suits.as_json(), "reading": reading})
        ctx.refuse(suits.reason, code=suits.code, device_id=device_id, equipment_id=eq.id)
    reading["calibration"] = suits.details.get("calibration")
    reading["accuracy_class"] = suits.details.get("accuracy_class")
    reading["readability"] = suits.details.get("readability")
    return net, reading, captured
