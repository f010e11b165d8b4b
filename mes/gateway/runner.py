"""The gateway proper: one asyncio task per device, reconnecting, reporting, never crashing.

For each :class:`~mes.gateway.config.DeviceSpec` the :class:`Gateway` creates the driver
(``devices`` registry, entry-point group ``mes.devices``) and loops: connect, identify,
then stream (or poll) readings; every reading goes into the reading store (what the capture
rules use) and to the browsers watching the device (Socket.IO ``reading``). A lost link,
a time-out or a device fault closes the driver, shows as ``device_status`` with the reason,
and the gateway reconnects with exponential backoff (:class:`devices.backoff.Backoff`). A
reply that does not parse (garbage on the line) is a status with its raw bytes, never a
value and never the end of the gateway; after several in a row the link is reopened.

Line equipment (``mode: packml``, an OPC UA server with PackML state and counters) is
polled; state changes, and the counters at most every :data:`COUNTER_EVERY_S`, go to the
OEE service (``mes.oee.operations.record_line_sample``) when it is installed, and to the
browsers watching the line (``line_state``). Samples the service cannot take for now (its
database is restarting) wait in order and go at the next poll with their own time. A line
whose link is lost, and every line when the gateway stops, ends its state at once as "no
data" (PackML Undefined), so the last state never runs on while nobody watches the line.

:class:`GatewayThread` runs a gateway in a background thread (inside the web server for
``mes demo``, and in tests); ``mes gateway`` runs it in the foreground of its own process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devices.backoff import Backoff
from devices.errors import (
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceUnavailable,
    NotSupported,
    ProtocolError,
)
from mes.gateway.config import DeviceSpec
from mes.gateway.health import HEARTBEAT_S, DeviceState, HealthBoard
from mes.gateway.store import CapturedReading, LinkState, ReadingStore, new_epoch

__all__ = ["COMMAND_CHANNEL", "COUNTER_EVERY_S", "NO_DATA_STATE", "Gateway", "GatewayThread", "LineSample",
           "LineSampleRefused", "UNSENT_LINE_SAMPLES_MAX", "line_state_key", "no_data_sample", "outcome"]

log = logging.getLogger("mes.gateway")

#: Counters go to the OEE service at most this often (state changes go at once).
COUNTER_EVERY_S = 10.0
#: Line samples kept per line while the OEE service cannot take them (a database restart);
#: beyond this the oldest are dropped, with an error in the log.
UNSENT_LINE_SAMPLES_MAX = 10_000
#: Waiting samples sent per poll, so a backlog after an outage does not hold up the polling.
LINE_SAMPLES_PER_POLL = 50
#: The state sent for a line whose link is lost: PackML "Undefined", counted as no data.
NO_DATA_STATE = "undefined"
#: Unparseable replies in a row after which the link is reopened.
MAX_BAD_REPLIES = 5
#: Redis channel on which web workers send device commands to a separate gateway process.
COMMAND_CHANNEL = "mes:gateway:commands"
REPLY_PREFIX = "mes:gateway:reply:"

Emit = Callable[[str, dict[str, Any], str], None]


@dataclass(frozen=True)
class LineSample:
    """What the gateway tells the OEE service about a line at one instant."""

    line_id: str
    device_id: str
    at: datetime
    state: str | None
    processed: int | None
    defective: int | None
    stop_reason: str | None


class LineSampleRefused(Exception):
    """Raised by a line sink that will never accept this sample (it is invalid or older
    than what the service has): the gateway drops it. Any other exception from the sink
    is taken as passing trouble, and the sample is offered again at the next poll."""


def line_state_key(status: Any) -> tuple[str, str | None]:
    """What makes a line state new for the OEE service: the PackML state *and* its stop code,
    so a stop code that changes within the same state (Held 101 -> Held 202) is a new stop."""
    return status.state.name.lower(), (str(status.stop_reason) if status.stop_reason else None)


def no_data_sample(line: str, device_id: str, at: datetime) -> LineSample:
    """The sample that ends a line's state when its link is lost: PackML Undefined ("no data",
    not counted), so the last state never runs on through an outage."""
    return LineSample(line_id=line, device_id=device_id, at=at, state=NO_DATA_STATE, processed=None,
                      defective=None, stop_reason=None)


def outcome(ok: bool, status: int = 200, slug: str = "ok", detail: str = "", **extra: Any) -> dict[str, Any]:
    """The answer to a device command, the same in-process and over Redis."""
    return {"ok": ok, "status": status, "slug": slug, "detail": detail, **extra}


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    """A plain sentence for an operator about why the device is not delivering."""
    if isinstance(exc, DeviceError):
        text = exc.message
        if isinstance(exc, ProtocolError):
            raw = exc.raw[:40].hex(" ") if exc.raw else ""
            return f"Unreadable reply from the device ({text}){f'; raw bytes {raw}' if raw else ''}."
        if isinstance(exc, DeviceUnavailable):
            return f"Device not reachable: {text}."
        if isinstance(exc, DeviceBusy):
            return f"Device busy: {text}."
        if isinstance(exc, DeviceFault):
            return f"Device reports a fault: {text}."
        return f"Device error: {text}."
    return f"Gateway error: {type(exc).__name__}: {exc}."


class _Device:
    """Run-time state of one device."""

    def __init__(self, spec: DeviceSpec, driver: Any) -> None:
        self.spec = spec
        self.driver = driver
        self.state = DeviceState(device_id=spec.device_id, driver=spec.driver, kind=spec.kind, line=spec.line,
                                 capabilities=sorted(c.value for c in driver.capabilities))
        self.identity: dict[str, str] = {}
        self.last_key: tuple[Any, ...] | None = None
        self.last_emit = 0.0
        #: (state, stop reason) last sent to the OEE service; ("undefined", None) after a lost link
        self.last_line_state: tuple[str, str | None] | None = None
        self.last_counters_at = 0.0
        self.unsent: collections.deque[LineSample] = collections.deque()
        self.sink_failing = False
        self.dropping = 0  # samples dropped since the queue was full
        self.logged: tuple[bool, str | None] | None = None  # (connected, error class) last logged
        self.task: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        from devices.base import Capability

        if self.spec.mode:
            return self.spec.mode
        return "stream" if Capability.STREAM in self.driver.capabilities else "poll"


class Gateway:
    """Runs the configured devices; see the module docstring."""

    def __init__(
        self,
        specs: list[DeviceSpec],
        *,
        store: ReadingStore,
        board: HealthBoard,
        emit: Emit | None = None,
        line_sink: Callable[[LineSample], None] | None = None,
        simulation: Any = None,
        redis_url: str | None = None,
    ) -> None:
        from devices.registry import create_driver

        self.store = store
        self.board = board
        self.emit: Emit = emit or (lambda event, payload, room: None)
        self.line_sink = line_sink
        self.simulation = simulation
        self.redis_url = redis_url
        #: This run's id: every reading and link state carries it (readings order by epoch, then sequence).
        self.epoch = new_epoch()
        self.devices: dict[str, _Device] = {}
        self._specs = list(specs)
        self._create_driver = create_driver
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()

    def add(self, spec: DeviceSpec) -> None:
        """Add a device (before :meth:`run`, or from the gateway's loop while running)."""
        if spec.device_id in self.devices:
            raise ValueError(f"device {spec.device_id} is configured twice")
        device = _Device(spec, self._create_driver(spec.driver, spec.device_id, spec.config))
        self.devices[spec.device_id] = device
        self._put_link(device, "The device gateway is connecting.")  # a previous run's link no longer holds
        self._put_state(device)
        if self.loop is not None:
            device.task = self.loop.create_task(self._run_device(device), name=f"device-{spec.device_id}")

    # ------------------------------------------------------------------ running
    async def run(self, stop: asyncio.Event) -> None:
        """Run every device until ``stop`` is set; then close every driver."""
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        extra: list[asyncio.Task[Any]] = []
        try:
            if self.simulation is not None:
                self._specs += await self.simulation.start()
            for spec in self._specs:
                self.add(spec)
            extra.append(self.loop.create_task(self._heartbeat(), name="gateway-heartbeat"))
            if self.redis_url:
                extra.append(self.loop.create_task(self._listen_for_commands(), name="gateway-commands"))
            self.ready.set()
            log.info("gateway running %d device(s): %s", len(self.devices), ", ".join(self.devices))
            await stop.wait()
        finally:
            tasks = [d.task for d in self.devices.values() if d.task is not None] + extra
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for device in self.devices.values():
                with contextlib.suppress(Exception):  # stopping goes on whatever the OEE service does
                    await self._line_stopped(device)
                if device.unsent:
                    log.error("line %s: the gateway stops with %d samples the OEE service has not taken (%s to %s)",
                              device.spec.line or device.spec.device_id, len(device.unsent),
                              device.unsent[0].at.isoformat(), device.unsent[-1].at.isoformat())
                with contextlib.suppress(Exception):
                    await device.driver.close()
                device.state.connected = False
                device.state.message = "The gateway has stopped."
                self._put_link(device, device.state.message)
                self._put_state(device)
            if self.simulation is not None:
                await self.simulation.stop()

    async def _run_device(self, device: _Device) -> None:
        """Connect, identify, deliver readings; after a failure, reconnect. Reconnects have one
        owner: a driver that reconnects by itself (``reconnects_itself``: Modbus, OPC UA) is
        not closed on a lost link — the gateway reports the device disconnected, waits for the
        driver's link and goes on, and retries a failed first connect with the driver's own
        ``reconnect_*`` policy; any other driver is closed and reopened with the device entry's
        ``reconnect_initial_s`` / ``reconnect_max_s``."""
        spec, driver = device.spec, device.driver
        own = bool(getattr(driver, "reconnects_itself", False))
        initial, maximum = ((driver.reconnect_initial_s, driver.reconnect_max_s) if own
                            else (spec.reconnect_initial_s, spec.reconnect_max_s))
        backoff = Backoff(initial, maximum)
        first = True
        while True:
            delay = initial
            try:
                await driver.connect()  # a no-op when the driver kept its link
                identity = await self._identify(device)
                if not first:
                    device.state.reconnects += 1
                first = False
                backoff.reset()
                self._set_status(device, True, "Connected.", identity=identity)
                await self._pump(device)
                raise DeviceUnavailable("the reading stream ended", device_id=spec.device_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a device does, the gateway stays up
                if not isinstance(exc, DeviceError):
                    log.exception("device %s: unexpected error", spec.device_id)
                if own and driver.is_connected and isinstance(exc, DeviceUnavailable):
                    self._set_status(device, False, f"{_describe(exc)} The driver is reconnecting.", error=exc)
                    await self._line_lost(device)
                    with contextlib.suppress(DeviceError):
                        await driver.wait_connected()
                        continue  # the driver's link is back: identify and go on at once
                delay = backoff.next_delay()
                self._set_status(device, False, f"{_describe(exc)} Reconnecting in {delay:.1f} s.", error=exc)
                await self._line_lost(device)
                with contextlib.suppress(Exception):
                    await driver.close()
            await asyncio.sleep(delay)

    async def _identify(self, device: _Device) -> dict[str, str]:
        """Make, model, serial number and firmware (and capacity when the device gives it): the
        provenance of every reading the device delivers. A device that cannot say keeps what it
        said before on this gateway run (the same instrument on the same port)."""
        try:
            ident = await device.driver.identify()
        except DeviceError as exc:
            if isinstance(exc, DeviceUnavailable):
                raise
            log.warning("device %s: identify failed: %s", device.spec.device_id, exc)
            return dict(device.state.identity) or {"driver": device.spec.driver}
        identity = {"make": ident.make, "model": ident.model, "serial_number": ident.serial_number,
                    "firmware": ident.firmware, "driver": device.spec.driver}
        if ident.details.get("capacity"):
            identity["capacity"] = ident.details["capacity"]
        return identity

    async def _pump(self, device: _Device) -> None:
        """Deliver readings until the link fails (raises) — bad replies are reported and skipped."""
        bad = 0
        mode = device.mode
        while True:
            try:
                if mode == "stream":
                    async with contextlib.aclosing(device.driver.stream()) as readings:
                        async for reading in readings:
                            self._reading(device, reading)
                            bad = 0
                    return
                if mode == "packml":
                    status = await device.driver.read_packml()
                    self._reading(device, status.readings["state"])
                    await self._line(device, status)
                else:
                    self._reading(device, await device.driver.read())
                bad = 0
                await asyncio.sleep(device.spec.interval_s)
            except (ProtocolError, DeviceFault) as exc:
                if isinstance(exc, DeviceUnavailable) or not device.driver.is_connected:
                    raise
                bad += 1
                self._set_status(device, True, _describe(exc), error=exc)
                if bad >= MAX_BAD_REPLIES:
                    raise
                await asyncio.sleep(min(0.05 * bad, 0.5))

    # --------------------------------------------------------------- reporting
    def _reading(self, device: _Device, reading: Any) -> None:
        captured = CapturedReading.from_reading(reading, device.state.identity, self.epoch)
        self.store.put(captured)
        device.state.reading = captured
        if device.state.message != "Connected." and device.state.connected:
            self._set_status(device, True, "Connected.")
        key = (captured.status, captured.value, captured.unit)
        now = time.monotonic()
        if key != device.last_key or now - device.last_emit >= device.spec.emit_every_s:
            device.last_key = key
            device.last_emit = now
            self.emit("reading", captured.to_json(), f"device:{device.spec.device_id}")

    def _set_status(self, device: _Device, connected: bool, message: str, *, identity: dict[str, str] | None = None,
                    error: BaseException | None = None) -> None:
        state = device.state
        changed = connected != state.connected
        kind = (connected, type(error).__name__ if error is not None else None)
        if kind != device.logged:  # one line per state change of the device, not per attempt
            device.logged = kind
            if connected and error is None:
                log.info("device %s: %s", state.device_id, message)
            else:
                log.warning("device %s: %s", state.device_id, message)
        if connected and not state.connected:
            state.connected_since = _now()
        state.connected = connected
        if changed or not connected:
            self._put_link(device, message)
        state.message = message
        if identity is not None:
            state.identity = identity
        if error is not None:
            state.last_error = _describe(error)
            state.last_error_at = _now()
        self._put_state(device)
        self.emit("device_status", state.status_json(), f"device:{device.spec.device_id}")

    def _put_link(self, device: _Device, message: str) -> None:
        """Tell the store whether the device is heard: the capture rule refuses a silent device's
        last reading from this moment, whatever its age."""
        state = device.state
        since = state.connected_since if state.connected and state.connected_since else _now()
        try:
            self.store.set_link(LinkState(state.device_id, state.connected, since, self.epoch,
                                          "" if state.connected else message))
        except Exception:  # noqa: BLE001 - e.g. Redis restarting; the next change writes it again
            log.warning("could not store the link of %s", device.spec.device_id, exc_info=True)

    def _put_state(self, device: _Device) -> None:
        device.state.updated_at = _now()
        try:
            self.board.put(device.state)
        except Exception:  # noqa: BLE001 - e.g. Redis restarting; the next heartbeat retries
            log.warning("could not store the state of %s", device.spec.device_id, exc_info=True)

    async def _heartbeat(self) -> None:
        """Refresh every device's state (age of the last reading) for the board and the browsers."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for device in list(self.devices.values()):
                self._put_state(device)
                self.emit("device_status", device.state.status_json(), f"device:{device.spec.device_id}")

    # -------------------------------------------------------------------- lines
    async def _line(self, device: _Device, status: Any) -> None:
        line = device.spec.line or device.spec.device_id
        state, reason = line_state_key(status)
        now = time.monotonic()
        changed = (state, reason) != device.last_line_state
        payload = {"line": line, "device_id": device.spec.device_id, "state": state,
                   "state_number": int(status.state), "processed": status.processed,
                   "defective": status.defective, "stop_reason": status.stop_reason,
                   "at": status.timestamp.isoformat()}
        if changed or now - device.last_emit >= device.spec.emit_every_s:
            self.emit("line_state", payload, f"line:{line}")
        if changed or now - device.last_counters_at >= COUNTER_EVERY_S:
            device.last_line_state = (state, reason)
            device.last_counters_at = now
            if self.line_sink is not None:
                self._queue_line_sample(device, LineSample(
                    line_id=line, device_id=device.spec.device_id, at=status.timestamp,
                    state=state if changed else None, processed=status.processed,
                    defective=status.defective, stop_reason=reason))
        await self._send_line_samples(device, line)

    async def _line_lost(self, device: _Device) -> None:
        """The link to a line is lost: its state ends now as "no data" (PackML Undefined, not
        counted), so the last state does not run on through the outage; the state is read
        again, and sent as a change, once the link is back."""
        if device.mode != "packml" or device.last_line_state == (NO_DATA_STATE, None):
            return
        line = device.spec.line or device.spec.device_id
        device.last_line_state = (NO_DATA_STATE, None)
        sample = no_data_sample(line, device.spec.device_id, _now())
        self.emit("line_state", {"line": line, "device_id": device.spec.device_id, "state": NO_DATA_STATE,
                                 "state_number": 0, "processed": None, "defective": None, "stop_reason": None,
                                 "at": sample.at.isoformat()}, f"line:{line}")
        if self.line_sink is not None:
            self._queue_line_sample(device, sample)
            await self._send_line_samples(device, line)

    async def _line_stopped(self, device: _Device) -> None:
        """The gateway stops (a clean stop): nobody watches the line any more, so its state
        ends now as "no data", as on a lost link, instead of running on until the next start;
        the samples still waiting are offered while the OEE service takes them."""
        await self._line_lost(device)
        line = device.spec.line or device.spec.device_id
        while device.unsent and self.line_sink is not None:
            waiting = len(device.unsent)
            await self._send_line_samples(device, line)
            if len(device.unsent) >= waiting:
                return  # the service takes nothing now: the rest is logged as lost

    def _queue_line_sample(self, device: _Device, sample: LineSample) -> None:
        if len(device.unsent) >= UNSENT_LINE_SAMPLES_MAX:
            lost = device.unsent.popleft()
            if not device.dropping:  # once per outage; the recovery message gives the count
                log.error("line %s: %d samples wait for the OEE service; from now on the oldest are dropped "
                          "(the first from %s)", sample.line_id, UNSENT_LINE_SAMPLES_MAX, lost.at.isoformat())
            device.dropping += 1
        device.unsent.append(sample)

    async def _send_line_samples(self, device: _Device, line: str) -> None:
        """Hand the waiting samples to the OEE service in order. A state change must not be
        lost to a passing database error: a sample the sink could not take stays first in
        line and is offered again at the next poll, with its original time."""
        loop = asyncio.get_running_loop()
        for _ in range(LINE_SAMPLES_PER_POLL):
            if not device.unsent or self.line_sink is None:
                return
            sample = device.unsent[0]
            try:
                await loop.run_in_executor(None, self.line_sink, sample)
            except LineSampleRefused as exc:
                log.error("line %s: the OEE service refused the sample from %s: %s", line, sample.at.isoformat(), exc)
            except Exception:  # noqa: BLE001 - OEE trouble must not stop the line feed
                if not device.sink_failing:  # once per outage, not once per poll
                    log.warning("line %s: the OEE service could not take the sample from %s; samples wait "
                                "and are offered again at every poll", line, sample.at.isoformat(), exc_info=True)
                device.sink_failing = True
                return
            device.unsent.popleft()
            if device.sink_failing:
                device.sink_failing = False
                log.warning("line %s: the OEE service takes samples again (%d waiting, %d dropped)", line,
                            len(device.unsent), device.dropping)
                device.dropping = 0

    # ----------------------------------------------------------------- commands
    async def command(self, device_id: str, action: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Carry out ``tare`` / ``zero`` on a device or ``simulate`` on a simulated one."""
        if action == "simulate":
            if self.simulation is None:
                return outcome(False, 404, "not-found", "Device simulation is not running.")
            result = self.simulation.set_load(device_id, payload or {})
            if result.get("ok") and "connected" in (payload or {}):
                await self.simulation.set_connected(device_id, bool(payload["connected"]))  # type: ignore[index]
                result["connected"] = bool(payload["connected"])  # type: ignore[index]
            return result
        device = self.devices.get(device_id)
        if device is None:
            return outcome(False, 404, "not-found", f"The gateway runs no device {device_id}.")
        if action not in ("tare", "zero"):
            return outcome(False, 422, "validation-failed", f"Unknown device action {action!r}.")
        if not device.driver.is_connected:
            return outcome(False, 503, "device-unavailable",
                           f"{device_id} is not connected ({device.state.message}) Try again when it is back.")
        try:
            if action == "tare":
                weight = await device.driver.tare()
                return outcome(True, detail=f"{device_id} tared: {weight.value} {weight.unit} in the tare memory.",
                               device_id=device_id, action=action, tare={"value": str(weight.value), "unit": weight.unit})
            await device.driver.zero()
            return outcome(True, detail=f"{device_id} set to zero.", device_id=device_id, action=action)
        except NotSupported:
            return outcome(False, 409, "not-supported", f"{device_id} cannot {action}.", device_id=device_id)
        except DeviceBusy as exc:
            return outcome(False, 409, "device-busy", f"{device_id} is busy or the load is moving ({exc.message}); "
                                                      f"wait until it is stable and {action} again.", device_id=device_id)
        except DeviceUnavailable as exc:
            return outcome(False, 503, "device-unavailable", f"{device_id} did not answer ({exc.message}).",
                           device_id=device_id)
        except DeviceFault as exc:
            return outcome(False, 409, "device-refused", f"{device_id} refused to {action}: {exc.message}.",
                           device_id=device_id)
        except DeviceError as exc:
            return outcome(False, 502, "device-error", f"{device_id} gave an unexpected reply to {action}: "
                                                       f"{exc.message}.", device_id=device_id)

    async def _listen_for_commands(self) -> None:
        """Answer commands from web workers on :data:`COMMAND_CHANNEL` (separate gateway process)."""
        import redis.asyncio as aioredis

        assert self.redis_url
        backoff = Backoff(0.5, 10.0)
        while True:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(COMMAND_CHANNEL)
                    backoff.reset()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        asyncio.get_running_loop().create_task(self._answer(client, message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis restarting: listen again
                log.warning("gateway command channel lost; listening again", exc_info=True)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff.next_delay())

    async def _answer(self, client: Any, data: bytes) -> None:
        try:
            request = json.loads(data)
            device_id, action = str(request["device_id"]), str(request["action"])
            reply_to = REPLY_PREFIX + str(request["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed gateway command: %r", data[:200])
            return
        if action != "simulate" and device_id not in self.devices:
            return  # another gateway may run it; the web worker checks the health board first
        if action == "simulate" and (self.simulation is None or not self.simulation.has(device_id)):
            return
        try:
            result = await self.command(device_id, action, request.get("payload"))
        except Exception as exc:  # noqa: BLE001
            log.exception("gateway command %s %s failed", action, device_id)
            result = outcome(False, 500, "internal-error", f"The gateway could not {action} {device_id}: {exc}")
        await client.lpush(reply_to, json.dumps(result))
        await client.expire(reply_to, 60)


class GatewayThread:
    """A :class:`Gateway` in a background thread with its own event loop."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mes-gateway", daemon=True)

    def start(self, timeout: float = 60.0, *, wait: bool = True) -> GatewayThread:
        """Start the thread; return once every device task runs (simulators started), or at
        once with ``wait=False`` (a web worker must not delay serving for its devices)."""
        self._thread.start()
        if not wait:
            return self
        if not self._started.wait(timeout):
            raise TimeoutError("the device gateway did not start")
        if self._error is not None:
            raise RuntimeError(f"the device gateway failed to start: {self._error}") from self._error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported to start() and in the log
            log.exception("the device gateway stopped with an error")
            self._error = exc
            self._started.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = self._loop.create_task(self.gateway.run(self._stop))
        while not self.gateway.ready.is_set() and not runner.done():
            await asyncio.sleep(0.01)
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            self._error = runner.exception()
        self._started.set()
        await runner

    def call(self, device_id: str, action: str, payload: dict[str, Any] | None = None,
             timeout: float = 20.0) -> dict[str, Any]:
        """Run a device command on the gateway's loop from any thread; wait for its outcome
        (a gateway still starting its devices is waited for, within ``timeout``)."""
        self._started.wait(timeout)
        if self._loop is None or not self._thread.is_alive() or self._error is not None:
            return outcome(False, 503, "gateway-unavailable", "The device gateway is not running.")
        future = asyncio.run_coroutine_threadsafe(self.gateway.command(device_id, action, payload), self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            return outcome(False, 504, "gateway-timeout", f"{device_id} did not finish {action} within {timeout:g} s.")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every device, close the drivers and join the thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
