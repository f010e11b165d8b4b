"""Value types shared by all drivers: readings, weights, device identity.

A :class:`Reading` is what a scale delivered at one instant, exactly as the
batch record needs it: the value as :class:`~decimal.Decimal` (never float),
its unit, the stability flag and status, the raw bytes as received, the UTC
wall-clock time and the monotonic time of receipt, the device id and a
per-driver sequence number. Readings validate themselves on construction, so
an inconsistent reading cannot exist.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

__all__ = [
    "CANONICAL_UNITS",
    "DeviceIdentity",
    "Reading",
    "ReadingStatus",
    "Sample",
    "Weight",
]

#: Units drivers normalise to. A driver passes an unknown device unit through
#: unchanged (stripped) rather than guess; these are the names MES code can
#: rely on. A bare ``t`` is deliberately absent: Mettler-Toledo lab balances
#: use it for the tola, industrial terminals for the tonne, so drivers map it
#: only where the family is unambiguous.
CANONICAL_UNITS: frozenset[str] = frozenset(
    {
        "mg", "g", "kg", "ct", "lb", "oz", "ozt", "dwt", "gr", "mom",
        "tola", "tael", "N", "pcs", "%",
    }
)


class ReadingStatus(str, enum.Enum):
    """What the device said about the load at the time of the reading."""

    OK = "ok"  #: stable, valid value
    DYNAMIC = "dynamic"  #: value valid but the load is still moving
    OVERLOAD = "overload"  #: above the weighing range; no value
    UNDERLOAD = "underload"  #: below the weighing range (pan removed?); no value
    BUSY = "busy"  #: device busy (taring, stability timeout); no value
    FAULT = "fault"  #: device reports a fault in-band; no value


#: Statuses that carry a value.
_VALUE_STATUSES = frozenset({ReadingStatus.OK, ReadingStatus.DYNAMIC})


def _check_decimal(value: object, what: str) -> Decimal:
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Weight:
    """A quantity with an explicit unit, e.g. a tare weight."""

    value: Decimal
    unit: str

    def __post_init__(self) -> None:
        _check_decimal(self.value, "Weight.value")
        if not isinstance(self.unit, str) or not self.unit.strip():
            raise ValueError("Weight.unit must be a non-empty string")

    def __str__(self) -> str:
        return f"{self.value} {self.unit}"


@dataclass(frozen=True, slots=True)
class Sample:
    """What a driver's ``_parse`` hook makes of one frame (no timing yet)."""

    status: ReadingStatus
    value: Decimal | None
    unit: str

    def __post_init__(self) -> None:
        if not isinstance(self.status, ReadingStatus):
            raise TypeError("Sample.status must be a ReadingStatus")
        if self.status in _VALUE_STATUSES:
            if self.value is None:
                raise ValueError(f"a {self.status.value} sample needs a value")
            _check_decimal(self.value, "Sample.value")
            if not isinstance(self.unit, str) or not self.unit.strip():
                raise ValueError("a sample with a value needs a unit")
        elif self.value is not None:
            raise ValueError(f"a {self.status.value} sample carries no value")
        if not isinstance(self.unit, str):
            raise TypeError("Sample.unit must be a string")

    @property
    def stable(self) -> bool:
        """True only for a stable, valid value (status ``ok``)."""
        return self.status is ReadingStatus.OK


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading from one device, immutable and self-validating.

    ``value`` is ``None`` exactly when ``status`` is overload, underload, busy
    or fault; ``stable`` is true exactly when ``status`` is ok. ``unit`` may be
    empty only when there is no value (the device reported none).
    """

    device_id: str
    sequence: int
    status: ReadingStatus
    value: Decimal | None
    unit: str
    stable: bool
    raw: bytes
    timestamp: datetime
    monotonic: float

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not self.device_id:
            raise ValueError("Reading.device_id must be a non-empty string")
        if not isinstance(self.sequence, int) or isinstance(self.sequence, bool) or self.sequence < 1:
            raise ValueError("Reading.sequence must be an int >= 1")
        # Re-use the sample rules for status/value/unit consistency.
        Sample(self.status, self.value, self.unit)
        if self.stable is not (self.status is ReadingStatus.OK):
            raise ValueError("Reading.stable must be True exactly when status is ok")
        if not isinstance(self.raw, bytes):
            raise TypeError("Reading.raw must be bytes")
        if not isinstance(self.timestamp, datetime):
            raise TypeError("Reading.timestamp must be a datetime")
        if self.timestamp.utcoffset() != timedelta(0):
            raise ValueError("Reading.timestamp must be timezone-aware UTC")
        if not isinstance(self.monotonic, float) or not math.isfinite(self.monotonic):
            raise ValueError("Reading.monotonic must be a finite float (time.monotonic())")

    @property
    def weight(self) -> Weight | None:
        """The value with its unit, or ``None`` when the device gave no value."""
        return None if self.value is None else Weight(self.value, self.unit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: Decimal as string, raw bytes as latin-1 text, ISO time."""
        return {
            "device_id": self.device_id,
            "sequence": self.sequence,
            "status": self.status.value,
            "value": None if self.value is None else str(self.value),
            "unit": self.unit,
            "stable": self.stable,
            "raw": self.raw.decode("latin-1"),
            "timestamp": self.timestamp.isoformat(),
            "monotonic": self.monotonic,
        }


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who the device says it is (or, for output-only devices, what config says).

    Fields a device does not report are ``"unknown"``; ``details`` holds any
    further strings the device gave (capacity, type definition number ...).
    """

    make: str
    model: str
    serial_number: str
    firmware: str
    details: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("make", "model", "serial_number", "firmware"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"DeviceIdentity.{name} must be a non-empty string")
