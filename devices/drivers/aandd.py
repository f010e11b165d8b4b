"""A&D balances in stream mode, "A&D standard format" (continuous output).

Reference: A&D Company, Ltd. instruction manuals, chapter "Data format" /
"A&D standard format" (e.g. FX-i/FZ-i, GX/GF, EK-i/EW-i, GC series): every
frame is ASCII, terminated by CR LF::

    ST,+00123.45  g<CR><LF>      header "," data unit terminator (17 bytes)
    12 3456789012345

* header, 2 characters: ``ST`` stable weight, ``US`` unstable weight,
  ``QT`` stable count, ``OL`` out of range (sign of the data: ``+`` over,
  ``-`` under); models with the comparator add a second header
  ``LO``/``OK``/``HI``/``--`` and a comma (accepted, ignored);
* data, normally 9 characters including polarity sign and decimal point,
  padded with leading zeros (``+0001.234``); for ``OL`` some models send
  ``+9999999E+19`` and then no unit;
* unit, 3 characters right-justified: ``  g``, `` kg``, `` PC``, ``  %``,
  `` oz``, `` lb``, ``ozt``, `` ct``, ``mom``, ``dwt``, `` GN``, ``  N``,
  `` tl`` (tael), ``  t`` (tola), `` DS``;
* in stream mode ("prt 0") the balance sends the displayed value at the
  display update rate (about 10 frames/s).

The driver only listens: it never sends a command, so tare and zero are not
offered (use the balance keys). Identity comes from configuration. Status
mapping: ``ST``/``QT`` → ok, ``US`` → dynamic, ``OL`` → overload/underload.
Factory settings of most A&D balances are 2400 baud, 7 data bits, even
parity, 1 stop bit; they are this driver's defaults.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, ClassVar

from devices.base import Capability, Frame
from devices.errors import ProtocolError
from devices.reading import DeviceIdentity, ReadingStatus, Sample
from devices.transport import SerialDriver, serial_config_schema

__all__ = ["AandDScale", "parse_standard_frame"]

_FRAME_RE = re.compile(
    r"^(?P<header>ST|US|QT|OL),"
    r"(?:(?:LO|OK|HI|--),)?"
    r"(?:(?P<ol_sign>[+-])9999999E\+19"
    r"|(?P<sign>[+-])(?P<digits>[0-9.]{7,10})(?P<unit>[ A-Za-z%]{3}))$"
)

_STATUS = {"ST": ReadingStatus.OK, "QT": ReadingStatus.OK, "US": ReadingStatus.DYNAMIC}

#: A&D unit texts (stripped) mapped to the canonical names.
_UNITS = {
    "g": "g", "kg": "kg", "PC": "pcs", "%": "%", "oz": "oz", "lb": "lb", "ozt": "ozt",
    "ct": "ct", "mom": "mom", "dwt": "dwt", "GN": "gr", "N": "N", "tl": "tael", "t": "tola",
    "DS": "DS",
}


def parse_standard_frame(text: str, raw: bytes | None = None) -> Sample:
    """Parse one A&D standard-format frame (without CR LF) into a Sample."""
    raw = text.encode("latin-1", "replace") if raw is None else raw
    match = _FRAME_RE.match(text)
    if not match:
        raise ProtocolError("not an A&D standard-format frame", raw=raw)
    header = match["header"]
    if match["ol_sign"]:
        if header != "OL":
            raise ProtocolError("overflow data without OL header", raw=raw)
        sign = match["ol_sign"]
    else:
        sign = match["sign"]
        digits = match["digits"]
        if digits.count(".") > 1 or digits.startswith(".") or digits.endswith("."):
            raise ProtocolError("malformed A&D data field", raw=raw)
        unit_text = match["unit"].strip()
        if not unit_text or " " in unit_text:
            raise ProtocolError("malformed A&D unit field", raw=raw)
        if header != "OL":
            value = Decimal(sign + digits)
            return Sample(_STATUS[header], value, _UNITS.get(unit_text, unit_text))
    status = ReadingStatus.OVERLOAD if sign == "+" else ReadingStatus.UNDERLOAD
    return Sample(status, None, "")


class AandDScale(SerialDriver):
    """An A&D balance sending A&D standard format in stream mode (listen only)."""

    name: ClassVar[str] = "aandd"
    make: ClassVar[str] = "A&D"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.READ, Capability.STREAM}
    )
    config_schema: ClassVar[dict[str, Any]] = serial_config_schema(
        title="A&D balance, stream mode (A&D standard format)",
        baudrate=2400,
        bytesize=7,
        parity="E",
        extra={
            "model": {"type": "string", "minLength": 1, "default": "unknown"},
            "serial_number": {"type": "string", "minLength": 1, "default": "unknown"},
        },
    )
    example_config: ClassVar[dict[str, Any]] = {
        "port": "/dev/ttyUSB1",
        "baudrate": 2400,
        "bytesize": 7,
        "parity": "E",
        "model": "FX-120i",
        "serial_number": "T1234567",
    }
    resync_on_open: ClassVar[bool] = True  # we join the stream mid-frame

    def __init__(self, device_id: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        self._streaming = False

    async def _connect(self) -> None:
        await self._open_transport()
        self._streaming = False

    async def _identify(self) -> DeviceIdentity:
        return DeviceIdentity(
            make=self.make,
            model=self.config["model"],
            serial_number=self.config["serial_number"],
            firmware="unknown",
            details={"source": "configuration (stream mode reports no identity)"},
        )

    async def _read_raw(self, stable: bool) -> Frame:
        """The next frame completed after the call: at most one output period old."""
        self.transport.discard_frames()
        return await self.transport.readline()

    def _parse(self, raw: bytes) -> Sample:
        return parse_standard_frame(self._decode(raw), raw)

    async def _stream_frame(self) -> Frame:
        if not self._streaming:
            self.transport.discard_frames()  # start with fresh data, not a backlog
            self._streaming = True
        return await self.transport.readline()

    async def _stream_stop(self) -> None:
        self._streaming = False
