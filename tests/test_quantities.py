"""The one quantity model (mes.quantities): one unit table for recipes and materials, exact
conversion with the written resolution moving with the unit, refusal instead of rounding,
and the canonical decimal strings the audit log carries. Pure: no database."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mes import quantities as q
from mes.quantities import (
    MATERIAL_UNITS,
    STORAGE_UNIT,
    UNITS,
    QuantityError,
    UnitError,
    as_json,
    convert,
    decimal_places,
    dimension,
    fmt,
    material_dimension,
    parse_quantity,
    storable,
    storage_unit,
    to_storage,
    to_text,
    with_unit,
)

D = Decimal
SCHEMA = Path(__file__).resolve().parents[1] / "recipes" / "master-recipe.schema.json"

values = st.builds(lambda units, places: Decimal(units).scaleb(-places), st.integers(-10**12, 10**12), st.integers(0, 6))


def _pairs(dim: str) -> list[tuple[str, str]]:
    units = [u for u, (d, _) in UNITS.items() if d == dim]
    return [(a, b) for a in units for b in units]


DIMENSIONS = sorted({d for d, _ in UNITS.values()})
SAME_DIMENSION = [pair for dim in DIMENSIONS for pair in _pairs(dim)]
POWER_OF_TEN = [(a, b) for a, b in SAME_DIMENSION if dimension(a) != "time"]


def test_one_unit_table_is_the_recipe_formats_unit_list() -> None:
    enum = json.loads(SCHEMA.read_text(encoding="utf-8"))["$defs"]["unit"]["enum"]
    assert list(UNITS) == enum  # same units, same order: the schema is generated from this table


def test_material_units_are_the_mass_volume_and_count_units_of_the_one_table() -> None:
    assert MATERIAL_UNITS == ("mg", "g", "kg", "mL", "L", "pcs")
    assert set(MATERIAL_UNITS) <= set(UNITS)
    assert {storage_unit(u) for u in MATERIAL_UNITS} == set(STORAGE_UNIT.values()) == {"g", "mL", "pcs"}
    for unit in ("s", "°C", "%", "lb", None):
        with pytest.raises(UnitError, match="not a material unit"):
            material_dimension(unit)  # type: ignore[arg-type]


def test_conversion_across_dimensions_is_refused() -> None:
    with pytest.raises(UnitError, match="cannot convert kg"):
        convert(D(1), "kg", "L")
    with pytest.raises(QuantityError):  # a UnitError is a QuantityError: materials catch one class
        convert(D(1), "pcs", "g")


def test_a_conversion_that_cannot_be_exact_is_refused_never_rounded() -> None:
    with pytest.raises(UnitError, match="not an exact decimal number of min"):
        convert(D(1), "s", "min")  # 1/60 min does not terminate
    assert convert(D(90), "s", "min") == D("1.5")


@given(st.sampled_from(SAME_DIMENSION), values)
def test_conversion_is_exact_or_refused(pair: tuple[str, str], value: Decimal) -> None:
    a, b = pair
    try:
        result = convert(value, a, b)
    except UnitError as exc:
        assert "not an exact decimal" in str(exc)
        assert dimension(a) == "time"  # only non-decimal factors (60, 3600) can fail
        return
    assert Fraction(result) == Fraction(value) * UNITS[a][1] / UNITS[b][1]
    assert convert(result, b, a) == value


@given(st.sampled_from(POWER_OF_TEN), values)
def test_written_resolution_moves_with_the_unit(pair: tuple[str, str], value: Decimal) -> None:
    a, b = pair
    shift = {Fraction(10) ** k: k for k in range(-9, 10)}[UNITS[a][1] / UNITS[b][1]]
    result = convert(value, a, b)
    assert decimal_places(result) == max(0, decimal_places(value) - shift)
    if shift <= 0 or decimal_places(value) >= shift:
        assert convert(result, b, a).as_tuple() == value.as_tuple()  # back to the very digits written


def test_storage_keeps_six_places_and_refuses_a_seventh() -> None:
    assert storable(D("1.5"), "g") == D("1.500000")
    with pytest.raises(QuantityError, match="more than 6 decimal places"):
        storable(D("0.0000001"), "g")
    with pytest.raises(QuantityError, match="too large"):
        storable(q.LIMIT, "g")
    with pytest.raises(QuantityError, match="decimal places"):
        to_storage(D("0.0001"), "mg")  # 0.0000001 g: refused, not rounded to 0
    assert to_storage(D("1.25"), "L") == (D("1250"), "mL")


def test_api_quantities_are_decimal_strings_never_floats() -> None:
    assert parse_quantity(" 12.50 ") == D("12.50") and decimal_places(parse_quantity("12.50")) == 2
    assert parse_quantity(3) == D(3)
    for bad in (1.5, True, "NaN", "Infinity", "twelve", None):
        with pytest.raises(QuantityError):
            parse_quantity(bad)


@pytest.mark.parametrize(
    ("value", "short", "kept"),
    [("12.50", "12.5", "12.50"), ("0.000000", "0", "0.000000"), ("1E+3", "1000", "1000"), ("250", "250", "250"),
     ("9.748765333", "9.748765333", "9.748765333"), ("1E-7", "0.0000001", "0.0000001")],
)
def test_audit_decimal_strings_are_canonical(value: str, short: str, kept: str) -> None:
    """How a decimal is written into the audit log never changes: no exponent, no float."""
    assert fmt(D(value)) == short
    assert fmt(D(value), keep_places=True) == kept
    assert as_json(D(value), "kg") == {"value": short, "uom": "kg"}
    assert with_unit(D(value), "kg") == f"{short} kg"
    assert to_text(D(value)) == kept
