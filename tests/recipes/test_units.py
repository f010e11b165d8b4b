"""Units, exact conversion, decimal text, rounding and ISO 8601 durations."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mes.quantities import (
    UNITS,
    Duration,
    UnitError,
    convert,
    decimal_places,
    dimension,
    exact_decimal,
    parse_decimal,
    round_half_even,
    same_dimension,
    suggest_unit,
    to_text,
)

D = Decimal


def test_required_units_are_known() -> None:
    for unit in ("g", "kg", "mg", "L", "mL", "%", "min", "s", "h", "°C", "pcs"):
        assert unit in UNITS
    assert dimension("kg") == "mass" and dimension("mL") == "volume" and dimension("h") == "time"
    assert same_dimension("mg", "kg") and not same_dimension("kg", "L")


@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        ("0.600", "kg", "g", "600"),
        ("600.0", "g", "kg", "0.6000"),
        ("1.5", "kg", "mg", "1500000"),
        ("250", "mL", "L", "0.250"),
        ("1.25", "L", "mL", "1250"),
        ("1.5", "min", "s", "90.0"),
        ("90", "s", "min", "1.5"),
        ("2", "h", "min", "120"),
        ("12.345", "g", "g", "12.345"),
    ],
)
def test_convert_is_exact_and_keeps_resolution(value: str, src: str, dst: str, expected: str) -> None:
    result = convert(D(value), src, dst)
    assert to_text(result) == expected
    assert Fraction(result) == Fraction(D(value)) * UNITS[src][1] / UNITS[dst][1]


def test_convert_refuses_other_dimensions_and_inexact_results() -> None:
    with pytest.raises(UnitError, match="cannot convert kg"):
        convert(D(1), "kg", "L")
    with pytest.raises(UnitError, match="not an exact decimal"):
        convert(D(1), "s", "min")
    with pytest.raises(UnitError, match="did you mean 'mL'"):
        dimension("ml")


@given(st.integers(-10**12, 10**12), st.integers(0, 6), st.sampled_from(["mg", "g", "kg"]), st.sampled_from(["mg", "g", "kg"]))
def test_mass_conversion_round_trips_exactly(units: int, places: int, a: str, b: str) -> None:
    value = Decimal(units).scaleb(-places)
    assert convert(convert(value, a, b), b, a) == value


def test_suggestions() -> None:
    assert suggest_unit("ml") == "mL"
    assert suggest_unit("degC") == "°C"
    assert suggest_unit("cP") == "mPa·s"
    assert suggest_unit("KG") == "kg"
    assert suggest_unit("furlong") is None


@pytest.mark.parametrize("text", ["12.5kg", "1e3", "1,5", " 1", "1.", ".5", "NaN", "Infinity", "+1", "1_000", "١٢", "-1"])
def test_parse_decimal_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal(text)


def test_parse_decimal_keeps_decimals() -> None:
    assert decimal_places(parse_decimal("12.500")) == 3
    assert to_text(parse_decimal("12.500")) == "12.500"
    assert parse_decimal("-5.0", signed=True) == D("-5")


def test_to_text_never_uses_exponents() -> None:
    assert to_text(D("1E+3")) == "1000"
    assert to_text(D("1E-7")) == "0.0000001"
    assert to_text(D("-0.0")) == "0.0"
    with pytest.raises(TypeError):
        to_text(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [("2.5", 0, "2"), ("3.5", 0, "4"), ("0.125", 2, "0.12"), ("0.135", 2, "0.14"), ("-2.5", 0, "-2"), ("1", 3, "1.000")],
)
def test_round_half_even(value: str, places: int, expected: str) -> None:
    assert to_text(round_half_even(D(value), places)) == expected


def test_round_half_even_of_fractions_has_no_double_rounding() -> None:
    # 0.4999...(40 nines)...7 must round to 0, not via 0.5 to 0 or 1
    value = Fraction(5, 10) - Fraction(3, 10**42)
    assert round_half_even(value, 0) == 0
    assert round_half_even(Fraction(1, 3), 4) == D("0.3333")
    assert round_half_even(Fraction(2, 3), 4) == D("0.6667")


def test_exact_decimal() -> None:
    assert exact_decimal(Fraction(1, 8)) == D("0.125")
    assert exact_decimal(Fraction(1, 3)) is None


@pytest.mark.parametrize(
    ("text", "seconds", "iso", "human"),
    [
        ("PT30M", 1800, "PT30M", "30 min"),
        ("PT90M", 5400, "PT1H30M", "1 h 30 min"),
        ("PT72H", 259200, "P3D", "3 d"),
        ("P1DT12H", 129600, "P1DT12H", "1 d 12 h"),
        ("PT45S", 45, "PT45S", "45 s"),
        ("PT0S", 0, "PT0S", "0 s"),
    ],
)
def test_durations(text: str, seconds: int, iso: str, human: str) -> None:
    d = Duration.parse(text)
    assert d.seconds == seconds and d.iso == iso and d.human == human and str(d) == iso
    assert Duration.parse(d.iso) == d


@pytest.mark.parametrize("text", ["30 min", "P", "PT", "P1Y", "P1M", "P1W", "PT1.5H", "pt30m", "PT30M ", "-PT1M", "P1H", "30"])
def test_durations_are_strict(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        Duration.parse(text)


def test_duration_order_and_validation() -> None:
    assert Duration.parse("PT20M") < Duration.parse("PT1H")
    with pytest.raises(ValueError):
        Duration(-1)
