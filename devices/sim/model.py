"""An in-memory weighing cell: the "physics" behind simulators and the virtual scale.

:class:`BalanceModel` holds the load on the pan, the zero point, the tare
memory and the conditions a test wants to provoke (motion, busy, fault).
It is thread-safe, so a test or a demo can drive it from any thread while a
simulator serves it from its event loop.

Rules, as on a real balance: ``gross = load - zero point``; ``net = gross -
tare``; overload when gross exceeds ``capacity``; underload when gross is
below ``underload_below`` (the pan lifted off); zeroing only within
``zero_range`` of the power-on zero, and it clears the tare; taring only
with ``0 <= gross <= capacity``. Displayed values are rounded half-up to
``decimals`` places.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from devices.reading import ReadingStatus

__all__ = ["BalanceModel", "BalanceSnapshot", "to_decimal"]

Outcome = Literal["ok", "busy", "above", "below", "unstable"]


def to_decimal(value: Decimal | int | str) -> Decimal:
    """Convert an exact quantity to Decimal; floats are refused on purpose."""
    if isinstance(value, (bool, float)):
        raise TypeError("quantities are Decimal, int or str, never float")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"not a finite quantity: {value!r}")
    return result


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    """What the display shows at one instant."""

    status: ReadingStatus
    net: Decimal | None
    unit: str
    tare: Decimal


class BalanceModel:
    """A simulated balance that tests can load, shake, overload and break."""

    def __init__(
        self,
        *,
        load: Decimal | int | str = 0,
        unit: str = "g",
        decimals: int = 2,
        capacity: Decimal | int | str = "220",
        underload_below: Decimal | int | str | None = None,
        zero_range: Decimal | int | str | None = None,
        noise: Decimal | int | str = 0,
        seed: int | None = 0,
        model: str = "SIM-220",
        serial_number: str = "0123456789",
        firmware: str = "1.0.0",
    ) -> None:
        self._lock = threading.RLock()
        self.unit = unit
        self.decimals = decimals
        self.capacity = to_decimal(capacity)
        self.underload_below = (
            to_decimal(underload_below) if underload_below is not None else -self.capacity / 20
        )
        self.zero_range = (
            to_decimal(zero_range) if zero_range is not None else self.capacity * Decimal("0.02")
        )
        self.model = model
        self.serial_number = serial_number
        self.firmware = firmware
        self._quantum = Decimal(1).scaleb(-decimals)
        self._load = to_decimal(load)
        self._zero = Decimal(0)
        self._tare = Decimal(0)
        self._noise = to_decimal(noise)
        self._random = random.Random(seed)
        self.unstable = False
        self.busy = False
        self.fault = False

    # ------------------------------------------------------------ driving it
    def set_weight(self, load: Decimal | int | str) -> None:
        """Put ``load`` (in the balance unit, before zero and tare) on the pan."""
        with self._lock:
            self._load = to_decimal(load)

    def set_unstable(self, on: bool = True, *, noise: Decimal | int | str | None = None) -> None:
        """Make the load move (dynamic readings), optionally with ±``noise``."""
        with self._lock:
            self.unstable = on
            if noise is not None:
                self._noise = to_decimal(noise)

    def set_busy(self, on: bool = True) -> None:
        """Make the balance answer 'busy' to weight, tare and zero requests."""
        with self._lock:
            self.busy = on

    def set_fault(self, on: bool = True) -> None:
        """Put the balance in a fault state (no valid readings)."""
        with self._lock:
            self.fault = on

    def set_overload(self) -> None:
        """Load the pan beyond capacity."""
        self.set_weight(self.capacity * 2 + 1)

    def set_underload(self) -> None:
        """Lift the pan off (load well below zero)."""
        self.set_weight(self.underload_below * 2 - 1)

    # --------------------------------------------------------------- reading
    @property
    def load(self) -> Decimal:
        """The load on the pan."""
        with self._lock:
            return self._load

    @property
    def tare_value(self) -> Decimal:
        """The tare memory, rounded to the display resolution."""
        with self._lock:
            return self._round(self._tare)

    def _round(self, value: Decimal) -> Decimal:
        return value.quantize(self._quantum, rounding=ROUND_HALF_UP)

    def _range_status(self) -> ReadingStatus | None:
        gross = self._load - self._zero
        if gross > self.capacity:
            return ReadingStatus.OVERLOAD
        if gross < self.underload_below:
            return ReadingStatus.UNDERLOAD
        return None

    def snapshot(self) -> BalanceSnapshot:
        """The display now: status and net value (None when there is no value)."""
        with self._lock:
            tare = self._round(self._tare)
            if self.fault:
                return BalanceSnapshot(ReadingStatus.FAULT, None, self.unit, tare)
            if self.busy:
                return BalanceSnapshot(ReadingStatus.BUSY, None, self.unit, tare)
            out_of_range = self._range_status()
            if out_of_range is not None:
                return BalanceSnapshot(out_of_range, None, self.unit, tare)
            net = self._load - self._zero - self._tare
            if self.unstable:
                if self._noise:
                    net += self._noise * Decimal(str(round(self._random.uniform(-1, 1), 6)))
                return BalanceSnapshot(ReadingStatus.DYNAMIC, self._round(net), self.unit, tare)
            return BalanceSnapshot(ReadingStatus.OK, self._round(net), self.unit, tare)

    # -------------------------------------------------------------- commands
    def zero(self) -> Outcome:
        """Zero the balance (clears the tare). Outcome: ok, busy, unstable, above, below."""
        with self._lock:
            if self.busy or self.fault:
                return "busy"
            if self.unstable:
                return "unstable"
            if self._load > self.zero_range:
                return "above"
            if self._load < -self.zero_range:
                return "below"
            self._zero = self._load
            self._tare = Decimal(0)
            return "ok"

    def tare(self) -> tuple[Outcome, Decimal | None]:
        """Tare the current gross load; return the outcome and the stored tare."""
        with self._lock:
            if self.busy or self.fault:
                return "busy", None
            if self.unstable:
                return "unstable", None
            gross = self._load - self._zero
            if gross > self.capacity:
                return "above", None
            if gross < 0:
                return "below", None
            self._tare = self._round(gross)
            return "ok", self._tare

    def preset_tare(self, value: Decimal | int | str) -> bool:
        """Set the tare memory; False when the value is outside 0..capacity."""
        value = to_decimal(value)
        with self._lock:
            if value < 0 or value > self.capacity:
                return False
            self._tare = self._round(value)
            return True

    def clear_tare(self) -> None:
        """Clear the tare memory."""
        with self._lock:
            self._tare = Decimal(0)
