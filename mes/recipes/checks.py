"""The rules of a master recipe beyond its JSON Schema.

:func:`check` returns ``(path, message, at_key)`` triples; the loader turns them into
line-numbered problems. The rules (each documented in ``recipes/README.md``):

* ids of unit procedures, operations and steps are unique in the recipe;
* ``parallel_with`` names earlier operations of the same unit procedure, next to each other;
* the batch size is positive (whole for ``pcs``) and inside its validated range;
* BOM items are unique, quantities positive masses, volumes or counts, tolerances sensible (0 < ±% <= 10; absolute
  > 0, below the quantity, same dimension), and every item is weighed or identified;
* weigh steps reference a BOM item, weigh by mass, have a tolerance, a scale fine enough
  for it, and their targets add up to the BOM quantity;
* identify steps reference a BOM item; ``scan: dispensed`` needs an earlier weigh step of
  the item (``dispensed_by`` names one);
* limits are ordered (low <= target <= high, mean limits inside individual limits) and
  written with no more decimals than the step records;
* calculations parse and reference only value-recording steps that always complete before
  them (not later, not in a parallel operation, not themselves);
* timers have a minimum and/or maximum, minimum <= maximum, ``from_step`` before them;
* signatures: ``released``/``rejected`` are for qa only; second-person verification makes
  no sense for ``performed`` and needs something to verify; ``covers`` names earlier steps;
* exactly one produce-output step, with 0 < yield_low <= expected <= yield_high, and
  ``theoretical_from`` an earlier calculation in a compatible unit.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from fractions import Fraction
from typing import Final

from mes.recipes.errors import Path, format_path
from mes.recipes.formula import FormulaError, parse_formula
from mes.recipes.model import (
    CalculationStep,
    EquipmentCheckStep,
    IdentifyStep,
    MasterRecipe,
    NumericStep,
    ProduceOutputStep,
    SampleCheckStep,
    SignatureStep,
    StepRef,
    TimerStep,
    Tolerance,
    WeighStep,
)
from mes.recipes.units import UnitError, convert, decimal_places, dimension, to_text

__all__ = ["MAX_TOLERANCE_PERCENT", "Finding", "check", "tolerance_problem"]

MAX_TOLERANCE_PERCENT: Final = Decimal(10)
"""The widest percentage tolerance accepted for dispensing."""

Finding = tuple[Path, str, bool]
"""(path, message, whether the position is the path's key rather than its value)."""


class _Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def __call__(self, path: Path, message: str, *, key: bool = False) -> None:
        self.findings.append((path, message, key))


def check(recipe: MasterRecipe) -> list[Finding]:
    """Every rule violation in ``recipe`` (empty if it is valid)."""
    report = _Report()
    refs = list(recipe.steps())
    unique = _ids(recipe, report)
    _operations(recipe, report)
    _batch_size(recipe, report)
    _bom(recipe, refs, report)
    for ref in refs:
        _step(recipe, ref, report, unique)
    _weigh_totals(recipe, refs, report)
    _outputs(refs, report)
    return report.findings


def _ids(recipe: MasterRecipe, report: _Report) -> bool:
    first: dict[str, Path] = {}
    ok = True

    def see(path: Path, ident: str) -> None:
        nonlocal ok
        if ident in first:
            ok = False
            report(path + ("id",), f"duplicate id {ident!r}: already used at {format_path(first[ident])}")
        else:
            first[ident] = path

    for ui, up in enumerate(recipe.procedure):
        see(("procedure", ui), up.id)
        for oi, op in enumerate(up.operations):
            see(("procedure", ui, "operations", oi), op.id)
            for si, step in enumerate(op.steps):
                see(("procedure", ui, "operations", oi, "steps", si), step.id)
    return ok


def _operations(recipe: MasterRecipe, report: _Report) -> None:
    for ui, up in enumerate(recipe.procedure):
        index = {op.id: i for i, op in enumerate(up.operations)}
        stages: list[list[str]] = []
        for oi, op in enumerate(up.operations):
            for j, ref in enumerate(op.parallel_with):
                path: Path = ("procedure", ui, "operations", oi, "parallel_with", j)
                if ref == op.id:
                    report(path, "an operation cannot run in parallel with itself")
                elif ref not in index:
                    report(path, f"no operation {ref!r} in unit procedure {up.id!r} (parallel operations belong to the same unit procedure)")
                elif index[ref] > oi:
                    report(path, f"operation {ref!r} comes later; put parallel_with on the later operation")
                elif not stages or ref not in stages[-1]:
                    report(path, f"operation {ref!r} is not in the stage just before this operation "
                                 f"({', '.join(stages[-1]) if stages else 'none'}); parallel operations must be listed next to each other")
            if op.parallel_with and stages:
                stages[-1].append(op.id)
            else:
                stages.append([op.id])


def _batch_size(recipe: MasterRecipe, report: _Report) -> None:
    bs = recipe.batch_size
    if bs.quantity <= 0:
        report(("batch_size", "quantity"), "the batch size must be greater than zero")
    if bs.unit == "pcs" and bs.quantity != bs.quantity.to_integral_value():
        report(("batch_size", "quantity"), "a batch size in pcs must be a whole number")
    if dimension(bs.unit) not in ("mass", "volume", "count"):
        report(("batch_size", "unit"), f"a batch size is a mass, a volume or a count (pcs), not {bs.unit}")
    if bs.minimum is not None and (bs.minimum <= 0 or bs.minimum > bs.quantity):
        report(("batch_size", "minimum"), f"the minimum batch size must be greater than zero and at most the nominal {to_text(bs.quantity)} {bs.unit}")
    if bs.maximum is not None and bs.maximum < bs.quantity:
        report(("batch_size", "maximum"), f"the maximum batch size must be at least the nominal {to_text(bs.quantity)} {bs.unit}")


def tolerance_problem(tol: Tolerance, target: Decimal, unit: str) -> str | None:
    """Why a dispensing tolerance around ``target`` (in ``unit``) is not sensible, or None."""
    if tol.kind == "percent":
        if tol.unit is not None:
            return "a percent tolerance has no unit; use {absolute: ..., unit: ...} for an amount"
        if not Decimal(0) < tol.value <= MAX_TOLERANCE_PERCENT:
            return (f"a tolerance of ±{to_text(tol.value)} % is not sensible: it must be greater than 0 "
                    f"and at most {MAX_TOLERANCE_PERCENT} %")
        return None
    assert tol.unit is not None
    if dimension(tol.unit) != dimension(unit):
        return f"the tolerance is in {tol.unit} but the quantity is in {unit}"
    if tol.value <= 0:
        return "an absolute tolerance must be greater than zero"
    try:
        amount = convert(tol.value, tol.unit, unit)
    except UnitError as exc:
        return str(exc)
    if Fraction(amount) >= Fraction(target):
        return f"the tolerance ±{to_text(tol.value)} {tol.unit} is not smaller than the quantity {to_text(target)} {unit}"
    return None


def _bom(recipe: MasterRecipe, refs: list[StepRef], report: _Report) -> None:
    seen: dict[str, int] = {}
    used = {r.step.item for r in refs if isinstance(r.step, (WeighStep, IdentifyStep))}
    for i, line in enumerate(recipe.bill_of_materials):
        path: Path = ("bill_of_materials", i)
        if line.item in seen:
            report(path + ("item",), f"item {line.item!r} is already on the bill of materials (line {seen[line.item]})")
        else:
            seen[line.item] = i
        if dimension(line.unit) not in ("mass", "volume", "count"):
            report(path + ("unit",), f"a bill-of-materials quantity is a mass, a volume or a count (pcs), not {line.unit}")
        elif line.quantity <= 0:
            report(path + ("quantity",), "the quantity must be greater than zero")
        elif line.tolerance is not None:
            why = tolerance_problem(line.tolerance, line.quantity, line.unit)
            if why:
                report(path + ("tolerance",), why)
        if line.item not in used:
            report(path + ("item",), f"item {line.item!r} is never weighed or identified; add a weigh or identify step for it")


def _decimals(report: _Report, path: Path, name: str, value: Decimal | None, places: int) -> None:
    if value is not None and decimal_places(value) > places:
        report(path + (name,), f"{to_text(value)} has {decimal_places(value)} decimals but the step records {places}")


def _ordered(report: _Report, path: Path, pairs: list[tuple[str, Decimal | None]]) -> None:
    """Report the first adjacent pair (of those given) that is out of order."""
    present = [(n, v) for n, v in pairs if v is not None]
    for (n1, v1), (n2, v2) in zip(present, present[1:]):
        assert v1 is not None and v2 is not None
        if v1 > v2:
            report(path + (n2,), f"{n2} {to_text(v2)} is below {n1} {to_text(v1)}; limits must be ordered low <= target <= high")
            return


def _earlier(recipe: MasterRecipe, ref: StepRef, other: str, path: Path, report: _Report, what: str) -> StepRef | None:
    """The StepRef of ``other`` if it always completes before ``ref``'s step, else report why."""
    try:
        target = recipe.locate(other)
    except KeyError:
        report(path, f"{what} {other!r} does not exist in this recipe")
        return None
    if target.step.id == ref.step.id and target.path == ref.path:
        report(path, f"{what} {other!r} is this step itself")
        return None
    if recipe.precedes(other, ref.step.id):
        return target
    if target.stage == ref.stage and (target.up_index, target.op_index) != (ref.up_index, ref.op_index):
        report(path, f"{what} {other!r} is in operation {target.operation.id!r}, which runs in parallel with "
                     f"{ref.operation.id!r}; it is not guaranteed to be complete")
    else:
        report(path, f"{what} {other!r} comes later; only earlier steps can be used")
    return None


def _step(recipe: MasterRecipe, ref: StepRef, report: _Report, unique_ids: bool) -> None:
    step, path = ref.step, ref.path
    if isinstance(step, NumericStep):
        _ordered(report, path, [("low", step.low), ("target", step.target), ("high", step.high)])
        for name in ("target", "low", "high"):
            _decimals(report, path, name, getattr(step, name), step.precision)
    elif isinstance(step, SampleCheckStep):
        _ordered(report, path, [("low", step.low), ("target", step.target), ("high", step.high)])
        _ordered(report, path, [("low", step.low), ("mean_low", step.mean_low), ("mean_high", step.mean_high), ("high", step.high)])
        _ordered(report, path, [("mean_low", step.mean_low), ("target", step.target), ("mean_high", step.mean_high)])
        for name in ("target", "low", "high"):
            _decimals(report, path, name, getattr(step, name), step.precision)
        for name in ("mean_low", "mean_high"):
            _decimals(report, path, name, getattr(step, name), step.precision + 1)
    elif isinstance(step, CalculationStep):
        _calculation(recipe, ref, step, report, unique_ids)
    elif isinstance(step, WeighStep):
        _weigh(recipe, step, path, report)
    elif isinstance(step, IdentifyStep):
        if recipe.bom_line(step.item) is None:
            report(path + ("item",), f"no bill-of-materials line for item {step.item!r}")
        elif step.dispensed_by is not None:
            if step.scan != "dispensed":
                report(path + ("dispensed_by",), "dispensed_by needs scan: dispensed")
            elif unique_ids:
                source = _earlier(recipe, ref, step.dispensed_by, path + ("dispensed_by",), report, "dispensed_by")
                if source is not None and not (isinstance(source.step, WeighStep) and source.step.item == step.item):
                    report(path + ("dispensed_by",), f"step {step.dispensed_by!r} does not weigh {step.item!r}")
        elif step.scan == "dispensed" and unique_ids:
            if not any(recipe.precedes(w.id, step.id) for w in recipe.weigh_steps(step.item)):
                report(path + ("scan",), f"scan: dispensed needs a weigh step for {step.item!r} that completes before this step")
    elif isinstance(step, EquipmentCheckStep):
        if step.max_since_cleaning is not None:
            if "clean" not in step.required_states:
                report(path + ("max_since_cleaning",), "max_since_cleaning needs 'clean' in required_states")
            if step.max_since_cleaning.seconds == 0:
                report(path + ("max_since_cleaning",), "max_since_cleaning must be longer than zero")
        if step.claim and "not_in_use" not in step.required_states:
            report(path + ("claim",), "claim needs 'not_in_use' in required_states")
    elif isinstance(step, TimerStep):
        if step.minimum is None and step.maximum is None:
            report(path, "a timer needs a minimum, a maximum or both")
        if step.maximum is not None and step.maximum.seconds == 0:
            report(path + ("maximum",), "the maximum must be longer than zero")
        if step.minimum is not None and step.maximum is not None and step.minimum > step.maximum:
            report(path + ("maximum",), f"the maximum {step.maximum.iso} is shorter than the minimum {step.minimum.iso}")
        if step.from_step is not None and unique_ids:
            _earlier(recipe, ref, step.from_step, path + ("from_step",), report, "from_step")
    elif isinstance(step, SignatureStep):
        _signature(recipe, ref, step, report, unique_ids)
    elif isinstance(step, ProduceOutputStep):
        _produce(recipe, ref, step, report, unique_ids)


def _calculation(recipe: MasterRecipe, ref: StepRef, step: CalculationStep, report: _Report, unique_ids: bool) -> None:
    path = ref.path
    _ordered(report, path, [("low", step.low), ("high", step.high)])
    for name in ("low", "high"):
        _decimals(report, path, name, getattr(step, name), step.precision)
    try:
        formula = parse_formula(step.formula)
    except FormulaError as exc:
        report(path + ("formula",), f"{exc.message} in formula {step.formula!r}")
        return
    if not unique_ids:
        return
    for name in formula.references:
        target = _earlier(recipe, ref, name, path + ("formula",), report, "step")
        if target is not None and not target.step.produces_value:
            report(path + ("formula",), f"step {name!r} is a {target.step.kind} step and records no value")


def _weigh(recipe: MasterRecipe, step: WeighStep, path: Path, report: _Report) -> None:
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
        why = tolerance_problem(tolerance, target, unit)
        if why:
            report(path + ("tolerance",) if step.tolerance else path, why if step.tolerance else f"the BOM tolerance for {step.item!r}: {why}")
        else:
            _scale(step, target, unit, tolerance, path, report)
    if step.max_containers is not None and not step.multiple_containers:
        report(path + ("max_containers",), "max_containers needs multiple_containers: true")
    if step.tare == "none" and step.multiple_containers:
        report(path + ("tare",), "tare: none cannot add up several containers; tare each container or use preset tares")


def _scale(step: WeighStep, target: Decimal, unit: str, tolerance: Tolerance, path: Path, report: _Report) -> None:
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


def _weigh_totals(recipe: MasterRecipe, refs: list[StepRef], report: _Report) -> None:
    by_item: dict[str, list[tuple[StepRef, WeighStep]]] = defaultdict(list)
    for ref in refs:
        if isinstance(ref.step, WeighStep):
            by_item[ref.step.item].append((ref, ref.step))
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


def _signature(recipe: MasterRecipe, ref: StepRef, step: SignatureStep, report: _Report, unique_ids: bool) -> None:
    path = ref.path
    if step.meaning in ("released", "rejected") and set(step.roles) != {"qa"}:
        report(path + ("roles",), f"only qa may sign {step.meaning!r}; roles must be [qa]")
    if step.second_person and step.meaning == "performed":
        report(path + ("second_person",), "a 'performed' signature is by the performer; second-person verification needs "
                                          "meaning 'verified' (or reviewed/approved)")
    if step.second_person and not step.covers and ref.index == 0:
        report(path + ("second_person",), "nothing to verify: put the gate after the steps it verifies or list them in covers")
    if unique_ids:
        for other in step.covers:
            _earlier(recipe, ref, other, path + ("covers",), report, "covers step")


def _produce(recipe: MasterRecipe, ref: StepRef, step: ProduceOutputStep, report: _Report, unique_ids: bool) -> None:
    path = ref.path
    if step.quantity <= 0:
        report(path + ("quantity",), "the theoretical quantity must be greater than zero")
    if step.yield_low <= 0:
        report(path + ("yield_low",), "yield_low must be greater than zero")
    _ordered(report, path, [("yield_low", step.yield_low), ("expected_yield", step.expected_yield), ("yield_high", step.yield_high)])
    if step.theoretical_from is not None and unique_ids:
        target = _earlier(recipe, ref, step.theoretical_from, path + ("theoretical_from",), report, "theoretical_from")
        if target is not None:
            if not isinstance(target.step, CalculationStep):
                report(path + ("theoretical_from",), f"theoretical_from must name a calculation step, {step.theoretical_from!r} is a {target.step.kind} step")
            else:
                if dimension(target.step.unit) != dimension(step.unit):
                    report(path + ("theoretical_from",), f"step {step.theoretical_from!r} computes {target.step.unit}, "
                                                         f"which cannot be compared with {step.unit}")


def _outputs(refs: list[StepRef], report: _Report) -> None:
    outputs = [r for r in refs if isinstance(r.step, ProduceOutputStep)]
    if not outputs:
        report(("procedure",), "the recipe has no produce_output step; exactly one is required", key=True)
    for extra in outputs[1:]:
        report(extra.path + ("kind",), f"a second produce_output step (the first is {outputs[0].step.id!r}); exactly one is required")

