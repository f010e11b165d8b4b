"""The one quantity model: exact Decimals with a unit beside them, as written, and stored.

Values. A quantity is a :class:`~decimal.Decimal` with an explicit unit, never a float.
The digits written after the decimal point are its *precision* and are kept
(``Decimal("12.500")`` keeps its exponent): :func:`parse_decimal` reads recipe text,
:func:`parse_quantity` reads API input (a Decimal, an int or a decimal string),
:func:`to_text` writes a value exactly as it is held and :func:`fmt` writes the short form
used in audit entries and events (trailing zeros dropped unless ``keep_places``). Those two
writers are canonical: the audit log's decimal strings must never change.

Units. A unit is its symbol, case-sensitive, exactly as written (``mL``, ``°C``,
``mPa·s``). The units are not a table in this file: they are read once, at start, by pint
(a well-kept units library) from the shipped definitions file ``mes/units.txt`` and, when
the ``MES_UNITS_FILE`` setting names one, from the plant's own file on top of it, so a
plant adds a unit (``bar``, ``CFU``, a box of 12 pieces) without code (docs/units.md).
:data:`UNITS` lists them in the file's order (the published recipe schema's enum); the
plant's material units (:data:`MATERIAL_UNITS`) are those of mass, volume and count. Names
and aliases in the file are "did you mean" hints only (:func:`suggest_unit`).

Conversion. :func:`convert` is exact: pint converts with fractions
(``non_int_type=Fraction``), never through a float, offset scales (°C, °F) included. The
written resolution moves with the unit when the factor is a power of ten (``"0.600"`` kg
-> ``"600"`` g, ``"600.0"`` g -> ``"0.6000"`` kg) and is kept otherwise (``"1.5"`` min ->
``"90.0"`` s). A conversion whose result is not a terminating decimal (1 s in min = 1/60)
is refused with :class:`UnitError`, never rounded; so is one across dimensions (kg to L),
with a sentence naming both. Rounding happens in one place, :func:`round_half_even`,
computed on exact fractions so there is no double rounding.

Storage. Stored quantities are :class:`Quantity` columns: ``NUMERIC(18, 6)`` on PostgreSQL
and a 64-bit integer count of millionths on SQLite (whose NUMERIC would go through binary
floating point). Either way a value is a Decimal with six places in Python, and a value
that needs a seventh place is refused (:func:`storable`), not rounded. Material stock is
kept in the dimension's storage unit (g, mL, pcs), so anything weighed to 1 µg or measured
to 1 µL fits exactly whatever unit the container is labelled in. In audit entries and
events a quantity is ``{"value": "12.50", "uom": "kg"}`` (:func:`as_json`).

Durations (timer steps, hold times, clean-hold limits) are ISO 8601 durations restricted to
days, hours, minutes and whole seconds (``PT30M``, ``PT1H30M``, ``P3D``); a day is exactly
24 h. Years, months and weeks are refused because their length is ambiguous.

Decimals keep their places as written in the database too: :func:`written` pairs a
:class:`Quantity` column with a places column, and :func:`with_places` shows a stored value
with the places it was written with (``45.00`` stays ``45.00``).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import pint
from sqlalchemy import BigInteger, Numeric, text
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.types import TypeDecorator

__all__ = [
    "DECIMAL_PATTERN",
    "DEFAULT_UNITS_FILE",
    "DURATION_PATTERN",
    "LIMIT",
    "MATERIAL_UNITS",
    "PLACES_DEFAULT",
    "QUANTUM",
    "SCALE",
    "SIGNED_DECIMAL_PATTERN",
    "STORAGE_UNIT",
    "UNITS",
    "Duration",
    "Quantity",
    "QuantityError",
    "REGISTRY",
    "UnitError",
    "Units",
    "as_json",
    "convert",
    "decimal_places",
    "dimension",
    "exact_decimal",
    "fmt",
    "material_dimension",
    "parse_decimal",
    "parse_quantity",
    "result_converter",
    "round_half_even",
    "same_dimension",
    "storable",
    "storage_unit",
    "suggest_unit",
    "to_storage",
    "to_text",
    "to_text_or_none",
    "with_places",
    "with_unit",
    "written",
]


class QuantityError(ValueError):
    """A value that is not a finite decimal, or one that cannot be kept exactly."""


class UnitError(QuantityError):
    """An unknown unit, a conversion between different dimensions, or an inexact one."""


class Units:
    """The plant's units: a pint registry read from the shipped ``units.txt`` and, when the
    ``MES_UNITS_FILE`` setting names one, the plant's own definitions on top of it.

    pint parses the definitions, knows each unit's dimension and converts; it is built with
    exact fractions (``non_int_type=Fraction``), so no conversion goes through a float.
    What this class adds is the plant's spelling: a unit is its symbol, exactly as written
    (``mL``, ``°C``, ``mPa·s``); names and aliases in the file are only "did you mean" hints.
    """

    def __init__(self, *files: Path) -> None:
        try:
            registry = pint.UnitRegistry(str(files[0]), non_int_type=Fraction, cache_folder=None,
                                         autoconvert_offset_to_baseunit=False)
            for extra in files[1:]:
                registry.load_definitions(str(extra))
            self._build(registry, files)
        except (OSError, pint.errors.PintError, ValueError) as exc:
            raise UnitError(f"the units file cannot be read ({', '.join(str(f) for f in files)}): {exc}") from None

    def _build(self, registry: Any, files: tuple[Path, ...]) -> None:
        self.registry = registry
        self.files = files
        dimensions = registry._dimensions  # pint keeps no public list of named dimensions
        self._dimension_names = {registry.get_dimensionality(d): d.strip("[]").replace("_", " ") for d in dimensions}
        self.names: dict[str, str] = {}  # symbol -> pint name, in file order
        self.offset: set[str] = set()
        hints: dict[str, str] = {}
        for definition in dict.fromkeys(registry._units.values()):  # each unit once, in file order
            name, symbol = definition.name, definition.symbol
            if name.startswith("delta_") or not symbol:
                continue
            self.names[symbol] = name
            if not definition.is_multiplicative:
                self.offset.add(symbol)
            for spelling in (name, symbol, *definition.aliases):
                hints.setdefault(_hint_key(spelling), symbol)
        self.hints = hints
        self.table = {u: (self._dimension_of(n), self._factor(n)) for u, n in self.names.items()}

    def _dimension_of(self, name: str) -> str:
        dims = self.registry.get_dimensionality(name)
        if not dims:
            return "ratio"
        return self._dimension_names.get(dims) or " ".join(f"{k.strip('[]')}^{v}" for k, v in dims.items())

    def _factor(self, name: str) -> Fraction:
        """How many of the dimension's base units one ``name`` is (its scale, for offset units)."""
        base = self.registry.get_base_units(name)[1]
        return Fraction(self.registry.convert(Fraction(1), name, base)) - Fraction(self.registry.convert(Fraction(0), name, base))

    def convert(self, value: Fraction, from_unit: str, to_unit: str) -> Fraction:
        """``value`` ``from_unit`` in ``to_unit``, exactly (pint, with fractions)."""
        return Fraction(self.registry.convert(value, self.names[from_unit], self.names[to_unit]))


def _hint_key(text: str) -> str:
    """How a typed spelling is compared with the known ones: case, spaces, dots and middle dots ignored."""
    return re.sub(r"[\s.·_]", "", text.strip().lower())


def _units_files() -> tuple[Path, ...]:
    """The shipped units file, then the plant's (``MES_UNITS_FILE``), if set."""
    plant = os.environ.get("MES_UNITS_FILE", "").strip()
    return (DEFAULT_UNITS_FILE, Path(plant)) if plant else (DEFAULT_UNITS_FILE,)


DEFAULT_UNITS_FILE: Final = Path(__file__).with_name("units.txt")
"""The units the MES ships (pint's definition format); a plant adds its own with ``MES_UNITS_FILE``."""

REGISTRY: Final = Units(*_units_files())
"""The plant's units, loaded once at start."""

#: unit -> (dimension, factor to the dimension's base unit), in the units file's order (the
#: recipe schema's enum, recipes/master-recipe.schema.json, is generated from it).
UNITS: Final[dict[str, tuple[str, Fraction]]] = REGISTRY.table

#: Material stock is kept in these units, one per dimension a material is counted in.
STORAGE_UNIT: Final[dict[str, str]] = {"mass": "g", "volume": "mL", "count": "pcs"}

#: The units a material (item, container, consumption) may be counted in.
MATERIAL_UNITS: Final[tuple[str, ...]] = tuple(u for u, (dim, _) in UNITS.items() if dim in STORAGE_UNIT)

DECIMAL_PATTERN: Final = r"^[0-9]{1,15}(\.[0-9]{1,9})?$"
"""A non-negative decimal quantity as written in a recipe: no sign, exponent or separators."""

SIGNED_DECIMAL_PATTERN: Final = r"^-?[0-9]{1,15}(\.[0-9]{1,9})?$"
"""A decimal that may be negative (limits of numeric entries, e.g. a temperature)."""

DURATION_PATTERN: Final = r"^P(?=[0-9T])([0-9]{1,4}D)?(T(?=[0-9])([0-9]{1,5}H)?([0-9]{1,6}M)?([0-9]{1,7}S)?)?$"
"""The ISO 8601 duration subset recipes accept: ``PnDTnHnMnS``, whole numbers, any part optional."""

_DECIMAL_RE = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,9})?")
_DURATION_RE = re.compile(r"P(?=[0-9T])(?:([0-9]{1,4})D)?(?:T(?=[0-9])(?:([0-9]{1,5})H)?(?:([0-9]{1,6})M)?(?:([0-9]{1,7})S)?)?")

SCALE: Final = 6
"""Decimal places a stored quantity keeps."""
QUANTUM: Final = Decimal(1).scaleb(-SCALE)
LIMIT: Final = Decimal(10) ** (18 - SCALE)
"""Stored quantities are below this in absolute value (NUMERIC(18, 6))."""


# ---------------------------------------------------------------------------- units


def dimension(unit: str) -> str:
    """The dimension of ``unit`` (``"mass"``, ``"volume"``, ...); UnitError if unknown."""
    try:
        return UNITS[unit][0]
    except (KeyError, TypeError):
        raise UnitError(_unknown(unit)) from None


def same_dimension(a: str, b: str) -> bool:
    """Whether quantities in ``a`` and ``b`` can be converted into each other."""
    return dimension(a) == dimension(b)


def material_dimension(unit: str) -> str:
    """The dimension of a material unit (mass, volume or count); UnitError for any other unit."""
    if not isinstance(unit, str) or unit not in MATERIAL_UNITS:
        raise UnitError(f"{unit!r} is not a material unit (use one of {', '.join(MATERIAL_UNITS)})")
    return UNITS[unit][0]


def storage_unit(unit: str) -> str:
    """The unit stock of ``unit``'s dimension is kept in (g, mL or pcs)."""
    return STORAGE_UNIT[material_dimension(unit)]


def suggest_unit(text: str) -> str | None:
    """The unit the author probably meant by ``text`` (a name or alias in the units file, the
    symbol in another case, or a close spelling), or None."""
    if not isinstance(text, str):
        return None
    hint = REGISTRY.hints.get(_hint_key(text))
    if hint is not None:
        return hint
    close = difflib.get_close_matches(text.strip(), list(UNITS), n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown(unit: object) -> str:
    hint = suggest_unit(unit) if isinstance(unit, str) else None
    message = f"{unit!r} is not a known unit"
    if hint:
        message += f" (did you mean {hint!r}?)"
    return message + "; known units: " + ", ".join(UNITS)


# ------------------------------------------------------------------- reading values


def parse_decimal(text: str, *, signed: bool = False) -> Decimal:
    """A recipe decimal from its text, keeping the written decimals; ValueError otherwise.

    Only plain digits with an optional decimal point (and a leading ``-`` when ``signed``)
    are accepted: no exponent, no thousands separators, no ``NaN``/``Infinity``.
    """
    if not isinstance(text, str) or not _DECIMAL_RE.fullmatch(text) or (text.startswith("-") and not signed):
        raise ValueError(f"{text!r} is not a decimal quantity")
    return Decimal(text)


def parse_quantity(value: Any) -> Decimal:
    """A finite Decimal from a Decimal, int or decimal string (API input); floats are refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise QuantityError("quantities are decimal strings or Decimals, never floats")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise QuantityError(f"{value!r} is not a decimal number") from None
    if not isinstance(value, Decimal) or not value.is_finite():
        raise QuantityError(f"{value!r} is not a finite decimal number")
    return value


def decimal_places(value: Decimal) -> int:
    """The number of digits written after the decimal point (``Decimal("12.500")`` -> 3)."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"{value!r} is not finite")
    return max(0, -exponent)


# ------------------------------------------------------------------- writing values


def to_text(value: Decimal) -> str:
    """``value`` as plain decimal text without exponent notation, keeping its decimals."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise TypeError(f"expected a finite Decimal, got {value!r}")
    text = format(value, "f")
    return "0" + text[2:] if text.startswith("-0") and value == 0 else text


def to_text_or_none(value: Decimal | None) -> str | None:
    """:func:`to_text` of ``value``, or None (a record without a value)."""
    return None if value is None else to_text(value)


def fmt(value: Decimal, *, keep_places: bool = False) -> str:
    """A decimal string without exponent; trailing zeros dropped unless ``keep_places``."""
    if not keep_places:
        value = value.normalize()
        if value == 0:
            value = Decimal(0)
    return format(value, "f")


def as_json(value: Decimal, uom: str, *, keep_places: bool = False) -> dict[str, str]:
    """``{"value": "12.50", "uom": "kg"}``: the form of a quantity in audit entries and events."""
    return {"value": fmt(value, keep_places=keep_places), "uom": uom}


def with_unit(value: Decimal, uom: str) -> str:
    """``12.5 kg`` for people."""
    return f"{fmt(value)} {uom}"


# ---------------------------------------------------------------- exact arithmetic


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
    Raises UnitError for an unknown unit, different dimensions or a result that is not a
    terminating decimal (it is refused, never rounded). pint converts, with fractions.
    """
    if dimension(from_unit) != dimension(to_unit):
        raise UnitError(f"cannot convert {from_unit} to {to_unit}: {from_unit} measures {dimension(from_unit)}, "
                        f"{to_unit} measures {dimension(to_unit)}")
    if from_unit == to_unit:
        return value
    exact = exact_decimal(REGISTRY.convert(Fraction(value), from_unit, to_unit))
    if exact is None:
        raise UnitError(f"{to_text(value)} {from_unit} is not an exact decimal number of {to_unit}")
    linear = from_unit not in REGISTRY.offset and to_unit not in REGISTRY.offset
    shift = (_shift(UNITS[from_unit][1] / UNITS[to_unit][1]) if linear else None) or 0
    wanted = min(0, -decimal_places(value) + shift)
    if decimal_places(exact) <= -wanted:
        return _from_units(int(Fraction(exact) * 10**-wanted), -wanted)
    return exact


# --------------------------------------------------------------------------- storage


def storable(value: Decimal, unit: str) -> Decimal:
    """``value`` checked to fit a Quantity column exactly (six places, below 10^12)."""
    fitted = value.quantize(QUANTUM)
    if fitted != value:
        raise QuantityError(f"{fmt(value)} {unit} needs more than {SCALE} decimal places in {unit}")
    if abs(fitted) >= LIMIT:
        raise QuantityError(f"{fmt(value)} {unit} is too large")
    return fitted


def to_storage(value: Decimal, unit: str) -> tuple[Decimal, str]:
    """``value`` in material unit ``unit`` converted to the storage unit, checked to fit exactly."""
    target = storage_unit(unit)
    return storable(convert(value, unit, target), target), target


def _from_sqlite(value: Any) -> Decimal | None:
    return None if value is None else Decimal(int(value)).scaleb(-SCALE)


def _from_numeric(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value).quantize(QUANTUM)


def result_converter(dialect_name: str) -> Any:
    """How a stored quantity read without its column type (raw SQL) becomes a Decimal."""
    return _from_sqlite if dialect_name == "sqlite" else _from_numeric


class Quantity(TypeDecorator[Decimal]):
    """An exact quantity column: NUMERIC(18, 6) on PostgreSQL, integer millionths on SQLite."""

    impl = Numeric(18, SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(18, SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        fitted = storable(parse_quantity(value), "")
        if dialect.name == "sqlite":
            return int(fitted.scaleb(SCALE))
        return fitted

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return result_converter(dialect.name)(value)


def with_places(value: Decimal, places: int) -> Decimal:
    """``value`` written with at least ``places`` decimals and no more than it needs:
    ``with_places(Decimal("45.000000"), 2)`` is ``45.00``. Never rounds (an exact value
    with more places keeps them)."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise TypeError(f"expected a finite Decimal, got {value!r}")
    if value == 0:
        value = Decimal(0)
    least = value.normalize()
    if decimal_places(least) == 0:
        least = least.quantize(Decimal(1))  # 5E+4 -> 50000
    return least if decimal_places(least) >= places else least.quantize(Decimal(1).scaleb(-places))


PLACES_DEFAULT: Final = text("0")
"""Server default of a places column: a row written without it (bulk loads, raw SQL) shows
its value with the fewest places that keep it exact, never rounded."""


def written(column: str, places: str) -> Any:
    """A model attribute for a decimal kept with its places as written, in two columns: the
    value in a :class:`Quantity` column (exact, comparable and summable in SQL on both
    databases) and the number of decimals written in a small integer column.

    Reading gives the value with exactly the places written (``Decimal("45.00")`` stays
    ``45.00``, not ``45`` nor ``45.000000``); setting stores both columns; in a query the
    attribute is the value column. ``column`` and ``places`` name the mapped attributes.
    """

    def fget(self: Any) -> Decimal | None:
        value = getattr(self, column)
        if value is None:
            return None
        return with_places(Decimal(value), getattr(self, places) or 0)

    def fset(self: Any, value: Any) -> None:
        if value is None:
            setattr(self, column, None)
            setattr(self, places, None)
            return
        amount = parse_quantity(value)
        setattr(self, column, amount)
        setattr(self, places, decimal_places(amount))

    def expr(cls: Any) -> Any:
        return getattr(cls, column)

    return hybrid_property(fget, fset, expr=expr)


# ------------------------------------------------------------------------- durations


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
