"""CR LF line transport over pyserial, for asyncio drivers.

:class:`LineTransport` opens any ``serial.serial_for_url`` port – a device
node (``/dev/ttyUSB0``, a pseudo-terminal), ``socket://host:port`` or
``loop://`` – and runs one reader thread that hands received bytes to the
event loop. Bytes become a :class:`~devices.base.Frame` only when their CR LF
terminator has arrived; a partial line is never delivered, and is dropped
when the link fails. Frames carry the monotonic and UTC time at which their
terminator was received.

Why a thread: pyserial's port classes are blocking and ``loop://`` has no
file descriptor to register with the event loop. One thread per open port,
with a short read time-out and ``cancel_read`` for a prompt close, works for
every URL form.

:class:`SerialDriver` is the base for drivers on such a link: the shared
configuration schema (``port``, ``baudrate``, ``bytesize``, ``parity``,
``stopbits``, time-outs) and the open/close lifecycle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import serial
from serial.urlhandler import protocol_socket

from devices.base import Driver, Frame
from devices.errors import DeviceTimeout, DeviceUnavailable, ProtocolError

__all__ = ["LineTransport", "SerialDriver", "bits_per_character", "serial_config_schema"]

log = logging.getLogger(__name__)

CRLF = b"\r\n"

#: Most bytes the reader thread collects before handing them to the event loop.
_CHUNK_BYTES = 4096

#: What a port may raise on a best-effort call (flush, cancel, shutdown).
_PORT_ERRORS = (OSError, serial.SerialException, NotImplementedError, AttributeError)


def bits_per_character(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the wire per character: start + data + parity + stop (8N1 → 10)."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


class LineTransport:
    """Asyncio access to a pyserial port, delivering CR LF-terminated frames.

    ``resync_on_open`` discards the bytes before the first terminator after
    opening (for continuous-output devices joined mid-line). Complete frames
    wait in a bounded queue; when it overflows the oldest are dropped and
    counted in :attr:`frames_dropped`.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: float = 1,
        terminator: bytes = CRLF,
        max_line_bytes: int = 1024,
        max_frames: int = 1000,
        resync_on_open: bool = False,
        write_timeout: float = 2.0,
        xonxoff: bool = False,
        rtscts: bool = False,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self.terminator = terminator
        self.max_line_bytes = max_line_bytes
        self.resync_on_open = resync_on_open
        self.write_timeout = write_timeout
        self.xonxoff = xonxoff
        self.rtscts = rtscts
        self.frames_dropped = 0
        self.last_rx_monotonic = 0.0
        self._frames: collections.deque[Frame] = collections.deque(maxlen=max_frames)
        self._buffer = bytearray()
        self._synced = not resync_on_open
        self._error: BaseException | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -------------------------------------------------------------- lifecycle
    @property
    def is_open(self) -> bool:
        """True while the port is open and no link error has been seen."""
        return self._port is not None and self._error is None

    @property
    def character_time_s(self) -> float:
        """Seconds one character takes on the wire at the configured settings."""
        return bits_per_character(self.bytesize, self.parity, self.stopbits) / self.baudrate

    async def open(self) -> None:
        """Open the port (in a worker thread) and start the reader thread."""
        if self._port is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._error = None
        self._stop.clear()
        self._buffer.clear()
        self._frames.clear()
        self._synced = not self.resync_on_open
        try:
            self._port = await asyncio.to_thread(self._open_port)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._reader, name=f"devices-reader {self.url}", daemon=True
        )
        self._thread.start()

    def _open_port(self) -> serial.SerialBase:
        port = serial.serial_for_url(self.url, do_not_open=True)
        port.baudrate = self.baudrate
        port.bytesize = self.bytesize
        port.parity = self.parity
        port.stopbits = self.stopbits
        port.xonxoff = self.xonxoff
        port.rtscts = self.rtscts
        port.timeout = 0.1  # reader wakes at least this often to see a stop request
        port.write_timeout = self.write_timeout
        port.open()
        with contextlib.suppress(*_PORT_ERRORS):
            port.reset_input_buffer()
        return port

    async def close(self) -> None:
        """Stop the reader and close the port. Idempotent."""
        port, thread = self._port, self._thread
        self._port = None
        self._thread = None
        if port is None:
            return
        self._stop.set()
        self._fail(DeviceUnavailable(f"{self.url}: closed"))
        if isinstance(port, protocol_socket.Serial):
            # pyserial's socket close() shuts down and closes the socket (waking
            # the reader), then sleeps 0.3 s: let it run in the background.
            threading.Thread(target=_quiet_close, args=(port,), daemon=True).start()
        else:
            with contextlib.suppress(*_PORT_ERRORS):
                port.cancel_read()
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        if not isinstance(port, protocol_socket.Serial):
            await asyncio.to_thread(_quiet_close, port)

    # ---------------------------------------------------------------- reading
    def _reader(self) -> None:
        """Reader thread: move bytes from the port to the event loop."""
        port = self._port
        assert port is not None and self._loop is not None
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
                # Drain what is already there, bounded: a flooding link must not
                # keep the data from ever reaching the event loop.
                while data and len(data) < _CHUNK_BYTES and port.in_waiting:
                    data += port.read(min(port.in_waiting, _CHUNK_BYTES))
            except Exception as exc:  # SerialException, OSError, closed port
                if not self._stop.is_set():
                    self._post(self._fail, DeviceUnavailable(f"{self.url}: link lost: {exc}"))
                return
            if data:
                self._post(self._feed, data, time.monotonic(), datetime.now(UTC))

    def _post(self, callback: Any, *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # event loop closed under us: nothing left to notify
            self._stop.set()

    def _feed(self, data: bytes, monotonic: float, timestamp: datetime) -> None:
        """Event-loop side: split the byte stream on the terminator."""
        if self._error is not None:
            return
        self.last_rx_monotonic = monotonic
        self._buffer += data
        term = self.terminator
        while True:
            end = self._buffer.find(term)
            if end < 0:
                break
            line = bytes(self._buffer[: end + len(term)])
            del self._buffer[: end + len(term)]
            if not self._synced:
                self._synced = True
                log.debug("%s: dropped %r before first terminator", self.url, line)
                continue
            if len(self._frames) == self._frames.maxlen:
                self.frames_dropped += 1
            self._frames.append(Frame(line, monotonic, timestamp))
        if len(self._buffer) > self.max_line_bytes:
            junk = bytes(self._buffer)
            self._buffer.clear()
            self._synced = True
            self._frames.append(Frame(junk, monotonic, timestamp))  # parses as an error
        self._notify()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
            if self._buffer:
                log.debug("%s: discarded partial line %r", self.url, bytes(self._buffer))
            self._buffer.clear()
        self._notify()

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def readline(self, timeout: float | None = None) -> Frame:
        """Return the next complete frame; raise DeviceTimeout or DeviceUnavailable."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._frames:
                return self._frames.popleft()
            if self._error is not None:
                raise self._error_copy()
            if self._port is None:
                raise DeviceUnavailable(f"{self.url}: not open")
            await self._wait(deadline, "no complete line")

    async def wait_quiet(self, gap: float, timeout: float) -> list[Frame]:
        """Wait until nothing has arrived for ``gap`` s; return the frames seen."""
        deadline = time.monotonic() + timeout
        seen: list[Frame] = []
        while True:
            while self._frames:
                seen.append(self._frames.popleft())
            if self._error is not None:
                raise self._error_copy()
            quiet_until = self.last_rx_monotonic + gap
            now = time.monotonic()
            if now >= quiet_until:
                return seen
            if now >= deadline:
                raise DeviceTimeout(f"{self.url}: line never went quiet")
            assert self._wakeup is not None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(quiet_until, deadline) - now)
            except TimeoutError:
                pass

    async def _wait(self, deadline: float | None, what: str) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        if self._frames or self._error is not None:
            return
        if deadline is None:
            await self._wakeup.wait()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeviceTimeout(f"{self.url}: {what} in time")
        try:
            await asyncio.wait_for(self._wakeup.wait(), remaining)
        except TimeoutError:
            raise DeviceTimeout(f"{self.url}: {what} in time") from None

    def _error_copy(self) -> DeviceUnavailable:
        err = self._error
        message = err.message if isinstance(err, DeviceUnavailable) else str(err)
        return DeviceUnavailable(message)

    def discard_frames(self) -> list[Frame]:
        """Drop complete frames waiting in the queue (not the line in progress)."""
        dropped = list(self._frames)
        self._frames.clear()
        return dropped

    def discard_input(self) -> list[Frame]:
        """Drop waiting frames *and* the partial line: start from a clean slate."""
        dropped = self.discard_frames()
        if self._buffer:
            dropped.append(Frame(bytes(self._buffer), time.monotonic(), datetime.now(UTC)))
            self._buffer.clear()
        return dropped

    # ---------------------------------------------------------------- writing
    async def write(self, data: bytes) -> None:
        """Send ``data`` (in a worker thread: a full output buffer must not block the loop)."""
        port = self._port
        if port is None or self._error is not None:
            raise DeviceUnavailable(f"{self.url}: not open")
        try:
            await asyncio.to_thread(_write_all, port, data)
        except serial.SerialTimeoutException as exc:
            raise DeviceTimeout(f"{self.url}: write timed out") from exc
        except (serial.SerialException, OSError, AttributeError, TypeError) as exc:
            raise DeviceUnavailable(f"{self.url}: write failed: {exc}") from exc


def _write_all(port: serial.SerialBase, data: bytes) -> None:
    written = port.write(data)
    if written is not None and written != len(data):
        raise serial.SerialTimeoutException("short write")
    port.flush()


def _quiet_close(port: serial.SerialBase) -> None:
    try:
        port.close()
    except Exception:  # best effort: the port may already be gone
        log.debug("error closing %r", port, exc_info=True)


def serial_config_schema(
    *,
    title: str,
    baudrate: int = 9600,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: float = 1,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON Schema for a serial-line driver, with the device's factory defaults."""
    properties: dict[str, Any] = {
        "port": {
            "type": "string",
            "minLength": 1,
            "description": "pyserial URL: /dev/ttyUSB0, COM3, socket://host:port, loop://",
        },
        "baudrate": {
            "type": "integer",
            "enum": [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200],
            "default": baudrate,
        },
        "bytesize": {"type": "integer", "enum": [7, 8], "default": bytesize},
        "parity": {"type": "string", "enum": ["N", "E", "O"], "default": parity},
        "stopbits": {"type": "number", "enum": [1, 2], "default": stopbits},
        "xonxoff": {"type": "boolean", "default": False, "description": "software handshake"},
        "rtscts": {"type": "boolean", "default": False, "description": "hardware handshake"},
        "timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 600,
            "default": 2.0,
            "description": "seconds allowed for one ordinary command",
        },
        "stable_timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 600,
            "default": 10.0,
            "description": "seconds allowed for a stable read, tare or zero",
        },
    }
    properties.update(extra or {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": properties,
        "required": ["port"],
        "additionalProperties": False,
    }


class SerialDriver(Driver):
    """Base for drivers speaking CR LF lines over a pyserial port."""

    #: Discard bytes before the first terminator (continuous-output devices).
    resync_on_open: ClassVar[bool] = False

    def __init__(self, device_id: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        self._transport: LineTransport | None = None

    def _new_transport(self) -> LineTransport:
        cfg = self.config
        return LineTransport(
            cfg["port"],
            baudrate=cfg["baudrate"],
            bytesize=cfg["bytesize"],
            parity=cfg["parity"],
            stopbits=cfg["stopbits"],
            xonxoff=cfg["xonxoff"],
            rtscts=cfg["rtscts"],
            resync_on_open=self.resync_on_open,
        )

    @property
    def transport(self) -> LineTransport:
        """The open transport; DeviceUnavailable if there is none."""
        if self._transport is None:
            raise DeviceUnavailable("not connected", device_id=self.device_id)
        return self._transport

    async def _open_transport(self) -> LineTransport:
        self._transport = self._new_transport()
        await self._transport.open()
        return self._transport

    async def _close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    def _decode(self, raw: bytes) -> str:
        """ASCII text of a frame without its CR LF; ProtocolError otherwise."""
        if not raw.endswith(CRLF):
            raise ProtocolError("frame without CR LF terminator", raw=raw)
        try:
            text = raw[:-2].decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"non-ASCII bytes in frame: {exc.reason}", raw=raw) from None
        if any(ch < " " or ch == "\x7f" for ch in text):
            raise ProtocolError("control characters in frame", raw=raw)
        return text
