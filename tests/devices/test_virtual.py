"""The in-memory virtual scale, as other code's tests will use it."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import pytest

from devices import create_driver
from devices.drivers.virtual import VirtualScale
from devices.errors import DeviceBusy, DeviceFault, DeviceTimeout, DeviceUnavailable, ProtocolError
from devices.reading import ReadingStatus, Weight
from tests.devices.helpers import run


def test_reads_what_the_test_puts_on_the_pan() -> None:
    async def body() -> None:
        async with VirtualScale("V-1", {"weight": "12.50"}) as scale:
            reading = await scale.read()
            assert (reading.value, reading.unit, reading.raw) == (Decimal("12.50"), "g", b"ok 12.50 g\r\n")
            scale.balance.set_weight("0.1234")
            assert (await scale.read()).value == Decimal("0.12")
            scale.balance.set_unstable(True)
            assert (await scale.read()).status is ReadingStatus.DYNAMIC
            scale.balance.set_overload()
            assert (await scale.read()).status is ReadingStatus.OVERLOAD
            scale.balance.set_underload()
            assert (await scale.read()).status is ReadingStatus.UNDERLOAD
            scale.balance.set_weight(1)
            scale.balance.set_busy(True)
            assert (await scale.read()).status is ReadingStatus.BUSY
            scale.balance.set_busy(False)
            scale.balance.set_fault(True)
            fault = await scale.read()
            assert fault.status is ReadingStatus.FAULT and fault.raw == b"fault\r\n"

    run(body())


def test_stable_read_waits_and_reports_busy_on_timeout() -> None:
    async def body() -> None:
        async with VirtualScale("V-1", {"stability_timeout_s": 0.05}) as scale:
            scale.balance.set_unstable(True)
            assert (await scale.read(stable=True)).status is ReadingStatus.BUSY
            task = asyncio.create_task(scale.read(stable=True))
            await asyncio.sleep(0)
            scale.balance.set_unstable(False)
            assert (await task).status is ReadingStatus.OK

    run(body())


def test_fail_next_and_drop_link() -> None:
    async def body() -> None:
        async with VirtualScale("V-1") as scale:
            scale.fail_next(DeviceTimeout("injected"))
            with pytest.raises(DeviceTimeout) as info:
                await scale.read()
            assert info.value.device_id == "V-1"
            assert (await scale.read()).sequence == 1
            scale.drop_link()
            with pytest.raises(DeviceUnavailable):
                await scale.read()
            await scale.close()
            await scale.connect()
            assert (await scale.read()).sequence == 2

    run(body())


def test_tare_zero_and_tare_memory() -> None:
    async def body() -> None:
        async with VirtualScale("V-1", {"weight": "50"}) as scale:
            assert await scale.tare() == Weight(Decimal("50.00"), "g")
            scale.balance.set_weight("60")
            assert (await scale.read()).value == Decimal("10.00")
            assert await scale.preset_tare(Weight(Decimal("5"), "g")) == Weight(Decimal("5.00"), "g")
            with pytest.raises(DeviceFault):
                await scale.preset_tare(Weight(Decimal("5"), "kg"))
            await scale.clear_tare()
            assert await scale.tare_weight() == Weight(Decimal("0.00"), "g")
            with pytest.raises(DeviceFault):
                await scale.zero()  # 60 g is outside the zero range
            scale.balance.set_weight("1")
            await scale.zero()
            assert (await scale.read()).value == Decimal("0.00")
            scale.balance.set_busy(True)
            with pytest.raises(DeviceBusy):
                await scale.tare()

    run(body())


def test_stream_is_paced_by_interval() -> None:
    async def body() -> None:
        async with VirtualScale("V-1", {"interval_s": 0.02}) as scale:
            readings = []
            async with contextlib.aclosing(scale.stream()) as stream:
                async for reading in stream:
                    readings.append(reading)
                    if len(readings) == 4:
                        break
            assert [r.sequence for r in readings] == [1, 2, 3, 4]
            assert readings[-1].monotonic - readings[0].monotonic >= 3 * 0.02 * 0.9

    run(body())


def test_parse_rejects_foreign_frames() -> None:
    scale = VirtualScale("V-1")
    with pytest.raises(ProtocolError):
        scale.parse_frame(b"S S     1.00 g\r\n")
    with pytest.raises(ProtocolError):
        scale.parse_frame(b"ok 1.00 g")


def test_available_through_the_registry() -> None:
    scale = create_driver("virtual", "V-9", {"weight": "3"})
    assert isinstance(scale, VirtualScale)
    assert scale.balance.load == Decimal("3")
