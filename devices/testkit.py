"""Conformance test kit for device drivers (needs pytest).

Subclass :class:`DriverConformance` in your test module and override the
``driver_factory`` fixture; pytest then runs every check below against your
driver::

    import contextlib
    import pytest
    from devices.testkit import DriverConformance

    class TestMyScale(DriverConformance):
        @pytest.fixture
        def driver_factory(self):
            @contextlib.asynccontextmanager
            async def factory():
                async with MySimulator().serve("tcp") as sim:      # whatever backs it
                    async with MyScale("T-1", {"port": sim.url}) as driver:
                        yield driver
            return factory

The factory yields a *connected* driver, and is entered inside the test's
own event loop (the kit needs no pytest-asyncio). A driver that reaches its device over
a link (serial port, socket) subclasses :class:`LinkedDriverConformance` instead and
overrides ``unreachable_config`` (a config whose ``connect()`` must fail with
:class:`~devices.errors.DeviceUnavailable`). Optional: the class attribute
``garbage_frames`` (frames your ``_parse`` must reject).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import jsonschema
import pytest

from devices.base import Capability, Driver
from devices.errors import (
    ConfigurationError,
    DeviceError,
    DeviceUnavailable,
    NotSupported,
    ProtocolError,
)
from devices.reading import DeviceIdentity, Reading, ReadingStatus, Weight

__all__ = ["DriverConformance", "DriverFactory", "check_reading", "run_async"]

T = TypeVar("T")

#: A callable returning an async context manager that yields a connected driver.
DriverFactory = Callable[[], AbstractAsyncContextManager[Driver]]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


def run_async(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a fresh event loop with an overall time limit."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


def check_reading(reading: Reading, device_id: str | None = None) -> None:
    """Assert the invariants every reading must satisfy (beyond its own validation)."""
    assert isinstance(reading, Reading), f"expected Reading, got {type(reading).__name__}"
    if device_id is not None:
        assert reading.device_id == device_id
    assert reading.sequence >= 1
    assert isinstance(reading.status, ReadingStatus)
    if reading.status in (ReadingStatus.OK, ReadingStatus.DYNAMIC):
        assert isinstance(reading.value, Decimal) and reading.value.is_finite()
        assert reading.unit.strip(), "a value needs a unit"
    else:
        assert reading.value is None
    assert reading.stable is (reading.status is ReadingStatus.OK)
    assert isinstance(reading.raw, bytes) and reading.raw, "raw bytes as received"
    assert reading.timestamp.tzinfo is not None
    assert reading.timestamp.utcoffset() == timedelta(0)
    now = datetime.now(UTC)
    assert now - timedelta(minutes=5) <= reading.timestamp <= now + timedelta(seconds=1)
    assert abs(time.monotonic() - reading.monotonic) < 300


class DriverConformance:
    """Checks every driver must pass. Not collected itself (no ``Test`` prefix)."""

    #: Readings taken by the stream checks.
    stream_count: ClassVar[int] = 5
    #: Frames that must be rejected by ``parse_frame`` with ProtocolError.
    garbage_frames: ClassVar[tuple[bytes, ...]] = (
        b"",
        b"\r\n",
        b"\x00\xff\xfe\x13\r\n",
        b"~~ not a frame ~~\r\n",
    )
    #: Overall time limit per check, seconds.
    check_timeout_s: ClassVar[float] = 30.0

    # ------------------------------------------------------------- fixtures
    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        """Override: return a factory of connected drivers (see module docstring)."""
        raise NotImplementedError("override the driver_factory fixture")

    def _run(self, factory: DriverFactory, body: Callable[[Driver], Awaitable[T]]) -> T:
        async def go() -> T:
            async with factory() as driver:
                assert driver.is_connected, "the factory must yield a connected driver"
                return await body(driver)

        return run_async(go(), self.check_timeout_s)

    # ------------------------------------------------------------- metadata
    def test_metadata(self, driver_factory: DriverFactory) -> None:
        """Name, capabilities, schema and example config are well formed."""

        async def body(driver: Driver) -> None:
            cls = type(driver)
            assert isinstance(cls.name, str) and _NAME_RE.match(cls.name), cls.name
            assert isinstance(cls.capabilities, frozenset)
            assert all(isinstance(c, Capability) for c in cls.capabilities)
            assert Capability.READ in cls.capabilities
            schema = cls.config_schema
            jsonschema.Draft202012Validator.check_schema(schema)
            assert schema.get("type") == "object"
            assert schema.get("additionalProperties") is False, "unknown keys must be rejected"
            jsonschema.validate(cls.example_config, schema)
            spare = cls("conformance-spare", cls.example_config)  # no I/O in __init__
            assert not spare.is_connected
            with pytest.raises(ConfigurationError):
                cls("conformance-spare", {**cls.example_config, "__no_such_key__": 1})

        self._run(driver_factory, body)

    # -------------------------------------------------------------- identify
    def test_identify(self, driver_factory: DriverFactory) -> None:
        """identify() returns make, model, serial number and firmware."""

        async def body(driver: Driver) -> None:
            identity = await driver.identify()
            assert isinstance(identity, DeviceIdentity)
            for field in (identity.make, identity.model, identity.serial_number, identity.firmware):
                assert isinstance(field, str) and field.strip()

        self._run(driver_factory, body)

    # ------------------------------------------------------------------ read
    def test_read_returns_valid_reading(self, driver_factory: DriverFactory) -> None:
        """read() returns a valid Reading with Decimal value and UTC timestamp."""

        async def body(driver: Driver) -> None:
            first = await driver.read()
            check_reading(first, driver.device_id)
            second = await driver.read()
            check_reading(second, driver.device_id)
            assert second.sequence == first.sequence + 1
            assert second.monotonic >= first.monotonic
            assert second.timestamp >= first.timestamp - timedelta(seconds=1)

        self._run(driver_factory, body)

    def test_stable_read(self, driver_factory: DriverFactory) -> None:
        """read(stable=True) never returns a dynamic reading."""

        async def body(driver: Driver) -> None:
            reading = await driver.read(stable=True)
            check_reading(reading, driver.device_id)
            assert reading.status is not ReadingStatus.DYNAMIC

        self._run(driver_factory, body)

    def test_concurrent_reads_are_serialised(self, driver_factory: DriverFactory) -> None:
        """Concurrent callers each get their own reading; sequence numbers are unique."""

        async def body(driver: Driver) -> None:
            readings = await asyncio.gather(*(driver.read() for _ in range(4)))
            for reading in readings:
                check_reading(reading, driver.device_id)
            sequences = sorted(r.sequence for r in readings)
            assert sequences == list(range(sequences[0], sequences[0] + 4))

        self._run(driver_factory, body)

    # ---------------------------------------------------------------- stream
    def test_stream_order_and_sequence(self, driver_factory: DriverFactory) -> None:
        """stream() yields readings with consecutive sequence numbers, in time order."""

        async def body(driver: Driver) -> None:
            if Capability.STREAM not in driver.capabilities:
                with pytest.raises(NotSupported):
                    async for _ in driver.stream():
                        pass
                return
            before = await driver.read()
            readings: list[Reading] = []
            async with contextlib.aclosing(driver.stream()) as stream:
                async for reading in stream:
                    readings.append(reading)
                    if len(readings) == self.stream_count:
                        break
            for reading in readings:
                check_reading(reading, driver.device_id)
            sequences = [r.sequence for r in readings]
            assert sequences == list(range(before.sequence + 1, before.sequence + 1 + len(readings)))
            monos = [r.monotonic for r in readings]
            assert monos == sorted(monos)
            after = await driver.read()  # the link is usable again after the stream
            assert after.sequence == readings[-1].sequence + 1

        self._run(driver_factory, body)

    # ------------------------------------------------------------- lifecycle
    def test_close_is_idempotent(self, driver_factory: DriverFactory) -> None:
        """close() twice is fine; using a closed driver raises DeviceUnavailable."""

        async def body(driver: Driver) -> None:
            await driver.close()
            await driver.close()
            assert not driver.is_connected
            with pytest.raises(DeviceUnavailable):
                await driver.read()
            with pytest.raises(DeviceUnavailable):
                await driver.identify()

        self._run(driver_factory, body)

    def test_reconnect_after_close(self, driver_factory: DriverFactory) -> None:
        """A closed driver connects again and keeps counting sequence numbers."""

        async def body(driver: Driver) -> None:
            first = await driver.read()
            await driver.close()
            await driver.connect()
            second = await driver.read()
            check_reading(second, driver.device_id)
            assert second.sequence == first.sequence + 1

        self._run(driver_factory, body)

    def test_unconnected_driver_is_unavailable(self, driver_factory: DriverFactory) -> None:
        """A never-connected instance raises DeviceUnavailable, not a raw error."""

        async def body(driver: Driver) -> None:
            spare = type(driver)("conformance-spare", driver.config)
            with pytest.raises(DeviceUnavailable):
                await spare.read()
            await spare.close()  # closing a never-opened driver is harmless

        self._run(driver_factory, body)

    # ---------------------------------------------------------------- errors
    def test_garbage_frames_are_protocol_errors(self, driver_factory: DriverFactory) -> None:
        """A frame that does not parse raises ProtocolError; it never becomes a value."""

        async def body(driver: Driver) -> None:
            for frame in self.garbage_frames:
                with pytest.raises(ProtocolError) as info:
                    driver.parse_frame(frame)
                assert info.value.raw == frame

        self._run(driver_factory, body)

    def test_unsupported_capabilities_raise(self, driver_factory: DriverFactory) -> None:
        """Missing capabilities raise NotSupported; declared ones work."""

        async def body(driver: Driver) -> None:
            caps = driver.capabilities
            if Capability.TARE in caps:
                assert isinstance(await driver.tare(), Weight)
            else:
                with pytest.raises(NotSupported):
                    await driver.tare()
            if Capability.ZERO in caps:
                await driver.zero()
            else:
                with pytest.raises(NotSupported):
                    await driver.zero()
            if Capability.PRESET_TARE in caps:
                assert isinstance(await driver.tare_weight(), Weight)
                await driver.clear_tare()
            else:
                with pytest.raises(NotSupported):
                    await driver.tare_weight()

        self._run(driver_factory, body)


class LinkedDriverConformance(DriverConformance):
    """The conformance suite plus the checks for drivers that reach a device over a link
    (serial port, socket): override ``unreachable_config`` with a config that points at
    nothing. Virtual and in-process drivers subclass :class:`DriverConformance` only."""

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        raise NotImplementedError("override unreachable_config: a config that points at no device")

    def test_unreachable_device_is_unavailable(
        self, driver_factory: DriverFactory, unreachable_config: dict[str, Any]
    ) -> None:
        """connect() to a device that is not there raises DeviceUnavailable (retryable)."""

        async def body(driver: Driver) -> None:
            spare = type(driver)("conformance-unreachable", unreachable_config)
            with pytest.raises(DeviceUnavailable) as info:
                await spare.connect()
            assert info.value.retryable
            assert isinstance(info.value, DeviceError)
            assert not spare.is_connected

        self._run(driver_factory, body)
