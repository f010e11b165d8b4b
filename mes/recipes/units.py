"""Units of measure, exact Decimal arithmetic helpers and ISO 8601 durations.

Every quantity in a recipe is a :class:`~decimal.Decimal` with an explicit unit. Recipe
files write quantities as quoted strings (``"12.500"``); the digits written after the
decimal point are the quantity's *precision* and are kept (``Decimal("12.500")`` keeps its
exponent). Conversions are exact: mass and volume units differ by powers of ten, so
converting never rounds; a conversion whose result is not a terminating decimal (e.g.
1 s in min) is refused rather than rounded. Rounding happens in one place,
:func:`round_half_even`, computed on exact fractions so there is no double rounding.

Durations (timer steps, hold times, clean-hold limits) are ISO 8601 durations restricted
to days, hours, minutes and whole seconds (``PT30M``, ``PT1H30M``, ``P3D``); a day is
exactly 24 h. Years, months and weeks are refused because their length is ambiguous.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Final

__all__ = [
    "DECIMAL_PATTERN",
    "DURATION_PATTERN",
    "UNITS",
    "Duration",
    "UnitError",
    "convert",
    "decimal_places",
    "dimension",
    "exact_decimal",
    "parse_decimal",
    "round_half_even",
    "same_dimension",
    "suggest_unit",
    "to_text",
]


class UnitError(ValueError):
    """An unknown unit, a conversion between different dimensions, or an inexact one."""


# unit -> (dimension, factor to the dimension's base unit). Case-sensitive, exactly as written.
UNITS: Final[dict[str, tuple[str, Fraction]]] = {
    "mg": ("mass", Fraction(1, 1000)),
    "g": ("mass", Fraction(1)),
    "kg": ("mass", Fraction(1000)),
    "mL": ("volume", Fraction(1)),
    "L": ("volume", Fraction(1000)),
    "s": ("time", Fraction(1)),
    "min": ("time", Fraction(60)),
    "h": ("time", Fraction(3600)),
    "°C": ("temperature", Fraction(1)),
    "pcs": ("count", Fraction(1)),
    "%": ("percent", Fraction(1)),
    "pH": ("pH", Fraction(1)),
    "mPa·s": ("viscosity", Fraction(1)),
    "Pa·s": ("viscosity", Fraction(1000)),
    "N": ("force", Fraction(1)),
    "kN": ("force", Fraction(1000)),
    "mm": ("length", Fraction(1)),
    "rpm": ("rotational speed", Fraction(1)),
}

# Spellings people type that are not the unit's name; used only for "did you mean".
_ALIASES: Final[dict[str, str]] = {
    "ml": "mL", "l": "L", "ltr": "L", "litre": "L", "liter": "L", "gram": "g", "kilo": "kg",
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "mins": "min", "minute": "min",
    "minutes": "min", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "degc": "°C", "c": "°C",
    "deg c": "°C", "ºc": "°C", "celsius": "°C", "pc": "pcs", "pieces": "pcs", "ea": "pcs",
    "each": "pcs", "units": "pcs", "percent": "%", "mpa.s": "mPa·s", "mpas": "mPa·s",
    "mpa s": "mPa·s", "cp": "mPa·s", "pa.s": "Pa·s", "pas": "Pa·s", "knewton": "kN",
    "kilonewton": "kN", "newton": "N", "ph": "pH", "rev/min": "rpm", "1/min": "rpm",
}

DECIMAL_PATTERN: Final = r"^[0-9]{1,15}(\.[0-9]{1,9})?$"
"""A non-negative decimal quantity as written in a recipe: no sign, exponent or separators."""

SIGNED_DECIMAL_PATTERN: Final = r"^-?[0-9]{1,15}(\.[0-9]{1,9})?$"
"""A decimal that may be negative (limits of numeric entries, e.g. a temperature)."""

DURATION_PATTERN: Final = r"^P(?=[0-9T])([0-9]{1,4}D)?(T(?=[0-9])([0-9]{1,5}H)?([0-9]{1,6}M)?([0-9]{1,7}S)?)?$"
"""The ISO 8601 duration subset recipes accept: ``PnDTnHnMnS``, whole numbers, any part optional."""

_DECIMAL_RE = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,9})?")
_DURATION_RE = re.compile(r"P(?=[0-9T])(?:([0-9]{1,4})D)?(?:T(?=[0-9])(?:([0-9]{1,5})H)?(?:([0-9]{1,6})M)?(?:([0-9]{1,7})S)?)?")


def dimension(unit: str) -> str:
    """The dimension of ``unit`` (``"mass"``, ``"volume"``, ...); UnitError if unknown."""
    try:
        return UNITS[unit][0]
    except (KeyError, TypeError):
        raise UnitError(_unknown(unit)) from None


def same_dimension(a: str, b: str) -> bool:
    """Whether quantities in ``a`` and ``b`` can be converted into each other."""
    return dimension(a) == dimension(b)


def suggest_unit(text: str) -> str | None:
    """The unit the author probably meant by ``text``, or None."""
    if not isinstance(text, str):
        return None
    key = text.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    for unit in UNITS:
        if unit.lower() == key:
            return unit
    close = difflib.get_close_matches(text.strip(), list(UNITS), n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown(unit: object) -> str:
    hint = suggest_unit(unit) if isinstance(unit, str) else None
    message = f"{unit!r} is not a known unit"
    if hint:
        message += f" (did you mean {hint!r}?)"
    return message + "; known units: " + ", ".join(UNITS)


def parse_decimal(text: str, *, signed: bool = False) -> Decimal:
    """A recipe decimal from its text, keeping the written decimals; ValueError otherwise.

    Only plain digits with an optional decimal point (and a leading ``-`` when ``signed``)
    are accepted: no exponent, no thousands separators, no ``NaN``/``Infinity``.
    """
    if not isinstance(text, str) or not _DECIMAL_RE.fullmatch(text) or (text.startswith("-") and not signed):
        raise ValueError(f"{text!r} is not a decimal quantity")
    return Decimal(text)


def decimal_places(value: Decimal) -> int:
    """The number of digits written after the decimal point (``Decimal("12.500")`` -> 3)."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"{value!r} is not finite")
    return max(0, -exponent)


def to_text(value: Decimal) -> str:
    """``value`` as plain decimal text without exponent notation, keeping its decimals."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise TypeError(f"expected a finite Decimal, got {value!r}")
    text = format(value, "f")
    return "0" + text[2:] if text.startswith("-0") and value == 0 else text


def exact_decimal(value: Fraction) -> Decimal | None:
    """``value`` as an exact Decimal, or None if it is not a terminating decimal."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return None
    places = max(twos, fives)
    return _from_units(int(value * 10**places), places)


def _from_units(units: int, places: int) -> Decimal:
    """``units * 10**-places`` as a Decimal with exactly ``places`` decimals (no context rounding)."""
    return Decimal(f"{units}e{-places}") if places > 0 else Decimal(units)


def round_half_even(value: Fraction | Decimal, places: int) -> Decimal:
    """``value`` rounded to ``places`` decimals, ties to even, computed exactly (no float,
    no intermediate rounding), with exactly ``places`` decimals in the result."""
    frac = Fraction(value)
    if places < 0:
        raise ValueError("places must be >= 0")
    return _from_units(round(frac * 10**places), places)  # Fraction rounds half to even, exactly


def _shift(ratio: Fraction) -> int | None:
    """k if ratio == 10**k, else None."""
    for k in range(-9, 10):
        if ratio == Fraction(10) ** k:
            return k
    return None


def convert(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    """``value`` in ``from_unit`` expressed in ``to_unit``, exactly.

    The written resolution moves with the unit (``"0.600"`` kg -> ``"600"`` g,
    ``"600.0"`` g -> ``"0.6000"`` kg) but digits are never dropped: the result is exact.
    Raises UnitError for different dimensions or a non-terminating result.
    """
    if dimension(from_unit) != dimension(to_unit):
        raise UnitError(f"cannot convert {from_unit} ({dimension(from_unit)}) to {to_unit} ({dimension(to_unit)})")
    if from_unit == to_unit:
        return value
    ratio = UNITS[from_unit][1] / UNITS[to_unit][1]
    exact = exact_decimal(Fraction(value) * ratio)
    if exact is None:
        raise UnitError(f"{to_text(value)} {from_unit} is not an exact decimal number of {to_unit}")
    shift = _shift(ratio) or 0
    wanted = min(0, -decimal_places(value) + shift)
    if decimal_places(exact) <= -wanted:
        return _from_units(int(Fraction(exact) * 10**-wanted), -wanted)
    return exact


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A duration in whole seconds; written in recipes as an ISO 8601 duration (``PT30M``)."""

    seconds: int

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, int) or isinstance(self.seconds, bool) or self.seconds < 0:
            raise ValueError(f"a duration is a non-negative whole number of seconds, got {self.seconds!r}")

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse ``PnDTnHnMnS`` (each part optional, whole numbers); ValueError otherwise."""
        match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{text!r} is not an ISO 8601 duration such as 'PT30M', 'PT1H30M' or 'P3D'")
        d, h, m, s = (int(g) if g else 0 for g in match.groups())
        return cls(((d * 24 + h) * 60 + m) * 60 + s)

    @property
    def iso(self) -> str:
        """Canonical ISO 8601 text: ``P2DT3H``, ``PT1H30M``, ``PT45S``, ``PT0S``."""
        days, rest = divmod(self.seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        out = "P" + (f"{days}D" if days else "")
        time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{seconds}S" if seconds else "")
        if time or not days:
            out += "T" + (time or "0S")
        return out

    @property
    def human(self) -> str:
        """Operator-facing text: ``1 h 30 min``, ``3 d``, ``45 s``."""
        days, rest = divmod(self.seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        parts = [f"{n} {u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")) if n]
        return " ".join(parts) or "0 s"

    def __str__(self) -> str:
        return self.iso
