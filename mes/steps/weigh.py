"""``weigh``: dispense a BOM item by weight, the weight taken by the server from a scale."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from mes.quantities import UnitError, convert, decimal_places, dimension, same_dimension, to_text, with_places
from mes.recipes import checks
from mes.recipes.errors import Path, Problem
from mes.recipes.model import SCALE_CLASSES, TARE_MODES, MasterRecipe, ScaleRequirement, Step, StepRef, Tolerance, WeighStep
from mes.steps.base import Expectation, KioskPage, Report, ScaleContext, StepKind, decimal_or_none, ref
from mes.steps.capture import Confirmed, confirmed_reading
from mes.steps.context import StepContext, limits_text, opt


def _tolerance(data: Any) -> Tolerance | None:
    return None if data is None else Tolerance.from_file(data)


def _scale(value: Any) -> ScaleRequirement:
    return ScaleRequirement(readability=Decimal(value["readability"]), unit=value["unit"],
                            accuracy_class=value.get("accuracy_class"))


def _as_the_scale_reads(recipe_unit: str, scale: Mapping[str, Any] | None) -> tuple[str, int]:
    """The unit and places a weigh screen writes target, limits and weighed total in for
    ``scale`` (a :meth:`KioskPage.scales_for` entry): the scale's, so they stand beside the live
    weight alike (issue 15); the recipe's unit when no scale is chosen or it reads no mass."""
    readability, uom = (scale or {}).get("readability"), (scale or {}).get("readability_uom")
    if readability is None or not uom or not same_dimension(uom, recipe_unit):
        return recipe_unit, 0
    return uom, decimal_places(Decimal(readability).normalize())  # 0.010000 as stored reads to 2 places


class Weigh(StepKind):
    """Net weight of one or more containers of the identified lot within the tolerance window
    around the target, each with its tare and gross, from the reading the operator confirmed;
    outside the window nothing is recorded and the attempt is refused (a major deviation when
    reported or after too many attempts). Consumes the lot."""

    name = "weigh"
    dispenses = True
    step_class = WeighStep
    required = ("item", "scale")
    converters = {"target": decimal_or_none, "tolerance": _tolerance, "scale": _scale, "tare_low": decimal_or_none,
                  "tare_high": decimal_or_none}

    def properties(self) -> dict[str, Any]:
        """Item, target, unit, tolerance, scale requirement, tare (how, and the container tare's
        limits in the step's unit) and container options."""
        return {"item": ref("code"), "target": ref("decimal"), "unit": ref("unit"), "tolerance": ref("tolerance"),
                "scale": ref("scale"), "stable_reading": {"type": "boolean"}, "tare": {"enum": list(TARE_MODES)},
                "tare_low": ref("decimal"), "tare_high": ref("decimal"),
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
        if step.tare == "none" and (step.tare_low is not None or step.tare_high is not None):
            report(path + ("tare",), "tare limits need a container tare (tare: each_container or preset)")
        for name in ("tare_low", "tare_high"):
            if getattr(step, name) is not None and getattr(step, name) <= 0:
                report(path + (name,), f"{name} must be greater than zero")
        if step.tare_low is not None and step.tare_high is not None and step.tare_low > step.tare_high:
            report(path + ("tare_low",), "tare_low must not be above tare_high")

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
        the scale ``device_id``: the engine records the reading the operator confirmed
        (``sequence``, ``value``), with its tare (``tare``: how obtained) and gross; the net
        total must fall in the window. ``capture: "tare"`` weighs an empty container first.
        The lot is the one identified for the step. Outside the window the weighing is
        refused as an attempt; a deviation is raised when the operator reports it (``report``)
        or after ``ctx.max_failed_weighings`` refused attempts."""
        from mes.execution.models import Severity
        from mes.materials import operations as materials

        spec: WeighStep = ctx.spec  # type: ignore[assignment]
        low, high = spec.window()
        unit = spec.unit
        assert unit is not None
        lot_id = ctx.text("lot_id", "The lot")
        container_id = ctx.text("container_id", "The container")
        bound_to_identified_lot(ctx, spec, lot_id, container_id)
        if ctx.payload.get("capture") == "tare":
            _capture_tare(ctx, spec, lot_id, container_id)
            return
        more = ctx.payload.get("more") is True
        earlier = ctx.current_records("container")
        if more and not spec.multiple_containers:
            ctx.refuse(f"Step {spec.id} takes one container only.", code="one_container", field="more")
        if spec.max_containers and len(earlier) + 1 > spec.max_containers:
            ctx.refuse(f"Step {spec.id} takes at most {spec.max_containers} containers.", code="max_containers")
        shown, confirmed = capture(ctx, spec)
        tare, tare_value = _tare(ctx, spec, container_id, confirmed)
        if tare["source"] in ("weighed_container", "preset"):
            gross, net = shown, shown - tare_value
        else:
            gross, net = shown + tare_value, shown
        if net <= 0:
            ctx.refuse(f"{confirmed.equipment.label} shows no load of {spec.item} ({to_text(gross)} {unit} gross, "
                       f"tare {to_text(tare_value)} {unit}). Put the material on the scale and weigh again.",
                       code="no_load", device_id=confirmed.captured.device_id)
        reading = _suits(ctx, spec, confirmed, net, gross)
        total = sum((Decimal(r.value) for r in earlier), Decimal(0)) + net
        evidence = {"step": spec.id, "lot": lot_id, "container": container_id, "reading": reading,
                    "tare": tare, "gross": to_text(gross), "net": to_text(net), "total": to_text(total), "unit": unit,
                    "low": to_text(low), "high": to_text(high)}
        usable = materials.check_usable(lot_id, spec.item)
        if not usable.ok:
            ctx.refuse_with_deviation(f"{usable.reason}", Severity.MINOR.value, "unusable_lot",
                                      {**evidence, "usability": usable.as_json()})
        if total > high or (not more and total < low):
            _out_of_tolerance(ctx, spec, total, evidence)
        rec = ctx.record("container", {"lot": lot_id, "container": container_id, "reading": reading, "item": spec.item,
                                       "equipment_id": reading["equipment_id"], "tare": tare, "gross": to_text(gross),
                                       "net": to_text(net), "unit": unit}, net, unit)
        ctx.complete = not more
        ctx.result = {"net": to_text(net), "gross": to_text(gross), "tare": tare["value"],
                      "tare_source": tare["source"], "total": to_text(total), "unit": unit, "low": to_text(low),
                      "high": to_text(high), "containers": len(earlier) + 1, "complete": not more,
                      "device_id": confirmed.captured.device_id, "sequence": reading["confirmed"]["sequence"],
                      "value": reading["confirmed"]["value"], "reading_unit": confirmed.unit}
        if not more:
            ctx.record("value", {"containers": len(earlier) + 1, "target": opt(spec.target)}, total, unit)
        actor, batch, wo, line = ctx.actor, ctx.batch.id, ctx.batch.work_order_id, ctx.batch.line

        def take() -> None:
            taken = convert(net, unit, confirmed.unit)  # in the scale's unit, as the scale shows it
            used = materials.consume(actor, lot_id, container_id, taken, confirmed.unit, batch, spec.id, wo,
                                     line, item_code=spec.item, commit=False)
            rec.data = {**rec.data, "consumption": used.id}

        ctx.effects.append(take)

    # ------------------------------------------------------------------- kiosk

    def expectation(self, spec: Step) -> Expectation:
        """The target and its tolerance window, in the step's unit."""
        assert isinstance(spec, WeighStep) and spec.target is not None
        low, high = spec.window()
        unit = spec.unit or ""
        return Expectation(to_text(spec.target), to_text(low), to_text(high), unit, unit)

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
        scale = next((s for s in scales if s["device_id"] == chosen), None)
        unit, places = _as_the_scale_reads(spec.unit, scale)

        def shown(value: Decimal | None) -> str:  # at least the scale's places, never rounded to them
            return "" if value is None else to_text(with_places(convert(value, spec.unit, unit), places))

        return {"low": shown(low), "high": shown(high), "target": shown(spec.target), "unit": unit,
                "weighed": weighed, "weighed_total": shown(sum((Decimal(w["value"]) for w in weighed), Decimal(0))),
                "scales": scales, "device": chosen, "scale": scale, "lot": lot}

    def kiosk_blocked(self, spec: Step, context: Mapping[str, Any]) -> dict[str, Any] | None:
        """Blocked when the line has scales and none suits the weighing."""
        scales = context["scales"]
        if scales and not any(s["ok"] for s in scales):
            return {"scale_problems": scales}
        return None

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """Scale, lot, container, the reading the confirm dialog showed (sequence, value, unit),
        the container's tare as the scale reported it, whether another container follows, and
        whether the operator reports an out-of-tolerance weight (a deviation)."""
        assert isinstance(spec, WeighStep)
        seq = form.get("sequence", "").strip()
        out: dict[str, Any] = {
            "device_id": form.get("device_id", "").strip(), "lot_id": form.get("lot_id", "").strip(),
            "container_id": form.get("container_id", "").strip(), "more": form.get("more") == "1",
            "sequence": int(seq) if seq.isdigit() else seq, "value": form.get("value", "").strip(),
            "unit": form.get("reading_unit", "").strip() or None, "report": form.get("report") == "1"}
        if form.get("capture") == "tare":  # "Weigh empty container"
            out["capture"] = "tare"
        elif spec.tare != "none" and form.get("tare_source", "").strip():
            out["tare"] = {"source": form.get("tare_source", "").strip(), "value": form.get("tare_value", "").strip(),
                           "unit": form.get("tare_unit", "").strip() or None}
        return out

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
        if any(convert(p + p / 20, spec.unit, cap["uom"]) > Decimal(cap["value"])  # with the container's tare
               or convert(p, spec.unit, low["uom"]) < Decimal(low["value"]) for p in pieces):
            continue
        # the minimum weight QA registered with the current calibration (USP <41>)
        cal = sim.operator.get(f"{API}/equipment/{eq['id']}")["equipment"].get("current_calibration") or {}
        usp = cal.get("min_weight")
        if usp and any(convert(p, spec.unit, usp["uom"]) < Decimal(usp["value"]) for p in pieces):
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
    def confirmed(reading: dict[str, Any]) -> dict[str, Any]:  # what the confirm dialog showed
        return {"device_id": device, "sequence": reading["sequence"], "value": reading["value"], "unit": reading["unit"]}

    for i, (container, amount) in enumerate(pieces):
        more = i < len(pieces) - 1
        on_scale = quantize(convert(amount, spec.unit, scale_unit), scale_places, ROUND_DOWN)
        # the empty container: a twentieth of the amount (at least one scale division)
        empty = max(quantize(on_scale / 20, scale_places, ROUND_DOWN), Decimal(1).scaleb(-scale_places))
        base: dict[str, Any] = {"lot_id": lot, "container_id": container}
        payload: dict[str, Any] = dict(base)
        if spec.tare == "each_container":  # weigh the empty container, then container and material
            tared = sim.scales.weigh(device, empty, scale_unit)
            sim._last_write = time.monotonic()
            version = sim.operator.complete_step(batch["id"], step["id"], version,
                                                 {**base, "capture": "tare", **confirmed(tared)})["version"]
            payload["tare"] = {"source": "weighed_container"}
        elif spec.tare == "preset":  # the container's tare from its label
            payload["tare"] = {"source": "preset", "value": to_text(empty), "unit": scale_unit}
        reading = sim.scales.weigh(device, on_scale + empty if spec.tare != "none" else on_scale, scale_unit)
        payload.update(confirmed(reading))
        if more:
            payload["more"] = True
        sim._last_write = time.monotonic()
        out = sim.operator.complete_step(batch["id"], step["id"], version, payload)
        version = out["version"]
        shown.append(f"{out.get('net')} {spec.unit} net ({out.get('gross')} gross, tare {out.get('tare')} "
                     f"{out.get('tare_source', '').replace('_', ' ')}) from {container} on {device}")
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


TARE_SOURCES = ("scale_tare", "weighed_container", "preset")
"""How a container's tare was obtained: the scale tared with the container on it (the
reading is net), the empty container weighed on this step first (``capture: "tare"``), or
the container's pre-set tare (from its label)."""


def capture(ctx: StepContext, spec: WeighStep) -> tuple[Decimal, Confirmed]:
    """The weight of a weigh step, taken on the server: the reading the operator confirmed
    (:func:`mes.steps.capture.confirmed_reading`), in the step's unit."""
    from mes.errors import ValidationFailed

    assert spec.unit is not None and spec.target is not None
    if "reading" in ctx.payload:
        raise ValidationFailed("The server takes the weight from the scale; send the scale's device_id and the "
                               "reading the confirm dialog showed (sequence, value), not a reading.", field="reading")
    confirmed = confirmed_reading(ctx, require_stable=spec.stable_reading)
    try:
        shown = convert(confirmed.value, confirmed.unit, spec.unit)
    except UnitError as exc:
        ctx.refuse(f"{confirmed.equipment.label} weighs in {confirmed.unit}; this step cannot use it ({exc}).",
                   code="wrong_unit", device_id=confirmed.captured.device_id)
    return shown, confirmed


def _suits(ctx: StepContext, spec: WeighStep, confirmed: Confirmed, net: Decimal, gross: Decimal) -> dict[str, Any]:
    """Scale suitability (issue 14): calibrated, the gross within capacity, the net at least the
    scale's minimum weight (the registered one and the one QA registered with the calibration,
    USP <41> / Ph. Eur. 2.1.7), readability fine enough for the recipe and the tolerance,
    accuracy class. Out of calibration raises a deviation; every other misfit is refused
    with the reason. Returns the reading as the record keeps it."""
    from mes.equipment import operations as equipment
    from mes.execution.models import Severity
    from mes.steps.equipment_check import OUT_OF_CALIBRATION

    assert spec.unit is not None and spec.target is not None and spec.tolerance is not None
    device_id = confirmed.captured.device_id
    tolerance = spec.tolerance.amount(spec.target, spec.unit)
    readability = min(spec.scale.readability, convert(tolerance, spec.unit, spec.scale.unit))
    suits = equipment.check_scale_for_weighing(
        device_id, convert(net, spec.unit, spec.scale.unit), spec.scale.unit, readability_required=readability,
        accuracy_class_required=spec.scale.accuracy_class, at=ctx.now,
        gross=convert(gross, spec.unit, spec.scale.unit))
    reading = {**confirmed.reading, "equipment_id": confirmed.equipment.id}
    if not suits.ok:
        if suits.code in OUT_OF_CALIBRATION:
            ctx.refuse_with_deviation(suits.reason, Severity.MINOR.value, "equipment_out_of_calibration",
                                      {"step": spec.id, "device_id": device_id, "equipment_id": confirmed.equipment.id,
                                       "check": suits.as_json(), "reading": reading})
        ctx.refuse(suits.reason, code=suits.code, device_id=device_id, equipment_id=confirmed.equipment.id)
    reading["calibration"] = suits.details.get("calibration")
    reading["accuracy_class"] = suits.details.get("accuracy_class")
    reading["readability"] = suits.details.get("readability")
    reading["min_weight"] = suits.details.get("min_weight_applied")
    return reading


def _tare(ctx: StepContext, spec: WeighStep, container_id: str, confirmed: Confirmed) -> tuple[dict[str, Any], Decimal]:
    """The container's tare, how it was obtained, checked against the recipe's tare limits:
    ``({"source", "value", "unit", ...}, value in the step's unit)``."""
    from mes.errors import ValidationFailed

    assert spec.unit is not None
    unit = spec.unit
    sent = ctx.payload.get("tare")
    if spec.tare == "none":
        if sent is not None:
            raise ValidationFailed(f"Step {spec.id} weighs without a container tare; send no tare.", field="tare")
        return {"source": "none", "value": "0", "unit": unit}, Decimal(0)
    allowed = ("preset",) if spec.tare == "preset" else ("scale_tare", "weighed_container")
    if sent is None and spec.tare == "each_container" and any(
            r.data.get("container") == container_id for r in ctx.current_records("tare")):
        sent = {"source": "weighed_container"}  # the container was weighed empty on this step
    if not isinstance(sent, dict) or sent.get("source") not in allowed:
        raise ValidationFailed(f"Step {spec.id} needs the container's tare: tare.source is {' or '.join(allowed)} "
                               "(the recipe's tare rule).", field="tare")
    source = sent["source"]
    if source == "weighed_container":
        used = {r.data.get("tare", {}).get("record") for r in ctx.current_records("container")}
        tared = [r for r in ctx.current_records("tare") if r.data.get("container") == container_id and r.id not in used]
        if not tared:
            ctx.refuse(f"Container {container_id} has not been weighed empty on this step. Weigh the empty container "
                       "(tare) first, then weigh again.", code="no_tare", container_id=container_id)
        rec = tared[-1]
        value = rec.value if rec.value is not None else Decimal(0)
        return {"source": source, "value": to_text(value), "unit": unit, "record": rec.id,
                "reading": rec.data.get("reading")}, value
    value = ctx.decimal(sent.get("value"), "tare.value")
    tare_unit = sent.get("unit") or confirmed.unit
    try:
        in_unit = convert(value, tare_unit, unit)
    except UnitError as exc:
        raise ValidationFailed(f"tare.unit: {exc}.", field="tare") from None
    _tare_in_limits(ctx, spec, in_unit, container_id)
    return {"source": source, "value": to_text(in_unit), "unit": unit, "as_given": f"{to_text(value)} {tare_unit}"}, in_unit


def _tare_in_limits(ctx: StepContext, spec: WeighStep, tare: Decimal, container_id: str) -> None:
    """The container's tare within the recipe's ``tare_low``/``tare_high``, where it gives them."""
    lo, hi = spec.tare_low, spec.tare_high
    if (lo is not None and tare < lo) or (hi is not None and tare > hi):
        ctx.refuse(f"The tare of container {container_id} is {to_text(tare)} {spec.unit}; the recipe allows "
                   f"{limits_text(lo, hi, spec.unit or '')}. Use the container the recipe names.",
                   code="tare_out_of_limits", container_id=container_id, tare=to_text(tare))


def _capture_tare(ctx: StepContext, spec: WeighStep, lot_id: str, container_id: str) -> None:
    """Weigh the empty container (tare ``weighed_container``): a ``tare`` record of the
    confirmed reading; the step stays in progress."""
    if spec.tare != "each_container":
        ctx.refuse(f"Step {spec.id} takes no weighed container tare (tare: {spec.tare}).", code="no_tare_capture")
    tare, confirmed = capture(ctx, spec)
    if tare <= 0:
        ctx.refuse(f"{confirmed.equipment.label} shows no load ({to_text(tare)} {spec.unit}). Put the empty container "
                   "on the scale and weigh again.", code="no_load", device_id=confirmed.captured.device_id)
    _tare_in_limits(ctx, spec, tare, container_id)
    reading = {**confirmed.reading, "equipment_id": confirmed.equipment.id}
    rec = ctx.record("tare", {"lot": lot_id, "container": container_id, "source": "weighed_container",
                              "reading": reading, "equipment_id": confirmed.equipment.id}, tare, spec.unit)
    ctx.complete = False
    ctx.result = {"tare": to_text(rec.value), "unit": spec.unit, "tare_source": "weighed_container", "container": container_id,
                  "device_id": confirmed.captured.device_id, "sequence": reading["confirmed"]["sequence"],
                  "value": reading["confirmed"]["value"], "reading_unit": confirmed.unit, "complete": False}


def _out_of_tolerance(ctx: StepContext, spec: WeighStep, total: Decimal, evidence: dict[str, Any]) -> None:
    """A weight outside the window is a refused attempt (audited, listed for review); a major
    deviation is raised when the operator reports it or after ``max_failed_weighings``."""
    from mes.execution.models import Severity

    low, high = spec.window()
    unit = spec.unit
    said = (f"{spec.title}: net weight {to_text(total)} {unit} is outside the tolerance window "
            f"{to_text(low)} to {to_text(high)} {unit} (target {to_text(spec.target)} {unit}); nothing was recorded.")
    failed = failed_weighings(ctx) + 1
    reported = ctx.payload.get("report") is True
    if reported or failed >= ctx.max_failed_weighings:
        why = "reported by the operator" if reported else f"{failed} refused attempts"
        ctx.refuse_with_deviation(f"{said} A deviation was raised ({why}).", Severity.MAJOR.value, "out_of_tolerance",
                                  {**evidence, "failed_attempts": failed, "reported": reported})
    ctx.refuse(f"{said} Adjust the amount and capture again (attempt {failed}; a deviation is raised after "
               f"{ctx.max_failed_weighings}).", code="out_of_tolerance", failed_attempts=failed,
               total=to_text(total), unit=unit)


def failed_weighings(ctx: StepContext) -> int:
    """Out-of-tolerance weighings of this step's attempt refused since its last deviation."""
    from mes.execution.refusals import refusals_of

    failed = 0
    for r in refusals_of(ctx.batch.id, ctx.step.step_id):
        if r.get("attempt") != ctx.step.attempt:
            continue
        if r.get("deviation"):
            failed = 0  # a deviation was raised: counting starts again
        elif r.get("code") == "out_of_tolerance":
            failed += 1
    return failed


def identified_lot(batch_id: str, item: str, before_seq: int | None = None) -> str | None:
    """The lot last identified (``scan: lot``) for ``item`` in the batch, before step
    ``before_seq`` if given; None when no step identified one."""
    from sqlalchemy import select

    from mes.db import db
    from mes.execution.models import BatchStep, StepRecord

    rows = db.session.execute(
        select(StepRecord.data, BatchStep.seq).join(BatchStep, BatchStep.id == StepRecord.batch_step_id)
        .where(StepRecord.batch_id == batch_id, StepRecord.kind == "identification",
               StepRecord.superseded_by.is_(None), StepRecord.attempt == BatchStep.attempt)
        .order_by(BatchStep.seq, StepRecord.recorded_at)).all()
    lot = None
    for data, seq in rows:
        if data.get("item") == item and data.get("scan") != "dispensed" and (before_seq is None or seq < before_seq):
            lot = data.get("lot")
    return lot


def bound_to_identified_lot(ctx: StepContext, spec: WeighStep, lot_id: str, container_id: str) -> None:
    """Weighing is bound to the identified lot: the container is of ``lot_id``, and ``lot_id``
    is the lot identified for the item before this step (when a step identified one; else
    the weigh step scans the lot itself). A mismatch is refused (audited, listed for review)."""
    from mes.db import db
    from mes.materials.models import Container

    container = db.session.get(Container, container_id)
    if container is None:
        ctx.refuse(f"Container {container_id} is not known to the MES. Check the label and scan again.",
                   code="unknown_container", container_id=container_id)
    if container.lot_id != lot_id:
        ctx.refuse(f"Container {container_id} belongs to lot {container.lot_id}, not to lot {lot_id}. "
                   "Weigh from the container of the lot identified for this step.", code="wrong_lot",
                   container_id=container_id, lot_id=lot_id, container_lot=container.lot_id)
    identified = identified_lot(ctx.batch.id, spec.item, ctx.step.seq)
    if identified is not None and identified != lot_id:
        ctx.refuse(f"Lot {lot_id} is not the lot identified for {spec.item} in this batch ({identified}). "
                   f"Weigh from lot {identified}.", code="wrong_lot",
                   lot_id=lot_id, identified_lot=identified)
