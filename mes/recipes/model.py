"""The master recipe as frozen dataclasses (ISA-88: procedure -> unit procedure ->
operation -> step), Decimal-only, plus the small pure rules the engine applies per step.

Objects are built by :mod:`mes.recipes.loader` (which validates them) and serialised back
with ``to_dict()`` into exactly the file format (quantities as decimal strings, durations
as ISO 8601 text), so ``load(to_dict(r)) == r``. Nothing here rounds silently: every
rounding goes through :func:`mes.quantities.round_half_even` and is documented where it
happens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from typing import Any, ClassVar, Final

from mes.quantities import Duration, convert, decimal_places, round_half_even, to_text
from mes.recipes.formula import Formula, parse_formula

__all__ = [
    "BOM_ROLES",
    "EQUIPMENT_STATES",
    "FORMAT",
    "MEANINGS",
    "ROLES",
    "SCALE_CLASSES",
    "SCAN_MODES",
    "MeterStep",
    "STEP_CLASSES",
    "STEP_KINDS",
    "TARE_MODES",
    "VALUE_KINDS",
    "BatchSize",
    "BomLine",
    "CalculationStep",
    "EquipmentCheckStep",
    "IdentifyStep",
    "InstructionStep",
    "MasterRecipe",
    "NumericStep",
    "Operation",
    "ProduceOutputStep",
    "Product",
    "SampleCheckStep",
    "SampleResult",
    "ScaleRequirement",
    "SignatureStep",
    "Step",
    "StepRef",
    "TimerStep",
    "Tolerance",
    "UnitProcedure",
    "WeighStep",
    "in_limits",
]

FORMAT: Final = "mes.master-recipe/v1"
"""The ``format`` member of every master recipe file of this version of the format."""

MEANINGS: Final = ("performed", "verified", "reviewed", "approved", "released", "rejected")
"""Signature meanings; the same as :data:`mes.signatures.operations.MEANINGS`."""

ROLES: Final = ("operator", "supervisor", "qa")
"""Roles a signature gate may permit."""

BOM_ROLES: Final = ("api", "excipient", "ingredient", "processing_aid", "intermediate", "packaging")
"""What a bill-of-materials line is for (``processing_aid``: used, then removed, e.g. granulation water)."""

EQUIPMENT_STATES: Final = ("clean", "calibrated", "qualified", "not_in_use")
"""States an equipment check can require."""

SCALE_CLASSES: Final = ("I", "II", "III", "IIII")
"""OIML R 76 / EN 45501 accuracy classes, finest first."""

TARE_MODES: Final = ("each_container", "preset", "none")
"""How a weigh step handles tare: tare every container on the scale; use the container's
registered tare weight; or weigh without a container tare (gross = net)."""

SCAN_MODES: Final = ("lot", "dispensed")
"""What an identify step scans: a stock lot/container label (status, expiry and hold are
checked) or a container dispensed for this batch by an earlier weigh step."""


def in_limits(value: Decimal, low: Decimal | None, high: Decimal | None) -> bool:
    """Whether ``low <= value <= high`` (limits are inclusive; a missing limit is open)."""
    return (low is None or value >= low) and (high is None or value <= high)


def _serialise(value: Any) -> Any:
    if isinstance(value, Decimal):
        return to_text(value)
    if isinstance(value, Duration):
        return value.iso
    if isinstance(value, tuple):
        return [_serialise(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _fields_dict(obj: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The dataclass fields of ``obj`` that are set, serialised into the file format."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = _serialise(value)
    return out


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True, slots=True)
class Product:
    """The product made: its item code and name."""

    code: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        """File form."""
        return {"code": self.code, "name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSize:
    """The nominal batch size the quantities are written for, and the validated range."""

    quantity: Decimal
    unit: str
    minimum: Decimal | None = None
    maximum: Decimal | None = None

    def to_dict(self) -> dict[str, Any]:
        """File form (decimals as strings, unset members left out)."""
        return _fields_dict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    """A permitted deviation from a target: ``±value %`` or ``±value unit``."""

    kind: str  # "percent" | "absolute"
    value: Decimal
    unit: str | None = None

    @classmethod
    def from_file(cls, data: Mapping[str, Any]) -> Tolerance:
        """The tolerance from its schema-valid file form."""
        if "percent" in data:
            return cls(kind="percent", value=Decimal(data["percent"]), unit=data.get("unit"))
        return cls(kind="absolute", value=Decimal(data["absolute"]), unit=data["unit"])

    def amount(self, target: Decimal, target_unit: str) -> Decimal:
        """The tolerance as an absolute amount in ``target_unit`` (exact)."""
        return _exact_amount(self, target, target_unit)

    def window(self, target: Decimal, target_unit: str) -> tuple[Decimal, Decimal]:
        """``(low, high)`` = target ∓ tolerance, exact (percentages of decimals terminate)."""
        amount = _exact_amount(self, target, target_unit)
        places = decimal_places(target)
        return _trim(target - amount, places), _trim(target + amount, places)

    def to_dict(self) -> dict[str, Any]:
        """File form: ``{"percent": "0.5"}`` or ``{"absolute": "50", "unit": "g"}``."""
        if self.kind == "percent":
            return {"percent": to_text(self.value)}
        return {"absolute": to_text(self.value), "unit": self.unit}

    def __str__(self) -> str:
        return f"±{to_text(self.value)} {'%' if self.kind == 'percent' else self.unit}"


def _exact_amount(tol: Tolerance, target: Decimal, target_unit: str) -> Decimal:
    if tol.kind == "percent":
        exact = Fraction(target) * Fraction(tol.value) / 100
        places = decimal_places(target) + decimal_places(tol.value) + 2
        return round_half_even(exact, places)  # exact: the product terminates at these places
    if tol.unit is None:
        raise ValueError("an absolute tolerance needs a unit")
    return convert(tol.value, tol.unit, target_unit)


def _trim(value: Decimal, keep: int) -> Decimal:
    """Drop trailing zeros beyond ``keep`` decimals, without changing the value."""
    places = decimal_places(value)
    while places > keep and round_half_even(value, places - 1) == value:
        places -= 1
    return round_half_even(value, places)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleRequirement:
    """The scale a weigh step needs: readability ``d`` at least this fine and, optionally,
    an accuracy class at least this good (I is finest)."""

    readability: Decimal
    unit: str
    accuracy_class: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """File form (decimals as strings, unset members left out)."""
        return _fields_dict(self)

    def accepts(self, readability: Decimal, unit: str, accuracy_class: str | None) -> bool:
        """Whether a scale with this readability (in ``unit``) and class satisfies the requirement."""
        if convert(readability, unit, self.unit) > self.readability:
            return False
        if self.accuracy_class is None:
            return True
        if accuracy_class not in SCALE_CLASSES:
            return False
        return SCALE_CLASSES.index(accuracy_class) <= SCALE_CLASSES.index(self.accuracy_class)

    def __str__(self) -> str:
        cls = f"class {self.accuracy_class}, " if self.accuracy_class else ""
        return f"{cls}d ≤ {to_text(self.readability)} {self.unit}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BomLine:
    """A bill-of-materials line: item, quantity per nominal batch (its decimals are the
    precision scaled quantities are rounded to), unit, optional tolerance, role."""

    item: str
    name: str
    role: str
    quantity: Decimal
    unit: str
    tolerance: Tolerance | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """File form (decimals as strings, unset members left out)."""
        return _fields_dict(self)


# --------------------------------------------------------------------------- steps

RECIPE_LANGUAGES: Final = ("zh-Hans",)
"""Languages a recipe may give its steps' text in, besides English (the text as written)."""


def freeze_translations(data: Mapping[str, Mapping[str, str]] | None) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """A step's translations from file form to the frozen form (sorted: one recipe, one hash)."""
    return tuple((lang, tuple(sorted(texts.items()))) for lang, texts in sorted((data or {}).items()))



@dataclass(frozen=True, kw_only=True)
class Step:
    """What every step has: a stable id (unique in the recipe, kept across versions), a
    title, the instruction text shown to the operator, and its kind."""

    kind: ClassVar[str] = ""
    produces_value: ClassVar[bool] = False
    """Whether the step records a numeric value a calculation can reference."""

    id: str
    title: str
    instruction: str
    translations: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    """The step's text in other languages (:data:`RECIPE_LANGUAGES`): (language, ((field,
    text), ...)) pairs, frozen like the rest of the step; in files a mapping."""

    def params(self) -> dict[str, Any]:
        """The kind-specific parameters in file form."""
        return _fields_dict(self, skip=("id", "title", "instruction", "translations"))

    def to_dict(self) -> dict[str, Any]:
        """The step in file form (translations only when the recipe gives some: a recipe
        without them keeps its file form, and its hash)."""
        out = {"id": self.id, "kind": self.kind, "title": self.title, "instruction": self.instruction}
        if self.translations:
            out["translations"] = {lang: dict(texts) for lang, texts in self.translations}
        return {**out, **self.params()}

    def text(self, field: str, language: str | None) -> str:
        """``field`` (title, instruction, or a kind's text such as equipment_class) in
        ``language`` (a tag such as ``zh-Hans``) when the recipe gives it, else as written."""
        for lang, texts in self.translations:
            if lang == language:
                for name, value in texts:
                    if name == field:
                        return value
        return str(getattr(self, field))

    @property
    def value_unit(self) -> str | None:
        """The unit of the value this step records (None if it records none)."""
        return None


@dataclass(frozen=True, kw_only=True)
class InstructionStep(Step):
    """Read and confirm."""

    kind: ClassVar[str] = "instruction"


@dataclass(frozen=True, kw_only=True)
class NumericStep(Step):
    """Enter a number with ``precision`` decimals in ``unit``; ``low``/``high`` inclusive."""

    kind: ClassVar[str] = "numeric"
    produces_value: ClassVar[bool] = True
    unit: str
    precision: int
    target: Decimal | None = None
    low: Decimal | None = None
    high: Decimal | None = None

    @property
    def value_unit(self) -> str:
        """The unit of the recorded value."""
        return self.unit

    def in_limits(self, value: Decimal) -> bool:
        """Whether an entered value is within the limits."""
        return in_limits(value, self.low, self.high)


@dataclass(frozen=True, kw_only=True)
class WeighStep(Step):
    """Dispense a BOM item by weight. ``target`` (per nominal batch, in ``unit``) defaults
    to the whole BOM quantity, ``unit`` to the BOM unit, ``tolerance`` to the BOM tolerance.
    The recorded value is the total net weight of all containers, in ``unit``."""

    kind: ClassVar[str] = "weigh"
    produces_value: ClassVar[bool] = True
    item: str
    scale: ScaleRequirement
    target: Decimal | None = None
    unit: str | None = None
    tolerance: Tolerance | None = None
    stable_reading: bool = True
    tare: str = "each_container"
    tare_low: Decimal | None = None
    tare_high: Decimal | None = None
    multiple_containers: bool = False
    max_containers: int | None = None

    @property
    def value_unit(self) -> str | None:
        """The weighing unit (None in a master recipe means the BOM line's unit)."""
        return self.unit

    def window(self) -> tuple[Decimal, Decimal]:
        """``(low, high)`` net-weight limits, inclusive, exact; needs a resolved step
        (target, unit and tolerance set), as in a control recipe."""
        if self.target is None or self.unit is None or self.tolerance is None:
            raise ValueError(f"weigh step {self.id!r} is not resolved (target, unit, tolerance)")
        return self.tolerance.window(self.target, self.unit)


@dataclass(frozen=True, kw_only=True)
class IdentifyStep(Step):
    """Scan a label. ``scan: lot``: a stock container of ``item``; the engine checks item,
    status (released), expiry and hold. ``scan: dispensed``: a container dispensed for this
    batch (by ``dispensed_by``, or by any weigh step of the item)."""

    kind: ClassVar[str] = "identify"
    item: str
    scan: str = "lot"
    dispensed_by: str | None = None


@dataclass(frozen=True, kw_only=True)
class MeterStep(Step):
    """Meter a process aid by volume (purified water from a point of use) with ``precision``
    decimals in ``unit``, within optional ``low``/``high``. A lot is named only when the aid
    has one: then it is consumed and appears in the genealogy; without one nothing is invented
    (the point of use, ``source``, is recorded)."""

    kind: ClassVar[str] = "meter"
    item: str
    unit: str
    precision: int
    low: Decimal | None = None
    high: Decimal | None = None
    source: str | None = None

    def in_limits(self, value: Decimal) -> bool:
        """Whether ``value`` is within ``[low, high]`` (missing limits are open)."""
        return in_limits(value, self.low, self.high)


@dataclass(frozen=True, kw_only=True)
class EquipmentCheckStep(Step):
    """Select equipment of a class; the engine checks the required states in the equipment
    registry and, if given, that it was cleaned no longer than ``max_since_cleaning`` ago.
    ``claim``: a passing check marks the equipment in use by the batch until the batch ends
    (then it is dirty); needs ``not_in_use`` among the required states."""

    kind: ClassVar[str] = "equipment_check"
    equipment_class: str
    required_states: tuple[str, ...]
    max_since_cleaning: Duration | None = None
    claim: bool = False


@dataclass(frozen=True, kw_only=True)
class TimerStep(Step):
    """A timed interval that must last at least ``minimum`` and at most ``maximum``.
    Without ``from_step`` it runs from the step's start to its confirmation; with it, from
    the completion of that earlier step to this step's confirmation (a hold time)."""

    kind: ClassVar[str] = "timer"
    minimum: Duration | None = None
    maximum: Duration | None = None
    from_step: str | None = None

    def in_limits(self, elapsed: Duration) -> bool:
        """Whether an elapsed duration is within ``[minimum, maximum]``."""
        return (self.minimum is None or elapsed >= self.minimum) and (self.maximum is None or elapsed <= self.maximum)


@dataclass(frozen=True, kw_only=True)
class CalculationStep(Step):
    """A value computed from earlier steps' values by ``formula``, rounded ROUND_HALF_EVEN
    to ``precision`` decimals, shown with its formula; ``low``/``high`` optional limits."""

    kind: ClassVar[str] = "calculation"
    produces_value: ClassVar[bool] = True
    formula: str
    unit: str
    precision: int
    low: Decimal | None = None
    high: Decimal | None = None

    @property
    def value_unit(self) -> str:
        """The unit of the recorded value."""
        return self.unit

    @property
    def parsed(self) -> Formula:
        """The parsed formula (FormulaError if invalid; a loaded recipe's formulas are valid)."""
        return parse_formula(self.formula)

    @property
    def references(self) -> tuple[str, ...]:
        """The step ids the formula uses, in order of first use."""
        return self.parsed.references

    def compute(self, values: Mapping[str, Decimal]) -> Decimal:
        """The result for the referenced steps' recorded values (step id -> Decimal)."""
        return self.parsed.evaluate(values, self.precision)

    def in_limits(self, value: Decimal) -> bool:
        """Whether a computed value is within the limits."""
        return in_limits(value, self.low, self.high)


@dataclass(frozen=True, slots=True)
class SampleResult:
    """The verdict on a set of sample results."""

    mean: Decimal
    individual_ok: bool
    mean_ok: bool
    out_of_limits: tuple[int, ...]  # 0-based indexes of results outside low/high

    @property
    def ok(self) -> bool:
        """Whether every result and the mean are within limits."""
        return self.individual_ok and self.mean_ok


@dataclass(frozen=True, kw_only=True)
class SampleCheckStep(Step):
    """An in-process check on ``samples`` samples: each result within ``low``/``high``, the
    mean within ``mean_low``/``mean_high``. The recorded value is the mean."""

    kind: ClassVar[str] = "sample_check"
    produces_value: ClassVar[bool] = True
    samples: int
    unit: str
    precision: int
    target: Decimal | None = None
    low: Decimal | None = None
    high: Decimal | None = None
    mean_low: Decimal | None = None
    mean_high: Decimal | None = None

    @property
    def value_unit(self) -> str:
        """The unit of the recorded value."""
        return self.unit

    def evaluate(self, results: Sequence[Decimal]) -> SampleResult:
        """Judge exactly ``samples`` results; the mean is rounded HALF_EVEN to
        ``precision + 1`` decimals (one more than the results, as pharmacopoeias report)."""
        if len(results) != self.samples:
            raise ValueError(f"step {self.id!r} needs {self.samples} results, got {len(results)}")
        mean = round_half_even(sum((Fraction(r) for r in results), Fraction(0)) / len(results), self.precision + 1)
        bad = tuple(i for i, r in enumerate(results) if not in_limits(r, self.low, self.high))
        return SampleResult(mean, not bad, in_limits(mean, self.mean_low, self.mean_high), bad)


@dataclass(frozen=True, kw_only=True)
class SignatureStep(Step):
    """A signature gate: a person with one of ``roles`` signs with ``meaning``. With
    ``second_person`` the signer must not have performed any step in ``covers`` (default:
    the steps of the same operation before the gate)."""

    kind: ClassVar[str] = "signature"
    meaning: str
    roles: tuple[str, ...]
    second_person: bool = False
    covers: tuple[str, ...] = ()

    def params(self) -> dict[str, Any]:
        """Parameters in file form; an empty ``covers`` (the default) is left out."""
        out = super().params()
        if not self.covers:
            out.pop("covers", None)
        return out


@dataclass(frozen=True, kw_only=True)
class ProduceOutputStep(Step):
    """Record the output: produced ``item``, theoretical ``quantity`` per nominal batch in
    ``unit`` (scaled), yield limits in percent of theoretical. With ``theoretical_from`` the
    theoretical quantity is the value of that earlier calculation step instead."""

    kind: ClassVar[str] = "produce_output"
    produces_value: ClassVar[bool] = True
    item: str
    quantity: Decimal
    unit: str
    yield_low: Decimal
    yield_high: Decimal
    name: str | None = None
    expected_yield: Decimal | None = None
    theoretical_from: str | None = None

    @property
    def value_unit(self) -> str:
        """The unit of the recorded value."""
        return self.unit

    @property
    def yield_places(self) -> int:
        """Decimals the yield percentage is rounded to: those of the yield limits."""
        return max(decimal_places(self.yield_low), decimal_places(self.yield_high))

    def yield_percent(self, actual: Decimal, theoretical: Decimal) -> Decimal:
        """``actual / theoretical × 100``, ROUND_HALF_EVEN to :attr:`yield_places` decimals."""
        if theoretical <= 0:
            raise ValueError("the theoretical quantity must be greater than zero")
        return round_half_even(Fraction(actual) * 100 / Fraction(theoretical), self.yield_places)

    def yield_in_limits(self, percent: Decimal) -> bool:
        """Whether a yield percentage is within ``[yield_low, yield_high]``."""
        return in_limits(percent, self.yield_low, self.yield_high)


STEP_CLASSES: Final[dict[str, type[Step]]] = {
    cls.kind: cls
    for cls in (
        InstructionStep, NumericStep, WeighStep, IdentifyStep, EquipmentCheckStep, TimerStep,
        CalculationStep, SampleCheckStep, SignatureStep, ProduceOutputStep, MeterStep,
    )
}
"""Step kind -> class."""

STEP_KINDS: Final = tuple(STEP_CLASSES)
"""All step kinds, in documentation order."""

VALUE_KINDS: Final = tuple(k for k, c in STEP_CLASSES.items() if c.produces_value)
"""Kinds whose recorded value a calculation may reference."""


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True, kw_only=True)
class Operation:
    """Steps run strictly in order. ``parallel_with`` names earlier operations of the same
    unit procedure this one may run at the same time as (see :meth:`UnitProcedure.stages`)."""

    id: str
    title: str
    steps: tuple[Step, ...]
    parallel_with: tuple[str, ...] = ()
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """File form."""
        out: dict[str, Any] = {"id": self.id, "title": self.title}
        if self.description is not None:
            out["description"] = self.description
        if self.parallel_with:
            out["parallel_with"] = list(self.parallel_with)
        out["steps"] = [s.to_dict() for s in self.steps]
        return out


@dataclass(frozen=True, kw_only=True)
class UnitProcedure:
    """The operations carried out on one unit (``unit_class``), run in stages."""

    id: str
    title: str
    operations: tuple[Operation, ...]
    unit_class: str | None = None

    def stages(self) -> tuple[tuple[str, ...], ...]:
        """Operation ids grouped into stages that run one after the other; the operations
        of one stage may run in parallel. An operation with ``parallel_with`` joins the stage
        of the operation just before it; all others start a new stage."""
        out: list[list[str]] = []
        for op in self.operations:
            if op.parallel_with and out:
                out[-1].append(op.id)
            else:
                out.append([op.id])
        return tuple(tuple(s) for s in out)

    def to_dict(self) -> dict[str, Any]:
        """File form."""
        out: dict[str, Any] = {"id": self.id, "title": self.title}
        if self.unit_class is not None:
            out["unit_class"] = self.unit_class
        out["operations"] = [o.to_dict() for o in self.operations]
        return out


@dataclass(frozen=True, slots=True)
class StepRef:
    """Where a step is: indexes into the procedure and its stage order key."""

    unit_procedure: UnitProcedure
    operation: Operation
    step: Step
    up_index: int
    op_index: int
    index: int
    stage: tuple[int, int]

    @property
    def path(self) -> tuple[str | int, ...]:
        """The step's path in the file form, e.g. ``("procedure", 0, "operations", 1, "steps", 2)``."""
        return ("procedure", self.up_index, "operations", self.op_index, "steps", self.index)


@dataclass(frozen=True, kw_only=True)
class MasterRecipe:
    """A master recipe: product, version, nominal batch size, bill of materials, procedure."""

    format: ClassVar[str] = FORMAT
    id: str
    version: int | str
    product: Product
    batch_size: BatchSize
    bill_of_materials: tuple[BomLine, ...]
    procedure: tuple[UnitProcedure, ...]
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The recipe in file form (JSON-able, no floats): ``load(to_dict(r)) == r``."""
        out: dict[str, Any] = {"format": FORMAT, "id": self.id, "version": self.version, "product": self.product.to_dict()}
        if self.description is not None:
            out["description"] = self.description
        out["batch_size"] = self.batch_size.to_dict()
        out["bill_of_materials"] = [b.to_dict() for b in self.bill_of_materials]
        out["procedure"] = [u.to_dict() for u in self.procedure]
        return out

    @cached_property
    def _all_refs(self) -> tuple[StepRef, ...]:
        refs: list[StepRef] = []
        for ui, up in enumerate(self.procedure):
            stage_of = {op_id: si for si, stage in enumerate(up.stages()) for op_id in stage}
            for oi, op in enumerate(up.operations):
                for si, step in enumerate(op.steps):
                    refs.append(StepRef(up, op, step, ui, oi, si, (ui, stage_of.get(op.id, 0))))
        return tuple(refs)

    @cached_property
    def _refs(self) -> dict[str, StepRef]:
        by_id: dict[str, StepRef] = {}
        for ref in self._all_refs:
            by_id.setdefault(ref.step.id, ref)  # the first, should a (refused) recipe repeat an id
        return by_id

    def steps(self) -> Iterator[StepRef]:
        """Every step with its location, in document order."""
        return iter(self._all_refs)

    def step(self, step_id: str) -> Step:
        """The step with this id (KeyError if none)."""
        return self._refs[step_id].step

    def locate(self, step_id: str) -> StepRef:
        """Where the step with this id is (KeyError if none)."""
        return self._refs[step_id]

    def bom_line(self, item: str) -> BomLine | None:
        """The BOM line of an item code, or None."""
        return next((b for b in self.bill_of_materials if b.item == item), None)

    def precedes(self, first: str, then: str) -> bool:
        """Whether step ``first`` is always complete before step ``then`` starts: earlier in
        the same operation, or in an earlier stage. Steps of parallel operations never are."""
        a, b = self._refs[first], self._refs[then]
        if (a.up_index, a.op_index) == (b.up_index, b.op_index):
            return a.index < b.index
        return a.stage < b.stage

    def weigh_steps(self, item: str) -> list[WeighStep]:
        """The weigh steps dispensing ``item``, in order."""
        return [r.step for r in self.steps() if isinstance(r.step, WeighStep) and r.step.item == item]

    def produce_output(self) -> ProduceOutputStep:
        """The one produce-output step."""
        return next(r.step for r in self.steps() if isinstance(r.step, ProduceOutputStep))

    def resolved_weigh(self, step: WeighStep) -> WeighStep:
        """``step`` with target, unit and tolerance filled in from the BOM line."""
        line = self.bom_line(step.item)
        if line is None:
            raise KeyError(step.item)
        unit = step.unit or line.unit
        target = step.target if step.target is not None else convert(line.quantity, line.unit, unit)
        tolerance = step.tolerance or line.tolerance
        return replace(step, target=target, unit=unit, tolerance=tolerance)
