"""The conformance kit, run against every built-in driver, the virtual scale and the example plugin."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest

from devices.base import Capability, Driver, Frame
from devices.drivers.aandd import AandDScale
from devices.drivers.modbus import ModbusTcpDriver
from devices.drivers.mtsics import MtSicsScale
from devices.drivers.opcua import OpcUaDriver
from devices.drivers.virtual import VirtualScale
from devices.errors import DeviceError
from devices.reading import DeviceIdentity, ReadingStatus, Sample
from devices.registry import DriverRegistry
from devices.sim import AandDSimulator, BalanceModel, MtSicsSimulator
from devices.sim.modbus import ModbusSimulator, RegisterMap
from devices.sim.opcua import OpcUaSimulator, PackMLMachine
from devices.sim.proxy import LinkProxy
from devices.testkit import (
    DriverConformance,
    DriverFactory,
    FaultConformance,
    FaultFactory,
    FaultRig,
    KitFault,
    LinkedDriverConformance,
    SimulatorRig,
    check_reading,
    run_async,
)
from tests.devices.helpers import FAST_BAUD, closed_tcp_port
from tests.devices.plugins import EXAMPLE_PLUGIN, install_on_path


def _unreachable(link: str) -> dict[str, Any]:
    if link == "tcp":
        return {"port": f"socket://127.0.0.1:{closed_tcp_port()}"}
    return {"port": "/dev/no-such-balance"}


class TestVirtualScaleConformance(DriverConformance):
    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[Driver]:
            async with VirtualScale("V-1", {"weight": "1.23", "interval_s": 0.005}) as scale:
                yield scale

        return factory


class TestMtSicsConformance(LinkedDriverConformance):
    @pytest.fixture(params=["pty", "tcp"])
    def link(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def driver_factory(self, link: str) -> DriverFactory:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[Driver]:
            sim = MtSicsSimulator(BalanceModel(load="1.23"), baud=FAST_BAUD)
            async with sim.serve(link):
                async with MtSicsScale("BAL-01", {"port": sim.url, "baudrate": FAST_BAUD}) as scale:
                    yield scale

        return factory

    @pytest.fixture
    def unreachable_config(self, link: str) -> dict[str, Any]:
        return _unreachable(link)


class TestAandDConformance(LinkedDriverConformance):
    @pytest.fixture(params=["pty", "tcp"])
    def link(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def driver_factory(self, link: str) -> DriverFactory:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[Driver]:
            sim = AandDSimulator(BalanceModel(load="1.23"), baud=FAST_BAUD, rate_hz=100)
            async with sim.serve(link):
                config = {"port": sim.url, "baudrate": FAST_BAUD, "bytesize": 8, "parity": "N"}
                async with AandDScale("BAL-AD", config) as scale:
                    yield scale

        return factory

    @pytest.fixture
    def unreachable_config(self, link: str) -> dict[str, Any]:
        return _unreachable(link)


class TestExamplePluginConformance(DriverConformance):
    """What a plugin author writes: the driver comes through its entry point."""

    @pytest.fixture
    def driver_factory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forget_plugin_modules: None
    ) -> DriverFactory:
        install_on_path(EXAMPLE_PLUGIN, tmp_path / "site", monkeypatch)
        driver_class = DriverRegistry().load("example")

        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[Driver]:
            async with driver_class("EX-1", {"weight": "5.00"}) as scale:
                yield scale

        return factory


class ZeroOnGarbage(Driver):
    """A bad driver: turns anything it cannot read into zero."""

    name: ClassVar[str] = "bad"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ})

    async def _connect(self) -> None: ...
    async def _close(self) -> None: ...

    async def _identify(self) -> DeviceIdentity:
        return DeviceIdentity("Bad", "Bad", "0", "0")

    async def _read_raw(self, stable: bool) -> bytes:
        return b"whatever\r\n"

    def _parse(self, raw: bytes) -> Sample:
        return Sample(ReadingStatus.OK, Decimal(0), "g")


def test_kit_catches_a_driver_that_invents_zero() -> None:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[Driver]:
        async with ZeroOnGarbage("BAD-1") as scale:
            yield scale

    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        DriverConformance().test_garbage_frames_are_protocol_errors(factory)


def test_check_reading_and_run_async() -> None:
    async def one() -> None:
        async with VirtualScale("V-2") as scale:
            check_reading(await scale.read(), "V-2")
            with pytest.raises(AssertionError):
                check_reading(await scale.read(), "OTHER")

    run_async(one(), timeout=10)


# ====================================================================== fault runs


def _mtsics_faults(driver_class: type[MtSicsScale], link: str = "tcp") -> FaultFactory:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[tuple[Driver, SimulatorRig]]:
        sim = MtSicsSimulator(BalanceModel(load="1.23"), baud=FAST_BAUD, stability_timeout_s=0.3)
        async with sim.serve(link):
            config = {"port": sim.url, "baudrate": FAST_BAUD, "timeout_s": 0.5}
            async with driver_class("BAL-01", config) as scale:
                yield scale, SimulatorRig(sim)

    return factory


class TestMtSicsFaults(FaultConformance):
    @pytest.fixture(params=["pty", "tcp"])
    def fault_factory(self, request: pytest.FixtureRequest) -> FaultFactory:
        return _mtsics_faults(MtSicsScale, str(request.param))


class TestAandDFaults(FaultConformance):
    @pytest.fixture(params=["pty", "tcp"])
    def fault_factory(self, request: pytest.FixtureRequest) -> FaultFactory:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[tuple[Driver, SimulatorRig]]:
            sim = AandDSimulator(BalanceModel(load="1.23"), baud=FAST_BAUD, rate_hz=50)
            async with sim.serve(str(request.param)):
                config = {"port": sim.url, "baudrate": FAST_BAUD, "bytesize": 8, "parity": "N", "timeout_s": 0.5}
                async with AandDScale("BAL-AD", config) as scale:
                    yield scale, SimulatorRig(sim)

        return factory


class ModbusRig(FaultRig):
    """The Modbus simulator's faults for a float32 weight register: no answer (silent), +inf /
    -inf (overload / underload, as a weighing terminal publishes them), a connection dropped
    instead of an answer. A register cannot be unstable, garbled or split: not run."""

    faults = frozenset({KitFault.SILENT, KitFault.OVERLOAD, KitFault.UNDERLOAD, KitFault.DISCONNECT})

    def __init__(self, sim: ModbusSimulator, load: str) -> None:
        self.sim = sim
        self.load = Decimal(load)
        self.sim.registers.set_value("holding_registers", 0, "float32", load)

    async def apply(self, fault: KitFault) -> None:
        if fault is KitFault.SILENT:
            self.sim.faults.delay_s = 3600.0
        elif fault is KitFault.OVERLOAD:
            self.sim.registers.set_value("holding_registers", 0, "float32", "inf")
        elif fault is KitFault.UNDERLOAD:
            self.sim.registers.set_value("holding_registers", 0, "float32", "-inf")
        elif fault is KitFault.DISCONNECT:
            self.sim.faults.disconnect_next()

    async def clear(self) -> None:
        self.sim.faults.clear()
        self.sim.registers.set_value("holding_registers", 0, "float32", str(self.load))


class TestModbusFaults(FaultConformance):
    faults = ModbusRig.faults
    @pytest.fixture
    def fault_factory(self) -> FaultFactory:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[tuple[Driver, FaultRig]]:
            sim = ModbusSimulator(RegisterMap(20))
            rig = ModbusRig(sim, "12.5")
            async with sim.serve():
                config = sim.driver_config(
                    tags={"weight": {"function": "holding_registers", "address": 0, "type": "float32", "unit": "kg"}},
                    timeout_s=0.5, stream_interval_s=0.02)
                async with ModbusTcpDriver("PLC-1", config) as plc:
                    yield plc, rig

        return factory


class OpcUaRig(FaultRig):
    """The OPC UA simulator's faults for a Double node (the seal temperature), the driver
    talking to it through a :class:`LinkProxy`: the cable pulled (silent), +inf / -inf
    (overload / underload), the link dropped. A session cannot be garbled or split by this
    simulator, and a moving temperature has no stability: not run."""

    faults = frozenset({KitFault.SILENT, KitFault.OVERLOAD, KitFault.UNDERLOAD, KitFault.DISCONNECT})

    def __init__(self, sim: OpcUaSimulator, proxy: LinkProxy, load: str) -> None:
        self.sim = sim
        self.proxy = proxy
        self.load = Decimal(load)
        sim.machine.temperature_override = float(load)

    async def apply(self, fault: KitFault) -> None:
        if fault is KitFault.SILENT:
            self.proxy.silent = True
        elif fault is KitFault.OVERLOAD:
            self.sim.machine.temperature_override = math.inf
        elif fault is KitFault.UNDERLOAD:
            self.sim.machine.temperature_override = -math.inf
        elif fault is KitFault.DISCONNECT:
            self.proxy.drop()

    async def clear(self) -> None:
        self.proxy.silent = False
        self.sim.machine.temperature_override = float(self.load)


class TestOpcUaFaults(FaultConformance):
    faults = OpcUaRig.faults

    @pytest.fixture
    def fault_factory(self) -> FaultFactory:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[tuple[Driver, FaultRig]]:
            machine = PackMLMachine()
            machine.temperature_override = 180.25  # published from the start
            sim = OpcUaSimulator(machine, tick_s=0.02)
            await sim.start()
            try:
                async with LinkProxy(sim.host, sim.port).serve() as proxy:
                    rig = OpcUaRig(sim, proxy, "180.25")
                    config = sim.driver_config(["temperature"], packml=False, timeout_s=1.0, heartbeat_s=0.1,
                                               publishing_interval_ms=20)
                    config["url"] = config["url"].replace(f":{sim.port}", f":{proxy.port}")
                    async with OpcUaDriver("LINE-T", config) as line:
                        yield line, rig
            finally:
                await sim.stop()

        return factory


class EchoLastWeight(MtSicsScale):
    """A mutant: when the balance is silent it re-sends its last weight, stamped now."""

    name: ClassVar[str] = "mutant-echo"
    _last: bytes | None = None

    async def _echo(self, pending: Any) -> Frame:
        try:
            frame = await asyncio.wait_for(pending, self.timeout_s * 0.6)
        except (TimeoutError, DeviceError):
            if self._last is None:
                raise
            self._needs_sync = True
            return Frame.now(self._last)  # the unsafe part: an old weight as a new reading
        self._last = frame.raw
        return frame

    async def _read_raw(self, stable: bool) -> Frame:
        return await self._echo(super()._read_raw(stable))

    async def _stream_frame(self) -> Frame:
        return await self._echo(super()._stream_frame())


class OverloadAsZero(MtSicsScale):
    """A mutant: reports overload and underload as 0 g."""

    name: ClassVar[str] = "mutant-zero"

    def _parse(self, raw: bytes) -> Sample:
        sample = super()._parse(raw)
        if sample.status in (ReadingStatus.OVERLOAD, ReadingStatus.UNDERLOAD):
            return Sample(ReadingStatus.OK, Decimal(0), "g")
        return sample


class GarbageTolerant(MtSicsScale):
    """A mutant: strips anything before the reply and parses the rest."""

    name: ClassVar[str] = "mutant-strip"

    def _parse(self, raw: bytes) -> Sample:
        start = raw.find(b"S ")
        return super()._parse(raw[start:] if start > 0 else raw)

    def _decode(self, raw: bytes) -> str:
        start = raw.find(b"S ")
        return super()._decode(raw[start:] if start > 0 else raw)


KIT = FaultConformance()


def _kit_fails(check: str, factory: FaultFactory) -> str:
    with pytest.raises((AssertionError, pytest.fail.Exception)) as failed:
        getattr(KIT, check)(factory)
    return str(failed.value)


def test_kit_fails_a_driver_that_resends_its_last_weight_when_the_scale_is_silent() -> None:
    factory = _mtsics_faults(EchoLastWeight)
    assert "re-stamped as new" in _kit_fails("test_fault_silent_read_raises_within_timeout", factory)
    assert "re-stamped as new" in _kit_fails("test_fault_silent_stream_ends_within_timeout", factory)
    KIT.test_fault_overload_is_never_a_value(factory)  # the rest of its behaviour is the real driver's


def test_kit_fails_a_driver_that_reports_overload_as_zero() -> None:
    factory = _mtsics_faults(OverloadAsZero)
    assert "under overload the driver reported ok 0 g" in _kit_fails("test_fault_overload_is_never_a_value", factory)
    assert "under underload" in _kit_fails("test_fault_underload_is_never_a_value", factory)
    KIT.test_fault_silent_read_raises_within_timeout(factory)


def test_kit_fails_a_driver_that_parses_through_garbage() -> None:
    assert "garbled reply became ok 1.23" in _kit_fails("test_fault_garbage_is_never_a_value",
                                                        _mtsics_faults(GarbageTolerant))
