"""Mettler-Toledo balances over MT-SICS (serial line, CR LF framed).

Reference: Mettler-Toledo, *MT-SICS Interface Commands, Reference Manual*
(e.g. 11780711 for New Classic balances, 30014405 for Standard/Advanced lab
balances), sections "Response formats" and "Error messages", and the
level-0/1 commands used here:

========  ==========================  =========================================
command   meaning                     replies handled
========  ==========================  =========================================
``S``     stable weight               ``S S <value> <unit>``, ``S I``, ``S +``, ``S -``
``SI``    weight immediately          ``S S``/``S D <value> <unit>``, ``S I/+/-``
``SIR``   weight immediately, repeat  as ``SI``, continuously until another command
``Z``     zero (when stable)          ``Z A``, ``Z I``, ``Z +``, ``Z -``
``T``     tare (when stable)          ``T S <value> <unit>``, ``T I``, ``T +``, ``T -``
``TA``    read/preset tare memory     ``TA A <value> <unit>``, ``TA I``, ``TA L``
``TAC``   clear tare memory           ``TAC A``, ``TAC I``
``@``     cancel / reset              ``I4 A "<serial number>"``
``I2``    balance data                ``I2 A "<type> <capacity> <unit>"`` (one field, older
                                      models) or ``I2 A "<type>" "<capacity> <unit>"`` (two)
``I3``    software version            ``I3 A "<version> <type definition>"`` or ``I3 A "<version>" "<type definition>"``
``I4``    serial number               ``I4 A "<serial number>"``
any       general errors              ``ES`` syntax, ``ET`` transmission, ``EL`` logical
========  ==========================  =========================================

Status mapping for weight replies: ``S`` → ok (stable), ``D`` → dynamic,
``+`` → overload, ``-`` → underload, ``I`` → busy. ``ES`` →
:class:`ProtocolError`, ``ET`` → :class:`TransmissionError` (retryable),
``EL`` → :class:`DeviceFault`; on tare/zero ``I`` → :class:`DeviceBusy` and
``+``/``-`` → :class:`DeviceFault`.

Link discipline: one command in flight (the base class lock). After any
failure, or after a ``SIR`` stream, the driver *resynchronises* before the
next command: it drops pending input, sends ``I4`` and skips every line until
the ``I4 A`` reply, so a late reply can never be taken for the answer to a
later command. ``SIR`` is stopped with ``SI`` (a documented terminator of the
repeat commands); ``@`` is sent only by :meth:`MtSicsScale.reset` or with
``reset_on_connect`` because it also resets other balance state.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from typing import Any, ClassVar

from devices.base import Capability, Frame
from devices.errors import (
    DeviceBusy,
    DeviceError,
    DeviceFault,
    ProtocolError,
    TransmissionError,
)
from devices.reading import DeviceIdentity, ReadingStatus, Sample, Weight
from devices.transport import CRLF, SerialDriver, serial_config_schema

__all__ = ["MtSicsScale", "parse_balance_data", "parse_software", "parse_weight_response"]

log = logging.getLogger(__name__)

_NUMBER = r"[+-]?\d+(?:\.\d+)?"
_WEIGHT_RE = re.compile(rf"^(?P<id>[A-Z]+) +(?P<st>[SD]) +(?P<value>{_NUMBER}) +(?P<unit>\S{{1,6}}) *$")
_CONDITION_RE = re.compile(r"^(?P<id>[A-Z]+) +(?P<st>[I+\-]) *$")
_TEXT_RE = re.compile(r'^(?P<id>[A-Z0-9]+) +A +"(?P<text>[^"]*)" *$')
_FIELDS_RE = re.compile(r'^(?P<id>[A-Z0-9]+) +A(?P<fields>(?: +"[^"]*")+) *$')
_FIELD_RE = re.compile(r'"([^"]*)"')
_QUANTITY_RE = re.compile(rf"^(?P<capacity>{_NUMBER}) +(?P<unit>\S{{1,6}})$")
_ACK_RE = re.compile(r"^(?P<id>[A-Z]+) +(?P<st>[AILS+\-])(?: +(?P<value>\S+) +(?P<unit>\S{1,6}))? *$")
_CAPACITY_RE = re.compile(rf"^(?P<model>.*?\S) +(?P<capacity>{_NUMBER}) +(?P<unit>\S{{1,6}})$")

_STATUS = {"S": ReadingStatus.OK, "D": ReadingStatus.DYNAMIC}
_CONDITION = {"I": ReadingStatus.BUSY, "+": ReadingStatus.OVERLOAD, "-": ReadingStatus.UNDERLOAD}

#: MT-SICS unit texts mapped to the canonical names; others pass through.
_UNITS = {
    "g": "g", "kg": "kg", "mg": "mg", "ct": "ct", "lb": "lb", "oz": "oz", "ozt": "ozt",
    "dwt": "dwt", "GN": "gr", "mo": "mom", "PCS": "pcs", "PC": "pcs", "pcs": "pcs",
    "%": "%", "N": "N",
}


def _unit(text: str) -> str:
    return _UNITS.get(text, text)


def _general_error(text: str, raw: bytes) -> DeviceError | None:
    code = text.strip()
    if code == "ES":
        return ProtocolError("MT-SICS ES: syntax error, command not recognised", raw=raw)
    if code == "ET":
        return TransmissionError("MT-SICS ET: transmission error, command garbled", raw=raw)
    if code == "EL":
        return DeviceFault("MT-SICS EL: logical error, command cannot be executed", raw=raw)
    return None


def parse_weight_response(text: str, raw: bytes | None = None, reply_id: str = "S") -> Sample:
    """Parse one MT-SICS weight reply line (without CR LF) into a Sample.

    Raises the mapped :class:`DeviceError` for ``ES``/``ET``/``EL`` and
    :class:`ProtocolError` for anything else that is not a weight reply.
    """
    raw = text.encode("latin-1", "replace") if raw is None else raw
    error = _general_error(text, raw)
    if error is not None:
        raise error
    match = _WEIGHT_RE.match(text)
    if match and match["id"] == reply_id:
        return Sample(_STATUS[match["st"]], Decimal(match["value"]), _unit(match["unit"]))
    match = _CONDITION_RE.match(text)
    if match and match["id"] == reply_id:
        return Sample(_CONDITION[match["st"]], None, "")
    raise ProtocolError(f"not an MT-SICS {reply_id!r} weight reply", raw=raw)


def parse_balance_data(fields: list[str]) -> tuple[str, dict[str, str]]:
    """Model and details from the fields of an ``I2 A`` reply, in every documented form.

    One field ``"<type> <capacity> <unit>"`` (older models), two fields ``"<type>"
    "<capacity> <unit>"`` (Excellence and later); a part that does not parse is kept as text
    in the details and the model degrades to ``unknown`` only when there is no type at all.
    """
    texts = [f.strip() for f in fields]
    details: dict[str, str] = {"balance_data": " | ".join(texts)} if texts else {}
    if not texts or not any(texts):
        return "unknown", details
    if len(texts) == 1:
        match = _CAPACITY_RE.match(texts[0])
        if match:
            details["capacity"] = f"{match['capacity']} {_unit(match['unit'])}"
            return match["model"], details
        return texts[0], details
    model = texts[0] or "unknown"
    for extra in texts[1:]:
        match = _QUANTITY_RE.match(extra)
        if match and "capacity" not in details:
            details["capacity"] = f"{match['capacity']} {_unit(match['unit'])}"
    return model, details


def parse_software(fields: list[str]) -> tuple[str, dict[str, str]]:
    """Firmware version and details from an ``I3 A`` reply (one or two fields)."""
    texts = [f.strip() for f in fields if f.strip()]
    if not texts:
        return "unknown", {}
    firmware, _, rest = texts[0].partition(" ")
    type_definition = " ".join(t for t in [rest.strip(), *texts[1:]] if t)
    return firmware, ({"type_definition": type_definition} if type_definition else {})


class MtSicsScale(SerialDriver):
    """A Mettler-Toledo balance or weigh module speaking MT-SICS (level 0/1)."""

    name: ClassVar[str] = "mtsics"
    make: ClassVar[str] = "Mettler-Toledo"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.READ,
            Capability.STABLE_READ,
            Capability.STREAM,
            Capability.TARE,
            Capability.ZERO,
            Capability.PRESET_TARE,
        }
    )
    config_schema: ClassVar[dict[str, Any]] = serial_config_schema(
        title="Mettler-Toledo balance (MT-SICS)",
        baudrate=9600,
        extra={
            "reset_on_connect": {
                "type": "boolean",
                "default": False,
                "description": "send @ (cancel/reset) on connect instead of a plain I4 check",
            }
        },
    )
    example_config: ClassVar[dict[str, Any]] = {"port": "/dev/ttyUSB0", "baudrate": 9600}

    def __init__(self, device_id: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        self._needs_sync = True
        self._repeating = False
        self.serial_number: str | None = None

    # -------------------------------------------------------------- lifecycle
    async def _connect(self) -> None:
        await self._open_transport()
        self._repeating = False
        self._needs_sync = True
        await self._sync(b"@" if self.config["reset_on_connect"] else b"I4")

    async def _close(self) -> None:
        if self._repeating and self._transport is not None and self._transport.is_open:
            try:  # best effort: leave the balance quiet for the next client
                await self._transport.write(b"SI" + CRLF)
            except DeviceError:
                pass
        self._repeating = False
        self._needs_sync = True
        await super()._close()

    def _after_error(self, exc: Exception) -> None:
        self._needs_sync = True

    # ---------------------------------------------------------------- link
    async def _sync(self, command: bytes = b"I4") -> str:
        """Drop pending input, send ``I4`` (or ``@``), skip lines until ``I4 A``."""
        transport = self.transport
        self._needs_sync = True
        dropped = transport.discard_input()
        if dropped:
            log.debug("%s: resync dropped %r", self.device_id, [f.raw for f in dropped])
        await transport.write(command + CRLF)
        while True:  # bounded by the operation time-out
            frame = await transport.readline()
            match = _TEXT_RE.match(frame.raw.decode("latin-1").rstrip("\r\n"))
            if match and match["id"] == "I4":
                self.serial_number = match["text"]
                self._needs_sync = False
                return match["text"]
            log.debug("%s: resync skipped %r", self.device_id, frame.raw)

    async def _stop_repeat(self) -> None:
        """End ``SIR``: send ``SI``, wait for the line to go quiet, resync."""
        transport = self.transport
        self._repeating = False
        self._needs_sync = True
        await transport.write(b"SI" + CRLF)
        gap = max(0.05, 3 * 24 * transport.character_time_s)
        await transport.wait_quiet(gap, timeout=self.timeout_s)
        await self._sync()

    async def _command(self, command: str) -> tuple[Frame, str]:
        """Send one command and return its reply frame and text (no CR LF)."""
        transport = self.transport
        if self._repeating:
            await self._stop_repeat()
        if self._needs_sync:
            await self._sync()
        stale = transport.discard_frames()
        if stale:
            log.warning("%s: unsolicited lines dropped: %r", self.device_id, [f.raw for f in stale])
        self._needs_sync = True  # until a reply has been taken off the line
        await transport.write(command.encode("ascii") + CRLF)
        frame = await transport.readline()
        self._needs_sync = False
        return frame, self._decode(frame.raw)

    async def _expect(self, command: str, reply_id: str) -> tuple[Frame, re.Match[str]]:
        """Run ``command``; return the parsed acknowledgement ``<id> <status> ...``."""
        frame, text = await self._command(command)
        error = _general_error(text, frame.raw)
        if error is not None:
            raise error
        match = _ACK_RE.match(text)
        if not match or match["id"] != reply_id:
            raise ProtocolError(f"unexpected reply to {command!r}", raw=frame.raw)
        if match["st"] == "I":
            raise DeviceBusy(f"{command}: balance busy or not stable in time", raw=frame.raw)
        return frame, match

    # ----------------------------------------------------------------- hooks
    async def _query_fields(self, command: str) -> list[str] | None:
        """The quoted fields of an ``<command> A "..." ["..."]`` reply; None when the balance
        does not implement the command (``ES``) or answers something else (logged): identity
        degrades field by field, a lost link still raises."""
        try:
            frame, text = await self._command(command)
        except ProtocolError as exc:
            log.info("%s: %s reply not understood: %s", self.device_id, command, exc)
            return None
        match = _FIELDS_RE.match(text)
        if match and match["id"] == command:
            return _FIELD_RE.findall(match["fields"])
        if text.strip() not in ("ES", "EL"):
            log.info("%s: unexpected reply to %s: %r", self.device_id, command, frame.raw)
        return None

    async def _identify(self) -> DeviceIdentity:
        serial_fields = await self._query_fields("I4")
        if serial_fields and serial_fields[0].strip():
            self.serial_number = serial_fields[0].strip()
        model, details = parse_balance_data(await self._query_fields("I2") or [])
        firmware, software = parse_software(await self._query_fields("I3") or [])
        details.update(software)
        return DeviceIdentity(
            make=self.make,
            model=model,
            serial_number=(self.serial_number or "").strip() or "unknown",  # read with I4 on connect
            firmware=firmware,
            details=details,
        )

    async def _read_raw(self, stable: bool) -> Frame:
        frame, _ = await self._command("S" if stable else "SI")
        return frame

    def _parse(self, raw: bytes) -> Sample:
        return parse_weight_response(self._decode(raw), raw)

    async def _stream_frame(self) -> Frame:
        transport = self.transport
        if not self._repeating:
            if self._needs_sync:
                await self._sync()
            transport.discard_frames()
            self._needs_sync = True  # repeat mode always ends with a resync
            await transport.write(b"SIR" + CRLF)
            self._repeating = True
        return await transport.readline()

    async def _stream_stop(self) -> None:
        if self._repeating:
            await self._stop_repeat()

    async def _tare(self) -> Weight:
        frame, match = await self._expect("T", "T")
        status = match["st"]
        if status == "S" and match["value"]:
            return self._weight(match, frame.raw)
        if status == "+":
            raise DeviceFault("T: upper limit of taring range exceeded", raw=frame.raw)
        if status == "-":
            raise DeviceFault("T: lower limit of taring range exceeded", raw=frame.raw)
        raise ProtocolError("unexpected reply to 'T'", raw=frame.raw)

    async def _zero(self) -> None:
        frame, match = await self._expect("Z", "Z")
        status = match["st"]
        if status == "A" and not match["value"]:
            return
        if status == "+":
            raise DeviceFault("Z: upper limit of zero setting range exceeded", raw=frame.raw)
        if status == "-":
            raise DeviceFault("Z: lower limit of zero setting range exceeded", raw=frame.raw)
        raise ProtocolError("unexpected reply to 'Z'", raw=frame.raw)

    async def _tare_weight(self) -> Weight:
        return await self._tare_memory("TA")

    async def _preset_tare(self, weight: Weight) -> Weight:
        if weight.value < 0:
            raise DeviceFault("a preset tare cannot be negative")
        return await self._tare_memory(f"TA {weight.value:f} {weight.unit}")

    async def _tare_memory(self, command: str) -> Weight:
        frame, match = await self._expect(command, "TA")
        if match["st"] == "A" and match["value"]:
            return self._weight(match, frame.raw)
        if match["st"] == "L":
            raise DeviceFault(f"{command}: tare value not allowed (logical error)", raw=frame.raw)
        raise ProtocolError(f"unexpected reply to {command!r}", raw=frame.raw)

    async def _clear_tare(self) -> None:
        frame, match = await self._expect("TAC", "TAC")
        if match["st"] != "A" or match["value"]:
            raise ProtocolError("unexpected reply to 'TAC'", raw=frame.raw)

    @staticmethod
    def _weight(match: re.Match[str], raw: bytes) -> Weight:
        if not re.fullmatch(_NUMBER, match["value"]):
            raise ProtocolError("malformed weight value", raw=raw)
        return Weight(Decimal(match["value"]), _unit(match["unit"]))

    # ----------------------------------------------------------- extra API
    async def reset(self) -> str:
        """Send ``@`` (cancel all commands, reset to power-on state); return serial number."""
        self._require_connected()
        async with self._operation("reset", self.timeout_s):
            if self._repeating:
                self._repeating = False
            return await self._sync(b"@")
