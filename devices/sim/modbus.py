"""``mes sim modbus``: a Modbus TCP server (pymodbus) with a configurable map and faults.

The register map is a :class:`RegisterMap`: four tables held here (coils and
discrete inputs as bits, holding and input registers as 16-bit words), set
programmatically, typed (``set_value("holding_registers", 10, "float32",
"21.5", word_order="little")``) or from a JSON file. pymodbus serves it: the
simulator answers through pymodbus' ``SimDevice`` *action* hook, copying the
requested addresses from the map on every request, so changes are visible at
once. Addresses outside the map answer exception 02 (illegal data address).

Faults (:class:`ModbusFaults`, thread-safe, for one request, some or all):

* ``inject_exception(code, function=None, address=None, times=1)`` – answer an
  exception response (e.g. 06 busy, 0B gateway target failed);
* ``delay_s`` / ``delay_next(seconds)`` – slow responses (a timeout, when
  longer than the client waits);
* ``disconnect_next()`` – drop every client connection instead of answering.

Serving is on 127.0.0.1 and an ephemeral port by default::

    sim = ModbusSimulator(RegisterMap.demo())
    async with sim.serve():             # sim.host, sim.port, sim.url == "tcp://127.0.0.1:PORT"
        ...

From the shell (to be wired as ``mes sim modbus``)::

    python -m devices.sim.modbus --port 5020 [--map map.json] [--delay 0.2] \
        [--exception 6@100] [--duration 60]

It prints ``modbus simulator listening on tcp://127.0.0.1:PORT (unit any)``
and serves until interrupted. A JSON map looks like::

    {"size": 1000,
     "holding_registers": {"0": [1, 2, 3]},
     "coils": {"0": [true, false]},
     "values": [{"function": "input_registers", "address": 10, "type": "float32",
                 "value": "21.5", "word_order": "big"}]}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from devices.drivers.modbus import DataType, Table, decode_registers, encode_value
from devices.sim.runner import stop_on_signals, wait_for_stop

__all__ = [
    "ModbusFaults",
    "ModbusSimStats",
    "ModbusSimulator",
    "RegisterMap",
    "build_parser",
    "main",
    "run",
]

log = logging.getLogger(__name__)

#: pymodbus function codes → table, for reads and writes.
_FC_TABLE: dict[int, Table] = {
    1: Table.COILS,
    5: Table.COILS,
    15: Table.COILS,
    2: Table.DISCRETE_INPUTS,
    3: Table.HOLDING_REGISTERS,
    6: Table.HOLDING_REGISTERS,
    16: Table.HOLDING_REGISTERS,
    22: Table.HOLDING_REGISTERS,
    23: Table.HOLDING_REGISTERS,
    4: Table.INPUT_REGISTERS,
}


class RegisterMap:
    """The four Modbus tables, ``size`` addresses each (0 … size-1). Thread-safe."""

    def __init__(self, size: int = 1000) -> None:
        if not 16 <= size <= 65536:
            raise ValueError("size must be 16 … 65536")
        self.size = size
        self._lock = threading.Lock()
        self._bits: dict[Table, bytearray] = {
            Table.COILS: bytearray(size),
            Table.DISCRETE_INPUTS: bytearray(size),
        }
        self._words: dict[Table, list[int]] = {
            Table.HOLDING_REGISTERS: [0] * size,
            Table.INPUT_REGISTERS: [0] * size,
        }

    def _check(self, table: Table, address: int, count: int) -> None:
        if address < 0 or count < 0 or address + count > self.size:
            raise ValueError(f"{table.value} {address}+{count} is outside 0…{self.size - 1}")

    # ---------------------------------------------------------------- words
    def set_registers(self, function: Table | str, address: int, words: Sequence[int]) -> None:
        """Store 16-bit ``words`` from ``address`` on (holding or input registers)."""
        table = Table(function)
        if table.is_bits:
            raise ValueError(f"{table.value} hold bits; use set_bits")
        if any(not 0 <= w <= 0xFFFF for w in words):
            raise ValueError("registers are 0 … 65535")
        self._check(table, address, len(words))
        with self._lock:
            self._words[table][address : address + len(words)] = list(words)

    def registers(self, function: Table | str, address: int, count: int) -> list[int]:
        """``count`` registers from ``address``."""
        table = Table(function)
        self._check(table, address, count)
        with self._lock:
            return list(self._words[table][address : address + count])

    # ----------------------------------------------------------------- bits
    def set_bits(self, function: Table | str, address: int, bits: Sequence[bool]) -> None:
        """Store ``bits`` from ``address`` on (coils or discrete inputs)."""
        table = Table(function)
        if not table.is_bits:
            raise ValueError(f"{table.value} hold registers; use set_registers")
        self._check(table, address, len(bits))
        with self._lock:
            self._bits[table][address : address + len(bits)] = bytes(1 if b else 0 for b in bits)

    def bits(self, function: Table | str, address: int, count: int) -> list[bool]:
        """``count`` bits from ``address``."""
        table = Table(function)
        self._check(table, address, count)
        with self._lock:
            return [bool(b) for b in self._bits[table][address : address + count]]

    # ---------------------------------------------------------------- typed
    def set_value(
        self,
        function: Table | str,
        address: int,
        data_type: DataType | str,
        value: bool | int | float | Decimal | str,
        *,
        word_order: str = "big",
        byte_order: str = "big",
    ) -> None:
        """Store one typed value the way a device would (see the driver's decoding)."""
        table, dtype = Table(function), DataType(data_type)
        if dtype is DataType.BOOL:
            self.set_bits(table, address, [bool(value) and value not in ("0", "false")])
            return
        if isinstance(value, bool):
            value = int(value)
        self.set_registers(table, address, encode_value(value, dtype, word_order=word_order, byte_order=byte_order))

    def value(
        self,
        function: Table | str,
        address: int,
        data_type: DataType | str,
        *,
        word_order: str = "big",
        byte_order: str = "big",
    ) -> bool | int | float:
        """Read one typed value back (for tests and the demo ramp)."""
        table, dtype = Table(function), DataType(data_type)
        if dtype is DataType.BOOL:
            return self.bits(table, address, 1)[0]
        words = self.registers(table, address, dtype.registers)
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        return decode_registers(raw, dtype, word_order=word_order, byte_order=byte_order)

    # -------------------------------------------------------------- loading
    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RegisterMap:
        """Build a map from a JSON-style mapping (see module docstring)."""
        known = {"size", "values", *(t.value for t in Table)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown register map keys: {', '.join(sorted(unknown))}")
        regmap = cls(int(spec.get("size", 1000)))
        for table in Table:
            for start, values in (spec.get(table.value) or {}).items():
                if table.is_bits:
                    regmap.set_bits(table, int(start), [bool(v) for v in values])
                else:
                    regmap.set_registers(table, int(start), [int(v) for v in values])
        for item in spec.get("values", []):
            regmap.set_value(
                item["function"],
                int(item["address"]),
                item["type"],
                item["value"],
                word_order=item.get("word_order", "big"),
                byte_order=item.get("byte_order", "big"),
            )
        return regmap

    @classmethod
    def demo(cls) -> RegisterMap:
        """A small process-cell map for demos (documented in ``mes sim modbus --help``)."""
        regmap = cls(1000)
        regmap.set_value(Table.INPUT_REGISTERS, 0, DataType.INT16, 215)  # jacket temp ×0.1 °C
        regmap.set_value(Table.INPUT_REGISTERS, 1, DataType.UINT16, 1013)  # pressure hPa
        regmap.set_value(Table.INPUT_REGISTERS, 2, DataType.FLOAT32, 12.5)  # flow L/h
        regmap.set_value(Table.HOLDING_REGISTERS, 0, DataType.UINT32, 0)  # batch counter
        regmap.set_value(Table.HOLDING_REGISTERS, 2, DataType.FLOAT64, 37.0)  # set point °C
        regmap.set_bits(Table.COILS, 0, [True, False, True])  # pump, valve, agitator
        regmap.set_bits(Table.DISCRETE_INPUTS, 0, [True, False])  # door closed, e-stop
        return regmap


@dataclass
class _ExceptionFault:
    code: int
    table: Table | None
    address: int | None
    remaining: int | None  # None: every matching request


class ModbusFaults:
    """Faults applied to requests (thread-safe; drive it from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exceptions: list[_ExceptionFault] = []
        self._delays: list[float] = []
        self._disconnects = 0
        #: Delay applied to every response, seconds.
        self.delay_s = 0.0

    def inject_exception(
        self,
        code: int,
        *,
        function: Table | str | None = None,
        address: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer exception ``code`` to matching requests, ``times`` times (None: always).

        A request matches when ``function`` is its table (or None) and its
        address range contains ``address`` (or None).
        """
        exc_code = ExcCodes(code)  # refuses codes pymodbus cannot send
        with self._lock:
            self._exceptions.append(
                _ExceptionFault(int(exc_code), Table(function) if function else None, address, times)
            )

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Delay the next ``times`` responses by ``seconds``."""
        with self._lock:
            self._delays.extend([float(seconds)] * times)

    def disconnect_next(self, times: int = 1) -> None:
        """Drop the client connections instead of answering the next ``times`` requests."""
        with self._lock:
            self._disconnects += times

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._exceptions.clear()
            self._delays.clear()
            self._disconnects = 0
            self.delay_s = 0.0

    def take(self, table: Table, address: int, count: int) -> tuple[float, bool, int | None]:
        """For one request: (delay seconds, disconnect?, exception code or None)."""
        with self._lock:
            delay = self.delay_s + (self._delays.pop(0) if self._delays else 0.0)
            if self._disconnects:
                self._disconnects -= 1
                return delay, True, None
            for fault in self._exceptions:
                if fault.table not in (None, table):
                    continue
                if fault.address is not None and not address <= fault.address < address + max(1, count):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._exceptions.remove(fault)
                return delay, False, fault.code
            return delay, False, None


class _RequestHandler(ServerRequestHandler):
    """One client connection; each request is answered with its *own* transaction id.

    pymodbus 3.16's handler reads ``self.last_pdu`` again after awaiting the
    datastore, so when a slow request (``delay``) is overtaken by the next
    one, the late answer goes out under the newer request's transaction id –
    a bug a real device does not have and that would make the simulator lie
    in exactly the time-out tests it exists for. Here every request is bound
    to its handling before anything is awaited.
    """

    def handle_later(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is not None:
            task = self.loop.create_task(self._answer(pdu, addr))
            _pending.add(task)
            task.add_done_callback(_pending.discard)

    async def _answer(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        response: ModbusPDU
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except NoSuchIdException:
            if self.server.ignore_missing_devices:
                return
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:  # like pymodbus: a datastore failure is exception 04
            log.exception("modbus simulator: request %s failed", pdu)
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        if self.transport is not None:
            self.server_send(response, addr)


_pending: set[asyncio.Task[None]] = set()


class _TcpServer(ModbusTcpServer):
    """pymodbus' TCP server with the request handler above."""

    def callback_new_connection(self) -> ServerRequestHandler:
        return _RequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


@dataclass
class ModbusSimStats:
    """What the simulator saw, for assertions in tests and benches."""

    requests: int = 0
    by_function: dict[int, int] = field(default_factory=dict)
    exceptions: int = 0
    disconnects: int = 0


class ModbusSimulator:
    """A Modbus TCP server over a :class:`RegisterMap`, with :class:`ModbusFaults`."""

    protocol: ClassVar[str] = "modbus"

    def __init__(
        self,
        registers: RegisterMap | None = None,
        *,
        unit_id: int = 0,
        identity: Mapping[str, str] | None = None,
        faults: ModbusFaults | None = None,
    ) -> None:
        """``unit_id`` 0 answers every unit id; ``identity`` feeds FC 43/14
        (keys VendorName, ProductCode, MajorMinorRevision, ...)."""
        if not 0 <= unit_id <= 255:
            raise ValueError("unit_id must be 0 … 255")
        self.registers = registers or RegisterMap()
        self.unit_id = unit_id
        self.identity = dict(
            identity
            if identity is not None
            else {"VendorName": "open-mes", "ProductCode": "SIM-MODBUS", "MajorMinorRevision": "1.0"}
        )
        self.faults = faults or ModbusFaults()
        self.stats = ModbusSimStats()
        self.host = "127.0.0.1"
        self.port = 0
        self._server: _TcpServer | None = None

    @property
    def url(self) -> str:
        """``tcp://host:port`` while serving."""
        return f"tcp://{self.host}:{self.port}"

    def driver_config(self, **extra: Any) -> dict[str, Any]:
        """``host``/``port`` for a :class:`~devices.drivers.modbus.ModbusTcpDriver` config."""
        return {"host": self.host, "port": self.port, **extra}

    # -------------------------------------------------------------- serving
    def _device(self) -> SimDevice:
        """pymodbus' device: four separate tables of ``size`` addresses; the data stays in the map."""
        size = self.registers.size

        def bits() -> list[SimData]:
            return [SimData(0, count=size, values=False, datatype=SimDataType.BITS)]

        def words() -> list[SimData]:
            return [SimData(0, count=size, values=0, datatype=SimDataType.REGISTERS)]

        # (coils, discrete inputs, holding registers, input registers), each bit addressable
        return SimDevice(id=self.unit_id, simdata=(bits(), bits(), words(), words()), action=self._action)

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve on ``host:port`` (0 = a free port); return :attr:`url`."""
        if self._server is not None:
            raise RuntimeError("simulator already serving")
        identity = ModbusDeviceIdentification(info_name=self.identity) if self.identity else None
        server = _TcpServer(self._device(), address=(host, port), identity=identity, trace_pdu=self._trace_pdu)
        await server.serve_forever(background=True)
        assert server.transport is not None
        bound = server.transport.sockets[0].getsockname()  # type: ignore[attr-defined]
        self._server = server
        self.host, self.port = bound[0], bound[1]
        return self.url

    async def start_tcp(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Alias of :meth:`start` (so :class:`~devices.sim.SimulatorThread` can run it)."""
        return await self.start(port, host)

    async def stop(self) -> None:
        """Stop serving and drop every client; the port may be reused at once."""
        server, self._server = self._server, None
        if server is not None:
            self._drop_connections(server)
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports finish closing

    @contextlib.asynccontextmanager
    async def serve(self, port: int = 0, host: str = "127.0.0.1") -> AsyncIterator[ModbusSimulator]:
        """``async with sim.serve():`` – start, yield, always stop."""
        await self.start(port, host)
        try:
            yield self
        finally:
            await self.stop()

    def client_count(self) -> int:
        """Client connections currently open."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    def _drop_connections(self, server: _TcpServer) -> None:
        for handler in list(server.active_connections.values()):
            transport = getattr(handler, "transport", None)
            if transport is not None:
                transport.abort()  # a cable pulled: no FIN handshake

    async def disconnect_clients(self) -> None:
        """Drop every client connection now (the listener stays open)."""
        if self._server is not None:
            self.stats.disconnects += 1
            self._drop_connections(self._server)

    # ----------------------------------------------------------------- data
    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus hook on every request received and response sent: statistics."""
        stats = self.stats
        if not sending:
            stats.requests += 1
            stats.by_function[pdu.function_code] = stats.by_function.get(pdu.function_code, 0) + 1
        elif pdu.isError():
            stats.exceptions += 1
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus SimDevice hook, called for every access inside the map before it is answered."""
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        # For bit tables pymodbus passes the count of 16-bit words it touches.
        span = count * 16 - address % 16 if table.is_bits else count
        delay, disconnect, code = self.faults.take(table, address, span)
        if delay > 0:
            await asyncio.sleep(delay)
        if disconnect:
            await self.disconnect_clients()
            return ExcCodes.DEVICE_FAILURE  # never sent: the connection is gone
        if code is not None:
            return ExcCodes(code)
        regmap = self.registers
        if table.is_bits:
            first_word = address // 16
            if set_values is not None:
                regmap.set_bits(table, address, [bool(v) for v in set_values])
            lo = first_word * 16
            hi = min(regmap.size, lo + count * 16)
            bits = regmap.bits(table, lo, hi - lo) + [False] * (count * 16 - (hi - lo))
            for k in range(count):
                word = 0
                for j, bit in enumerate(bits[16 * k : 16 * k + 16]):
                    if bit:
                        word |= 1 << j
                registers[first_word - start_address + k] = word
            return None
        if set_values is not None:
            regmap.set_registers(table, address, [int(v) for v in set_values])
        registers[address - start_address : address - start_address + count] = regmap.registers(
            table, address, count
        )
        return None


# ------------------------------------------------------------------------ CLI
def _exception_spec(text: str) -> tuple[int, int | None]:
    code_text, _, address_text = text.partition("@")
    try:
        code = int(code_text, 0)
        ExcCodes(code)
        address = int(address_text, 0) if address_text else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected CODE or CODE@ADDRESS with a Modbus exception code (1-8, 10, 11)"
        ) from None
    return code, address


def build_parser(prog: str = "mes sim modbus") -> argparse.ArgumentParser:
    """The argument parser (exposed so the ``mes`` CLI can embed it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulate a Modbus TCP device. Without --map it serves a demo map: "
        "input registers 0 jacket temperature int16 x0.1 degC (ramps), 1 pressure uint16 hPa, "
        "2-3 flow float32 L/h; holding 0-1 batch counter uint32 (counts up), 2-5 set point "
        "float64 degC; coils 0-2 pump, valve, agitator; discrete inputs 0-1 door, e-stop.",
    )
    parser.add_argument("--port", type=int, default=5020, help="TCP port (0 = any free port; default 5020)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--unit", type=int, default=0, help="answer only this unit id (default 0 = any)")
    parser.add_argument("--map", type=Path, help="JSON register map (see devices/sim/modbus.py)")
    parser.add_argument("--delay", type=float, default=0.0, help="delay every response by SECONDS")
    parser.add_argument(
        "--exception",
        type=_exception_spec,
        action="append",
        default=[],
        metavar="CODE[@ADDRESS]",
        help="always answer this exception code (for requests covering ADDRESS)",
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


async def _demo_ramp(regmap: RegisterMap, stop: asyncio.Event) -> None:
    """Keep the demo map alive: temperature wanders, the batch counter counts."""
    step = 0
    while not stop.is_set():
        step += 1
        regmap.set_value(Table.INPUT_REGISTERS, 0, DataType.INT16, 215 + (step % 20) - 10)
        regmap.set_value(Table.HOLDING_REGISTERS, 0, DataType.UINT32, step)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Serve as ``args`` say until interrupted, ``stop`` is set or ``args.duration`` passes."""
    if args.map is not None:
        regmap = RegisterMap.from_spec(json.loads(args.map.read_text(encoding="utf-8")))
    else:
        regmap = RegisterMap.demo()
    sim = ModbusSimulator(regmap, unit_id=args.unit)
    sim.faults.delay_s = args.delay
    for code, address in args.exception:
        sim.faults.inject_exception(code, address=address, times=None)
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        await sim.start(args.port, args.host)
        unit = "any" if args.unit == 0 else str(args.unit)
        print(f"modbus simulator listening on {sim.url} (unit {unit})", flush=True)
        ramp = asyncio.create_task(_demo_ramp(regmap, stop)) if args.map is None else None
        try:
            await wait_for_stop(stop, args.duration)
        finally:
            stop.set()
            if ramp is not None:
                await ramp
            await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``mes sim modbus``); returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0 … 65535")
    if not 0 <= args.unit <= 255:
        parser.error("--unit must be 0 … 255")
    if args.delay < 0:
        parser.error("--delay must be >= 0")
    if args.map is not None and not args.map.is_file():
        parser.error(f"--map {args.map}: no such file")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"mes sim modbus: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
