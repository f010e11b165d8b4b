"""The one quantity model (mes.quantities): one unit registry (pint, from the plant's units
file) for recipes and materials, exact conversion with the written resolution moving with
the unit, refusal instead of rounding, and the canonical decimal strings the audit log
carries. Pure: no database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    same_dimension,
    storable,
    storage_unit,
    suggest_unit,
    to_storage,
    to_text,
    with_unit,
)

D = Decimal
SCHEMA = Path(__file__).resolve().parents[1] / "recipes" / "master-recipe.schema.json"

values = st.builds(lambda units, places: Decimal(units).scaleb(-places), st.integers(-10**12, 10**12), st.integers(0, 6))


def _pairs(dim: str) -> list[tuple[str, str]]:
    units = [u for u, (d, _) in UNITS.items() if d == dim and u not in q.REGISTRY.offset]
    return [(a, b) for a in units for b in units]


def _power_of_ten(ratio: Fraction) -> bool:
    return any(ratio == Fraction(10) ** k for k in range(-9, 10))


DIMENSIONS = sorted({d for d, _ in UNITS.values()})
SAME_DIMENSION = [pair for dim in DIMENSIONS for pair in _pairs(dim)]  # linear units (°C, °F have an offset)
POWER_OF_TEN = [(a, b) for a, b in SAME_DIMENSION if _power_of_ten(UNITS[a][1] / UNITS[b][1])]


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
        assert q.exact_decimal(UNITS[a][1] / UNITS[b][1]) is None  # only non-decimal factors (1/60) can fail
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


# ------------------------------------------------------------------ the plant's units (pint)


def test_units_beyond_the_first_eighteen_convert_exactly() -> None:
    """Electrical, pressure, ratio and temperature units come from the units file; every
    conversion is exact (fractions, never a float), an offset scale included."""
    assert {"A", "V", "W", "kW", "bar", "kPa", "°F", "ppm", "CFU"} <= set(UNITS)
    assert to_text(convert(D("1.5"), "bar", "kPa")) == "150"
    assert to_text(convert(D("250"), "mbar", "bar")) == "0.250"
    assert to_text(convert(D("2.5"), "kW", "W")) == "2500"
    assert to_text(convert(D("0.5"), "%", "ppm")) == "5000"
    assert to_text(convert(D("20.0"), "°C", "°F")) == "68.0" and to_text(convert(D("37.0"), "°C", "°F")) == "98.6"
    assert to_text(convert(D("-40"), "°F", "°C")) == "-40" and to_text(convert(D("25.00"), "°C", "K")) == "298.15"
    with pytest.raises(UnitError, match="not an exact decimal number of °C"):
        convert(D(1), "°F", "°C")  # 5/9 of a degree does not terminate: refused, not rounded
    assert isinstance(q.REGISTRY.convert(Fraction(1), "°F", "°C"), Fraction)
    assert dimension("bar") == "pressure" and dimension("mPa·s") == "viscosity" and dimension("V") == "electric potential"
    assert dimension("ppm") == dimension("%") and not same_dimension("pH", "%")


def test_dimension_mismatch_is_refused_with_a_clear_sentence() -> None:
    with pytest.raises(UnitError) as refused:
        convert(D(1), "kg", "L")
    assert str(refused.value) == "cannot convert kg to L: kg measures mass, L measures volume"
    with pytest.raises(UnitError, match="cannot convert bar to °C: bar measures pressure, °C measures temperature"):
        convert(D(1), "bar", "°C")


def test_unit_symbols_are_exact_and_aliases_only_hints() -> None:
    for typed, meant in (("ml", "mL"), ("litre", "L"), ("degC", "°C"), ("mpa.s", "mPa·s"), ("cP", "mPa·s"),
                         ("KPA", "kPa"), ("cfu", "CFU"), ("deg c", "°C"), ("seconds", "s")):
        assert suggest_unit(typed) == meant
        if typed != meant:
            assert typed not in UNITS
    with pytest.raises(UnitError, match="did you mean 'mL'"):
        dimension("ml")


PLANT_UNITS = """\
# a plant's own units: a count unit of 12 pieces and a unit of a new dimension
box = 12 * piece = box = boxes
colony_count = [colonies_per_plate] = CFU/plate
"""


def test_a_plant_adds_units_in_its_units_file_without_code(tmp_path: Path) -> None:
    plant = tmp_path / "plant-units.txt"
    plant.write_text(PLANT_UNITS, encoding="utf-8")
    units = q.Units(q.DEFAULT_UNITS_FILE, plant)
    assert units.table["box"] == ("count", Fraction(12)) and units.convert(Fraction(2), "box", "pcs") == 24
    assert "box" not in UNITS  # the running MES reads its units once, at start
    # the MES_UNITS_FILE setting names the plant's file: recipes, materials and conversions take its units
    code = ("from decimal import Decimal; from mes import quantities as q; "
            "print(q.convert(Decimal('2.5'), 'box', 'pcs'), 'box' in q.MATERIAL_UNITS, q.dimension('CFU/plate'))")
    env = {**os.environ, "MES_UNITS_FILE": str(plant)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["30.0", "True", "colonies", "per", "plate"]  # 2.5 box: 30.0 pcs, places kept


def test_a_units_file_that_cannot_be_read_is_refused_with_a_sentence(tmp_path: Path) -> None:
    broken = tmp_path / "broken.txt"
    broken.write_text("box = 12 * nonsense_unit = box\n", encoding="utf-8")
    with pytest.raises(UnitError, match="the units file cannot be read"):
        q.Units(q.DEFAULT_UNITS_FILE, broken).convert(Fraction(1), "box", "pcs")
    with pytest.raises(UnitError, match="the units file cannot be read"):
        q.Units(tmp_path / "missing.txt")
