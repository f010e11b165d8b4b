"""The MT-SICS simulator's replies, checked with a raw line client (no driver parser)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from devices.sim import BalanceModel, Fault, MtSicsSimulator
from devices.transport import LineTransport
from tests.devices.helpers import LINKS, run


@contextlib.asynccontextmanager
async def raw(link: str = "tcp", **kwargs: object) -> AsyncIterator[tuple[MtSicsSimulator, LineTransport]]:
    kwargs.setdefault("baud", 0)
    sim = MtSicsSimulator(BalanceModel(load="100.00"), **kwargs)  # type: ignore[arg-type]
    async with sim.serve(link):
        port = LineTransport(sim.url or "")
        await port.open()
        try:
            yield sim, port
        finally:
            await port.close()


async def ask(port: LineTransport, command: bytes, timeout: float = 3.0) -> bytes:
    await port.write(command + b"\r\n")
    return (await port.readline(timeout)).raw


@pytest.mark.parametrize("link", LINKS)
def test_replies(link: str) -> None:
    async def body() -> None:
        async with raw(link) as (sim, port):
            assert await ask(port, b"SI") == b"S S     100.00 g\r\n"
            assert await ask(port, b"S") == b"S S     100.00 g\r\n"
            assert await ask(port, b"I4") == b'I4 A "0123456789"\r\n'
            assert await ask(port, b"I2") == b'I2 A "SIM-220 220.00 g"\r\n'
            assert await ask(port, b"I3") == b'I3 A "1.0.0 SIM.1.0.0"\r\n'
            assert await ask(port, b"@") == b'I4 A "0123456789"\r\n'
            assert await ask(port, b"T") == b"T S     100.00 g\r\n"
            assert await ask(port, b"SI") == b"S S       0.00 g\r\n"
            assert await ask(port, b"TA") == b"TA A     100.00 g\r\n"
            assert await ask(port, b"TA 25.5 g") == b"TA A      25.50 g\r\n"
            assert await ask(port, b"TA 25.5 kg") == b"TA L\r\n"
            assert await ask(port, b"TA x g") == b"TA L\r\n"
            assert await ask(port, b"TAC") == b"TAC A\r\n"
            sim.balance.set_weight("-1.5")
            assert await ask(port, b"SI") == b"S S      -1.50 g\r\n"
            assert await ask(port, b"Z") == b"Z A\r\n"
            assert await ask(port, b"XYZ") == b"ES\r\n"
            assert await ask(port, b"S\xb5") == b"ET\r\n"
            assert sim.stats.commands[:3] == ["SI", "S", "I4"]

    run(body())


def test_conditions() -> None:
    async def body() -> None:
        async with raw(stability_timeout_s=0.05) as (sim, port):
            sim.balance.set_unstable(True)
            assert await ask(port, b"SI") == b"S D     100.00 g\r\n"
            assert await ask(port, b"S") == b"S I\r\n"  # no stability within the time-out
            assert await ask(port, b"T") == b"T I\r\n"
            assert await ask(port, b"Z") == b"Z I\r\n"
            sim.balance.set_unstable(False)
            sim.balance.set_overload()
            assert await ask(port, b"S") == b"S +\r\n"
            assert await ask(port, b"T") == b"T +\r\n"
            assert await ask(port, b"Z") == b"Z +\r\n"
            sim.balance.set_underload()
            assert await ask(port, b"SI") == b"S -\r\n"
            assert await ask(port, b"Z") == b"Z -\r\n"
            sim.balance.set_busy(True)
            for command, reply in ((b"SI", b"S I"), (b"TA", b"TA I"), (b"TA 1 g", b"TA I"), (b"TAC", b"TAC I")):
                assert await ask(port, command) == reply + b"\r\n"
            assert await ask(port, b"@") == b'I4 A "0123456789"\r\n'  # @ clears busy
            assert await ask(port, b"SI") == b"S -\r\n"

    run(body())


def test_stable_request_completes_when_the_load_settles() -> None:
    async def body() -> None:
        async with raw(stability_timeout_s=5) as (sim, port):
            sim.balance.set_unstable(True)
            await port.write(b"S\r\n")
            await asyncio.sleep(0.05)
            assert port.discard_frames() == []
            sim.balance.set_unstable(False)
            assert (await port.readline(3)).raw == b"S S     100.00 g\r\n"

    run(body())


@pytest.mark.parametrize("fault", [Fault.ERROR_ES, Fault.ERROR_ET, Fault.ERROR_EL])
def test_injected_error_replies(fault: Fault) -> None:
    async def body() -> None:
        async with raw() as (sim, port):
            sim.faults.inject(fault, command="T")
            assert await ask(port, b"SI") == b"S S     100.00 g\r\n"
            assert await ask(port, b"T") == fault.value.upper().encode() + b"\r\n"
            assert sim.balance.tare_value == 0  # the command was not executed

    run(body())


@pytest.mark.parametrize("link", LINKS)
def test_sir_repeats_until_any_command(link: str) -> None:
    async def body() -> None:
        async with raw(link, baud=9600) as (sim, port):
            await port.write(b"SIR\r\n")
            lines = [(await port.readline(2)).raw for _ in range(5)]
            assert set(lines) == {b"S S     100.00 g\r\n"}
            await port.write(b"I4\r\n")
            tail = await port.wait_quiet(0.1, timeout=3)
            assert tail and tail[-1].raw == b'I4 A "0123456789"\r\n'
            assert all(f.raw.startswith(b"S S") for f in tail[:-1])
            assert await port.wait_quiet(0.1, timeout=3) == []  # and it stays quiet

    run(body())


def test_commands_wait_for_their_bytes_to_cross_the_line() -> None:
    async def body() -> None:
        async with raw(baud=1200) as (sim, port):
            started = time.monotonic()
            reply = await ask(port, b"I3")
            # "I3\r\n" up, then the reply down, at 120 bytes/s
            assert time.monotonic() - started >= 0.95 * (4 + len(reply)) / 120

    run(body())
