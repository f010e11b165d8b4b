"""Simulator link layer: pty and TCP sessions, pacing, link faults, threads."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from devices.errors import DeviceUnavailable
from devices.sim import BalanceModel, Fault, MtSicsSimulator, SimulatorThread
from devices.sim.server import GARBAGE, Session, SimulatorServer
from devices.transport import LineTransport
from tests.devices.helpers import LINKS, run, wait_until


class Echo(SimulatorServer):
    """Answers every line with the same line: a bare link for testing."""

    protocol = "echo"

    async def on_line(self, session: Session, line: bytes) -> None:
        await self.transmit(session, line, self.faults.take(line.decode().strip()))


async def client(sim: SimulatorServer) -> LineTransport:
    link = LineTransport(sim.url or "")
    await link.open()
    return link


@pytest.mark.parametrize("link", LINKS)
def test_replies_are_paced_at_bits_per_char_over_baud(link: str) -> None:
    async def body() -> None:
        sim = Echo(baud=2400)  # 240 bytes/s
        async with sim.serve(link):
            port = await client(sim)
            try:
                started = time.monotonic()
                await port.write(b"x" * 22 + b"\r\n")
                frame = await port.readline(5)
                elapsed = time.monotonic() - started
                # 24 bytes up, then 24 bytes down: >= 0.2 s on a 240 bytes/s line
                assert frame.raw == b"x" * 22 + b"\r\n" and elapsed >= 0.95 * 48 / 240
                assert sim.stats.bytes_sent == 24
            finally:
                await port.close()

    run(body())


def test_unpaced_and_invalid_baud() -> None:
    assert Echo(baud=0).char_time_s == 0
    assert Echo(baud=9600).line_time_s(18) == pytest.approx(18 / 960)
    with pytest.raises(ValueError):
        Echo(baud=-1)


@pytest.mark.parametrize("link", LINKS)
def test_link_faults(link: str) -> None:
    async def body() -> None:
        sim = Echo(baud=0)
        async with sim.serve(link):
            port = await client(sim)
            try:
                sim.faults.inject(Fault.GARBAGE, command="a")
                await port.write(b"a\r\n")
                assert (await port.readline(2)).raw == GARBAGE + b"a\r\n"

                sim.faults.inject(Fault.PARTIAL, command="abcdef")
                await port.write(b"abcdef\r\nz\r\n")
                assert (await port.readline(2)).raw == b"abcdz\r\n"  # half a line, glued to the next

                sim.split_pause_s = 0.03
                sim.faults.inject(Fault.SPLIT, command="split")
                await port.write(b"split\r\n")
                first = await port.readline(2)
                assert first.raw == b"split\r\n"
                assert (Fault.SPLIT, "split") in sim.faults.applied

                sim.faults.inject(Fault.DISCONNECT, command="bye")
                await port.write(b"bye\r\n")
                with pytest.raises(DeviceUnavailable):
                    await port.readline(2)
                assert sim.stats.disconnects == 1
            finally:
                await port.close()

    run(body())


def test_split_pieces_arrive_separately() -> None:
    async def body() -> None:
        sim = Echo(baud=0)
        sim.split_pause_s = 0.05
        async with sim.serve("tcp"):
            assert sim.url is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", int(sim.url.rsplit(":", 1)[1]))
            sim.faults.inject(Fault.SPLIT)
            writer.write(b"123456789\r\n")
            pieces = [await reader.read(100) for _ in range(3)]
            assert b"".join(pieces) == b"123456789\r\n" and all(pieces)
            writer.close()

    run(body())


def test_pty_symlink_follows_a_reopened_pty(tmp_path: Path) -> None:
    async def body() -> None:
        link_path = tmp_path / "balance"
        sim = Echo(baud=0)
        seen: list[str] = []
        sim.on_url_change = seen.append
        url = await sim.start_pty(link=str(link_path))
        try:
            assert url == str(link_path) and link_path.is_symlink()
            old = sim.sessions[0]
            await sim.disconnect(old)
            assert len(seen) == 2 and sim.sessions[0] is not old and old.closed.is_set()
            assert os.path.realpath(link_path).startswith("/dev/pts/")  # the kernel may reuse the number
            port = await client(sim)
            await port.write(b"ping\r\n")
            assert (await port.readline(2)).raw == b"ping\r\n"
            await port.close()
        finally:
            await sim.stop()
        assert not link_path.exists()

    run(body())


def test_tcp_sessions_come_and_go() -> None:
    async def body() -> None:
        sim = Echo(baud=0)
        async with sim.serve("tcp"):
            port = await client(sim)
            session = await sim.wait_for_session()
            assert sim.stats.sessions == 1 and session.is_open
            await port.close()
            await asyncio.wait_for(session.closed.wait(), 5)
            await wait_until(lambda: not sim.sessions, what="session removed")

    run(body())


def test_pipelined_commands_are_counted_in_flight() -> None:
    async def body() -> None:
        sim = Echo(baud=0)
        async with sim.serve("tcp"):
            port = await client(sim)
            await port.write(b"one\r\ntwo\r\nthree\r\n")
            for _ in range(3):
                await port.readline(2)
            assert sim.stats.max_in_flight == 3
            await port.close()

    run(body())


def test_runaway_command_input_is_bounded() -> None:
    async def body() -> None:
        sim = MtSicsSimulator(baud=0)
        async with sim.serve("tcp"):
            port = await client(sim)
            await port.write(b"X" * 300)
            assert (await port.readline(2)).raw == b"ET\r\n"
            await port.close()

    run(body())


def test_serve_rejects_unknown_link() -> None:
    async def body() -> None:
        with pytest.raises(ValueError):
            async with Echo().serve("usb"):
                pass

    run(body())


def test_simulator_thread_serves_sync_code() -> None:
    sim = MtSicsSimulator(BalanceModel(load="3.00"), baud=0)
    runner = SimulatorThread(sim, link="tcp")
    with runner as url:
        assert url.startswith("socket://127.0.0.1:")
        sim.balance.set_weight("4.00")  # thread-safe from here

        async def ask() -> bytes:
            port = LineTransport(url)
            await port.open()
            await port.write(b"SI\r\n")
            frame = await port.readline(5)
            await port.close()
            return frame.raw

        assert run(ask()) == b"S S       4.00 g\r\n"

        async def sessions() -> int:
            return sim.stats.sessions

        assert runner.call(sessions) == 1  # runs in the simulator's own loop
    with SimulatorThread(MtSicsSimulator(baud=0), link="pty") as url:
        assert os.path.exists(url)
