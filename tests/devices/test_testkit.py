"""The conformance kit, run against every built-in driver, the virtual scale and the example plugin."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest

from devices.base import Capability, Driver
from devices.drivers.aandd import AandDScale
from devices.drivers.mtsics import MtSicsScale
from devices.drivers.virtual import VirtualScale
from devices.reading import DeviceIdentity, ReadingStatus, Sample
from devices.registry import DriverRegistry
from devices.sim import AandDSimulator, BalanceModel, MtSicsSimulator
from devices.testkit import DriverConformance, DriverFactory, LinkedDriverConformance, check_reading, run_async
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
