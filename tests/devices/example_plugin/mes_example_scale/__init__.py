"""The smallest useful device driver: a scale that always shows one weight.

It implements only the required hooks of :class:`devices.Driver`; the base
class supplies locking, time-outs, sequence numbers, timestamps and error
mapping. Frames look like a device's would: ``b"W 12.00 g\\r\\n"``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, ClassVar

from devices import Capability, DeviceIdentity, Driver, ProtocolError, ReadingStatus, Sample

_FRAME = re.compile(rb"^W (?P<value>-?\d+(?:\.\d+)?) (?P<unit>[a-z]+)\r\n$")


class ExampleScale(Driver):
    """Shows ``config["weight"]`` (a decimal string) in ``config["unit"]``, always stable."""

    name: ClassVar[str] = "example"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ})
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "weight": {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "default": "12.00"},
            "unit": {"type": "string", "enum": ["g", "kg"], "default": "g"},
        },
        "additionalProperties": False,
    }
    example_config: ClassVar[dict[str, Any]] = {"weight": "12.00", "unit": "g"}

    async def _connect(self) -> None:
        """Nothing to open: the weight lives in the configuration."""

    async def _close(self) -> None:
        """Nothing to release."""

    async def _identify(self) -> DeviceIdentity:
        return DeviceIdentity(make="Example", model="Fixed", serial_number="EX-1", firmware="0.1.0")

    async def _read_raw(self, stable: bool) -> bytes:
        return f"W {self.config['weight']} {self.config['unit']}\r\n".encode("ascii")

    def _parse(self, raw: bytes) -> Sample:
        match = _FRAME.match(raw)
        if match is None:
            raise ProtocolError("not an example frame", raw=raw)
        return Sample(ReadingStatus.OK, Decimal(match["value"].decode()), match["unit"].decode())
