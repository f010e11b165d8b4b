"""An A&D balance in stream mode (A&D standard format), for tests and demos.

Sends the displayed value continuously, ``rate_hz`` frames per second
(10 Hz like the balance display; 0 = back to back at the line rate), as::

    ST,+00123.45  g     stable          US,+00123.45  g     in motion
    OL,+9999999E+19     overload        OL,-9999999E+19     underload

Busy shows as ``US`` (motion) with the last value; in the fault state the
balance sends nothing. Commands from the computer are logged and ignored.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import ClassVar

from devices.reading import ReadingStatus
from devices.sim.faults import FaultPlan
from devices.sim.model import BalanceModel
from devices.sim.server import CRLF, Session, SimulatorServer

__all__ = ["AandDSimulator"]

#: Canonical unit → A&D's 3-character unit field.
_UNIT_FIELD = {
    "g": "  g", "kg": " kg", "pcs": " PC", "%": "  %", "oz": " oz", "lb": " lb", "ozt": "ozt",
    "ct": " ct", "mom": "mom", "dwt": "dwt", "gr": " GN", "N": "  N", "tael": " tl", "tola": "  t",
}


class AandDSimulator(SimulatorServer):
    """A&D stream-mode balance simulator."""

    protocol: ClassVar[str] = "aandd"

    def __init__(
        self,
        balance: BalanceModel | None = None,
        *,
        baud: int = 2400,
        bits_per_char: float = 10,
        faults: FaultPlan | None = None,
        rate_hz: float = 10.0,
    ) -> None:
        super().__init__(balance, baud=baud, bits_per_char=bits_per_char, faults=faults)
        if rate_hz < 0:
            raise ValueError("rate_hz must be >= 0")
        self.rate_hz = rate_hz
        self._last_value: Decimal = Decimal(0)

    def frame(self) -> bytes | None:
        """The frame for the display as it is now (None in the fault state)."""
        snap = self.balance.snapshot()
        if snap.status is ReadingStatus.FAULT:
            return None
        if snap.status is ReadingStatus.OVERLOAD:
            return b"OL,+9999999E+19" + CRLF
        if snap.status is ReadingStatus.UNDERLOAD:
            return b"OL,-9999999E+19" + CRLF
        value = snap.net if snap.net is not None else self._last_value
        self._last_value = value
        header = "ST" if snap.status is ReadingStatus.OK else "US"
        sign = "-" if value < 0 else "+"
        digits = f"{abs(value):0{8}.{self.balance.decimals}f}"
        unit = _UNIT_FIELD.get(snap.unit, snap.unit[:3].rjust(3))
        return f"{header},{sign}{digits}{unit}".encode("ascii") + CRLF

    async def on_session(self, session: Session) -> None:
        """Stream frames to this client at ``rate_hz`` until it goes away."""
        period = 1.0 / self.rate_hz if self.rate_hz else 0.0
        next_at = time.monotonic()
        try:
            while session.is_open:
                frame = self.frame()
                if frame is not None:
                    await self.transmit(session, frame, self.faults.take(None))
                if period:
                    # Like a display refresh: if late, carry on from now, never burst.
                    next_at = max(next_at + period, time.monotonic())
                    await asyncio.sleep(next_at - time.monotonic())
                elif frame is None:
                    await asyncio.sleep(0.01)
        except ConnectionError:
            return

    async def on_line(self, session: Session, line: bytes) -> None:
        """Log commands and ignore them: stream mode only talks."""
        self.stats.commands.append(line.decode("latin-1").rstrip("\r\n"))
