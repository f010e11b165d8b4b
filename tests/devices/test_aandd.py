"""A&D stream-mode driver against its simulator over a real pty and TCP loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal

import pytest

from devices.drivers.aandd import AandDScale, parse_standard_frame
from devices.errors import DeviceTimeout, DeviceUnavailable, NotSupported, ProtocolError
from devices.reading import ReadingStatus
from devices.sim import AandDSimulator, BalanceModel, Fault
from devices.sim.server import GARBAGE
from tests.devices.helpers import LINKS, aandd, read_until, run, wait_until

over_links = pytest.mark.parametrize("link", LINKS)


# --------------------------------------------------------------------- parser
@pytest.mark.parametrize(
    ("text", "status", "value", "unit"),
    [
        ("ST,+00123.45  g", ReadingStatus.OK, Decimal("123.45"), "g"),
        ("US,-0001.234 kg", ReadingStatus.DYNAMIC, Decimal("-1.234"), "kg"),
        ("QT,+00012345 PC", ReadingStatus.OK, Decimal("12345"), "pcs"),
        ("ST,+000123.4  %", ReadingStatus.OK, Decimal("123.4"), "%"),
        ("ST,OK,+0001.234 kg", ReadingStatus.OK, Decimal("1.234"), "kg"),
        ("ST,+0012.3456ozt", ReadingStatus.OK, Decimal("12.3456"), "ozt"),
        ("ST,+00001.00 GN", ReadingStatus.OK, Decimal("1.00"), "gr"),
        ("ST,+00001.00  t", ReadingStatus.OK, Decimal("1.00"), "tola"),
        ("OL,+9999999E+19", ReadingStatus.OVERLOAD, None, ""),
        ("OL,-9999999E+19", ReadingStatus.UNDERLOAD, None, ""),
        ("OL,+999999.9  g", ReadingStatus.OVERLOAD, None, ""),
        ("OL,-99999999 PC", ReadingStatus.UNDERLOAD, None, ""),
    ],
)
def test_parse_standard_frame(text: str, status: ReadingStatus, value: Decimal | None, unit: str) -> None:
    sample = parse_standard_frame(text)
    assert (sample.status, sample.value, sample.unit) == (status, value, unit)


@pytest.mark.parametrize(
    "text",
    [
        "ST,+00123.45",  # no unit
        "ST,00123.45  g",  # no sign
        "ST,+001.23.4  g",  # two decimal points
        "ST,+.0012345  g",
        "XX,+00123.45  g",
        "ST,+00123.45 g g",
        "ST,+9999999E+19",  # overflow data needs OL
        "S S     100.00 g",  # MT-SICS, wrong family
        "ST,+00NaN.45  g",
        "",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_standard_frame(text)


# ---------------------------------------------------------------- driver+sim
@over_links
def test_reads_stable_and_unstable(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            reading = await scale.read()
            assert (reading.status, reading.value, reading.unit) == (ReadingStatus.OK, Decimal("12.34"), "g")
            assert reading.raw == b"ST,+00012.34  g\r\n"
            sim.balance.set_unstable(True)
            await read_until(scale, lambda r: r.status is ReadingStatus.DYNAMIC)

    run(body())


@over_links
def test_read_returns_fresh_data_not_a_backlog(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            await wait_until(lambda: len(scale.transport._frames) >= 3, what="a backlog")
            sim.balance.set_weight("99.99")
            # count the simulator's replies between two frames: a frame the simulator has
            # begun to send (and counted) but that has not fully arrived is fresh, not backlog
            arrived = len(scale.transport._frames)
            await wait_until(lambda: len(scale.transport._frames) > arrived, what="the next frame")
            sent = sim.stats.replies
            reading = await scale.read()
            assert sim.stats.replies > sent
            assert reading.value in (Decimal("12.34"), Decimal("99.99"))
            await read_until(scale, lambda r: r.value == Decimal("99.99"))

    run(body())


@over_links
def test_stable_read_polls_until_settled(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            sim.balance.set_unstable(True)
            task = asyncio.create_task(scale.read(stable=True))
            sent = sim.stats.replies
            await wait_until(lambda: sim.stats.replies >= sent + 3, what="dynamic frames")
            assert not task.done()
            sim.balance.set_unstable(False)
            reading = await task
            assert reading.status is ReadingStatus.OK and reading.stable

    run(body())


@over_links
def test_stable_read_times_out_while_moving(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            sim.balance.set_unstable(True)
            with pytest.raises(DeviceTimeout):
                await scale.read(stable=True, timeout=0.2)
            await read_until(scale, lambda r: r.status is ReadingStatus.DYNAMIC)

    run(body())


@over_links
@pytest.mark.parametrize(
    ("condition", "status"),
    [("set_overload", ReadingStatus.OVERLOAD), ("set_underload", ReadingStatus.UNDERLOAD)],
)
def test_out_of_range(link: str, condition: str, status: ReadingStatus) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            getattr(sim.balance, condition)()
            reading = await read_until(scale, lambda r: r.status is not ReadingStatus.OK)
            assert reading.status is status and reading.value is None
            assert reading.raw.startswith(b"OL,")

    run(body())


@over_links
def test_busy_shows_as_motion(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            await scale.read()  # the balance has shown a value before it goes busy
            sim.balance.set_busy(True)
            reading = await read_until(scale, lambda r: r.status is not ReadingStatus.OK)
            assert reading.status is ReadingStatus.DYNAMIC and reading.value == Decimal("12.34")

    run(body())


@over_links
def test_garbage_frame_is_protocol_error_then_recovers(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            await scale.read()
            sim.faults.inject(Fault.GARBAGE)
            with pytest.raises(ProtocolError) as info:
                for _ in range(50):  # frames in flight may still be clean
                    await scale.read()
            assert info.value.raw.startswith(GARBAGE)
            assert (await scale.read()).value == Decimal("12.34")

    run(body())


@over_links
def test_partial_frame_never_becomes_a_value(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            await scale.read()
            sim.faults.inject(Fault.PARTIAL)
            with pytest.raises(ProtocolError) as info:
                for _ in range(50):
                    await scale.read()
            # half a frame glued to the next one: rejected as a whole
            assert info.value.raw.endswith(b"ST,+00012.34  g\r\n")
            assert (await scale.read()).value == Decimal("12.34")

    run(body())


@over_links
def test_split_frames_are_reassembled(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            sim.faults.split = True
            values = [(await scale.read()).value for _ in range(3)]
            assert values == [Decimal("12.34")] * 3
            assert (Fault.SPLIT, None) in sim.faults.applied

    run(body())


@over_links
def test_disconnect_mid_frame(link: str) -> None:
    async def body() -> None:
        async with aandd(link) as (sim, scale):
            await scale.read()
            sim.faults.inject(Fault.DISCONNECT)
            with pytest.raises(DeviceUnavailable):
                for _ in range(50):
                    await scale.read()
            assert sim.stats.disconnects == 1

    run(body())


@over_links
def test_stream_order_and_line_rate(link: str) -> None:
    async def body() -> None:
        async with aandd(link, baud=9600, rate_hz=0, config={"baudrate": 9600}) as (sim, scale):
            readings = []
            async with contextlib.aclosing(scale.stream()) as stream:
                async for reading in stream:
                    readings.append(reading)
                    if len(readings) == 12:
                        break
            assert [r.sequence for r in readings] == list(range(1, 13))
            assert {r.raw for r in readings} == {b"ST,+00012.34  g\r\n"}
            t0, sent0 = time.monotonic(), sim.stats.bytes_sent
            await asyncio.sleep(0.2)  # a measuring window, on the simulator's side
            elapsed, sent = time.monotonic() - t0, sim.stats.bytes_sent - sent0
            assert sent <= elapsed * 960 + 17 + 0.005 * 960  # 17-byte frames at 960 bytes/s

    run(body())


@over_links
def test_joining_mid_frame_is_not_an_error(link: str) -> None:
    async def body() -> None:
        sim = AandDSimulator(BalanceModel(load="5"), baud=9600, rate_hz=0)
        async with sim.serve(link):
            for _ in range(3):  # connect repeatedly at arbitrary points of the stream
                async with AandDScale("AD", {"port": sim.url, "baudrate": 9600, "bytesize": 8, "parity": "N"}) as scale:
                    assert (await scale.read()).value == Decimal("5.00")

    run(body())


@over_links
def test_listen_only_capabilities_and_identity(link: str) -> None:
    async def body() -> None:
        async with aandd(link, config={"model": "FX-120i", "serial_number": "T0001"}) as (sim, scale):
            ident = await scale.identify()
            assert (ident.make, ident.model, ident.serial_number) == ("A&D", "FX-120i", "T0001")
            with pytest.raises(NotSupported):
                await scale.tare()
            with pytest.raises(NotSupported):
                await scale.zero()
            assert sim.stats.commands == []  # the driver never talks to the balance

    run(body())


def test_silent_balance_times_out() -> None:
    async def body() -> None:
        sim = AandDSimulator(BalanceModel(), baud=9600)
        sim.balance.set_fault(True)  # no output at all
        async with sim.serve("tcp"):
            async with AandDScale("AD", {"port": sim.url, "timeout_s": 0.2}) as scale:
                with pytest.raises(DeviceTimeout):
                    await scale.read()

    run(body())


def test_factory_defaults_are_a_and_d_defaults() -> None:
    scale = AandDScale("AD", {"port": "/dev/ttyUSB1"})
    assert (scale.config["baudrate"], scale.config["bytesize"], scale.config["parity"]) == (2400, 7, "E")
