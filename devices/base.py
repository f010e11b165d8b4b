"""The driver base class: one template, many devices.

Modelled on python-can's ``BusABC``: the public methods (:meth:`Driver.read`,
:meth:`Driver.stream`, :meth:`Driver.tare` ...) do the common work once –
one command in flight (an :class:`asyncio.Lock`), time-outs, timestamps,
sequence numbers, validation and mapping every failure into the
:mod:`devices.errors` tree – and call small protected hooks that a driver
implements:

==========================  ===================================================
hook                        does
==========================  ===================================================
``_connect()``              open the link, check the device answers
``_close()``                release the link (called once per connect)
``_identify()``             return a :class:`DeviceIdentity`
``_read_raw(stable)``       fetch one frame (``bytes`` or :class:`Frame`)
``_parse(raw)``             turn one frame into a :class:`Sample` (pure)
``_stream_frame()``         next frame of a continuous stream (default: poll)
``_stream_stop()``          leave continuous mode (default: nothing)
``_tare()`` / ``_zero()``   tare / zero, only if the capability is declared
``_tare_weight()``          read the tare memory (``PRESET_TARE``)
``_preset_tare(w)``         set the tare memory (``PRESET_TARE``)
``_clear_tare()``           clear the tare memory (``PRESET_TARE``)
``_after_error(exc)``       note a failed operation (e.g. resync next time)
==========================  ===================================================

Hooks run with the driver's lock held, inside the operation time-out. They
may raise :class:`~devices.errors.DeviceError` subclasses directly;
``OSError`` becomes :class:`DeviceUnavailable`, a time-out becomes
:class:`DeviceTimeout`, and *anything* raised by ``_parse`` becomes
:class:`ProtocolError` – a frame that does not parse is never a value.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import jsonschema

from devices.errors import (
    ConfigurationError,
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    NotSupported,
    ProtocolError,
)
from devices.reading import DeviceIdentity, Reading, ReadingStatus, Sample, Weight

__all__ = ["Capability", "Driver", "Frame", "utc_now"]

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Current wall-clock time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame as received, with the time its last byte arrived."""

    raw: bytes
    monotonic: float
    timestamp: datetime

    @classmethod
    def now(cls, raw: bytes) -> Frame:
        """Stamp ``raw`` with the current time (for drivers without a transport)."""
        return cls(raw, time.monotonic(), utc_now())


class Capability(str, enum.Enum):
    """What a driver can do beyond identify/read."""

    READ = "read"  #: read() works
    STABLE_READ = "stable_read"  #: the device itself waits for stability (else polled)
    STREAM = "stream"  #: stream() delivers continuous readings
    TARE = "tare"  #: tare() on the device
    ZERO = "zero"  #: zero() on the device
    PRESET_TARE = "preset_tare"  #: tare memory can be read, preset and cleared


_STATE_CLOSED = "closed"
_STATE_OPEN = "open"


class Driver(abc.ABC):
    """Abstract base of every device driver (see module docstring for hooks).

    Subclasses set the class attributes ``name`` (registry name),
    ``capabilities``, ``config_schema`` (JSON Schema, draft 2020-12, an
    ``object`` with ``additionalProperties: false``) and ``example_config``.
    Instances are created unconnected: use ``async with driver:`` or
    :meth:`connect` / :meth:`close`.
    """

    name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ})
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    example_config: ClassVar[dict[str, Any]] = {}

    #: Defaults for the operation time-outs (seconds); config keys
    #: ``timeout_s`` and ``stable_timeout_s`` override them when the schema has them.
    default_timeout_s: ClassVar[float] = 2.0
    default_stable_timeout_s: ClassVar[float] = 10.0

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None) -> None:
        """Validate ``config`` against :attr:`config_schema`; do not connect yet."""
        if not isinstance(device_id, str) or not device_id.strip():
            raise ConfigurationError("device_id must be a non-empty string")
        self.device_id = device_id
        self.config: dict[str, Any] = self.validate_config(config or {})
        self._sequence = 0
        self._state = _STATE_CLOSED
        self._lock: asyncio.Lock | None = None

    # ----------------------------------------------------------------- config
    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``config`` with schema defaults filled in, or raise ConfigurationError."""
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"{cls.__name__} config must be a mapping")
        validator = jsonschema.Draft202012Validator(cls.config_schema)
        errors = sorted(validator.iter_errors(dict(config)), key=lambda e: list(e.path))
        if errors:
            detail = "; ".join(
                f"{'/'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors
            )
            raise ConfigurationError(f"invalid {cls.name or cls.__name__} configuration: {detail}")
        filled = dict(config)
        for key, spec in cls.config_schema.get("properties", {}).items():
            if key not in filled and isinstance(spec, Mapping) and "default" in spec:
                filled[key] = spec["default"]
        return filled

    @property
    def timeout_s(self) -> float:
        """Time allowed for one ordinary command (identify uses three of them)."""
        return float(self.config.get("timeout_s", self.default_timeout_s))

    @property
    def stable_timeout_s(self) -> float:
        """Time allowed for commands that wait for stability (stable read, tare, zero)."""
        return float(self.config.get("stable_timeout_s", self.default_stable_timeout_s))

    # -------------------------------------------------------------- lifecycle
    @property
    def is_connected(self) -> bool:
        """True between a successful :meth:`connect` and :meth:`close`."""
        return self._state == _STATE_OPEN

    async def connect(self) -> None:
        """Open the link and check the device answers; a no-op if connected."""
        if self.is_connected:
            return
        self._lock = asyncio.Lock()
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await self._connect()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._close(), timeout=5)
            if isinstance(exc, Exception):
                raise self._map_error(exc, "connect") from exc
            raise
        self._state = _STATE_OPEN
        log.debug("%s connected", self)

    async def close(self) -> None:
        """Release the link. Idempotent; never raises for an already-closed driver."""
        if self._state == _STATE_CLOSED:
            return
        self._state = _STATE_CLOSED
        try:
            await asyncio.wait_for(self._close(), timeout=5)
        except Exception:  # closing must not fail the caller; log for the record
            log.warning("%s: error while closing", self, exc_info=True)
        log.debug("%s closed", self)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------- operations
    async def identify(self, *, timeout: float | None = None) -> DeviceIdentity:
        """Return make, model, serial number and firmware of the device."""
        async with self._operation("identify", timeout or self.timeout_s * 3):
            identity = await self._identify()
        if not isinstance(identity, DeviceIdentity):
            raise TypeError(f"{type(self).__name__}._identify must return DeviceIdentity")
        return identity

    async def read(self, *, stable: bool = False, timeout: float | None = None) -> Reading:
        """Return one reading.

        ``stable=False`` returns the current value whatever its stability
        (status ``ok`` or ``dynamic``); ``stable=True`` waits until the device
        is stable (or reports overload/underload/busy/fault) within
        ``stable_timeout_s``. Device conditions come back as the reading's
        status; communication and parse failures raise.
        """
        self._require(Capability.READ)
        limit = timeout or (self.stable_timeout_s if stable else self.timeout_s)
        async with self._operation("read", limit):
            if not stable or Capability.STABLE_READ in self.capabilities:
                return self._make_reading(await self._read_raw(stable))
            # Device cannot wait for stability itself: poll until it settles.
            while True:
                frame = self._as_frame(await self._read_raw(False))
                sample = self.parse_frame(frame.raw)
                if sample.status is not ReadingStatus.DYNAMIC:
                    return self._reading_from(frame, sample)

    async def stream(self, *, timeout: float | None = None) -> AsyncGenerator[Reading, None]:
        """Yield readings continuously, in order, until the consumer stops.

        Close it deterministically with ``contextlib.aclosing``. Other commands
        may be issued meanwhile: they wait for the current frame, run, and the
        stream resumes. The stream ends quietly when the driver is closed by
        its owner and raises :class:`DeviceError` when the device fails; a device
        that sends nothing for ``timeout`` (default ``timeout_s``) raises
        :class:`DeviceTimeout` at that moment, never later.
        """
        self._require(Capability.STREAM)
        self._require_connected()
        limit = timeout or self.timeout_s
        link_failed = False
        try:
            while True:
                if not self.is_connected:
                    return
                try:
                    async with self._operation("stream", limit):
                        reading = self._make_reading(await self._stream_frame())
                except (DeviceUnavailable, asyncio.CancelledError):
                    # A silent or lost link is reported now (within ``limit``): leaving
                    # stream mode politely would first wait for a device that is not
                    # answering. The driver resynchronises before its next command.
                    link_failed = True
                    raise
                yield reading
        finally:
            if not link_failed:
                await self._finish_stream(limit)

    async def tare(self, *, timeout: float | None = None) -> Weight:
        """Tare the device (waits for stability); return the stored tare weight."""
        self._require(Capability.TARE)
        async with self._operation("tare", timeout or self.stable_timeout_s):
            return await self._tare()

    async def zero(self, *, timeout: float | None = None) -> None:
        """Set the device to zero (waits for stability)."""
        self._require(Capability.ZERO)
        async with self._operation("zero", timeout or self.stable_timeout_s):
            await self._zero()

    async def tare_weight(self, *, timeout: float | None = None) -> Weight:
        """Return the weight held in the tare memory."""
        self._require(Capability.PRESET_TARE)
        async with self._operation("tare_weight", timeout or self.timeout_s):
            return await self._tare_weight()

    async def preset_tare(self, weight: Weight, *, timeout: float | None = None) -> Weight:
        """Set the tare memory to ``weight``; return the value the device stored."""
        self._require(Capability.PRESET_TARE)
        if not isinstance(weight, Weight):
            raise TypeError("preset_tare expects a Weight")
        async with self._operation("preset_tare", timeout or self.timeout_s):
            return await self._preset_tare(weight)

    async def clear_tare(self, *, timeout: float | None = None) -> None:
        """Clear the tare memory."""
        self._require(Capability.PRESET_TARE)
        async with self._operation("clear_tare", timeout or self.timeout_s):
            await self._clear_tare()

    def parse_frame(self, raw: bytes) -> Sample:
        """Parse one frame with the driver's ``_parse``; any failure is ProtocolError."""
        try:
            sample = self._parse(raw)
            if not isinstance(sample, Sample):
                raise TypeError(f"_parse returned {type(sample).__name__}, not Sample")
        except DeviceError as exc:
            if exc.raw is None:
                exc.raw = raw
            exc.device_id = exc.device_id or self.device_id
            raise
        except Exception as exc:
            raise ProtocolError(
                f"cannot parse frame: {exc}", device_id=self.device_id, raw=raw
            ) from exc
        return sample

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the link and verify the device answers."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release the link; must tolerate a half-open state."""

    @abc.abstractmethod
    async def _identify(self) -> DeviceIdentity:
        """Return the device identity."""

    @abc.abstractmethod
    async def _read_raw(self, stable: bool) -> bytes | Frame:
        """Return one frame; ``stable`` asks the device to wait for stability."""

    @abc.abstractmethod
    def _parse(self, raw: bytes) -> Sample:
        """Turn one frame into a Sample; raise on anything unexpected."""

    async def _stream_frame(self) -> bytes | Frame:
        """Return the next frame of a continuous stream (default: poll ``_read_raw``)."""
        return await self._read_raw(False)

    async def _stream_stop(self) -> None:
        """Leave continuous mode after a stream ends (optional hook; default: nothing to do)."""
        return None

    def _after_error(self, exc: Exception) -> None:
        """Called (lock held) after any failed operation, e.g. to schedule a resync (optional hook)."""
        return None

    async def _tare(self) -> Weight:
        raise NotSupported("tare not implemented", device_id=self.device_id)

    async def _zero(self) -> None:
        raise NotSupported("zero not implemented", device_id=self.device_id)

    async def _tare_weight(self) -> Weight:
        raise NotSupported("tare memory not implemented", device_id=self.device_id)

    async def _preset_tare(self, weight: Weight) -> Weight:
        raise NotSupported("preset tare not implemented", device_id=self.device_id)

    async def _clear_tare(self) -> None:
        raise NotSupported("clear tare not implemented", device_id=self.device_id)

    # --------------------------------------------------------------- plumbing
    def _require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise NotSupported(
                f"{type(self).__name__} does not support {capability.value}",
                device_id=self.device_id,
            )

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceUnavailable("not connected", device_id=self.device_id)

    @contextlib.asynccontextmanager
    async def _operation(self, what: str, timeout: float) -> AsyncIterator[None]:
        """Hold the lock, apply the time-out and map every failure into the tree."""
        self._require_connected()
        assert self._lock is not None
        async with self._lock:
            self._require_connected()
            try:
                async with asyncio.timeout(timeout):
                    yield
            except Exception as exc:
                self._after_error(exc)
                if not self.is_connected and not isinstance(exc, DeviceError):
                    raise DeviceUnavailable(
                        f"{what}: driver closed", device_id=self.device_id
                    ) from exc
                mapped = self._map_error(exc, what, timeout)
                if mapped is exc:
                    raise
                raise mapped from exc

    def _map_error(self, exc: Exception, what: str, timeout: float | None = None) -> Exception:
        if isinstance(exc, DeviceError):
            exc.device_id = exc.device_id or self.device_id
            return exc
        if isinstance(exc, TimeoutError):
            limit = f" after {timeout:g} s" if timeout else ""
            return DeviceTimeout(f"{what}: no reply{limit}", device_id=self.device_id)
        if isinstance(exc, OSError):
            return DeviceUnavailable(f"{what}: {exc}", device_id=self.device_id)
        return exc

    async def _finish_stream(self, timeout: float) -> None:
        if not self.is_connected or self._lock is None:
            return
        try:
            async with self._lock:
                async with asyncio.timeout(timeout * 2):
                    await self._stream_stop()
        except Exception:
            log.debug("%s: could not leave stream mode cleanly", self, exc_info=True)

    @staticmethod
    def _as_frame(raw: bytes | Frame) -> Frame:
        if isinstance(raw, Frame):
            return raw
        if isinstance(raw, (bytes, bytearray)):
            return Frame.now(bytes(raw))
        raise TypeError(f"a frame must be bytes or Frame, not {type(raw).__name__}")

    def _make_reading(self, raw: bytes | Frame) -> Reading:
        frame = self._as_frame(raw)
        return self._reading_from(frame, self.parse_frame(frame.raw))

    def _reading_from(self, frame: Frame, sample: Sample) -> Reading:
        self._sequence += 1
        return Reading(
            device_id=self.device_id,
            sequence=self._sequence,
            status=sample.status,
            value=sample.value,
            unit=sample.unit,
            stable=sample.stable,
            raw=frame.raw,
            timestamp=frame.timestamp,
            monotonic=frame.monotonic,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device_id!r} {self._state}>"
