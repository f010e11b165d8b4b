"""The calculation formula parser and evaluator: correct, exact, and closed."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mes.recipes.formula import MAX_DEPTH, MAX_LENGTH, Formula, FormulaError, parse_formula

D = Decimal


def ev(text: str, places: int | None = None, **values: str) -> Decimal:
    return Formula.parse(text).evaluate({k: D(v) for k, v in values.items()}, places)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 - 4 - 3", "3"),  # left-associative
        ("100 / 10 / 5", "2"),  # left-associative
        ("2 * 3 + 4 * 5", "26"),
        ("-3 + 5", "2"),
        ("-(3 + 5)", "-8"),
        ("- -2", "2"),
        ("+2", "2"),
        ("2 * -3", "-6"),
        ("1 - -1", "2"),
        ("0.1 + 0.2", "0.3"),  # exact, unlike floats
        ("12.500 * 2", "25.000"),
        ("1 / 8", "0.125"),
        ("((((1))))", "1"),
    ],
)
def test_arithmetic_and_precedence(text: str, expected: str) -> None:
    assert ev(text) == D(expected)


def test_step_references() -> None:
    f = Formula.parse("granule_weight / (w_pcm + w_mcc101) * 100")
    assert f.references == ("granule_weight", "w_pcm", "w_mcc101")
    values = {"granule_weight": D("104.50"), "w_pcm": D("100.000"), "w_mcc101": D("6.000")}
    assert f.evaluate(values, 1) == D("98.6")  # 98.584...
    assert Formula.parse("a + a * b").references == ("a", "b")


def test_rounding_is_half_even_and_exact() -> None:
    assert ev("1 / 3", 4) == D("0.3333")
    assert ev("2 / 3", 4) == D("0.6667")
    assert ev("0.125 * 1", 2) == D("0.12")
    assert ev("0.135 * 1", 2) == D("0.14")
    assert ev("5 / 2", 0) == D("2")
    assert ev("7 / 2", 0) == D("4")
    assert ev("1 / 3") == D("0.3333333333333333333333333333333333")  # 34 significant digits
    assert Formula.parse("x * 3").evaluate_exact({"x": D("0.1")}) == Fraction(3, 10)


def test_division_by_zero_is_a_clear_error() -> None:
    with pytest.raises(FormulaError, match=r"division by zero: the divisor '\(b - c\)' is 0"):
        ev("a / (b - c)", a="1", b="2", c="2")
    with pytest.raises(FormulaError, match="division by zero"):
        ev("1 / 0")


def test_missing_value() -> None:
    with pytest.raises(FormulaError, match="no value for step 'b'"):
        ev("a + b", a="1")
    with pytest.raises(FormulaError, match="not a finite Decimal"):
        Formula.parse("a").evaluate({"a": 1.5})  # type: ignore[dict-item]
    with pytest.raises(FormulaError, match="not a finite Decimal"):
        Formula.parse("a").evaluate({"a": D("NaN")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abs(x)", "function calls are not allowed"),
        ("__import__('os')", "names cannot start with '_'"),
        ("os.system", "attribute access is not allowed"),
        ("x.real", "attribute access is not allowed"),
        ("a ** 2", "power"),
        ("2 ^ 3", "not allowed"),
        ("a[0]", "not allowed"),
        ("a if b else c", "expected an operator"),
        ("lambda: 1", "not allowed"),
        ("1e3", "exponent notation"),
        ("1.", "digits on both sides"),
        (".5", "digits on both sides"),
        ("1,5", "not allowed"),
        ("a == b", "not allowed"),
        ("'text'", "not allowed"),
        ("2 3", "missing operator"),
        ("2x", "missing operator"),
        ("(1 + 2", r"missing '\)'"),
        ("1 + 2)", r"unbalanced '\)'"),
        ("1 +", "ends where"),
        ("", "empty"),
        ("   ", "empty"),
        ("* 2", "expected a number"),
        ("a\nb", "single line"),
        ("µ + 1", "unexpected character"),
    ],
)
def test_refuses_everything_else(text: str, message: str) -> None:
    with pytest.raises(FormulaError, match=message):
        parse_formula(text)


def test_error_positions() -> None:
    with pytest.raises(FormulaError) as info:
        parse_formula("a + abs(b)")
    assert info.value.position == 4


def test_limits() -> None:
    with pytest.raises(FormulaError, match="longer than"):
        parse_formula("1+" * (MAX_LENGTH // 2) + "1")
    with pytest.raises(FormulaError, match="nested too deeply"):
        parse_formula("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(FormulaError, match="nested too deeply"):
        parse_formula("-" * (MAX_DEPTH + 1) + "1")
    assert ev("1+" * 200 + "1") == D(201)  # long flat chains are fine


def test_not_a_string() -> None:
    with pytest.raises(FormulaError):
        parse_formula(None)  # type: ignore[arg-type]


_safe = st.text(alphabet="0123456789abcxyz_.+-*/() \t", max_size=40)


@given(_safe)
def test_parser_never_raises_anything_else(text: str) -> None:
    try:
        f = parse_formula(text)
    except FormulaError:
        return
    values = {name: D(1) for name in f.references}
    try:
        f.evaluate(values, 3)
    except FormulaError as exc:
        assert "division by zero" in str(exc)


@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=8), st.integers(0, 4))
def test_sums_are_exact(numbers: list[int], places: int) -> None:
    values = {f"s{i}": Decimal(n).scaleb(-places) for i, n in enumerate(numbers)}
    f = Formula.parse(" + ".join(values))
    assert f.evaluate(values) == sum(values.values())
