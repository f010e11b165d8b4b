"""Material quantities: exact Decimals with an explicit unit, and how they are stored.

Units are the plant's material units only: mass (mg, g, kg), volume (mL, L) and count
(pcs). Converting between units of one dimension multiplies or divides by a power of ten,
so it is exact; converting across dimensions is refused, never guessed.

Stored quantities are :class:`Quantity` columns: ``NUMERIC(18, 6)`` on PostgreSQL and a
64-bit integer count of millionths on SQLite (whose NUMERIC would go through binary
floating point). Either way a value is a :class:`~decimal.Decimal` with six places in
Python, and a value that needs a seventh place is refused, not rounded. Container stock
is kept in the dimension's *storage unit* (g, mL, pcs) so that anything weighed to 1 µg
or measured to 1 µL fits exactly, whatever unit the container is labelled in.

In audit entries and events a quantity is ``{"value": "12.50", "uom": "kg"}``: a decimal
string with its unit beside it, never a float.
"""

from __future__ import annotations

from decimal import Decimal, Inexact, InvalidOperation, localcontext
from typing import Any, Final

from sqlalchemy import BigInteger, Numeric
from sqlalchemy.types import TypeDecorator

SCALE: Final = 6
QUANTUM: Final = Decimal(1).scaleb(-SCALE)
LIMIT: Final = Decimal(10) ** (18 - SCALE)

# unit -> (dimension, factor to the dimension's storage unit)
UNITS: Final[dict[str, tuple[str, Decimal]]] = {
    "mg": ("mass", Decimal("0.001")),
    "g": ("mass", Decimal(1)),
    "kg": ("mass", Decimal(1000)),
    "mL": ("volume", Decimal(1)),
    "L": ("volume", Decimal(1000)),
    "pcs": ("count", Decimal(1)),
}
STORAGE_UNIT: Final[dict[str, str]] = {"mass": "g", "volume": "mL", "count": "pcs"}


class QuantityError(ValueError):
    """An unknown unit, a conversion across dimensions, or a value that cannot be kept exactly."""


def dimension(unit: str) -> str:
    try:
        return UNITS[unit][0]
    except (KeyError, TypeError):
        raise QuantityError(f"{unit!r} is not a material unit (use one of {', '.join(UNITS)})") from None


def storage_unit(unit: str) -> str:
    """The unit stock of ``unit``'s dimension is kept in (g, mL or pcs)."""
    return STORAGE_UNIT[dimension(unit)]


def parse(value: Any) -> Decimal:
    """A finite Decimal from a Decimal, int or decimal string; floats are refused."""
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


def convert(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    """``value`` in ``from_unit`` expressed in ``to_unit``, exactly."""
    d_from, f_from = UNITS.get(from_unit, (None, None))
    d_to, f_to = UNITS.get(to_unit, (None, None))
    if d_from is None:
        dimension(from_unit)
    if d_to is None:
        dimension(to_unit)
    if d_from != d_to:
        raise QuantityError(f"{from_unit} ({d_from}) cannot be converted to {to_unit} ({d_to})")
    if from_unit == to_unit:
        return value
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.traps[Inexact] = True
        return value * f_from / f_to  # type: ignore[operator]


def storable(value: Decimal, unit: str) -> Decimal:
    """``value`` checked to fit a Quantity column exactly (six places, below 10^12)."""
    fitted = value.quantize(QUANTUM)
    if fitted != value:
        raise QuantityError(f"{fmt(value)} {unit} needs more than {SCALE} decimal places in {unit}")
    if abs(fitted) >= LIMIT:
        raise QuantityError(f"{fmt(value)} {unit} is too large")
    return fitted


def to_storage(value: Decimal, unit: str) -> tuple[Decimal, str]:
    """``value`` in ``unit`` converted to the storage unit, checked to fit exactly."""
    target = storage_unit(unit)
    return storable(convert(value, unit, target), target), target


def fmt(value: Decimal, *, keep_places: bool = False) -> str:
    """A decimal string without exponent; trailing zeros dropped unless ``keep_places``."""
    if not keep_places:
        value = value.normalize()
        if value == 0:
            value = Decimal(0)
    return format(value, "f")


def as_json(value: Decimal, uom: str, *, keep_places: bool = False) -> dict[str, str]:
    """``{"value": "12.50", "uom": "kg"}``."""
    return {"value": fmt(value, keep_places=keep_places), "uom": uom}


def text(value: Decimal, uom: str) -> str:
    """``12.5 kg`` for people."""
    return f"{fmt(value)} {uom}"


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
        fitted = storable(parse(value), "")
        if dialect.name == "sqlite":
            return int(fitted.scaleb(SCALE))
        return fitted

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return result_converter(dialect.name)(value)
