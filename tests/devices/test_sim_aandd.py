"""The A&D stream-mode simulator's frames and timing, checked with a raw line client."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from devices.sim import AandDSimulator, BalanceModel
from devices.transport import LineTransport
from tests.devices.helpers import LINKS, run


@pytest.mark.parametrize(
    ("setup", "frame"),
    [
        (lambda b: b.set_weight("123.45"), b"ST,+00123.45  g\r\n"),
        (lambda b: b.set_weight("-0.5"), b"ST,-00000.50  g\r\n"),
        (lambda b: b.set_unstable(), b"US,+00000.00  g\r\n"),
        (lambda b: b.set_overload(), b"OL,+9999999E+19\r\n"),
        (lambda b: b.set_underload(), b"OL,-9999999E+19\r\n"),
        (lambda b: b.set_fault(), None),
    ],
)
def test_frames(setup, frame: bytes | None) -> None:  # type: ignore[no-untyped-def]
    sim = AandDSimulator(BalanceModel())
    setup(sim.balance)
    assert sim.frame() == frame


@pytest.mark.parametrize(("unit", "field"), [("kg", b" kg"), ("pcs", b" PC"), ("tola", b"  t"), ("gr", b" GN")])
def test_unit_fields(unit: str, field: bytes) -> None:
    sim = AandDSimulator(BalanceModel(unit=unit, decimals=3, load="1.5"))
    assert sim.frame() == b"ST,+0001.500" + field + b"\r\n"


def test_busy_repeats_the_last_value_as_motion() -> None:
    sim = AandDSimulator(BalanceModel(load="2"))
    sim.frame()
    sim.balance.set_busy()
    assert sim.frame() == b"US,+00002.00  g\r\n"


@pytest.mark.parametrize("link", LINKS)
def test_stream_rate_follows_rate_hz_and_ignores_commands(link: str) -> None:
    async def body() -> None:
        sim = AandDSimulator(BalanceModel(load="1"), baud=9600, rate_hz=40)
        async with sim.serve(link):
            port = LineTransport(sim.url or "", resync_on_open=True)
            await port.open()
            try:
                await port.write(b"T\r\n")
                frames = [await port.readline(2) for _ in range(3)]
                assert {f.raw for f in frames} == {b"ST,+00001.00  g\r\n"}
                t0, sent0 = time.monotonic(), sim.stats.replies
                await asyncio.sleep(0.25)  # a measuring window, on the simulator's side
                elapsed, sent = time.monotonic() - t0, sim.stats.replies - sent0
                assert 1 <= sent <= elapsed * 40 + 1
                assert sim.stats.commands == ["T"]
                assert sim.balance.tare_value == Decimal("0.00")
            finally:
                await port.close()

    run(body())


def test_invalid_rate() -> None:
    with pytest.raises(ValueError):
        AandDSimulator(rate_hz=-1)


def test_fault_state_sends_nothing() -> None:
    async def body() -> None:
        sim = AandDSimulator(BalanceModel(), baud=0, rate_hz=0)
        sim.balance.set_fault()
        async with sim.serve("tcp"):
            port = LineTransport(sim.url or "")
            await port.open()
            try:
                started = time.monotonic()
                assert await port.wait_quiet(0.1, timeout=2) == []
                sim.balance.set_fault(False)
                assert (await port.readline(2)).raw.startswith(b"ST,")
                assert time.monotonic() - started < 2
            finally:
                await port.close()

    run(body())
