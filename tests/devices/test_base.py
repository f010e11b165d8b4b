"""The template method: locking, time-outs, timestamps, sequencing, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from devices.base import Capability, Driver, Frame, utc_now
from devices.errors import (
    ConfigurationError,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    NotSupported,
    ProtocolError,
)
from devices.reading import DeviceIdentity, ReadingStatus, Sample, Weight
from tests.devices.helpers import run


class ScriptedScale(Driver):
    """Replays queued frames; ``_parse`` understands b'<status> [<value> <unit>]'."""

    name: ClassVar[str] = "scripted"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.READ, Capability.STREAM}
    )
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "timeout_s": {"type": "number", "default": 1.0},
            "stable_timeout_s": {"type": "number", "default": 1.0},
            "label": {"type": "string", "default": "none"},
        },
        "additionalProperties": False,
    }

    def __init__(self, device_id: str = "FAKE-1", config: dict[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        self.frames: deque[bytes | Frame | BaseException] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors_seen: list[Exception] = []
        self.stream_stopped = 0
        self.connect_error: BaseException | None = None
        self.closed_calls = 0
        self.hang = False

    async def _connect(self) -> None:
        if self.connect_error is not None:
            raise self.connect_error

    async def _close(self) -> None:
        self.closed_calls += 1

    async def _identify(self) -> DeviceIdentity:
        return DeviceIdentity("Acme", "Fake", "0001", "0.1")

    async def _read_raw(self, stable: bool) -> bytes | Frame:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let other callers try to get in
            if self.hang:
                await asyncio.Event().wait()
            item = self.frames.popleft()
            if isinstance(item, BaseException):
                raise item
            return item
        finally:
            self.in_flight -= 1

    def _parse(self, raw: bytes) -> Sample:
        parts = raw.decode("ascii").split()
        status = ReadingStatus(parts[0])
        if len(parts) == 1:
            return Sample(status, None, "")
        return Sample(status, Decimal(parts[1]), parts[2])

    async def _stream_stop(self) -> None:
        self.stream_stopped += 1

    def _after_error(self, exc: Exception) -> None:
        self.errors_seen.append(exc)


async def connected(**config: Any) -> ScriptedScale:
    scale = ScriptedScale(config=config)
    await scale.connect()
    return scale


def test_read_builds_sequenced_readings_with_frame_times() -> None:
    async def body() -> None:
        scale = await connected()
        stamp = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
        scale.frames.extend([Frame(b"ok 1.50 g", 123.5, stamp), b"dynamic 1.60 g"])
        first = await scale.read()
        assert (first.sequence, first.value, first.unit, first.stable) == (1, Decimal("1.50"), "g", True)
        assert first.timestamp == stamp and first.monotonic == 123.5
        assert first.raw == b"ok 1.50 g"
        second = await scale.read()
        assert second.sequence == 2 and second.status is ReadingStatus.DYNAMIC
        assert second.timestamp.tzinfo is UTC

    run(body())


def test_parse_failure_is_protocol_error_never_a_value() -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.extend([b"ok twelve g", b"ok 2.00 g"])
        with pytest.raises(ProtocolError) as info:
            await scale.read()
        assert info.value.raw == b"ok twelve g"
        assert info.value.device_id == "FAKE-1"
        assert isinstance(scale.errors_seen[-1], ProtocolError)
        good = await scale.read()
        assert good.sequence == 1, "a failed parse consumes no sequence number"

    run(body())


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError("cable pulled"), DeviceUnavailable),
        (TimeoutError(), DeviceTimeout),
        (DeviceFault("refused"), DeviceFault),
    ],
)
def test_hook_errors_map_into_the_tree(error: Exception, expected: type[DeviceError]) -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.append(error)
        with pytest.raises(expected) as info:
            await scale.read()
        assert info.value.device_id == "FAKE-1"

    run(body())


def test_unexpected_exceptions_are_not_hidden() -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.append(KeyError("driver bug"))
        with pytest.raises(KeyError):
            await scale.read()

    run(body())


def test_operation_timeout_is_device_timeout_and_lock_is_released() -> None:
    async def body() -> None:
        scale = await connected(timeout_s=0.05)
        scale.hang = True
        with pytest.raises(DeviceTimeout):
            await scale.read()
        scale.hang = False
        scale.frames.append(b"ok 1 g")
        assert (await scale.read()).value == Decimal("1")

    run(body())


def test_one_operation_in_flight() -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.extend(b"ok %d g" % i for i in range(8))
        readings = await asyncio.gather(*(scale.read() for _ in range(8)))
        assert scale.max_in_flight == 1
        assert sorted(r.sequence for r in readings) == list(range(1, 9))

    run(body())


def test_generic_stable_read_polls_until_settled() -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.extend([b"dynamic 1.1 g", b"dynamic 1.2 g", b"ok 1.3 g"])
        reading = await scale.read(stable=True)
        assert reading.value == Decimal("1.3") and reading.stable
        assert reading.sequence == 1  # dynamic frames skipped are not numbered
        scale.frames.extend([b"dynamic 1.1 g", b"overload"])
        assert (await scale.read(stable=True)).status is ReadingStatus.OVERLOAD

    run(body())


def test_stream_sequences_and_stops_cleanly() -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.extend(b"ok %d g" % i for i in range(10))
        got = []
        async with contextlib.aclosing(scale.stream()) as stream:
            async for reading in stream:
                got.append(reading.sequence)
                if len(got) == 3:
                    break
        assert got == [1, 2, 3]
        assert scale.stream_stopped == 1

    run(body())


def test_stream_raises_device_errors_and_ends_quietly_on_close() -> None:
    async def body() -> None:
        scale = await connected()
        scale.frames.extend([b"ok 1 g", OSError("gone")])
        with pytest.raises(DeviceUnavailable):
            async for _ in scale.stream():
                pass
        scale.frames.extend([b"ok 1 g", b"ok 2 g"])
        seen = []
        async for reading in scale.stream():
            seen.append(reading)
            await scale.close()
        assert len(seen) == 1

    run(body())


def test_capabilities_are_enforced() -> None:
    async def body() -> None:
        scale = await connected()
        for call in (scale.tare, scale.zero, scale.tare_weight, scale.clear_tare):
            with pytest.raises(NotSupported):
                await call()
        with pytest.raises(NotSupported):
            await scale.preset_tare(Weight(Decimal("1"), "g"))

    run(body())


def test_config_is_validated_and_defaults_filled() -> None:
    scale = ScriptedScale(config={"label": "x"})
    assert scale.config == {"label": "x", "timeout_s": 1.0, "stable_timeout_s": 1.0}
    assert scale.timeout_s == 1.0
    with pytest.raises(ConfigurationError, match="label"):
        ScriptedScale(config={"label": 5})
    with pytest.raises(ConfigurationError):
        ScriptedScale(config={"bogus": 1})
    with pytest.raises(ConfigurationError):
        ScriptedScale(device_id=" ")


def test_connect_failure_maps_and_closes() -> None:
    async def body() -> None:
        scale = ScriptedScale()
        scale.connect_error = OSError("no such port")
        with pytest.raises(DeviceUnavailable):
            await scale.connect()
        assert not scale.is_connected and scale.closed_calls == 1

    run(body())


def test_close_is_idempotent_and_context_manager_works() -> None:
    async def body() -> None:
        scale = ScriptedScale()
        async with scale:
            assert scale.is_connected
            assert (await scale.identify()).make == "Acme"
        assert not scale.is_connected
        await scale.close()
        assert scale.closed_calls == 1
        with pytest.raises(DeviceUnavailable):
            await scale.read()

    run(body())


def test_bytes_frames_are_stamped_now() -> None:
    before = utc_now()
    frame = Driver._as_frame(b"ok 1 g")
    assert before <= frame.timestamp <= utc_now()
    with pytest.raises(TypeError):
        Driver._as_frame("ok 1 g")  # type: ignore[arg-type]
