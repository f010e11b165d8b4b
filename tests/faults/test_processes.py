"""Fault scenarios against spawned processes, as deployed (``mes run`` with gunicorn, the
relay, PostgreSQL, Redis): operators complete steps through the HTTP API while a process
dies or a connection is cut. After each: every completion a kiosk saw committed is recorded
exactly once and none twice (state, audit entry, step record), every kiosk completes its
batch by itself (retrying with the same Idempotency-Key, as the kiosk does) within
:data:`RECOVERY_S`, the outbox drains to the webhook receiver, and ``mes audit verify`` passes.

The witness being down is covered by
``tests/audit/test_witness.py::test_a_witness_that_is_down_delays_nothing_and_raises_an_alarm``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.bench.execution import _free_port
from tests.faults.kit import database_engine, kill_group, plant, start_server, wait_for
from tests.integration.test_relay import in_order_per_aggregate

#: The longest a kiosk may be held up by a fault (from its first failed attempt to the
#: completion that then went through).
RECOVERY_S = 15.0


def test_a_web_worker_sigkilled_during_completions_loses_and_doubles_nothing(templates: dict[str, str],
                                                                             tmp_path: Path) -> None:
    with plant(templates, tmp_path, operators=4, steps=14, workers=2) as p:
        threads = p.drive()
        wait_for(lambda: p.committed() >= 8, 60, "completions under way")
        victims = p.servers[0].worker_pids()
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)
        killed_at = p.committed()
        wait_for(lambda: set(p.servers[0].worker_pids()) - set(victims), 30, "gunicorn replacing the worker")
        figures = p.finish(threads, RECOVERY_S)
        assert figures["completions"] > killed_at
        assert p.servers[0].proc.poll() is None


def _terminate_backends(url: str) -> int:
    """pg_terminate_backend on every connection to this test's database (not the server:
    others share it); how many were cut."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with database_engine(url) as engine, engine.connect() as conn:
        cut = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                                "AND pid <> pg_backend_pid()"), {"d": name}).all()
    return sum(1 for row in cut if row[0])


def test_postgresql_connections_cut_under_load_recover(templates: dict[str, str], tmp_path: Path) -> None:
    """A PostgreSQL restart as the MES sees it: every connection of its database dropped at
    once, twice, while operators complete steps (the shared server itself is not restarted)."""
    with plant(templates, tmp_path, operators=4, steps=14, workers=2) as p:
        threads = p.drive()
        for _ in range(2):
            before = p.committed()
            wait_for(lambda b=before: p.committed() >= b + 6, 60, "completions under way")
            assert _terminate_backends(p.url) >= 2, "the servers' and the relay's connections"
        figures = p.finish(threads, RECOVERY_S)
        assert figures["completions"] == 4 * 14
        answered = [f for op in p.operators for f in op.failures if "->" in f]  # HTTP answers, not resets
        # a lost connection is 503 (retry), never 500
        assert not [f for f in answered if "-> 503" not in f], [f for f in answered if "-> 503" not in f]
        assert p.relay is not None and p.relay.poll() is None, "the relay reconnected by itself"


def test_the_relay_sigkilled_mid_delivery_delivers_everything_in_order(templates: dict[str, str],
                                                                      tmp_path: Path) -> None:
    with plant(templates, tmp_path, operators=3, steps=14) as p:
        threads = p.drive()
        wait_for(lambda: len(p.receiver.accepted()) >= 5, 60, "deliveries under way")
        assert p.relay is not None
        os.killpg(p.relay.pid, signal.SIGKILL)
        p.relay.wait(30)
        before = p.produced
        wait_for(lambda: p.produced >= before + 10, 60, "events go on being recorded without the relay")
        p.start_relay()  # systemd's Restart=always
        p.finish(threads, RECOVERY_S)
        # (the log's own checkpoint events began before the endpoint was added; that every
        # event since arrived is Plant.finish's check)
        assert in_order_per_aggregate(p.receiver.received, from_first_delivery=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A redis-server of this test's own on a free loopback port (the shared one is not
    restarted); yields its URL and a function that restarts it (SIGKILL, then start again)."""
    port = _free_port()
    state: dict[str, subprocess.Popen] = {}

    def start() -> None:
        state["proc"] = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", str(tmp_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _accepts(port), 10, "redis-server listening")

    def restart() -> None:
        state["proc"].kill()
        state["proc"].wait(10)
        start()

    start()
    yield f"redis://127.0.0.1:{port}/0", restart
    state["proc"].kill()
    state["proc"].wait(10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_redis_restarted_under_load_live_updates_resume(templates: dict[str, str], tmp_path: Path,
                                                        private_redis: tuple[str, Any]) -> None:
    """Two instances on one Redis (Socket.IO message queue, shared attempt limits): Redis
    killed and started again while operators work. Completions go on, and a kiosk watching
    its line on the second instance gets live updates published through Redis from another
    process (as ``mes gateway`` publishes readings) again, without reconnecting by hand."""
    redis_url, restart = private_redis
    with plant(templates, tmp_path, operators=3, steps=14, instances=2, env={"MES_REDIS_URL": redis_url}) as p:
        watcher = p.operators[1]  # on the second instance
        threads = p.drive()
        events: list[float] = []
        sock = _line_socket(watcher, events)
        stop = threading.Event()
        sender = threading.Thread(target=_publish_through_redis, args=(redis_url, stop), daemon=True)
        sender.start()
        try:
            wait_for(lambda: len(events) >= 2, 30, "live updates through Redis")
            restart()
            restarted_at = time.monotonic()
            before = p.committed()
            wait_for(lambda: p.committed() >= before + 6 or all(not t.is_alive() for t in threads), 60,
                     "completions go on across the Redis restart")
            got = wait_for(lambda: [t for t in events if t > restarted_at], RECOVERY_S,
                           "live updates again after the Redis restart")
            assert got[0] - restarted_at <= RECOVERY_S
        finally:
            stop.set()
            sock.disconnect()
        p.finish(threads, RECOVERY_S)


def _publish_through_redis(redis_url: str, stop: threading.Event) -> None:
    """``batch_changed`` to the line's room every 100 ms from this process, through Redis
    only (a write-only emitter, as the gateway's)."""
    import flask_socketio

    from mes.realtime import CHANNEL, NAMESPACE

    emitter = flask_socketio.SocketIO(message_queue=redis_url, channel=CHANNEL)
    while not stop.is_set():
        try:
            emitter.emit("batch_changed", {"batch_id": "B-X", "line": "LINE-1", "step_id": None},
                         namespace=NAMESPACE, to="line:LINE-1")
        except Exception:  # noqa: BLE001, S110 - Redis is down for a moment: the next one goes
            pass
        stop.wait(0.1)


def _line_socket(op: Any, events: list[float]) -> Any:
    import socketio

    client = socketio.Client(reconnection=True, reconnection_delay=0.2)
    client.on("batch_changed", lambda data: events.append(time.monotonic()), namespace="/live")
    cookie = "; ".join(f"{k}={v}" for k, v in op.client.http.cookies.items())
    client.connect(op.base, headers={"Cookie": cookie, "X-MES-Terminal": op.kiosk}, namespaces=["/live"],
                   transports=["polling"], wait_timeout=10)
    assert client.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=10)["ok"] is True
    return client


def test_the_gateway_sigkilled_readings_resume_after_its_restart(templates: dict[str, str], tmp_path: Path,
                                                                 private_redis: tuple[str, Any]) -> None:
    """``mes gateway`` (a simulated scale streaming) killed while operators work: step
    completions go on, and once systemd (here: the test) starts it again the kiosk watching
    the scale gets its readings again by itself."""
    redis_url, _restart = private_redis
    config = tmp_path / "gateway.yaml"
    config.write_text("devices:\n  - device_id: SCALE-V1\n    driver: virtual\n"
                      "    config: {weight: \"12.50\", unit: g, interval_s: 0.1}\n    mode: stream\n")
    with plant(templates, tmp_path, operators=3, steps=14, env={"MES_REDIS_URL": redis_url}) as p:
        gateway = start_server(p.url, p.home, env={**p.env, "MES_GATEWAY_CONFIG": str(config)},
                               cmd=("gateway",), name="gateway")
        threads = p.drive()
        readings: list[float] = []
        sock = _device_socket(p.operators[0], "SCALE-V1", readings)
        try:
            wait_for(lambda: len(readings) >= 3, 60, "readings from the gateway through Redis")
            kill_group(gateway.proc)
            killed_at = time.monotonic()
            before = p.committed()
            wait_for(lambda: p.committed() >= before + 6 or all(not t.is_alive() for t in threads), 60,
                     "completions go on without the gateway")
            gateway = start_server(p.url, p.home, env={**p.env, "MES_GATEWAY_CONFIG": str(config)},
                                   cmd=("gateway",), name="gateway")
            restarted_at = time.monotonic()
            got = wait_for(lambda: [t for t in readings if t > restarted_at], RECOVERY_S + 15,
                           "readings again after the gateway's restart")
            assert got[0] > killed_at
        finally:
            sock.disconnect()
            kill_group(gateway.proc, signal.SIGTERM)
        p.finish(threads, RECOVERY_S)


def _device_socket(op: Any, device: str, readings: list[float]) -> Any:
    import socketio

    client = socketio.Client(reconnection=True, reconnection_delay=0.2)
    client.on("reading", lambda data: readings.append(time.monotonic()), namespace="/live")
    cookie = "; ".join(f"{k}={v}" for k, v in op.client.http.cookies.items())
    client.connect(op.base, headers={"Cookie": cookie, "X-MES-Terminal": op.kiosk}, namespaces=["/live"],
                   transports=["polling"], wait_timeout=10)
    assert client.call("watch", {"devices": [device]}, namespace="/live", timeout=10)["ok"] is True
    return client


def _scale_on_a_pty(link: Path) -> subprocess.Popen:
    """The MT-SICS scale simulator on a new pseudo-terminal whose path ``link`` points to (as
    udev gives a USB serial adapter a stable name): plugging the scale in."""
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "devices.sim.scale", "--protocol", "mtsics", "--pty",
                             "--link", str(link), "--weight", "12.50", "--unit", "g"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # one line with the port, once it serves
    assert str(link) in line, f"the scale simulator did not start: {line!r}"
    return proc


def test_a_scale_unplugged_mid_reading_is_told_and_comes_back_by_itself(templates: dict[str, str], tmp_path: Path,
                                                                       private_redis: tuple[str, Any]) -> None:
    """A serial MT-SICS scale streaming to ``mes gateway`` is unplugged (its pseudo-terminal
    gone, mid-stream) while a kiosk watches it and operators work: the kiosk is told the
    scale is disconnected within a second, and the gateway's store refuses its last reading
    from then on; completions go on; plugged in again (a new pty at the same path) its
    readings reach the kiosk again by themselves, without restarting anything."""
    redis_url, _restart = private_redis
    link = tmp_path / "scale0"
    config = tmp_path / "gateway.yaml"
    config.write_text("devices:\n  - device_id: SCALE-PTY\n    driver: mtsics\n"
                      f"    config: {{port: \"{link}\", baudrate: 9600}}\n    mode: stream\n"
                      "    reconnect_initial_s: 0.2\n    reconnect_max_s: 1\n")
    scale = _scale_on_a_pty(link)
    with plant(templates, tmp_path, operators=3, steps=14, env={"MES_REDIS_URL": redis_url}) as p:
        gateway = start_server(p.url, p.home, env={**p.env, "MES_GATEWAY_CONFIG": str(config)},
                               cmd=("gateway",), name="gateway")
        threads = p.drive()
        readings: list[float] = []
        told: list[tuple[float, dict[str, Any]]] = []
        sock = _device_socket(p.operators[0], "SCALE-PTY", readings)
        sock.on("device_status", lambda data: told.append((time.monotonic(), data)), namespace="/live")
        try:
            wait_for(lambda: len(readings) >= 3, 60, "readings from the serial scale through the gateway")
            kill_group(scale)  # the cable pulled mid-stream: the pty closes under the driver
            unplugged_at = time.monotonic()
            gone = wait_for(lambda: [t for t, s in told if t > unplugged_at and s.get("connected") is False], 10,
                            "the kiosk told the scale is disconnected")
            assert gone[0] - unplugged_at < 1.0, f"told after {gone[0] - unplugged_at:.2f} s"
            link_state = _link_of(redis_url, "SCALE-PTY")
            assert link_state is not None and link_state.connected is False, link_state
            before = p.committed()
            wait_for(lambda: p.committed() >= before + 6 or all(not t.is_alive() for t in threads), 60,
                     "completions go on without the scale")
            scale = _scale_on_a_pty(link)  # plugged in again
            plugged_at = time.monotonic()
            wait_for(lambda: [t for t in readings if t > plugged_at], RECOVERY_S,
                     "readings again once the scale is plugged in")
            wait_for(lambda: [t for t, s in told if t > plugged_at and s.get("connected") is True], RECOVERY_S,
                     "the kiosk told the scale is connected again")
        finally:
            sock.disconnect()
            kill_group(gateway.proc, signal.SIGTERM)
            kill_group(scale)
        p.finish(threads, RECOVERY_S)


def _link_of(redis_url: str, device_id: str) -> Any:
    """The link state the gateway stored for ``device_id`` (what the capture rule reads)."""
    from mes.gateway.store import RedisReadingStore

    return RedisReadingStore(redis_url).link(device_id)
