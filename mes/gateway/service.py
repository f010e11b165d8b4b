"""Wiring the gateway to the MES: where readings go, how commands reach it, OEE forwarding.

* :func:`start_embedded` — the gateway inside the web server process (``mes demo``, tests):
  memory stores shared with the web app, Socket.IO emits directly, commands are direct calls.
* :func:`run_foreground` — ``mes gateway``: its own process; readings and health go to Redis,
  Socket.IO events through the Redis message queue, commands arrive on a Redis channel.
* :func:`send_command` — what the web layer calls for tare / zero / simulate, whichever of
  the two runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from flask import Flask

from mes.gateway.config import DeviceSpec, load_gateway_config
from mes.gateway.health import health_board
from mes.gateway.runner import (
    COMMAND_CHANNEL,
    REPLY_PREFIX,
    Gateway,
    GatewayThread,
    LineSample,
    LineSampleRefused,
    outcome,
)
from mes.gateway.store import reading_store

__all__ = ["configured_specs", "embedded", "line_sink", "run_foreground", "send_command", "start_embedded"]

log = logging.getLogger("mes.gateway")
EXTENSION = "mes.gateway"


def configured_specs(app: Flask) -> list[DeviceSpec]:
    """The devices in ``MES_GATEWAY_CONFIG`` (none when unset)."""
    path = app.config.get("MES_GATEWAY_CONFIG") or ""
    return load_gateway_config(path) if path else []


def line_sink(app: Flask) -> Any:
    """Forward line samples to ``mes.oee.operations.record_line_sample`` when that service exists."""
    warned: list[bool] = []

    def sink(sample: LineSample) -> None:
        try:
            from mes.oee.operations import record_line_sample  # type: ignore[import-not-found]
        except ImportError:
            if not warned:
                log.warning("mes.oee is not installed: line states and counters are not recorded for OEE")
                warned.append(True)
            return
        from mes.audit.log import Actor
        from mes.errors import MESError

        with app.app_context():
            try:
                record_line_sample(Actor.system("gateway"), sample.line_id, at=sample.at, state=sample.state,
                                   processed=sample.processed, defective=sample.defective,
                                   stop_reason=sample.stop_reason, source=f"gateway:{sample.device_id}")
            except MESError as exc:  # a refusal (invalid, older than the last): sending again cannot help
                raise LineSampleRefused(str(exc)) from exc

    return sink


def _emitter_for(app: Flask) -> Any:
    from mes.realtime import publish

    def emit(event: str, payload: dict[str, Any], room: str) -> None:
        publish(event, payload, room, app=app)

    return emit


def start_embedded(app: Flask, specs: list[DeviceSpec] | None = None, *, simulation: Any = None,
                   forward_lines: bool = True, wait: bool = True) -> GatewayThread:
    """Run a gateway in a background thread of this process; the web app talks to it directly.

    ``specs`` defaults to ``MES_GATEWAY_CONFIG``; ``simulation`` to the simulated plant when
    ``MES_SIMULATION`` is on. ``wait=False`` returns before the devices run (web workers).
    """
    if app.extensions.get(EXTENSION) is not None:
        return app.extensions[EXTENSION]
    if specs is None:
        specs = configured_specs(app)
    if simulation is None and app.config.get("MES_SIMULATION"):
        from mes.gateway.simulation import Simulation

        simulation = Simulation()
    gateway = Gateway(specs, store=reading_store(app), board=health_board(app), emit=_emitter_for(app),
                      line_sink=line_sink(app) if forward_lines else None, simulation=simulation)
    thread = GatewayThread(gateway).start(wait=wait)
    app.extensions[EXTENSION] = thread
    return thread


def embedded(app: Flask) -> GatewayThread | None:
    """The gateway running in this process, if any."""
    return app.extensions.get(EXTENSION)


def stop_embedded(app: Flask) -> None:
    """Stop the in-process gateway (tests, shutdown)."""
    thread = app.extensions.pop(EXTENSION, None)
    if thread is not None:
        thread.stop()


async def run_foreground(app: Flask, specs: list[DeviceSpec], stop: asyncio.Event, *, simulation: Any = None) -> None:
    """``mes gateway``: run until ``stop``; everything goes through Redis (``MES_REDIS_URL``)."""
    from mes.realtime import emitter

    url = app.config["MES_REDIS_URL"]
    external = emitter(url)

    def emit(event: str, payload: dict[str, Any], room: str) -> None:
        try:
            external.emit(event, payload, to=room, namespace="/live")
        except Exception:  # noqa: BLE001 - Redis restarting must not stop the devices
            log.warning("could not publish %s", event, exc_info=True)

    gateway = Gateway(specs, store=reading_store(app), board=health_board(app), emit=emit,
                      line_sink=line_sink(app), simulation=simulation, redis_url=url)
    await gateway.run(stop)


def send_command(app: Flask, device_id: str, action: str, payload: dict[str, Any] | None = None,
                 *, timeout: float = 20.0) -> dict[str, Any]:
    """Tare / zero / simulate on whichever gateway runs the device; the outcome as a dict."""
    thread = embedded(app)
    if thread is not None:
        return thread.call(device_id, action, payload, timeout)
    url = app.config.get("MES_REDIS_URL") or ""
    if not url:
        return outcome(False, 503, "gateway-unavailable",
                       "No device gateway runs for this server (start `mes gateway` with MES_REDIS_URL set).")
    if action != "simulate" and health_board(app).get(device_id) is None:
        return outcome(False, 404, "not-found", f"No gateway has reported device {device_id}.")
    import redis

    client = redis.Redis.from_url(url)
    request_id = uuid.uuid4().hex
    try:
        listeners = client.publish(COMMAND_CHANNEL, json.dumps({"id": request_id, "device_id": device_id,
                                                                "action": action, "payload": payload or {}}))
        if not listeners:
            return outcome(False, 503, "gateway-unavailable", "The device gateway is not running.")
        reply = client.blpop([REPLY_PREFIX + request_id], timeout=timeout)
    except redis.RedisError as exc:
        return outcome(False, 503, "gateway-unavailable", f"The device gateway cannot be reached ({exc}).")
    finally:
        client.close()
    if reply is None:
        return outcome(False, 504, "gateway-timeout", f"The gateway did not answer {action} {device_id} "
                                                      f"within {timeout:g} s.")
    return json.loads(reply[1])


def run_gateway_process(app: Flask, *, duration: float | None = None, echo: Any = print) -> None:
    """``mes gateway``: check the configuration, then run until SIGTERM / Ctrl-C (or ``duration``).

    Raises :class:`~mes.gateway.config.GatewayConfigError` with one line naming the problem.
    """
    from devices.sim.runner import stop_on_signals, wait_for_stop
    from mes.gateway.config import GatewayConfigError

    if not app.config.get("MES_REDIS_URL"):
        raise GatewayConfigError("MES_REDIS_URL is not set: `mes gateway` runs as its own process and reaches the "
                                 "web app through Redis (or use `mes demo`, which runs a gateway inside the server)")
    specs = configured_specs(app)
    simulation = None
    if app.config.get("MES_SIMULATION"):
        from mes.gateway.simulation import Simulation

        simulation = Simulation()
    if not specs and simulation is None:
        raise GatewayConfigError("MES_GATEWAY_CONFIG is not set or lists no devices: nothing to run")
    echo(f"mes gateway: {len(specs)} configured device(s){' and the simulated plant' if simulation else ''}; "
         f"readings to {app.config['MES_REDIS_URL'].split('@')[-1]}")

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            runner = asyncio.get_running_loop().create_task(run_foreground(app, specs, stop, simulation=simulation))
            waiter = asyncio.get_running_loop().create_task(wait_for_stop(stop, duration))
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await runner
            waiter.cancel()

    asyncio.run(main())


INSTRUMENT_COMMANDS = ("tare", "zero")


def instrument_command(app: Flask, actor: Any, device_id: str, action: str) -> dict[str, Any]:
    """Tare or zero an instrument: a command that changes what is recorded next, so it is
    audited (who, from which terminal, what the device answered), refused or not (Part 11
    §11.10(e)); only a registered terminal sends one (the endpoint requires it, §11.10(h))."""
    from mes.audit.log import record
    from mes.db import db

    if action not in INSTRUMENT_COMMANDS:
        raise ValueError(f"not an instrument command: {action}")
    result = send_command(app, device_id, action)
    after = {"ok": bool(result.get("ok")), "status": int(result.get("status") or (200 if result.get("ok") else 502))}
    for key in ("tare", "slug", "detail"):
        if result.get(key) not in (None, ""):
            after[key] = result[key]
    record(actor, f"device.{action}", ("device", device_id), after=after)
    db.session.commit()
    return result
