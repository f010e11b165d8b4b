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

Fault runs: subclass :class:`FaultConformance` too and override ``fault_factory``, which
yields a connected driver *and* a :class:`FaultRig` for the device behind it
(:class:`SimulatorRig` wraps any :mod:`devices.sim` simulator). The kit then puts the device
into each :class:`KitFault` — silent, overload, underload, unstable, garbage bytes, split
replies, disconnect mid-reply — and fails the driver if it reports a value the device did not
send, re-stamps an old reading as new, or reports silence later than ``timeout_s``::

    class TestMyScaleFaults(FaultConformance):
        @pytest.fixture
        def fault_factory(self):
            @contextlib.asynccontextmanager
            async def factory():
                sim = MtSicsSimulator(BalanceModel(load="1.23"))
                async with sim.serve("tcp"):
                    async with MyScale("T-1", {"port": sim.url, "timeout_s": 0.5}) as driver:
                        yield driver, SimulatorRig(sim)
            return factory
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
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

__all__ = [
    "DriverConformance",
    "DriverFactory",
    "FaultConformance",
    "FaultFactory",
    "FaultRig",
    "KitFault",
    "LinkedDriverConformance",
    "SimulatorRig",
    "check_reading",
    "run_async",
]

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


# ====================================================================== fault runs


class KitFault(str, enum.Enum):
    """What the fault runs do to the device behind a driver."""

    SILENT = "silent"  #: the device sends nothing (cable pulled, device off)
    OVERLOAD = "overload"  #: load above the weighing range
    UNDERLOAD = "underload"  #: load below the weighing range (pan lifted)
    UNSTABLE = "unstable"  #: the load keeps moving
    GARBAGE = "garbage"  #: noise bytes in every reply
    SPLIT = "split"  #: every reply arrives in pieces with pauses between them
    DISCONNECT = "disconnect"  #: the link drops in the middle of the next reply


class FaultRig(abc.ABC):
    """Puts the device behind a driver into each :class:`KitFault` (a plugin author writes one
    for their simulator, or uses :class:`SimulatorRig` with a :mod:`devices.sim` simulator).

    ``load`` is the value the device shows when no fault is applied (the kit checks that the
    driver reports exactly it); ``garbage`` the noise bytes the ``garbage`` fault adds (a reading
    whose raw bytes hold them was parsed from a garbled reply).
    """

    load: Decimal
    garbage: bytes = b""
    #: The faults this device can have (a Modbus register cannot be "unstable" or split a
    #: reply in pieces); the kit runs the check of every one of them and of no other.
    faults: frozenset[KitFault] = frozenset(KitFault)

    @abc.abstractmethod
    async def apply(self, fault: KitFault) -> None:
        """Put the device into ``fault`` (it stays there until :meth:`clear`)."""

    @abc.abstractmethod
    async def clear(self) -> None:
        """Take every fault away: the device shows ``load`` again."""


class SimulatorRig(FaultRig):
    """A :class:`FaultRig` over one of the :mod:`devices.sim` simulators (MT-SICS, A&D ...)."""

    def __init__(self, sim: Any) -> None:
        from devices.sim.server import GARBAGE

        self.sim = sim
        snap = sim.balance.snapshot()
        if snap.net is None:
            raise ValueError("the simulated balance must show a value before the fault runs")
        self.load = snap.net
        self._weight = sim.balance.load
        self.garbage = GARBAGE

    async def apply(self, fault: KitFault) -> None:
        from devices.sim.faults import Fault

        sim, balance = self.sim, self.sim.balance
        if fault is KitFault.SILENT:
            sim.silent = True
        elif fault is KitFault.OVERLOAD:
            balance.set_overload()
        elif fault is KitFault.UNDERLOAD:
            balance.set_underload()
        elif fault is KitFault.UNSTABLE:
            balance.set_unstable(True, noise=Decimal(1).scaleb(-balance.decimals) * 50)
        elif fault is KitFault.GARBAGE:
            sim.faults.probabilities[Fault.GARBAGE] = 1.0
        elif fault is KitFault.SPLIT:
            sim.faults.split = True
        elif fault is KitFault.DISCONNECT:
            sim.faults.inject(Fault.DISCONNECT)
        else:  # pragma: no cover - the enum is closed
            raise ValueError(fault)

    async def clear(self) -> None:
        sim = self.sim
        sim.silent = False
        sim.faults.clear()
        sim.faults.probabilities.clear()
        sim.faults.split = False
        sim.balance.set_unstable(False)
        sim.balance.set_weight(self._weight)


#: A callable returning an async context manager that yields a connected driver and the rig
#: of the device it talks to.
FaultFactory = Callable[[], AbstractAsyncContextManager[tuple[Driver, FaultRig]]]


class FaultConformance:
    """The fault runs: a driver must never report a value the device did not send.

    Override the ``fault_factory`` fixture (a factory of ``(connected driver, FaultRig)``).
    Each check puts the device into one fault and fails the driver when it reports a value
    (silent, overload, underload, garbage, disconnect mid-reply), a stable value (unstable),
    a wrong value (split replies), a reading stamped after the device fell silent (an old
    reading re-stamped as new), or does not report silence within ``timeout_s``. Readings
    already on the wire when a fault starts may arrive first; they must show the unfaulted
    ``load`` exactly.
    """

    #: Scheduling margin on top of the driver's ``timeout_s`` for reporting silence.
    silence_slack_s: ClassVar[float] = 0.5
    #: A frame already on the wire when a fault starts has arrived within this (A&D's
    #: 17 bytes take 71 ms at 2400 baud); a reading received later was not sent before it.
    wire_slack_s: ClassVar[float] = 0.25
    #: Readings allowed to predate a fault (frames already on the wire).
    settle_reads: ClassVar[int] = 30
    settle_s: ClassVar[float] = 10.0
    #: Overall time limit per check, seconds.
    check_timeout_s: ClassVar[float] = 60.0
    #: The faults to run (default: all; the rig's own ``faults`` narrow it further). Setting it
    #: to the rig's faults spares starting the device for checks that do not apply.
    faults: ClassVar[frozenset[KitFault]] = frozenset(KitFault)

    @pytest.fixture
    def fault_factory(self) -> FaultFactory:
        """Override: return a factory of (connected driver, rig) pairs."""
        raise NotImplementedError("override the fault_factory fixture")

    def _run_rig(self, factory: FaultFactory, fault: KitFault,
                 body: Callable[[Driver, FaultRig], Awaitable[None]]) -> None:
        if fault not in self.faults:
            return  # the device cannot have this fault (declared by the test class)

        async def go() -> None:
            async with factory() as (driver, rig):
                assert driver.is_connected, "the factory must yield a connected driver"
                if fault not in rig.faults:
                    return  # the device cannot have this fault (declared by its rig)
                try:
                    await body(driver, rig)
                finally:
                    await rig.clear()

        run_async(go(), self.check_timeout_s)

    @staticmethod
    def _unfaulted(reading: Reading, rig: FaultRig, fault: KitFault) -> None:
        """A reading that may predate ``fault`` must be the device's unfaulted load, exactly."""
        assert reading.status in (ReadingStatus.OK, ReadingStatus.DYNAMIC) and reading.value == rig.load, (
            f"under {fault.value} the driver reported {reading.status.value} {reading.value} {reading.unit} "
            f"(raw {reading.raw!r}); the device showed {rig.load} before the fault and no value since")

    async def _until_status(self, driver: Driver, rig: FaultRig, fault: KitFault,
                            wanted: ReadingStatus) -> None:
        # at least settle_reads reads and settle_s seconds: a driver that answers from a
        # subscription's cache reads fast, and on a busy machine the change may arrive later
        deadline = time.monotonic() + self.settle_s
        reads = 0
        while reads < self.settle_reads or time.monotonic() < deadline:
            reading = await driver.read()
            reads += 1
            check_reading(reading, driver.device_id)
            if reading.status is wanted:
                return
            self._unfaulted(reading, rig, fault)
            await asyncio.sleep(0.01)  # let the driver's link deliver; the loop waits for the status
        pytest.fail(f"under {fault.value} the driver never reported {wanted.value} in {reads} reads "
                    f"({self.settle_s} s)")

    async def _condition(self, driver: Driver, rig: FaultRig, fault: KitFault, wanted: ReadingStatus) -> None:
        first = await driver.read()
        self._unfaulted(first, rig, fault)
        await rig.apply(fault)
        await self._until_status(driver, rig, fault, wanted)
        for _ in range(3):
            reading = await driver.read()
            check_reading(reading, driver.device_id)
            assert reading.status is wanted and reading.value is None, (
                f"under {fault.value} the driver reported {reading.status.value} {reading.value} {reading.unit} "
                f"(raw {reading.raw!r}); the device reports {wanted.value} and no value")
        if Capability.STREAM in driver.capabilities:
            async with contextlib.aclosing(driver.stream()) as stream:
                count = 0
                async for reading in stream:
                    assert reading.value is None and reading.status is wanted, (
                        f"stream under {fault.value}: {reading.status.value} {reading.value} (raw {reading.raw!r})")
                    count += 1
                    if count == 3:
                        break

    def test_fault_overload_is_never_a_value(self, fault_factory: FaultFactory) -> None:
        """Overload is a reading with status overload and no value (never 0, never the last value)."""
        self._run_rig(fault_factory, KitFault.OVERLOAD,
                      lambda d, r: self._condition(d, r, KitFault.OVERLOAD, ReadingStatus.OVERLOAD))

    def test_fault_underload_is_never_a_value(self, fault_factory: FaultFactory) -> None:
        """Underload is a reading with status underload and no value."""
        self._run_rig(fault_factory, KitFault.UNDERLOAD,
                      lambda d, r: self._condition(d, r, KitFault.UNDERLOAD, ReadingStatus.UNDERLOAD))

    def test_fault_silent_read_raises_within_timeout(self, fault_factory: FaultFactory) -> None:
        """A silent device: read() raises DeviceUnavailable within timeout_s; no reading but
        the unfaulted load of a frame already on the wire when the silence began."""

        async def body(driver: Driver, rig: FaultRig) -> None:
            self._unfaulted(await driver.read(), rig, KitFault.SILENT)
            await rig.apply(KitFault.SILENT)
            silent_at = time.monotonic()
            for _ in range(3):  # at most a frame or two were on the wire
                started = time.monotonic()
                try:
                    reading = await driver.read()
                except DeviceUnavailable:
                    took = time.monotonic() - started
                    break
                if reading.monotonic > silent_at + self.wire_slack_s or reading.value != rig.load:
                    pytest.fail(f"the device is silent, yet read() returned {reading.value} {reading.unit} received "
                                f"{reading.monotonic - silent_at:.2f} s after the silence began, stamped "
                                f"{reading.timestamp.isoformat()} (an old reading re-stamped as new)")
            else:
                pytest.fail("the device is silent, yet read() went on returning its last weight "
                            "(an old reading re-stamped as new)")
            limit = driver.timeout_s + self.silence_slack_s
            assert took <= limit, f"silence reported after {took:.2f} s (timeout_s {driver.timeout_s:g})"

        self._run_rig(fault_factory, KitFault.SILENT, body)

    def test_fault_silent_stream_ends_within_timeout(self, fault_factory: FaultFactory) -> None:
        """A silent device ends stream() with DeviceUnavailable within timeout_s of the silence; no
        reading is stamped after the silence began (beyond frames already on the wire)."""

        async def body(driver: Driver, rig: FaultRig) -> None:
            if Capability.STREAM not in driver.capabilities:
                return
            limit = driver.timeout_s + self.silence_slack_s
            loop = asyncio.get_running_loop()
            silent_at = 0.0
            count = 0
            violation = ""
            try:
                async with asyncio.timeout(None) as guard, contextlib.aclosing(driver.stream()) as stream:
                    async for reading in stream:
                        check_reading(reading, driver.device_id)
                        count += 1
                        if silent_at and (reading.monotonic > silent_at + self.wire_slack_s or reading.value != rig.load):
                            # stop consuming at once (leaving the stream may wait for the silent
                            # device) and fail outside the time guard
                            violation = (f"the device is silent, yet the stream yielded {reading.value} "
                                         f"{reading.unit} received {reading.monotonic - silent_at:.2f} s after "
                                         "the silence began (an old reading re-stamped as new)")
                            guard.reschedule(None)
                            break
                        if count == 2:
                            await rig.apply(KitFault.SILENT)
                            silent_at = time.monotonic()
                            guard.reschedule(loop.time() + limit)
            except DeviceUnavailable:
                took = time.monotonic() - silent_at
                assert silent_at, "the stream failed before the device fell silent"
                assert took <= limit, f"silence reported after {took:.2f} s (timeout_s {driver.timeout_s:g})"
                return
            except TimeoutError:
                pytest.fail(f"the device is silent, and the stream neither raised DeviceUnavailable nor ended "
                            f"within {limit:.2f} s (timeout_s {driver.timeout_s:g})")
            pytest.fail(violation or "the stream ended quietly while the device was silent; it must raise "
                                     "DeviceUnavailable")

        self._run_rig(fault_factory, KitFault.SILENT, body)

    def test_fault_unstable_is_never_a_stable_value(self, fault_factory: FaultFactory) -> None:
        """A moving load gives dynamic readings; a stable read never returns a value while it moves."""

        async def body(driver: Driver, rig: FaultRig) -> None:
            self._unfaulted(await driver.read(), rig, KitFault.UNSTABLE)
            await rig.apply(KitFault.UNSTABLE)
            for _ in range(self.settle_reads):
                reading = await driver.read()
                check_reading(reading, driver.device_id)
                if reading.status is ReadingStatus.DYNAMIC:
                    break
                self._unfaulted(reading, rig, KitFault.UNSTABLE)
            else:
                pytest.fail("a moving load never gave a dynamic reading")
            for _ in range(3):
                reading = await driver.read()
                assert reading.status is not ReadingStatus.OK and not reading.stable, (
                    f"the load is moving, yet the driver reported a stable {reading.value} (raw {reading.raw!r})")
            try:
                reading = await driver.read(stable=True, timeout=max(driver.timeout_s, 1.0))
            except DeviceError:
                return
            assert reading.value is None and not reading.stable, (
                f"the load is moving, yet read(stable=True) returned {reading.status.value} {reading.value}")

        self._run_rig(fault_factory, KitFault.UNSTABLE, body)

    def test_fault_garbage_is_never_a_value(self, fault_factory: FaultFactory) -> None:
        """Noise in every reply: reads raise ProtocolError (or another DeviceError), never a value."""

        async def body(driver: Driver, rig: FaultRig) -> None:
            self._unfaulted(await driver.read(), rig, KitFault.GARBAGE)
            await rig.apply(KitFault.GARBAGE)
            errors = 0
            for _ in range(self.settle_reads):
                try:
                    reading = await driver.read()
                except DeviceError:
                    errors += 1
                    if errors >= 3:
                        return
                    continue
                assert not (rig.garbage and rig.garbage in reading.raw), (
                    f"a garbled reply became {reading.status.value} {reading.value} (raw {reading.raw!r})")
                self._unfaulted(reading, rig, KitFault.GARBAGE)
                assert not errors, f"after a garbled reply the driver reported {reading.value} (raw {reading.raw!r})"
            pytest.fail("garbled replies never raised a DeviceError")

        self._run_rig(fault_factory, KitFault.GARBAGE, body)

    def test_fault_split_replies_give_the_exact_value(self, fault_factory: FaultFactory) -> None:
        """Replies arriving in pieces are put together: the value is exact, never a fragment."""

        async def body(driver: Driver, rig: FaultRig) -> None:
            await rig.apply(KitFault.SPLIT)
            for _ in range(5):
                reading = await driver.read()
                check_reading(reading, driver.device_id)
                self._unfaulted(reading, rig, KitFault.SPLIT)

        self._run_rig(fault_factory, KitFault.SPLIT, body)

    def test_fault_disconnect_mid_reply_is_never_a_value(self, fault_factory: FaultFactory) -> None:
        """The link drops in the middle of a reply: DeviceUnavailable, never the half reply's value."""

        async def body(driver: Driver, rig: FaultRig) -> None:
            self._unfaulted(await driver.read(), rig, KitFault.DISCONNECT)
            await rig.apply(KitFault.DISCONNECT)
            for _ in range(self.settle_reads):
                try:
                    reading = await driver.read()
                except DeviceUnavailable:
                    with pytest.raises(DeviceError):
                        await driver.read()  # and it stays down: no value from a dead link
                    return
                self._unfaulted(reading, rig, KitFault.DISCONNECT)
            pytest.fail("the link dropped mid-reply and the driver never raised DeviceUnavailable")

        self._run_rig(fault_factory, KitFault.DISCONNECT, body)
