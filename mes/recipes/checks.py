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

The rules of one step kind live with the kind (``mes/steps/<kind>.py``: ``check`` per step,
``check_recipe`` once per recipe); this module holds the rules of the recipe's structure
and the helpers the kinds share (:func:`ordered`, :func:`decimals`, :func:`earlier`,
:func:`tolerance_problem`).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Final

from mes.quantities import UnitError, convert, decimal_places, dimension, to_text
from mes.recipes.errors import Path, format_path
from mes.recipes.model import MasterRecipe, StepRef, Tolerance
from mes.steps import registry
from mes.steps.base import Report

__all__ = ["MAX_TOLERANCE_PERCENT", "Finding", "check", "decimals", "earlier", "ordered", "tolerance_problem"]

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
        _translations(ref, report)
        registry.kind_of(ref.step).check(recipe, ref, report, unique)
    for kind in registry.kinds():
        kind.check_recipe(recipe, refs, report)
    return report.findings


def _translations(ref: StepRef, report: _Report) -> None:
    """A translated text is one the step has (equipment_class only on an equipment check)."""
    for lang, texts in ref.step.translations:
        for name, _text in texts:
            if not isinstance(getattr(ref.step, name, None), str):
                report(ref.path + ("translations", lang, name), f"a {ref.step.kind} step has no {name} to translate")


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
                    report(path, f"no operation {ref!r} in unit procedure {up.id!r} "
                                 "(parallel operations belong to the same unit procedure)")
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
        report(("batch_size", "minimum"),
               f"the minimum batch size must be greater than zero and at most the nominal {to_text(bs.quantity)} {bs.unit}")
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
    used = {item for r in refs for item in registry.kind_of(r.step).bom_items(r.step)}
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


def decimals(report: Report, path: Path, name: str, value: Decimal | None, places: int) -> None:
    """Report a limit written with more decimals than the step records."""
    if value is not None and decimal_places(value) > places:
        report(path + (name,), f"{to_text(value)} has {decimal_places(value)} decimals but the step records {places}")


def ordered(report: Report, path: Path, pairs: list[tuple[str, Decimal | None]]) -> None:
    """Report the first adjacent pair (of those given) that is out of order."""
    present = [(n, v) for n, v in pairs if v is not None]
    for (n1, v1), (n2, v2) in zip(present, present[1:], strict=False):
        assert v1 is not None and v2 is not None
        if v1 > v2:
            report(path + (n2,), f"{n2} {to_text(v2)} is below {n1} {to_text(v1)}; limits must be ordered low <= target <= high")
            return


def earlier(recipe: MasterRecipe, ref: StepRef, other: str, path: Path, report: Report, what: str) -> StepRef | None:
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
