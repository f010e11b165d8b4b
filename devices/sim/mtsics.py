"""A Mettler-Toledo balance speaking MT-SICS, for tests and demos.

Implements the commands the driver uses (``S SI SIR Z T TA TAC @ I2 I3
I4``) with the documented replies, including ``S I`` (busy, or no stability
within ``stability_timeout_s``), ``S +``/``S -`` (over/underload) and the
general errors ``ES`` (unknown command), ``ET`` (non-ASCII or over-long
command line) and ``EL`` (injected). Any command ends a running ``SIR``.
The reply format is written independently of the driver's parser on
purpose, so that one cannot hide the other's mistakes::

    S S     100.00 g      ID, status, weight right-aligned in 10, unit
"""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from devices.reading import ReadingStatus
from devices.sim.faults import ERROR_REPLIES, Fault, FaultPlan
from devices.sim.model import BalanceModel
from devices.sim.server import CRLF, MAX_COMMAND_BYTES, Session, SimulatorServer

__all__ = ["MtSicsSimulator"]

_TA_PRESET = re.compile(r"^TA +(?P<value>[+-]?\d+(?:\.\d+)?) +(?P<unit>\S+)$")
_WEIGHT_CODES = {
    ReadingStatus.OK: "S",
    ReadingStatus.DYNAMIC: "D",
    ReadingStatus.OVERLOAD: "+",
    ReadingStatus.UNDERLOAD: "-",
    ReadingStatus.BUSY: "I",
    ReadingStatus.FAULT: "I",
}
_OUTCOME_CODES = {"busy": "I", "unstable": "I", "above": "+", "below": "-"}


class MtSicsSimulator(SimulatorServer):
    """MT-SICS balance simulator (serve with ``start_pty()`` or ``start_tcp()``)."""

    protocol: ClassVar[str] = "mtsics"

    def __init__(
        self,
        balance: BalanceModel | None = None,
        *,
        baud: int = 9600,
        bits_per_char: float = 10,
        faults: FaultPlan | None = None,
        stability_timeout_s: float = 2.0,
        repeat_interval_s: float = 0.0,
        type_definition: str = "SIM.1.0.0",
        balance_data_fields: int = 1,
    ) -> None:
        super().__init__(balance, baud=baud, bits_per_char=bits_per_char, faults=faults)
        self.stability_timeout_s = stability_timeout_s
        self.repeat_interval_s = repeat_interval_s
        self.type_definition = type_definition
        if balance_data_fields not in (1, 2):
            raise ValueError("balance_data_fields is 1 (older models) or 2 (Excellence and later)")
        #: ``I2 A "<type> <capacity> <unit>"`` (1) or ``I2 A "<type>" "<capacity> <unit>"`` (2).
        self.balance_data_fields = balance_data_fields

    # ------------------------------------------------------------ replies
    def weight_line(self, reply_id: str = "S") -> bytes:
        """The weight reply for the balance as it is now."""
        snap = self.balance.snapshot()
        code = _WEIGHT_CODES[snap.status]
        if snap.net is None:
            return f"{reply_id} {code}".encode("ascii") + CRLF
        value = f"{snap.net:.{self.balance.decimals}f}"
        return f"{reply_id} {code} {value:>10} {snap.unit}".encode("ascii") + CRLF

    def _value_line(self, reply_id: str, code: str, value: Decimal) -> bytes:
        text = f"{value:.{self.balance.decimals}f}"
        return f"{reply_id} {code} {text:>10} {self.balance.unit}".encode("ascii") + CRLF

    async def _wait_stable(self) -> bool:
        """Wait (like the balance) until the load settles; False on time-out."""
        deadline = time.monotonic() + self.stability_timeout_s
        while self.balance.unstable and not self.balance.busy:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # ------------------------------------------------------------ protocol
    async def on_line(self, session: Session, line: bytes) -> None:
        """Answer one command line (any command first ends a running SIR)."""
        await self._stop_repeat(session)
        if len(line) > MAX_COMMAND_BYTES or not line.endswith(CRLF):
            await self.transmit(session, b"ET" + CRLF, self.faults.take(None))
            return
        try:
            command = line[:-2].decode("ascii").strip()
        except UnicodeDecodeError:
            await self.transmit(session, b"ET" + CRLF, self.faults.take(None))
            return
        self.stats.commands.append(command)
        name = command.split(" ", 1)[0]
        faults = self.faults.take(name)
        errors = [f for f in (Fault.ERROR_ES, Fault.ERROR_ET, Fault.ERROR_EL) if f in faults]
        if errors:
            await self.transmit(session, ERROR_REPLIES[errors[0]] + CRLF, faults)
            return
        if command == "SIR":
            session.state["repeat"] = session.spawn(self._repeat(session, faults))
            return
        reply = await self._execute(command)
        await self.transmit(session, reply, faults)

    async def _execute(self, command: str) -> bytes:
        balance = self.balance
        if command == "S":
            snap = balance.snapshot()
            if snap.status is ReadingStatus.DYNAMIC and not await self._wait_stable():
                return b"S I" + CRLF
            return self.weight_line("S")
        if command == "SI":
            return self.weight_line("S")
        if command in ("I4", "@"):
            if command == "@":
                balance.set_busy(False)
            return f'I4 A "{balance.serial_number}"'.encode("ascii") + CRLF
        if command == "I2":
            capacity = f"{balance.capacity:.{balance.decimals}f}"
            if self.balance_data_fields == 2:
                return f'I2 A "{balance.model}" "{capacity} {balance.unit}"'.encode("ascii") + CRLF
            return f'I2 A "{balance.model} {capacity} {balance.unit}"'.encode("ascii") + CRLF
        if command == "I3":
            return f'I3 A "{balance.firmware} {self.type_definition}"'.encode("ascii") + CRLF
        if command == "Z":
            outcome = balance.zero()
            if outcome == "unstable" and await self._wait_stable():
                outcome = balance.zero()
            if outcome == "ok":
                return b"Z A" + CRLF
            return f"Z {_OUTCOME_CODES[outcome]}".encode("ascii") + CRLF
        if command == "T":
            outcome, tare = balance.tare()
            if outcome == "unstable" and await self._wait_stable():
                outcome, tare = balance.tare()
            if outcome == "ok" and tare is not None:
                return self._value_line("T", "S", tare)
            return f"T {_OUTCOME_CODES[outcome]}".encode("ascii") + CRLF
        if command == "TA":
            if balance.busy:
                return b"TA I" + CRLF
            return self._value_line("TA", "A", balance.tare_value)
        if command.startswith("TA "):
            match = _TA_PRESET.match(command)
            if balance.busy:
                return b"TA I" + CRLF
            ok = False
            if match is not None and match["unit"] == balance.unit:
                try:
                    ok = balance.preset_tare(Decimal(match["value"]))
                except InvalidOperation:
                    ok = False
            if not ok:
                return b"TA L" + CRLF
            return self._value_line("TA", "A", balance.tare_value)
        if command == "TAC":
            if balance.busy:
                return b"TAC I" + CRLF
            balance.clear_tare()
            return b"TAC A" + CRLF
        return b"ES" + CRLF

    async def _repeat(self, session: Session, first_faults: frozenset[Fault]) -> None:
        """``SIR``: send the current weight continuously until another command."""
        faults = first_faults
        try:
            while session.is_open:
                await self.transmit(session, self.weight_line("S"), faults)
                if self.repeat_interval_s:
                    await asyncio.sleep(self.repeat_interval_s)
                faults = self.faults.take("SIR")
        except ConnectionError:
            return

    async def _stop_repeat(self, session: Session) -> None:
        task = session.state.pop("repeat", None)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
