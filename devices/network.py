"""The base of drivers that keep a network session open (Modbus TCP, OPC UA): one copy of the
link handling they share.

:class:`NetworkDriver` owns the *link state* (up, lost, the next reconnect attempt, the last
error, the number of reconnects), the *reconnect policy* — after a drop it reconnects in the
background with exponential backoff (``reconnect_initial_s`` doubling up to
``reconnect_max_s``, ±10 % jitter, :class:`devices.backoff.Backoff`) while operations fail
fast with :class:`~devices.errors.DeviceUnavailable` — and :func:`float_to_decimal`, the exact
decimal a device meant by a float.

Reconnects have one owner: a networked driver reconnects by itself (``reconnects_itself``),
configured by its own ``reconnect_*`` keys; the MES gateway then does not close it on a lost
link but waits for :meth:`NetworkDriver.wait_connected` (and uses the same keys to retry a
first connect that failed). Drivers that do not reconnect by themselves (serial balances) are
closed and reopened by the gateway with the ``reconnect_*`` keys of its device entry.

A subclass implements two hooks, besides the usual :class:`~devices.base.Driver` ones:
``_open_link()`` opens a fresh session (and calls nothing here), ``_drop_link()`` releases the
current one; ``_on_link_down()`` (optional) reacts to a drop (e.g. mark subscriptions detached).
It calls :meth:`NetworkDriver._mark_down` when it sees the link go, and starts its
``_connect``/``_close`` with :meth:`_start_link` / :meth:`_stop_link`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any, ClassVar

from devices.backoff import Backoff
from devices.base import Driver
from devices.errors import ConfigurationError, DeviceError, DeviceTimeout, DeviceUnavailable

__all__ = ["RECONNECT_SCHEMA", "LinkChatterFilter", "NetworkDriver", "float_to_decimal", "quiet_library_logs"]

log = logging.getLogger(__name__)

#: Decimal precision for making large integral floats exact (any finite double fits).
_PRECISION = 800

#: The reconnect keys every networked driver's config schema carries.
RECONNECT_SCHEMA: dict[str, Any] = {
    "reconnect_initial_s": {
        "type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": 0.5,
        "description": "first delay before reconnecting after the link dropped (doubles per failed attempt)",
    },
    "reconnect_max_s": {
        "type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": 30.0,
        "description": "longest delay between reconnect attempts",
    },
}


def float_to_decimal(value: float, *, single: bool) -> Decimal:
    """The shortest decimal that converts back to the same float32 (``single``) or float64.

    Why: ``Decimal(0.1)`` is 0.1000000000000000055511151231257827…, and a
    float32 read as a Python float shows nine spurious digits; the shortest
    round-trip form is what the device meant. Integral results are written
    without an exponent (``1E+1`` becomes ``10``). Raises ValueError for NaN
    and infinities.
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    text = repr(value)  # Python's repr is the shortest float64 round-trip form
    if single:
        packed = struct.pack(">f", value)
        for digits in range(1, 10):  # 9 significant digits always round-trip a float32
            candidate = f"{value:.{digits}g}"
            try:
                if struct.pack(">f", float(candidate)) == packed:
                    text = candidate
                    break
            except OverflowError:  # rounded up past the float32 range: needs more digits
                continue
    result = Decimal(text)
    if result.as_tuple().exponent > 0:  # type: ignore[operator]
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            result = result.quantize(Decimal(1))
    return result


#: What the protocol libraries log about a link the driver already reports (as a status).
_CHATTER = ("failed to connect", "connect call failed", "repeating", "connection lost", "connection_lost",
            "connection is closed", "reconnect", "no response received", "close_secure_channel",
            "connection refused", "connection reset", "timed out", "timeout")
_LINK_ERRORS = (OSError, EOFError, TimeoutError, asyncio.CancelledError, asyncio.IncompleteReadError)


class LinkChatterFilter(logging.Filter):
    """Drops what pymodbus and asyncua log about links at run time — their info and debug
    lines, "Failed to connect", "Repeating…", reconnect tracebacks — because the driver turns
    each into one DeviceError and the gateway logs one line per state change of the device.
    Anything else the libraries warn about passes, and everything passes once
    :func:`show_link_chatter` is on (``MES_LOG_LEVEL=DEBUG`` asks to see all of it)."""

    #: Set by :func:`show_link_chatter`.
    everything: ClassVar[bool] = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.everything:
            return True
        if record.levelno < logging.WARNING:
            return False
        if record.exc_info and isinstance(record.exc_info[1], _LINK_ERRORS):
            return False
        text = record.getMessage().lower()
        return not any(phrase in text for phrase in _CHATTER)


_FILTER = LinkChatterFilter()


def show_link_chatter(on: bool) -> None:
    """Let the protocol libraries' link chatter through (the application's DEBUG level)."""
    LinkChatterFilter.everything = on


def quiet_library_logs(prefixes: tuple[str, ...] = ("pymodbus", "asyncua")) -> None:
    """Put :class:`LinkChatterFilter` on every logger of the protocol libraries (a logger's
    filter does not reach its children, so each existing one gets it; idempotent)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in prefixes]
    for name in {*prefixes, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class NetworkDriver(Driver):
    """A driver with a network session it keeps up by itself (see the module docstring)."""

    #: The gateway leaves reconnecting to the driver (and does not close it on a lost link).
    reconnects_itself: ClassVar[bool] = True

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(device_id, config)
        quiet_library_logs()
        self._link_up = False
        self._up: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._backoff = Backoff(self.reconnect_initial_s, self.reconnect_max_s)
        self._next_attempt_at: float | None = None
        #: Reconnects completed since the driver was created.
        self.reconnects = 0
        #: The last error of a failed reconnect attempt (None once linked).
        self.last_error: DeviceError | None = None

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Schema validation plus: the longest reconnect delay is not below the first."""
        filled = super().validate_config(config)
        if filled.get("reconnect_max_s", 30.0) < filled.get("reconnect_initial_s", 0.5):
            raise ConfigurationError("reconnect_max_s must be >= reconnect_initial_s")
        return filled

    # ------------------------------------------------------------- policy
    @property
    def reconnect_initial_s(self) -> float:
        """First reconnect delay (config ``reconnect_initial_s``)."""
        return float(self.config.get("reconnect_initial_s", 0.5))

    @property
    def reconnect_max_s(self) -> float:
        """Longest reconnect delay (config ``reconnect_max_s``)."""
        return float(self.config.get("reconnect_max_s", 30.0))

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """Where the device is (``host:port``, URL), for messages."""

    # ------------------------------------------------------------- state
    @property
    def link_up(self) -> bool:
        """True while a session with the device is established."""
        return self.is_connected and self._link_up

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up (after a drop, the background reconnect succeeded).

        Raises DeviceUnavailable when the driver is closed and DeviceTimeout when
        ``timeout`` passes first.
        """
        self._require_connected()
        assert self._up is not None
        try:
            async with asyncio.timeout(timeout):
                while not self._link_up:
                    self._require_connected()
                    await self._up.wait()
        except TimeoutError:
            raise DeviceTimeout(
                f"link to {self.endpoint} not back within {timeout:g} s"
                + (f"; last error: {self.last_error.message}" if self.last_error else ""),
                device_id=self.device_id,
            ) from None
        self._require_connected()

    def _down_error(self, what: str) -> DeviceUnavailable:
        """The fail-fast error of an operation while the link is down."""
        detail = f"{what}: link to {self.endpoint} is down, reconnecting"
        if self._next_attempt_at is not None:
            detail += f" (next attempt in {max(0.0, self._next_attempt_at - time.monotonic()):.1f} s)"
        if self.last_error is not None:
            detail += f"; last error: {self.last_error.message}"
        return DeviceUnavailable(detail, device_id=self.device_id)

    # ------------------------------------------------------------- hooks
    @abc.abstractmethod
    async def _open_link(self) -> None:
        """Open a fresh session (releasing any previous one); set ``_link_up`` when done."""

    @abc.abstractmethod
    async def _drop_link(self) -> None:
        """Release the current session, if any."""

    def _on_link_down(self) -> None:
        """React to a drop (optional hook; called by :meth:`_mark_down`)."""
        return None

    def _reconnect_error(self, exc: Exception) -> DeviceError:
        """The DeviceError to report for a failed reconnect attempt."""
        if isinstance(exc, DeviceError):
            return exc
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(f"reconnect to {self.endpoint} timed out", device_id=self.device_id)
        return DeviceUnavailable(f"reconnect to {self.endpoint}: {exc or type(exc).__name__}",
                                 device_id=self.device_id)

    # ------------------------------------------------------------- plumbing
    async def _start_link(self) -> None:
        """``_connect``: open the first session with a fresh policy."""
        if self._up is None:
            self._up = asyncio.Event()
        self._backoff.reset()
        self.last_error = None
        self._next_attempt_at = None
        await self._open_link()
        self._up.set()

    async def _stop_link(self) -> None:
        """``_close``: stop reconnecting (the session itself is the subclass's to release)."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(BaseException):
                await supervisor

    def _mark_down(self) -> None:
        """The link is gone: fail fast from now on and reconnect in the background."""
        self._link_up = False
        if self._up is not None:
            self._up.clear()
        self._on_link_down()
        if self.is_connected and (self._supervisor is None or self._supervisor.done()):
            self._supervisor = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name=f"{self.name}-reconnect {self.device_id}"
            )

    async def _reconnect_loop(self) -> None:
        """Background: reconnect with exponential backoff until linked or closed."""
        await self._drop_link()
        while self.is_connected and not self._link_up:
            delay = self._backoff.next_delay()
            self._next_attempt_at = time.monotonic() + delay
            await asyncio.sleep(delay)
            if not self.is_connected:
                return
            try:
                await asyncio.wait_for(self._open_link(), self.timeout_s * 2)
            except Exception as exc:  # keep trying whatever went wrong; report it
                self.last_error = self._reconnect_error(exc)
                log.debug("%s: reconnect attempt %d failed: %s", self.device_id, self._backoff.attempts, exc)
                continue
            self.reconnects += 1
            self.last_error = None
            self._next_attempt_at = None
            self._backoff.reset()
            log.info("%s: reconnected to %s", self.device_id, self.endpoint)
            if self._up is not None:
                self._up.set()
