"""Control recipes: a master recipe scaled to one batch size, frozen, with a content hash.

:func:`scale` turns a validated :class:`~mes.recipes.model.MasterRecipe` into a
:class:`ControlRecipe` for an actual batch size. What scales and how:

* the factor is ``batch size / nominal batch size`` as an exact fraction (the batch size
  may be given in another unit of the same dimension; it is converted exactly);
* BOM quantities, weigh-step targets and the produce-output theoretical quantity are
  multiplied by the factor and rounded ROUND_HALF_EVEN to the number of decimals written in
  the master recipe (``"6.000"`` kg -> 3 decimals). The product is exact and rounded once;
* weigh steps are *resolved*: target, unit and tolerance are written out (a weigh step
  without a target dispenses the scaled BOM quantity, converted exactly to its unit), and
  the inclusive net-weight window ``low``/``high`` = target ∓ tolerance is added, exact;
* percentage tolerances stay percentages of the scaled target; absolute tolerances,
  scale readability, limits of numeric entries and checks, durations and yield limits do
  not scale;
* the batch size must lie in the master's validated range, and every weigh step's scale
  readability must still resolve its (scaled) tolerance, else RecipeError.

Each step kind scales its own steps (:meth:`StepKind.scale <mes.steps.base.StepKind.scale>`);
the rules above are those of the built-in weigh and produce-output kinds.

Split weigh steps are scaled one by one, so after rounding their sum can differ from the
scaled BOM line by a few units of its last decimal; the weigh steps are what the engine
enforces, the BOM line of a control recipe is for information and material planning.

:func:`recipe_hash` is the SHA-256 of the canonical JSON of a control (or master) recipe
dict; the engine stores it with the batch so that any later change is detectable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

from mes.quantities import UnitError, convert, decimal_places, dimension, round_half_even, to_text
from mes.recipes.errors import Problem, RecipeError
from mes.recipes.model import BatchSize, BomLine, MasterRecipe, Product, Step, StepRef, UnitProcedure
from mes.steps import registry
from mes.steps.base import ScaleContext

__all__ = ["CONTROL_FORMAT", "ControlRecipe", "canonical_json", "recipe_hash", "scale"]

CONTROL_FORMAT: Final = "mes.control-recipe/v1"
"""The ``format`` member of a control recipe dict."""


@dataclass(frozen=True, kw_only=True)
class ControlRecipe:
    """A master recipe scaled to one batch: ``recipe`` is the scaled, resolved copy (same
    classes as a master recipe, so ``steps()``, ``step()``, ``precedes()`` work), and the
    master it came from is identified by id, version and hash."""

    master_id: str
    master_version: int | str
    master_hash: str
    nominal_batch_size: BatchSize
    recipe: MasterRecipe

    @property
    def product(self) -> Product:
        """The product made."""
        return self.recipe.product

    @property
    def batch_size(self) -> BatchSize:
        """The actual batch size (quantity and unit as requested)."""
        return self.recipe.batch_size

    @property
    def bill_of_materials(self) -> tuple[BomLine, ...]:
        """BOM lines with scaled quantities."""
        return self.recipe.bill_of_materials

    @property
    def procedure(self) -> tuple[UnitProcedure, ...]:
        """The procedure with resolved, scaled weigh and produce-output steps."""
        return self.recipe.procedure

    def steps(self) -> Iterator[StepRef]:
        """Every step with its location, in document order."""
        return self.recipe.steps()

    def step(self, step_id: str) -> Step:
        """The step with this id (KeyError if none)."""
        return self.recipe.step(step_id)

    def to_dict(self) -> dict[str, Any]:
        """The plain JSON-able form (strings for every decimal, no floats) that the engine
        stores and hashes with :func:`recipe_hash`."""
        r = self.recipe
        out: dict[str, Any] = {
            "format": CONTROL_FORMAT,
            "master": {"id": self.master_id, "version": self.master_version, "hash": self.master_hash},
            "product": r.product.to_dict(),
        }
        if r.description is not None:
            out["description"] = r.description
        out["nominal_batch_size"] = self.nominal_batch_size.to_dict()
        out["batch_size"] = {"quantity": to_text(r.batch_size.quantity), "unit": r.batch_size.unit}
        lines = []
        for line in r.bill_of_materials:
            d = line.to_dict()
            if line.tolerance is not None:
                low, high = line.tolerance.window(line.quantity, line.unit)
                d["low"], d["high"] = to_text(low), to_text(high)
            lines.append(d)
        out["bill_of_materials"] = lines
        procedure = []
        for up in r.procedure:
            u = up.to_dict()
            u["stages"] = [list(stage) for stage in up.stages()]
            for o, op in zip(u["operations"], up.operations, strict=True):
                for s, step in zip(o["steps"], op.steps, strict=True):
                    s.update(registry.kind_of(step).control_members(step))
            procedure.append(u)
        out["procedure"] = procedure
        return out


def _scaled(value: Decimal, factor: Fraction) -> Decimal:
    """``value × factor`` rounded HALF_EVEN to ``value``'s decimals (exact product, one rounding)."""
    return round_half_even(Fraction(value) * factor, decimal_places(value))


def scale(recipe: MasterRecipe, batch_size: Decimal, unit: str) -> ControlRecipe:
    """The control recipe of ``recipe`` for a batch of ``batch_size`` ``unit``.

    Raises TypeError if ``batch_size`` is not a Decimal (or int): floats are refused.
    Raises RecipeError if the unit does not fit the nominal batch size, the size is not
    positive, outside the validated range, not whole for ``pcs``, or too small for a weigh
    step's scale to resolve its tolerance.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (Decimal, int)):
        raise TypeError(f"batch_size must be a Decimal, not {type(batch_size).__name__}")
    batch_size = Decimal(batch_size)
    nominal = recipe.batch_size

    def fail(message: str, path: str = "batch_size") -> RecipeError:
        return RecipeError([Problem(message, path, source=f"{recipe.id} v{recipe.version}")])

    if not batch_size.is_finite() or batch_size <= 0:
        raise fail(f"the batch size must be a positive number, got {batch_size}")
    try:
        in_nominal = convert(batch_size, unit, nominal.unit)
    except UnitError as exc:
        raise fail(f"cannot scale a recipe for {to_text(nominal.quantity)} {nominal.unit} to {unit}: {exc}") from None
    if dimension(unit) == "count" and batch_size != batch_size.to_integral_value():
        raise fail(f"a batch size in {unit} must be a whole number, got {to_text(batch_size)}")
    if (nominal.minimum is not None and in_nominal < nominal.minimum) or (nominal.maximum is not None and in_nominal > nominal.maximum):
        lo = to_text(nominal.minimum) if nominal.minimum is not None else "-"
        hi = to_text(nominal.maximum) if nominal.maximum is not None else "-"
        raise fail(f"{to_text(batch_size)} {unit} is outside the validated batch size range {lo} to {hi} {nominal.unit}")
    factor = Fraction(in_nominal) / Fraction(nominal.quantity)

    bom = tuple(replace(line, quantity=_scaled(line.quantity, factor)) for line in recipe.bill_of_materials)
    scaled_master = replace(recipe, bill_of_materials=bom)
    ctx = ScaleContext(recipe, scaled_master, factor)
    procedure = []
    for up in recipe.procedure:
        ops = []
        for op in up.operations:
            steps: list[Step] = [registry.kind_of(step).scale(step, ctx) for step in op.steps]
            ops.append(replace(op, steps=tuple(steps)))
        procedure.append(replace(up, operations=tuple(ops)))
    if ctx.problems:
        raise RecipeError(ctx.problems)
    scaled = replace(scaled_master, batch_size=BatchSize(quantity=batch_size, unit=unit), procedure=tuple(procedure))
    return ControlRecipe(
        master_id=recipe.id,
        master_version=recipe.version,
        master_hash=recipe_hash(recipe.to_dict()),
        nominal_batch_size=nominal,
        recipe=scaled,
    )


def _check_json(value: Any, path: str = "$") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys must be strings, got {key!r}")
            _check_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
    elif isinstance(value, float):
        raise TypeError(f"{path}: floats are not allowed in recipes (got {value!r}); use decimal strings")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -(2**53) < value < 2**53:
            raise TypeError(f"{path}: integer {value} is outside the exactly representable range")
    elif not (value is None or isinstance(value, (str, bool))):
        raise TypeError(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no whitespace, no floats (TypeError otherwise)."""
    _check_json(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def recipe_hash(control_recipe_dict: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a recipe dict (control or master)."""
    return hashlib.sha256(canonical_json(control_recipe_dict)).hexdigest()

