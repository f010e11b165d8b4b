"""A TCP proxy on loopback that can pull the cable: for fault runs of networked drivers.

:class:`LinkProxy` forwards every connection to a target ``host:port`` (a Modbus or OPC UA
simulator, or any server). ``silent = True`` is a pulled cable: the TCP connections stay open
but no byte gets through in either direction (what a switch port going dark or a cut fibre
looks like to both ends until their own time-outs fire); :meth:`LinkProxy.drop` closes every
connection at once (a device server rebooting)::

    proxy = LinkProxy("127.0.0.1", sim.port)
    async with proxy.serve():               # proxy.port: point the driver here
        proxy.silent = True
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["LinkProxy"]

_CHUNK = 65536


class LinkProxy:
    """Forwards TCP connections to ``host:port``; can go silent or drop them (see module docstring)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.host = "127.0.0.1"
        self.port = 0
        #: While set, bytes are read and thrown away in both directions.
        self.silent = False
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on 127.0.0.1 (a free port); return the port."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[LinkProxy]:
        """``async with proxy.serve():`` start, yield, always stop."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def drop(self) -> None:
        """Close every open connection (both sides see the link go)."""
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(_CHUNK):
                if self.silent:
                    continue  # the cable is pulled: the bytes never arrive
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            with contextlib.suppress(Exception):
                sink.transport.abort()
