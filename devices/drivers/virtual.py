"""An in-memory scale for tests of other code (gateway, kiosk, recipes).

No link, no threads: the driver reads a :class:`~devices.sim.model.BalanceModel`
that the test drives (``scale.balance.set_weight("12.5")``,
``set_unstable()``, ``set_overload()``, ``set_busy()``, ``set_fault()``).
:meth:`VirtualScale.fail_next` makes the next operation raise a chosen
:class:`~devices.errors.DeviceError`; :meth:`VirtualScale.drop_link`
simulates a lost connection until the next ``connect()``.

Frames are ASCII ``<status> [<value> <unit>]`` CR LF, e.g.
``b"ok 12.50 g\\r\\n"`` or ``b"overload\\r\\n"``, so readings carry real raw
bytes like those of a physical device.
"""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from typing import Any, ClassVar

from devices.base import Capability, Driver, Frame
from devices.errors import DeviceBusy, DeviceError, DeviceFault, DeviceUnavailable, ProtocolError
from devices.reading import DeviceIdentity, ReadingStatus, Sample, Weight
from devices.sim.model import BalanceModel

__all__ = ["VirtualScale"]

_DECIMAL = r"^[+-]?\d+(\.\d+)?$"
_FRAME_RE = re.compile(r"^(?P<status>[a-z]+)(?: (?P<value>[+-]?\d+(?:\.\d+)?) (?P<unit>\S+))?\r\n$")


class VirtualScale(Driver):
    """A scale that lives in memory; every capability, no hardware."""

    name: ClassVar[str] = "virtual"
    make: ClassVar[str] = "open-mes"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    config_schema: ClassVar[dict[str, Any]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Virtual scale (in memory)",
        "type": "object",
        "properties": {
            "weight": {"type": "string", "pattern": _DECIMAL, "default": "0"},
            "unit": {"type": "string", "minLength": 1, "default": "g"},
            "decimals": {"type": "integer", "minimum": 0, "maximum": 6, "default": 2},
            "capacity": {"type": "string", "pattern": _DECIMAL, "default": "220"},
            "interval_s": {
                "type": "number",
                "minimum": 0,
                "maximum": 60,
                "default": 0.1,
                "description": "time between streamed readings",
            },
            "stability_timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
            "stable_timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 10.0},
            "model": {"type": "string", "minLength": 1, "default": "VIRTUAL-220"},
            "serial_number": {"type": "string", "minLength": 1, "default": "VIRT-0001"},
        },
        "additionalProperties": False,
    }
    example_config: ClassVar[dict[str, Any]] = {"weight": "12.50", "unit": "g", "interval_s": 0.05}

    def __init__(self, device_id: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        cfg = self.config
        self.balance = BalanceModel(
            load=cfg["weight"],
            unit=cfg["unit"],
            decimals=cfg["decimals"],
            capacity=cfg["capacity"],
            model=cfg["model"],
            serial_number=cfg["serial_number"],
        )
        self._link_up = False
        self._fail_next: DeviceError | None = None
        self._streamed_once = False

    # ------------------------------------------------------------ test hooks
    def fail_next(self, error: DeviceError) -> None:
        """Make the next operation (read, tare, ...) raise ``error``."""
        self._fail_next = error

    def drop_link(self) -> None:
        """Simulate a lost connection: operations raise DeviceUnavailable."""
        self._link_up = False

    def _check(self) -> None:
        if not self._link_up:
            raise DeviceUnavailable("virtual link dropped")
        if self._fail_next is not None:
            error, self._fail_next = self._fail_next, None
            raise error

    # ----------------------------------------------------------------- hooks
    async def _connect(self) -> None:
        self._link_up = True
        self._streamed_once = False

    async def _close(self) -> None:
        self._link_up = False

    async def _identify(self) -> DeviceIdentity:
        self._check()
        return DeviceIdentity(
            make=self.make,
            model=self.balance.model,
            serial_number=self.balance.serial_number,
            firmware=self.balance.firmware,
            details={"capacity": f"{self.balance.capacity} {self.balance.unit}"},
        )

    def _frame(self) -> Frame:
        snap = self.balance.snapshot()
        if snap.net is None:
            text = snap.status.value
        else:
            text = f"{snap.status.value} {snap.net} {snap.unit}"
        return Frame.now(text.encode("ascii") + b"\r\n")

    async def _wait_stable(self) -> None:
        deadline = time.monotonic() + float(self.config["stability_timeout_s"])
        while self.balance.unstable and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _read_raw(self, stable: bool) -> Frame:
        self._check()
        if stable:
            await self._wait_stable()
            self._check()
            if self.balance.unstable:  # stability not reached, like MT-SICS "S I"
                return Frame.now(b"busy\r\n")
        return self._frame()

    def _parse(self, raw: bytes) -> Sample:
        match = _FRAME_RE.match(raw.decode("ascii"))
        if not match:
            raise ProtocolError("not a virtual-scale frame", raw=raw)
        status = ReadingStatus(match["status"])
        value = Decimal(match["value"]) if match["value"] is not None else None
        return Sample(status, value, match["unit"] or "")

    async def _stream_frame(self) -> Frame:
        if self._streamed_once:
            await asyncio.sleep(float(self.config["interval_s"]))
        self._streamed_once = True
        self._check()
        return self._frame()

    async def _stream_stop(self) -> None:
        self._streamed_once = False

    async def _tare(self) -> Weight:
        self._check()
        await self._wait_stable()
        outcome, tare = self.balance.tare()
        if outcome == "ok" and tare is not None:
            return Weight(tare, self.balance.unit)
        if outcome in ("busy", "unstable"):
            raise DeviceBusy("tare: busy or not stable in time")
        raise DeviceFault(f"tare: {outcome} the taring range")

    async def _zero(self) -> None:
        self._check()
        await self._wait_stable()
        outcome = self.balance.zero()
        if outcome in ("busy", "unstable"):
            raise DeviceBusy("zero: busy or not stable in time")
        if outcome != "ok":
            raise DeviceFault(f"zero: {outcome} the zero setting range")

    async def _tare_weight(self) -> Weight:
        self._check()
        return Weight(self.balance.tare_value, self.balance.unit)

    async def _preset_tare(self, weight: Weight) -> Weight:
        self._check()
        if weight.unit != self.balance.unit or not self.balance.preset_tare(weight.value):
            raise DeviceFault(f"preset tare {weight} not allowed")
        return Weight(self.balance.tare_value, self.balance.unit)

    async def _clear_tare(self) -> None:
        self._check()
        self.balance.clear_tare()
