"""Modbus TCP devices (PLCs, transmitters, gateways) through a pymodbus 3.x async client.

A device is configured as a set of named *tags*, each one value in one of
the four Modbus tables::

    {
      "host": "192.0.2.10", "port": 502, "unit_id": 1,
      "tags": {
        "jacket_temp": {"function": "input_registers", "address": 0, "type": "int16",
                        "factor": "0.1", "unit": "°C", "decimals": 1},
        "flow":        {"function": "holding_registers", "address": 10, "type": "float32",
                        "word_order": "little", "unit": "L/h", "decimals": 2},
        "pump_on":     {"function": "coils", "address": 3, "type": "bool"}
      }
    }

``read()`` returns the ``primary`` tag (default: the first one);
:meth:`ModbusTcpDriver.read_tags` / :meth:`ModbusTcpDriver.poll` read many
tags per cycle, coalescing tags in adjacent addresses into block reads (at
most 125 registers / 2000 bits per request; ``max_gap`` lets a block span a
few unused addresses).

Values
------
Registers travel big-endian on the wire. ``byte_order`` says whether the two
bytes *within* each register are swapped (``little``: ``BA``) and
``word_order`` whether the registers of a multi-register value come low word
first (``little``: ``CDAB``). Data types and their register counts:
``int16``/``uint16`` 1, ``int32``/``uint32``/``float32`` 2,
``int64``/``uint64``/``float64`` 4, ``bool`` one coil or discrete input. A
configured ``count`` that disagrees with the type is refused
(:class:`~devices.errors.ConfigurationError`), as is a bool in a register
table or a number in a bit table.

The value is ``raw × factor + offset``, computed in :class:`~decimal.Decimal`
with enough digits that scaling is exact (``1234 × 0.1`` is ``123.4``).
Floats exist only on the wire: a float32/float64 becomes the *shortest
decimal that reads back as the same IEEE value* (float32 ``0.1`` is
``0.1``, not ``0.100000001490116``), and with ``decimals`` set the result is
quantised to that many places, rounding half to even. A NaN is a reading with
status ``fault``, ±infinity ``overload``/``underload``; none of them is a
value. ``unit`` is required for every numeric tag (a bool tag is ``"1"``,
dimensionless).

Each tag's :class:`~devices.reading.Reading` carries the tag's bytes exactly
as received (for registers: the tag's slice of the response, wire order; for
bits: the tag's bit as one byte ``00``/``01``), the receive time of its
response, the device id and the driver's sequence number.

Errors
------
Modbus exception responses map into the device exception tree, keeping the
codes (:class:`ModbusExceptionResponse`):

====================================  ===============================================
exception code                        raised as
====================================  ===============================================
01 illegal function, 02 illegal data  :class:`ModbusIllegalRequest` (a
address, 03 illegal data value        :class:`~devices.errors.ProtocolError`: fix the tag map)
05 acknowledge, 06 server busy        :class:`ModbusDeviceBusy` (:class:`~devices.errors.DeviceBusy`, retryable)
0A gateway path unavailable,          :class:`ModbusGatewayError` (:class:`~devices.errors.DeviceUnavailable`, retryable)
0B gateway target failed to respond
04, 07, 08 and unknown codes          :class:`ModbusDeviceFailure` (:class:`~devices.errors.DeviceFault`)
====================================  ===============================================

No reply within ``timeout_s`` is :class:`~devices.errors.DeviceTimeout`; a
refused or dropped connection :class:`~devices.errors.DeviceUnavailable`
(both retryable). When the connection drops the driver reconnects by itself
in the background, with exponential backoff (``reconnect_initial_s``
doubling up to ``reconnect_max_s``, ±10 % jitter); meanwhile operations fail
fast with :class:`~devices.errors.DeviceUnavailable` and
:meth:`ModbusTcpDriver.wait_connected` waits for the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import struct
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, ClassVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from devices.base import Capability, Frame, utc_now
from devices.errors import (
    ConfigurationError,
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    ProtocolError,
)
from devices.network import RECONNECT_SCHEMA, NetworkDriver, float_to_decimal
from devices.reading import DeviceIdentity, Reading, ReadingStatus, Sample

__all__ = [
    "DataType",
    "ModbusCycle",
    "ModbusDeviceBusy",
    "ModbusDeviceFailure",
    "ModbusExceptionResponse",
    "ModbusGatewayError",
    "ModbusIllegalRequest",
    "ModbusTcpDriver",
    "ReadBlock",
    "Table",
    "TagSpec",
    "decode_registers",
    "encode_value",
    "exception_from_code",
    "float_to_decimal",
    "parse_tags",
    "plan_blocks",
]

log = logging.getLogger(__name__)

#: Most registers one read may ask for (FC 3/4), and most bits (FC 1/2).
MAX_REGISTERS = 125
MAX_BITS = 2000
#: Decimal precision for scaling and rounding: enough for every int64 and every
#: finite double (up to 309 integer digits) times any factor, so nothing rounds
#: silently; it is an upper bound, not a cost.
_PRECISION = 800


class Table(str, enum.Enum):
    """The four Modbus data tables (configured as ``function``)."""

    COILS = "coils"
    DISCRETE_INPUTS = "discrete_inputs"
    HOLDING_REGISTERS = "holding_registers"
    INPUT_REGISTERS = "input_registers"

    @property
    def function_code(self) -> int:
        """The read function code: 1, 2, 3 or 4."""
        return _FUNCTION_CODES[self]

    @property
    def is_bits(self) -> bool:
        """True for coils and discrete inputs (one bit per address)."""
        return self in (Table.COILS, Table.DISCRETE_INPUTS)


_FUNCTION_CODES = {
    Table.COILS: 1,
    Table.DISCRETE_INPUTS: 2,
    Table.HOLDING_REGISTERS: 3,
    Table.INPUT_REGISTERS: 4,
}


class DataType(str, enum.Enum):
    """How a tag's registers (or bit) are interpreted."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def registers(self) -> int:
        """Registers the type occupies (a bool occupies one bit)."""
        return _LAYOUT[self][1]

    @property
    def is_float(self) -> bool:
        """True for the IEEE 754 types."""
        return self in (DataType.FLOAT32, DataType.FLOAT64)


#: struct format (big-endian after reordering) and register count per type.
_LAYOUT: dict[DataType, tuple[str, int]] = {
    DataType.BOOL: ("?", 1),
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}

_ORDERS = ("big", "little")


# ----------------------------------------------------------------- exceptions
_EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge (request accepted, still processing)",
    0x06: "server device busy",
    0x07: "negative acknowledge",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


class ModbusExceptionResponse(DeviceError):
    """The device answered with a Modbus exception response.

    Always raised as one of the subclasses below, which also derive from the
    matching class of the device exception tree. ``exception_code`` and
    ``function_code`` are the codes from the response; ``raw`` is the
    exception PDU as received (function code | 0x80, exception code).
    """

    def __init__(
        self,
        message: str,
        *,
        exception_code: int,
        function_code: int,
        device_id: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(message, device_id=device_id, raw=raw)
        self.exception_code = exception_code
        self.function_code = function_code


class ModbusIllegalRequest(ModbusExceptionResponse, ProtocolError):
    """01/02/03: the request does not fit the device's map (a configuration problem)."""


class ModbusDeviceBusy(ModbusExceptionResponse, DeviceBusy):
    """05/06: the device is busy or still processing; retry later."""


class ModbusGatewayError(ModbusExceptionResponse, DeviceUnavailable):
    """0A/0B: a gateway cannot reach the target device (retryable)."""


class ModbusDeviceFailure(ModbusExceptionResponse, DeviceFault):
    """04/07/08 or an unknown code: the device failed to carry out the request."""


def exception_from_code(
    function_code: int, exception_code: int, *, context: str = "", raw: bytes | None = None
) -> ModbusExceptionResponse:
    """The exception-tree error for a Modbus exception response."""
    name = _EXCEPTION_NAMES.get(exception_code, "unknown exception code")
    message = f"Modbus exception {exception_code:02X} ({name})"
    if context:
        message = f"{context}: {message}"
    cls: type[ModbusExceptionResponse]
    if exception_code in (0x01, 0x02, 0x03):
        cls = ModbusIllegalRequest
        message += "; check the tag's function, address and type against the device's register map"
    elif exception_code in (0x05, 0x06):
        cls = ModbusDeviceBusy
    elif exception_code in (0x0A, 0x0B):
        cls = ModbusGatewayError
    else:
        cls = ModbusDeviceFailure
    return cls(
        message,
        exception_code=exception_code,
        function_code=function_code & 0x7F,
        raw=raw,
    )


# ---------------------------------------------------------------- conversion
def _reorder(raw: bytes, word_order: str, byte_order: str) -> bytes:
    """Registers as received → one big-endian byte string."""
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if byte_order == "little":
        words = [w[::-1] for w in words]
    if word_order == "little":
        words.reverse()
    return b"".join(words)


def decode_registers(
    raw: bytes, data_type: DataType | str, *, word_order: str = "big", byte_order: str = "big"
) -> int | float:
    """Decode a tag's register bytes (wire order) into a Python int or float.

    Raises ValueError when ``raw`` is not exactly the type's register count.
    """
    dtype = DataType(data_type)
    if dtype is DataType.BOOL:
        raise ValueError("bool tags live in coils or discrete inputs, not registers")
    fmt, registers = _LAYOUT[dtype]
    if len(raw) != 2 * registers:
        raise ValueError(
            f"{dtype.value} needs {registers} register(s) = {2 * registers} bytes, got {len(raw)}"
        )
    value: int | float = struct.unpack(">" + fmt, _reorder(raw, word_order, byte_order))[0]
    return value


def encode_value(
    value: int | float | Decimal | str,
    data_type: DataType | str,
    *,
    word_order: str = "big",
    byte_order: str = "big",
) -> list[int]:
    """Registers (16-bit ints, as a device would hold them) for ``value`` of ``data_type``.

    The inverse of :func:`decode_registers`; used by the simulator and tests.
    """
    dtype = DataType(data_type)
    if dtype is DataType.BOOL:
        raise ValueError("bool values are bits, not registers")
    fmt, _registers = _LAYOUT[dtype]
    number: int | float
    if dtype.is_float:
        number = float(value)
    else:
        number = int(Decimal(str(value)))
    try:
        big = struct.pack(">" + fmt, number)
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit {dtype.value}: {exc}") from None
    wire = _reorder(big, word_order, byte_order)  # the reordering is its own inverse
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


# ---------------------------------------------------------------------- tags
_ONE, _ZERO = Decimal(1), Decimal(0)
_BIT_VALUES = {b"\x00": _ZERO, b"\x01": _ONE}
_EXACT = Context(prec=_PRECISION)


@dataclass(frozen=True, slots=True)
class TagSpec:
    """One configured tag: where it lives, how to decode and scale it."""

    name: str
    table: Table
    address: int
    data_type: DataType
    unit: str = "1"
    word_order: str = "big"
    byte_order: str = "big"
    factor: Decimal = Decimal(1)
    offset: Decimal = Decimal(0)
    decimals: int | None = None
    # Derived once (a poll decodes every tag on every cycle).
    count: int = field(init=False, repr=False, compare=False)
    raw_size: int = field(init=False, repr=False, compare=False)
    _struct: struct.Struct | None = field(init=False, repr=False, compare=False)
    _reorder: bool = field(init=False, repr=False, compare=False)
    _scaled: bool = field(init=False, repr=False, compare=False)
    _quantum: Decimal | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bits = self.table.is_bits
        count = 1 if bits else self.data_type.registers
        fmt = _LAYOUT[self.data_type][0]
        init = object.__setattr__
        init(self, "count", count)
        init(self, "raw_size", 1 if bits else 2 * count)
        init(self, "_struct", None if bits else struct.Struct(">" + fmt))
        init(self, "_reorder", self.word_order == "little" or self.byte_order == "little")
        init(self, "_scaled", self.factor != _ONE or self.offset != _ZERO or self.decimals is not None)
        init(self, "_quantum", None if self.decimals is None else _ONE.scaleb(-self.decimals))

    @property
    def end(self) -> int:
        """First address after the tag."""
        return self.address + self.count

    def decode(self, raw: bytes) -> Sample:
        """Turn the tag's raw bytes into a Sample (pure; raises on anything unexpected)."""
        if not isinstance(raw, (bytes, bytearray)):
            raise ProtocolError(f"tag {self.name!r}: raw data must be bytes")
        raw = bytes(raw)
        if len(raw) != self.raw_size:
            raise ProtocolError(
                f"tag {self.name!r}: expected {self.raw_size} byte(s) for "
                f"{self.data_type.value}, got {len(raw)}",
                raw=raw,
            )
        if self._struct is None:
            bit = _BIT_VALUES.get(raw)
            if bit is None:
                raise ProtocolError(f"tag {self.name!r}: a bit must be 00 or 01", raw=raw)
            return Sample(ReadingStatus.OK, bit, self.unit)
        data = _reorder(raw, self.word_order, self.byte_order) if self._reorder else raw
        number: int | float = self._struct.unpack(data)[0]
        if isinstance(number, float):
            if math.isnan(number):
                return Sample(ReadingStatus.FAULT, None, self.unit)
            if math.isinf(number):
                status = ReadingStatus.OVERLOAD if number > 0 else ReadingStatus.UNDERLOAD
                return Sample(status, None, self.unit)
            base = float_to_decimal(number, single=self.data_type is DataType.FLOAT32)
        else:
            base = Decimal(number)
        return Sample(ReadingStatus.OK, self.scale(base) if self._scaled else base, self.unit)

    def scale(self, raw_value: Decimal) -> Decimal:
        """``raw × factor + offset``, exact, then rounded half-even to ``decimals`` if set."""
        ctx = _EXACT
        value = ctx.add(ctx.multiply(raw_value, self.factor), self.offset)
        if self._quantum is not None:
            value = value.quantize(self._quantum, rounding=ROUND_HALF_EVEN, context=ctx)
        elif value.as_tuple().exponent > 0 and value == value.to_integral_value():  # type: ignore[operator]
            value = value.quantize(_ONE, context=ctx)
        return value


_DECIMAL_TEXT = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_DECIMAL_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "pattern": _DECIMAL_TEXT},
        {"type": "integer"},
    ],
    "description": "a decimal number as a string (\"0.1\") or an integer; never a JSON float",
}
_TAG_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"

_TAG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["function", "address", "type"],
    "properties": {
        "function": {"type": "string", "enum": [t.value for t in Table]},
        "address": {"type": "integer", "minimum": 0, "maximum": 65535, "description": "0-based PDU address"},
        "type": {"type": "string", "enum": [t.value for t in DataType]},
        "count": {"type": "integer", "minimum": 1, "maximum": 4, "description": "must match the type"},
        "word_order": {"type": "string", "enum": list(_ORDERS)},
        "byte_order": {"type": "string", "enum": list(_ORDERS)},
        "factor": _DECIMAL_SCHEMA,
        "offset": _DECIMAL_SCHEMA,
        "decimals": {"type": "integer", "minimum": 0, "maximum": 12},
        "unit": {"type": "string", "minLength": 1, "maxLength": 32},
    },
    "if": {"properties": {"type": {"const": "bool"}}},
    "then": {
        "properties": {
            "word_order": False,
            "byte_order": False,
            "factor": False,
            "offset": False,
            "decimals": False,
        }
    },
    "else": {"required": ["unit"]},
}


def _decimal(value: Any, what: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ConfigurationError(f"{what}: {value!r} is not a decimal number") from None
    if not result.is_finite():
        raise ConfigurationError(f"{what}: {value!r} is not finite")
    return result


def parse_tags(config: Mapping[str, Any]) -> dict[str, TagSpec]:
    """Build TagSpecs from a (schema-valid) driver config; ConfigurationError on a bad tag.

    Checks what the schema cannot: the register count against the data type,
    bool only in bit tables, numbers only in register tables, the address
    range, and that ``primary`` names a tag.
    """
    word_default = config.get("word_order", "big")
    byte_default = config.get("byte_order", "big")
    tags: dict[str, TagSpec] = {}
    for name, spec in config.get("tags", {}).items():
        table = Table(spec["function"])
        dtype = DataType(spec["type"])
        what = f"tag {name!r}"
        if table.is_bits and dtype is not DataType.BOOL:
            raise ConfigurationError(f"{what}: {table.value} hold bits; type must be bool, not {dtype.value}")
        if not table.is_bits and dtype is DataType.BOOL:
            raise ConfigurationError(f"{what}: bool needs coils or discrete_inputs, not {table.value}")
        expected = 1 if table.is_bits else dtype.registers
        if "count" in spec and spec["count"] != expected:
            unit = "bit" if table.is_bits else "register(s)"
            raise ConfigurationError(
                f"{what}: {dtype.value} occupies {expected} {unit}, but count is {spec['count']}"
            )
        if spec["address"] + expected - 1 > 65535:
            raise ConfigurationError(f"{what}: address {spec['address']} + {expected} passes 65535")
        tags[name] = TagSpec(
            name=name,
            table=table,
            address=spec["address"],
            data_type=dtype,
            unit=spec.get("unit", "1"),
            word_order=spec.get("word_order", word_default),
            byte_order=spec.get("byte_order", byte_default),
            factor=_decimal(spec.get("factor", 1), f"{what} factor"),
            offset=_decimal(spec.get("offset", 0), f"{what} offset"),
            decimals=spec.get("decimals"),
        )
    primary = config.get("primary")
    if primary is not None and primary not in tags:
        raise ConfigurationError(f"primary tag {primary!r} is not among the tags: {', '.join(tags)}")
    return tags


# -------------------------------------------------------------------- blocks
@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering one or more tags of one table."""

    table: Table
    address: int
    count: int
    tags: tuple[TagSpec, ...]

    @property
    def key(self) -> tuple[Table, int, int]:
        """Identity of the request (table, start, count)."""
        return (self.table, self.address, self.count)


def plan_blocks(
    tags: Iterable[TagSpec],
    *,
    max_gap: int = 0,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadBlock]:
    """Coalesce tags into as few reads as possible.

    Tags of one table join a block when they overlap it or start at most
    ``max_gap`` unused addresses after its end, as long as the block stays
    within the per-request limit. Blocks come out ordered by table, then
    address.
    """
    by_table: dict[Table, list[TagSpec]] = {}
    for tag in tags:
        by_table.setdefault(tag.table, []).append(tag)
    blocks: list[ReadBlock] = []
    for table in Table:
        members = sorted(by_table.get(table, []), key=lambda t: (t.address, t.end, t.name))
        limit = max_bits if table.is_bits else max_registers
        current: list[TagSpec] = []
        start = end = 0
        for tag in members:
            if current and tag.address <= end + max_gap and max(end, tag.end) - start <= limit:
                current.append(tag)
                end = max(end, tag.end)
                continue
            if current:
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [tag], tag.address, tag.end
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks


@dataclass(frozen=True, slots=True)
class ModbusCycle:
    """The outcome of one :meth:`ModbusTcpDriver.poll`: readings and per-tag errors."""

    readings: dict[str, Reading]
    errors: dict[str, DeviceError]
    requests: int
    started: datetime
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when every requested tag has a reading."""
        return not self.errors


def _find_pdu(buffer: bytes, transaction_id: int) -> bytes | None:
    """The PDU of the MBAP frame with ``transaction_id`` in ``buffer``, if complete."""
    pos = 0
    while pos + 8 <= len(buffer):
        tid = int.from_bytes(buffer[pos : pos + 2], "big")
        length = int.from_bytes(buffer[pos + 4 : pos + 6], "big")
        end = pos + 6 + length
        if length < 2 or end > len(buffer):
            return None
        if tid == transaction_id:
            return bytes(buffer[pos + 7 : end])
        pos = end
    return None


_Call = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


# -------------------------------------------------------------------- driver
class ModbusTcpDriver(NetworkDriver):
    """A Modbus TCP device read as named tags (see module docstring)."""

    name: ClassVar[str] = "modbus"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ, Capability.STREAM})
    config_schema: ClassVar[dict[str, Any]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Modbus TCP device",
        "type": "object",
        "additionalProperties": False,
        "required": ["host", "tags"],
        "properties": {
            "host": {"type": "string", "minLength": 1, "description": "IP address or host name"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 502},
            "unit_id": {
                "type": "integer",
                "minimum": 0,
                "maximum": 255,
                "default": 1,
                "description": "Modbus unit (slave) id; behind a gateway, the target device",
            },
            "tags": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": _TAG_NAME},
                "additionalProperties": _TAG_SCHEMA,
            },
            "primary": {"type": "string", "pattern": _TAG_NAME, "description": "tag read() returns"},
            "word_order": {"type": "string", "enum": list(_ORDERS), "default": "big"},
            "byte_order": {"type": "string", "enum": list(_ORDERS), "default": "big"},
            "max_gap": {
                "type": "integer",
                "minimum": 0,
                "maximum": 124,
                "default": 0,
                "description": "unused addresses a block read may span to join two tags",
            },
            "max_block_registers": {"type": "integer", "minimum": 1, "maximum": MAX_REGISTERS, "default": MAX_REGISTERS},
            "max_block_bits": {"type": "integer", "minimum": 1, "maximum": MAX_BITS, "default": MAX_BITS},
            "probe": {
                "type": "boolean",
                "default": True,
                "description": "read the primary tag on connect to check the device answers",
            },
            "timeout_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 600,
                "default": 1.0,
                "description": "seconds to wait for one response",
            },
            "stable_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "default": 10.0},
            "stream_interval_s": {
                "type": "number",
                "minimum": 0,
                "maximum": 3600,
                "default": 1.0,
                "description": "seconds between readings of stream()",
            },
            **RECONNECT_SCHEMA,
            "make": {"type": "string", "minLength": 1, "description": "identity when the device does not report it"},
            "model": {"type": "string", "minLength": 1},
            "serial_number": {"type": "string", "minLength": 1},
        },
    }
    example_config: ClassVar[dict[str, Any]] = {
        "host": "192.0.2.10",
        "port": 502,
        "unit_id": 1,
        "tags": {
            "jacket_temp": {
                "function": "input_registers",
                "address": 0,
                "type": "int16",
                "factor": "0.1",
                "unit": "°C",
                "decimals": 1,
            },
            "pump_on": {"function": "coils", "address": 0, "type": "bool"},
        },
    }
    default_timeout_s: ClassVar[float] = 1.0

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Schema validation plus the tag checks of :func:`parse_tags`."""
        filled = super().validate_config(config)
        parse_tags(filled)
        return filled

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        self.tags: dict[str, TagSpec] = parse_tags(self.config)
        self.primary: TagSpec = self.tags[self.config.get("primary") or next(iter(self.tags))]
        self._plans: dict[tuple[str, ...], list[ReadBlock]] = {}
        self._split: set[tuple[Table, int, int]] = set()
        self._client: AsyncModbusTcpClient | None = None
        self._generation = itertools.count(1)
        self._current_generation = 0
        self._lost: asyncio.Event | None = None
        self._rx: tuple[bytes, float, datetime] = (b"", 0.0, utc_now())
        self._next_stream_at = 0.0

    # ------------------------------------------------------------ link state
    @property
    def endpoint(self) -> str:
        """``host:port`` of the device."""
        return f"{self.config['host']}:{self.config['port']}"

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook: remember received bytes and their arrival time."""
        if sending:
            self._rx = (b"", 0.0, self._rx[2])
        else:
            self._rx = (bytes(data), time.monotonic(), utc_now())
        return data

    def _trace_connect(self, generation: int, connected: bool) -> None:
        """pymodbus hook: a connection of ``generation`` went up or down."""
        if connected or generation != self._current_generation or not self._link_up:
            return
        log.info("%s: connection to %s lost", self.device_id, self.endpoint)
        self._mark_down()

    def _on_link_down(self) -> None:
        if self._lost is not None:
            self._lost.set()  # a request in flight fails at once

    async def _open_link(self) -> None:
        """Open a fresh TCP connection (closing any previous client)."""
        self._drop_client()
        generation = next(self._generation)
        self._current_generation = generation
        client = AsyncModbusTcpClient(
            self.config["host"],
            port=self.config["port"],
            name=f"mes-{self.device_id}",
            # Just inside the operation's own limit, so pymodbus reports the time-out (and
            # drops a connection after several in a row) before the base class cancels.
            timeout=self.timeout_s * 0.9,
            retries=0,
            reconnect_delay=0,  # reconnecting is ours: backoff, fail-fast while down
            trace_packet=self._trace_packet,
            trace_connect=lambda up: self._trace_connect(generation, up),
        )
        try:
            connected = await client.connect()
        except BaseException:  # cancelled (time-out) or worse: leave nothing open
            client.close()
            raise
        if not connected:
            client.close()
            raise DeviceUnavailable(
                f"cannot connect to Modbus TCP {self.endpoint}", device_id=self.device_id
            )
        self._client = client
        self._lost = asyncio.Event()
        self._link_up = True

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._current_generation = 0
        self._link_up = False
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def _drop_link(self) -> None:
        self._drop_client()

    # ------------------------------------------------------------- requests
    async def _request(self, what: str, call: _Call) -> tuple[ModbusPDU, Frame]:
        """Run one request; return the response and its PDU as received (with times).

        Fails fast while the link is down; a link lost mid-request is
        DeviceUnavailable at once (not after the time-out); a Modbus exception
        response is raised as a :class:`ModbusExceptionResponse`.
        """
        client, lost = self._client, self._lost
        if not self._link_up or client is None or lost is None:
            raise self._down_error(what)
        task = asyncio.ensure_future(call(client))
        task.add_done_callback(_consume)
        waiter = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
        if task not in done:
            raise DeviceUnavailable(f"{what}: connection to {self.endpoint} lost", device_id=self.device_id)
        try:
            response = task.result()
        except ModbusIOException as exc:
            if "no response" in str(exc).lower():  # pymodbus 3.x wording for a time-out
                raise DeviceTimeout(
                    f"{what}: no response from {self.endpoint} within {self.timeout_s:g} s",
                    device_id=self.device_id,
                ) from exc
            raise ProtocolError(f"{what}: {exc}", device_id=self.device_id) from exc
        except ConnectionException as exc:
            self._mark_down()
            raise DeviceUnavailable(f"{what}: {exc}", device_id=self.device_id) from exc
        except OSError as exc:
            self._mark_down()
            raise DeviceUnavailable(f"{what}: {exc}", device_id=self.device_id) from exc
        data, monotonic, timestamp = self._rx
        pdu = _find_pdu(data, response.transaction_id) if data else None
        if pdu is None:  # not captured (should not happen): the canonical re-encoding
            log.debug("%s: response bytes not captured; re-encoding", self.device_id)
            pdu = bytes([response.function_code]) + response.encode()
            monotonic, timestamp = time.monotonic(), utc_now()
        frame = Frame(pdu, monotonic, timestamp)
        if response.isError():
            code = getattr(response, "exception_code", 0)
            error = exception_from_code(response.function_code, code, context=what, raw=pdu)
            error.device_id = self.device_id
            raise error
        return response, frame

    async def _read_range(self, table: Table, address: int, count: int, what: str) -> Frame:
        """Read ``count`` addresses of ``table``; return the checked response PDU."""
        unit = self.config["unit_id"]
        readers: dict[Table, _Call] = {
            Table.COILS: lambda c: c.read_coils(address, count=count, device_id=unit),
            Table.DISCRETE_INPUTS: lambda c: c.read_discrete_inputs(address, count=count, device_id=unit),
            Table.HOLDING_REGISTERS: lambda c: c.read_holding_registers(address, count=count, device_id=unit),
            Table.INPUT_REGISTERS: lambda c: c.read_input_registers(address, count=count, device_id=unit),
        }
        _response, frame = await self._request(what, readers[table])
        pdu = frame.raw
        size = (count + 7) // 8 if table.is_bits else 2 * count
        if len(pdu) < 2 or pdu[0] != table.function_code or pdu[1] != size or len(pdu) != 2 + size:
            raise ProtocolError(
                f"{what}: response does not match the request "
                f"(function {table.function_code}, {size} data bytes expected)",
                device_id=self.device_id,
                raw=pdu,
            )
        return frame

    @staticmethod
    def _slice(tag: TagSpec, start: int, pdu: bytes) -> bytes:
        """The tag's raw bytes from a block response PDU starting at address ``start``."""
        data = pdu[2:]
        offset = tag.address - start
        if tag.table.is_bits:
            return bytes([(data[offset // 8] >> (offset % 8)) & 1])
        return data[2 * offset : 2 * (offset + tag.count)]

    def _tag_sample(self, tag: TagSpec, raw: bytes) -> Sample:
        """Parse a tag's bytes; any failure is ProtocolError with the bytes attached."""
        try:
            return tag.decode(raw)
        except DeviceError as exc:
            exc.raw = raw if exc.raw is None else exc.raw
            exc.device_id = exc.device_id or self.device_id
            raise
        except Exception as exc:
            raise ProtocolError(f"tag {tag.name!r}: {exc}", device_id=self.device_id, raw=raw) from exc

    # ------------------------------------------------------------------ hooks
    async def _connect(self) -> None:
        await self._start_link()
        if self.config["probe"]:
            tag = self.primary
            await self._read_range(tag.table, tag.address, tag.count, f"probe {tag.name}")

    async def _close(self) -> None:
        await self._stop_link()
        self._drop_client()
        if self._lost is not None:
            self._lost.set()  # wake anything waiting on the old link
        if self._up is not None:
            self._up.set()  # wake wait_connected(), which then sees the driver closed
            self._up = asyncio.Event()
        self._next_stream_at = 0.0

    async def _identify(self) -> DeviceIdentity:
        unit = self.config["unit_id"]
        cfg = self.config
        details = {"endpoint": self.endpoint, "unit_id": str(unit)}
        try:
            response, _frame = await self._request(
                "identify", lambda c: c.read_device_information(read_code=1, object_id=0, device_id=unit)
            )
        except ModbusIllegalRequest:  # FC 43/14 not implemented: what the configuration says
            details["source"] = "configuration"
            return DeviceIdentity(
                make=cfg.get("make", "unknown"),
                model=cfg.get("model", "unknown"),
                serial_number=cfg.get("serial_number", "unknown"),
                firmware="unknown",
                details=details,
            )
        info: Mapping[int, Any] = getattr(response, "information", {}) or {}

        def text(key: int, fallback: str) -> str:
            value = info.get(key)
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            value = str(value).strip() if value is not None else ""
            return value or fallback

        details["source"] = "device identification (FC 43/14)"
        return DeviceIdentity(
            make=text(0, cfg.get("make", "unknown")),
            model=text(1, cfg.get("model", "unknown")),
            serial_number=cfg.get("serial_number", "unknown"),
            firmware=text(2, "unknown"),
            details=details,
        )

    async def _read_raw(self, stable: bool) -> Frame:
        tag = self.primary
        frame = await self._read_range(tag.table, tag.address, tag.count, f"read {tag.name}")
        return Frame(self._slice(tag, tag.address, frame.raw), frame.monotonic, frame.timestamp)

    def _parse(self, raw: bytes) -> Sample:
        return self.primary.decode(raw)

    async def _stream_frame(self) -> Frame:
        now = time.monotonic()
        if self._next_stream_at > now:
            await asyncio.sleep(self._next_stream_at - now)
        self._next_stream_at = max(now, self._next_stream_at) + float(self.config["stream_interval_s"])
        return await self._read_raw(False)

    async def _stream_stop(self) -> None:
        self._next_stream_at = 0.0

    # ---------------------------------------------------------- multi-tag API
    def plan(self, names: Sequence[str] | None = None) -> list[ReadBlock]:
        """The block reads one cycle over ``names`` (default: all tags) makes."""
        key = tuple(names) if names is not None else tuple(self.tags)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        unknown = [n for n in key if n not in self.tags]
        if unknown:
            raise ConfigurationError(f"unknown tag(s): {', '.join(unknown)}", device_id=self.device_id)
        blocks: list[ReadBlock] = []
        for block in plan_blocks(
            (self.tags[n] for n in dict.fromkeys(key)),
            max_gap=self.config["max_gap"],
            max_registers=self.config["max_block_registers"],
            max_bits=self.config["max_block_bits"],
        ):
            if block.key in self._split and len(block.tags) > 1:
                blocks.extend(ReadBlock(t.table, t.address, t.count, (t,)) for t in block.tags)
            else:
                blocks.append(block)
        self._plans[key] = blocks
        return blocks

    async def poll(self, names: Sequence[str] | None = None, *, timeout: float | None = None) -> ModbusCycle:
        """Read ``names`` (default: all tags) in one cycle of block reads.

        Returns every tag's Reading, plus per-tag errors for blocks the device
        answered with an exception (or a malformed response). A block that
        spans an illegal address is re-read tag by tag, and stays split for
        later cycles, so the error lands on the tag that causes it. Link
        failures (time-out, disconnect, gateway) raise for the whole cycle.
        """
        blocks = self.plan(names)
        limit = timeout or self.timeout_s * (len(blocks) + 1)
        order = list(dict.fromkeys(names if names is not None else self.tags))
        started, t0 = utc_now(), time.monotonic()
        frames: dict[str, Frame] = {}
        errors: dict[str, DeviceError] = {}
        requests = 0
        async with self._operation("poll", limit):
            pending = list(blocks)
            while pending:
                block = pending.pop(0)
                requests += 1
                try:
                    frame = await self._read_range(
                        block.table, block.address, block.count,
                        f"read {block.table.value} {block.address}+{block.count}",
                    )
                except DeviceUnavailable:
                    raise
                except ModbusIllegalRequest as exc:
                    if len(block.tags) > 1 and exc.exception_code == 0x02:
                        log.warning("%s: block %s spans an illegal address; reading its tags one by one",
                                    self.device_id, block.key)
                        self._split.add(block.key)
                        self._plans.clear()
                        pending[:0] = [ReadBlock(t.table, t.address, t.count, (t,)) for t in block.tags]
                        continue
                    for tag in block.tags:
                        errors[tag.name] = exc
                    continue
                except DeviceError as exc:
                    for tag in block.tags:
                        errors[tag.name] = exc
                    continue
                for tag in block.tags:
                    raw = self._slice(tag, block.address, frame.raw)
                    frames[tag.name] = Frame(raw, frame.monotonic, frame.timestamp)
            readings: dict[str, Reading] = {}
            for name in order:
                tag_frame = frames.get(name)
                if tag_frame is None:
                    continue
                try:
                    sample = self._tag_sample(self.tags[name], tag_frame.raw)
                except DeviceError as exc:
                    errors[name] = exc
                    continue
                readings[name] = self._reading_from(tag_frame, sample)
        return ModbusCycle(
            readings=readings,
            errors={n: errors[n] for n in order if n in errors},
            requests=requests,
            started=started,
            elapsed_s=time.monotonic() - t0,
        )

    async def read_tags(
        self, names: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> dict[str, Reading]:
        """Readings of ``names`` (default: all tags), or raise the first tag's error."""
        cycle = await self.poll(names, timeout=timeout)
        for error in cycle.errors.values():
            raise error
        return cycle.readings

    async def cycles(
        self, interval_s: float, names: Sequence[str] | None = None
    ) -> AsyncGenerator[ModbusCycle, None]:
        """Poll every ``interval_s`` seconds (fixed rate, missed slots skipped).

        The lock is free between cycles; the generator ends when the driver
        is closed and raises when a cycle fails on the link.
        """
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        next_at = time.monotonic()
        while self.is_connected:
            yield await self.poll(names)
            next_at += interval_s
            now = time.monotonic()
            if next_at < now:
                next_at = now + (interval_s - (now - next_at) % interval_s)
            await asyncio.sleep(next_at - now)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished task's exception so an abandoned request never logs noise."""
    if not task.cancelled():
        task.exception()
