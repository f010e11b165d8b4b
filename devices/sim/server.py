"""Serving a simulated device over a pseudo-terminal or TCP loopback.

:class:`SimulatorServer` owns the link: a pty pair (``os.openpty``; the
client opens the slave path like any serial port) or a TCP listener on
127.0.0.1 (the client uses ``socket://127.0.0.1:PORT``). Each client is a
:class:`Session`; a protocol subclass implements :meth:`on_line` (commands)
and/or :meth:`on_session` (continuous output).

Pacing: every byte sent takes ``bits_per_char / baud`` seconds (9600 8N1 →
960 bytes/s). A reply is handed to the client when its last byte would have
arrived, and a command is acted on only after it could have been received,
so throughput and latency match a real serial line. ``baud=0`` disables
pacing.

Link faults from the :class:`~devices.sim.faults.FaultPlan` are applied in
:meth:`SimulatorServer.transmit`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
import tty
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

from devices.sim.faults import Fault, FaultPlan
from devices.sim.model import BalanceModel

__all__ = ["GARBAGE", "Session", "SimStats", "SimulatorServer", "SimulatorThread"]

log = logging.getLogger(__name__)

CRLF = b"\r\n"
#: Noise put in front of a reply by the ``garbage`` fault.
GARBAGE = b"\x00\xff\x13#~\x8f"
#: Lateness of the simulator's own timers tolerated as jitter when pacing output.
_JITTER_S = 0.005
#: Longest command line a simulator accepts before answering a transmission error.
MAX_COMMAND_BYTES = 256


@dataclass
class SimStats:
    """What the simulator saw and did, for assertions in tests."""

    commands: list[str] = field(default_factory=list)
    replies: int = 0
    sessions: int = 0
    disconnects: int = 0
    max_in_flight: int = 0
    bytes_sent: int = 0


class Session(abc.ABC):
    """One client link. Writes are paced at the simulated baud rate."""

    def __init__(self, server: SimulatorServer, number: int) -> None:
        self.server = server
        self.number = number
        self.closed = asyncio.Event()
        self._free_at = 0.0  # monotonic time the line is free again
        self._queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self._busy = False
        self._buffer = bytearray()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker = self.spawn(self._process())
        self.state: dict[str, Any] = {}  # per-session protocol state

    @property
    def is_open(self) -> bool:
        """True until the link is closed (by either side)."""
        return not self.closed.is_set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` for this session; it is cancelled when the session closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------- receive
    def feed(self, data: bytes) -> None:
        """Bytes from the client: queue each complete CR LF command line."""
        now = time.monotonic()
        self._buffer += data
        while (end := self._buffer.find(CRLF)) >= 0:
            line = bytes(self._buffer[: end + 2])
            del self._buffer[: end + 2]
            in_flight = self._queue.qsize() + (1 if self._busy else 0) + 1
            stats = self.server.stats
            stats.max_in_flight = max(stats.max_in_flight, in_flight)
            self._queue.put_nowait((line, now))
        if len(self._buffer) > MAX_COMMAND_BYTES:  # runaway input: treat as one bad line
            self._queue.put_nowait((bytes(self._buffer), now))
            self._buffer.clear()

    async def _process(self) -> None:
        char_time = self.server.char_time_s
        while True:
            line, arrived = await self._queue.get()
            self._busy = True
            try:
                # The command is complete only once its last byte crossed the line.
                delay = arrived + len(line) * char_time - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.server.on_line(self, line)
            except (ConnectionError, OSError) as exc:
                log.debug("session %s: %s", self.number, exc)
                await self.close()
                return
            except Exception:
                log.exception("simulator failed handling %r", line)
            finally:
                self._busy = False

    # ----------------------------------------------------------------- send
    async def write_paced(self, data: bytes) -> None:
        """Send ``data`` as if at the simulated baud rate (arrives when complete)."""
        if not data:
            return
        if not self.is_open:
            raise ConnectionError("session closed")
        now = time.monotonic()
        # Back-to-back output stays back-to-back: a few ms of timer overshoot is
        # scheduler jitter, not an idle line (a UART fed in time never pauses).
        start = self._free_at if now - self._free_at < _JITTER_S else now
        done = start + len(data) * self.server.char_time_s
        self._free_at = done
        # Always yield: an unpaced continuous output must not starve the event loop.
        await asyncio.sleep(max(0.0, done - now))
        await self._write(data)
        self.server.stats.bytes_sent += len(data)

    async def pause(self, seconds: float) -> None:
        """Keep the line idle for ``seconds`` (inter-character gap)."""
        self._free_at = max(time.monotonic(), self._free_at) + seconds

    @abc.abstractmethod
    async def _write(self, data: bytes) -> None:
        """Hand bytes to the client now."""

    @abc.abstractmethod
    def _drop_link(self) -> None:
        """Break the link (the client sees a disconnect)."""

    async def close(self) -> None:
        """Close the link and stop the session's tasks."""
        if self.closed.is_set():
            return
        self.closed.set()
        self._drop_link()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.server._session_closed(self)


class _TcpSession(Session):
    def __init__(self, server: SimulatorServer, number: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(server, number)
        self._reader = reader
        self._writer = writer
        self.spawn(self._receive())

    async def _receive(self) -> None:
        try:
            while data := await self._reader.read(4096):
                self.feed(data)
        except (ConnectionError, OSError):
            pass
        await self.close()  # the client hung up (close() never cancels its caller)

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def _drop_link(self) -> None:
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()  # no graceful FIN/linger: a cable pulled mid-line


class _PtySession(Session):
    def __init__(self, server: SimulatorServer, number: int, master: int, slave: int) -> None:
        super().__init__(server, number)
        self.master = master
        self.slave = slave
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.feed(data)
        else:
            self._loop.remove_reader(self.master)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self.master, view)
                view = view[sent:]
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_writer(self.master, ready.set_result, None)
                try:
                    await ready
                finally:
                    self._loop.remove_writer(self.master)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    raise ConnectionError("pty closed") from exc
                raise

    def _drop_link(self) -> None:
        self._loop.remove_reader(self.master)
        self._loop.remove_writer(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class SimulatorServer(abc.ABC):
    """Base of the scale simulators: link handling, pacing, fault application."""

    protocol: ClassVar[str] = ""

    def __init__(
        self,
        balance: BalanceModel | None = None,
        *,
        baud: int = 9600,
        bits_per_char: float = 10,
        faults: FaultPlan | None = None,
    ) -> None:
        if baud < 0:
            raise ValueError("baud must be >= 0 (0 = unpaced)")
        self.balance = balance or BalanceModel()
        self.faults = faults or FaultPlan()
        self.baud = baud
        self.bits_per_char = bits_per_char
        self.stats = SimStats()
        self.url: str | None = None
        self.split_pause_s = 0.01
        #: A pulled cable: while set, nothing reaches the client (commands are still heard
        #: and answered into the void, so the device carries on as a real one would).
        self.silent = False
        self.sessions: list[Session] = []
        self._server: asyncio.base_events.Server | None = None
        self._pty_link: str | None = None
        self._serving_pty = False
        self._numbers = 0
        self._session_event: asyncio.Event | None = None
        self.on_url_change: Callable[[str], None] | None = None

    # -------------------------------------------------------------- pacing
    @property
    def char_time_s(self) -> float:
        """Seconds per character on the simulated line (0 when unpaced)."""
        return self.bits_per_char / self.baud if self.baud else 0.0

    def line_time_s(self, nbytes: int) -> float:
        """Seconds ``nbytes`` take on the simulated line."""
        return nbytes * self.char_time_s

    # -------------------------------------------------------------- serving
    async def start_pty(self, link: str | None = None) -> str:
        """Serve on a new pseudo-terminal; return its slave path (or ``link``)."""
        self._serving_pty = True
        self._pty_link = link
        self._open_pty()
        assert self.url is not None
        return self.url

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: a plain byte pipe
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        if self._pty_link:
            tmp = f"{self._pty_link}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(path, tmp)
            os.replace(tmp, self._pty_link)
            path = self._pty_link
        self._new_session(lambda n: _PtySession(self, n, master, slave))
        self._set_url(path)

    async def start_tcp(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve on TCP ``host:port`` (0 = any free port); return the socket:// URL."""
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()
        self._set_url(f"socket://{bound[0]}:{bound[1]}")
        assert self.url is not None
        return self.url

    def _set_url(self, url: str) -> None:
        self.url = url
        if self.on_url_change is not None:
            self.on_url_change(url)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._new_session(lambda n: _TcpSession(self, n, reader, writer))

    def _new_session(self, factory: Callable[[int], Session]) -> Session:
        self._numbers += 1
        session = factory(self._numbers)
        self.sessions.append(session)
        self.stats.sessions += 1
        session.spawn(self.on_session(session))
        if self._session_event is not None:
            self._session_event.set()
        return session

    def _session_closed(self, session: Session) -> None:
        with contextlib.suppress(ValueError):
            self.sessions.remove(session)

    async def wait_for_session(self, timeout: float = 5.0) -> Session:
        """Wait until a client session exists (TCP: connected); return the newest."""
        async with asyncio.timeout(timeout):
            while not self.sessions:
                self._session_event = asyncio.Event()
                await self._session_event.wait()
        return self.sessions[-1]

    async def stop(self) -> None:
        """Stop serving and close every session."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            await session.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        self._serving_pty = False
        if self._pty_link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pty_link)

    @contextlib.asynccontextmanager
    async def serve(self, link: str = "tcp") -> AsyncIterator[SimulatorServer]:
        """``async with sim.serve("pty" | "tcp"):`` – start, yield, always stop."""
        if link == "pty":
            await self.start_pty()
        elif link == "tcp":
            await self.start_tcp()
        else:
            raise ValueError(f"link must be 'pty' or 'tcp', not {link!r}")
        try:
            yield self
        finally:
            await self.stop()

    # ---------------------------------------------------------- disconnect
    async def disconnect(self, session: Session) -> None:
        """Drop a client link; a pty is replaced by a fresh one (new path/link)."""
        self.stats.disconnects += 1
        await session.close()
        if isinstance(session, _PtySession) and self._serving_pty:
            self._open_pty()

    # ----------------------------------------------------------- transmit
    async def transmit(self, session: Session, line: bytes, faults: frozenset[Fault]) -> None:
        """Send one reply line (with CR LF) through the link faults chosen for it."""
        if self.silent:  # the line takes its time on the wire, and the bytes are lost
            await asyncio.sleep(max(self.line_time_s(len(line)), 0.002))
            return
        data = line
        if Fault.GARBAGE in faults:
            data = GARBAGE + data
        if Fault.DISCONNECT in faults:
            await session.write_paced(data[: max(1, len(data) // 2)])
            await self.disconnect(session)
            raise ConnectionError("disconnect fault injected")
        if Fault.PARTIAL in faults:
            await session.write_paced(data[: max(1, len(data) // 2)])
            return
        self.stats.replies += 1
        if Fault.SPLIT in faults and len(data) >= 3:
            third = len(data) // 3
            for piece in (data[:third], data[third : 2 * third], data[2 * third :]):
                await session.write_paced(piece)
                await session.pause(self.split_pause_s)
            return
        await session.write_paced(data)

    # ------------------------------------------------------------ protocol
    async def on_session(self, session: Session) -> None:
        """Called once per client session (start continuous output here); optional."""
        return None

    @abc.abstractmethod
    async def on_line(self, session: Session, line: bytes) -> None:
        """Called for each complete command line (with CR LF) from the client: the protocol."""


class SimulatorThread:
    """Run a simulator in its own thread and event loop (bench, demos, sync code).

    ``with SimulatorThread(sim, link="pty") as url:`` starts serving and
    returns the port URL; leaving the block stops it. The balance model and
    the fault plan are thread-safe, so drive them from the calling thread.
    """

    def __init__(self, sim: SimulatorServer, *, link: str = "pty", port: int = 0) -> None:
        self.sim = sim
        self.link = link
        self.port = port
        self.url: str | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"sim-{sim.protocol}", daemon=True)

    def start(self, timeout: float = 10.0) -> str:
        """Start the thread; return the URL once serving."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator did not start")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        assert self.url is not None
        return self.url

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            if self.link == "pty":
                self.url = await self.sim.start_pty()
            else:
                self.url = await self.sim.start_tcp(self.port)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.sim.stop()

    def call(self, fn: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 10.0) -> Any:
        """Run the coroutine function ``fn`` in the simulator's loop; return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
