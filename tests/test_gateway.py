"""The device gateway: real drivers against real simulators on loopback, a real web server in a
thread, a real Socket.IO client, real Redis — reconnects, garbage, commands, simulation."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio
import yaml
from flask import Flask
from werkzeug.serving import make_server

from devices.sim import BalanceModel, Fault, MtSicsSimulator, SimulatorThread
from mes.gateway.config import DeviceSpec, GatewayConfigError, load_gateway_config, parse_gateway_config
from mes.gateway.health import MemoryHealthBoard
from mes.gateway.runner import Gateway, GatewayThread, LineSample
from mes.gateway.store import MemoryReadingStore
from tests.helpers import PASSWORD, Seeded, seed

REDIS_URL = os.environ.get("MES_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MES = str(Path(sys.executable).parent / "mes")
logging.getLogger("werkzeug").setLevel(logging.WARNING)


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Events:
    """What a gateway emitted, in order (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], str]] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, payload: dict[str, Any], room: str) -> None:
        with self._lock:
            self.items.append((event, payload, room))

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for e, p, _ in self.items if e == event]


def scale_sim(load: str = "100.00", port: int = 0) -> tuple[MtSicsSimulator, SimulatorThread, str]:
    sim = MtSicsSimulator(BalanceModel(load=load, unit="g", decimals=2, capacity="220"), baud=9600)
    thread = SimulatorThread(sim, link="tcp", port=port)
    return sim, thread, thread.start()


def gateway_for(url: str, device_id: str = "BAL-01", **kw: Any) -> tuple[GatewayThread, MemoryReadingStore,
                                                                        MemoryHealthBoard, Events]:
    store, board, events = MemoryReadingStore(), MemoryHealthBoard(), Events()
    spec = DeviceSpec(device_id=device_id, driver="mtsics", config={"port": url, "timeout_s": 1.0}, mode="stream",
                      reconnect_initial_s=0.05, reconnect_max_s=0.3)
    thread = GatewayThread(Gateway([spec], store=store, board=board, emit=events, **kw)).start()
    return thread, store, board, events


# ------------------------------------------------------------------ live web server


class LiveServer:
    """The app served by werkzeug on a loopback port in a background thread."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(10)


class LiveUser:
    """A logged-in HTTP session (cookie + terminal + CSRF) against a :class:`LiveServer`."""

    def __init__(self, live: LiveServer, seeded: Seeded, role: str) -> None:
        terminal = seeded.kiosk if role == "operator" else seeded.workstation
        self.base = live.base
        self.headers = {"X-MES-Terminal": f"{terminal[0]}:{terminal[1]}"}
        self.http = requests.Session()
        self.http.headers.update(self.headers)
        csrf = self.http.get(f"{self.base}/api/v1/auth/csrf", timeout=10).json()["csrf_token"]
        r = self.http.post(f"{self.base}/api/v1/auth/login", json={"user_id": seeded.users[role], "password": PASSWORD},
                           headers={"X-CSRF-Token": csrf}, timeout=10)
        assert r.status_code == 200, r.text
        self.csrf = r.json()["csrf_token"]

    def post(self, path: str, json: Any = None) -> requests.Response:
        return self.http.post(self.base + path, json=json, headers={"X-CSRF-Token": self.csrf}, timeout=30)

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.base + path, timeout=10)

    def socket(self, events: Events | None = None) -> socketio.Client:
        """A Socket.IO client on /live with this user's cookie and terminal."""
        client = socketio.Client(reconnection=False)
        if events is not None:
            for name in ("reading", "device_status", "batch_changed", "line_state"):
                client.on(name, (lambda n: lambda data: events(n, data, ""))(name), namespace="/live")
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        client.connect(self.base, headers={"Cookie": cookie, **self.headers}, namespaces=["/live"],
                       transports=["polling"], wait_timeout=10)
        return client


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def seeded(app: Flask) -> Seeded:
    return seed(("operator", "supervisor", "qa", "admin"))


@pytest.fixture
def simulated(app: Flask) -> Iterator[GatewayThread]:
    """The app's in-process gateway running the simulated scales (no line: it is slow to build)."""
    from mes.gateway.service import start_embedded, stop_embedded
    from mes.gateway.simulation import Simulation

    thread = start_embedded(app, [], simulation=Simulation(line=False), forward_lines=False)
    yield thread
    stop_embedded(app)


def sim_app(app: Flask) -> Flask:
    """The same database and home as ``app``, with MES_SIMULATION on (the simulation endpoint)."""
    from mes.app import create_app
    from tests.conftest import base_config

    config = base_config(Path(app.config["MES_HOME"]), app.config["SQLALCHEMY_DATABASE_URI"])
    return create_app({**config, "MES_SIMULATION": True})


# ============================================================== gateway, no database


def test_gateway_reconnects_after_the_simulator_drops_and_comes_back() -> None:
    sim, sim_thread, url = scale_sim()
    port = int(url.rsplit(":", 1)[1])
    gateway, store, board, events = gateway_for(url)
    try:
        first = wait_for(lambda: store.latest("BAL-01"), what="a first reading")
        assert first.value == Decimal("100.00") and first.stable and first.raw.startswith(b"S S")
        assert wait_for(lambda: board.get("BAL-01").connected, what="connected")
        sim_thread.stop()  # the scale goes away: cable pulled, device server rebooting
        down = wait_for(lambda: (s := board.get("BAL-01")) and not s.connected and s, what="disconnected status")
        assert "not reachable" in down.message or "Reconnecting" in down.message
        assert any(not e["connected"] for e in events.of("device_status"))
        sim2, sim_thread2, _ = scale_sim("42.00", port=port)  # ... and comes back on the same address
        try:
            back = wait_for(lambda: (r := store.latest("BAL-01")) and r.value == Decimal("42.00") and r,
                            what="readings after the reconnect")
            state = board.get("BAL-01")
            assert state.connected and state.reconnects >= 1 and state.last_error
            assert back.sequence > first.sequence  # sequence numbers go on across reconnects
            assert events.of("device_status")[-1]["connected"] is True
        finally:
            sim_thread2.stop()
    finally:
        gateway.stop()
        sim_thread.stop()


def test_a_silent_scale_is_disconnected_within_its_timeout_and_its_link_is_lost_at_once() -> None:
    """Issue 16: a pulled cable (the scale sends nothing) shows as disconnected within the
    driver's timeout_s, in device health, in the store's link (the capture rule) and to the
    kiosk (device_status, which clears the number) - not after three timeouts."""
    sim, sim_thread, url = scale_sim("55.00")
    gateway, store, board, events = gateway_for(url)  # timeout_s 1.0
    try:
        first = wait_for(lambda: store.latest("BAL-01"), what="a first reading")
        link = wait_for(lambda: (ln := store.link("BAL-01")) and ln.connected and ln, what="the link up")
        assert link.epoch == first.epoch == gateway.gateway.epoch and first.at >= link.since
        sim.silent = True  # the cable is pulled: nothing more reaches the gateway
        silent_at = time.monotonic()
        down = wait_for(lambda: (s := board.get("BAL-01")) and not s.connected and s, what="disconnected")
        took = time.monotonic() - silent_at
        assert took <= 1.0 + 0.4, f"silence reported after {took:.2f} s with timeout_s 1.0"
        assert "not reachable" in down.message and "no reply" in down.message
        lost = store.link("BAL-01")
        assert lost is not None and not lost.connected and "no reply" in lost.reason
        assert any(e["device_id"] == "BAL-01" and not e["connected"] for e in events.of("device_status"))
        held = store.latest("BAL-01").sequence
        sim.silent = False  # plugged in again
        back = wait_for(lambda: (r := store.latest("BAL-01")) and r.sequence > held and r, what="readings again")
        relinked = store.link("BAL-01")
        assert relinked.connected and back.at >= relinked.since > lost.since
    finally:
        gateway.stop()
        sim_thread.stop()


def test_a_restarted_gateway_starts_a_new_epoch_and_its_readings_are_newer() -> None:
    """Issue 16: sequences restart at 1 with a new gateway run; the epoch (run id, ordered by
    start) makes the new run's first reading newer than the old run's last one, and the new
    run marks the link as connecting before any reading, so the old run's reading is unusable."""
    from mes.gateway.capture import device_link_refusal
    from mes.gateway.store import CapturedReading, LinkState, RedisReadingStore, new_epoch

    old_epoch = new_epoch()
    store = RedisReadingStore(REDIS_URL)
    device = f"EPOCH-{uuid.uuid4().hex[:8]}"

    def reading(epoch: str, sequence: int, value: str) -> CapturedReading:
        return CapturedReading(device_id=device, sequence=sequence, status="ok", value=Decimal(value), unit="g",
                               stable=True, raw=b"S S 1 g\r\n", at=datetime.now(UTC), epoch=epoch)

    store.put(reading(old_epoch, 5000, "1.00"))
    new = new_epoch()
    assert new > old_epoch
    store.put(reading(new, 1, "2.00"))
    assert store.latest(device).value == Decimal("2.00") and store.latest(device).epoch == new
    store.put(reading(old_epoch, 5001, "3.00"))  # a late write from the old run never wins
    assert store.latest(device).value == Decimal("2.00")
    store.put(reading(new, 2, "4.00"))
    assert store.latest(device).sequence == 2
    store.set_link(LinkState(device, False, datetime.now(UTC), new, "gone"))
    assert store.link(device) == LinkState(device, False, store.link(device).since, new, "gone")
    # the link lives as long as the readings: a device connected for hours keeps it
    store._redis.expire(store.LINK_PREFIX + device, 5)
    store.put(reading(new, 3, "4.00"))
    assert store._redis.ttl(store.LINK_PREFIX + device) > 3000 and not store.link(device).connected
    memory = MemoryReadingStore()
    memory.put(reading(old_epoch, 5000, "1.00"))
    memory.put(reading(new, 1, "2.00"))
    memory.put(reading(old_epoch, 5001, "3.00"))
    assert memory.latest(device).value == Decimal("2.00")
    # a gateway (re)starting marks the device as connecting before it has read anything
    memory = MemoryReadingStore()
    memory.put(reading(old_epoch, 7, "7.00"))
    restarted = Gateway([], store=memory, board=MemoryHealthBoard())
    restarted.add(DeviceSpec(device_id=device, driver="mtsics", config={"port": "socket://127.0.0.1:9"}))
    link = memory.link(device)
    assert not link.connected and link.epoch == restarted.epoch > old_epoch
    assert device_link_refusal(memory, memory.latest(device), device) is not None


def test_scale_identity_is_in_device_health_and_in_every_reading() -> None:
    """Issue 16: a two-field I2 reply (Excellence) is understood; make, model, serial number and
    firmware are in device health and in each reading's provenance (the batch record)."""
    sim = MtSicsSimulator(BalanceModel(load="10.00", model="XS205DU Excellence", serial_number="B812345678",
                                       firmware="4.20", capacity="220"), baud=9600, balance_data_fields=2)
    sim_thread = SimulatorThread(sim, link="tcp")
    url = sim_thread.start()
    gateway, store, board, _ = gateway_for(url)
    try:
        reading = wait_for(lambda: store.latest("BAL-01"), what="a reading")
        expected = {"make": "Mettler-Toledo", "model": "XS205DU Excellence", "serial_number": "B812345678",
                    "firmware": "4.20", "driver": "mtsics", "capacity": "220.00 g"}
        assert reading.identity == expected
        assert board.get("BAL-01").identity == expected
        assert reading.to_json()["identity"] == expected
    finally:
        gateway.stop()
        sim_thread.stop()


def test_garbage_bytes_become_a_status_never_a_value_and_the_gateway_goes_on() -> None:
    sim, sim_thread, url = scale_sim("12.34")
    gateway, store, board, events = gateway_for(url)
    try:
        wait_for(lambda: store.latest("BAL-01"), what="a first reading")
        sim.faults.inject(Fault.GARBAGE, command="SIR", count=2)
        status = wait_for(lambda: [s for s in events.of("device_status") if "Unreadable" in s["message"]],
                          what="a status naming the unreadable reply")[0]
        assert status["connected"] is True and "13" in status["message"]  # the raw bytes are shown (hex)
        assert "Unreadable reply" in board.get("BAL-01").last_error
        seen = store.latest("BAL-01").sequence
        after = wait_for(lambda: (r := store.latest("BAL-01")) and r.sequence > seen + 3 and r,
                         what="readings after the garbage")
        assert after.value == Decimal("12.34")
        assert all(r["value"] in ("12.34", None) for r in events.of("reading"))  # never a value from garbage
        # A line that keeps sending garbage makes the gateway reopen the link, and it still lives.
        sim.faults.inject(Fault.GARBAGE, command="SIR", count=12)
        wait_for(lambda: board.get("BAL-01").reconnects >= 1, what="the link reopened")
        seen = store.latest("BAL-01").sequence
        wait_for(lambda: store.latest("BAL-01").sequence > seen, what="readings after reopening")
        assert board.get("BAL-01").connected
    finally:
        gateway.stop()
        sim_thread.stop()


def test_a_device_that_is_never_there_is_reported_and_retried() -> None:
    gateway, store, board, events = gateway_for("socket://127.0.0.1:9", device_id="GONE-01")
    try:
        state = wait_for(lambda: (s := board.get("GONE-01")) and s.last_error and s, what="an error status")
        assert not state.connected and "Reconnecting" in state.message and store.latest("GONE-01") is None
        assert wait_for(lambda: len([e for e in events.of("device_status") if not e["connected"]]) >= 3,
                        what="repeated attempts")
    finally:
        gateway.stop()


def test_line_states_and_counters_go_to_the_oee_sink() -> None:
    from devices.drivers.opcua import PackMLCommand, PackMLState
    from devices.sim.opcua import PackMLMachine
    from mes.gateway.simulation import Simulation

    machine = PackMLMachine(acting_s=0.1, item_interval_s=0.05, defect_every=5)
    samples: list[LineSample] = []
    events = Events()
    gateway = Gateway([], store=MemoryReadingStore(), board=MemoryHealthBoard(), emit=events,
                      line_sink=samples.append, simulation=Simulation(scales=(), machine=machine))
    thread = GatewayThread(gateway).start(timeout=90)
    try:
        first = wait_for(lambda: samples[:1], timeout=30, what="the first line sample")[0]
        assert first.line_id == "LINE-1" and first.state == "stopped" and first.processed == 0
        assert machine.command(PackMLCommand.RESET)
        wait_for(lambda: machine.state is PackMLState.IDLE, timeout=10, what="the line reset to idle")
        assert machine.command(PackMLCommand.START)
        wait_for(lambda: any(s.state == "execute" for s in samples), timeout=20, what="execute forwarded")
        machine.command(PackMLCommand.HOLD, 102)
        held = wait_for(lambda: [s for s in samples if s.state == "held"], timeout=20, what="held forwarded")[0]
        assert held.stop_reason == "102" and held.processed > 0 and held.defective == held.processed // 5
        states = [s.state for s in samples if s.state]
        assert len(states) == len(set(states)) or states.count("execute") <= 2  # only changes, not every poll
        assert events.of("line_state") and events.of("line_state")[-1]["line"] == "LINE-1"
    finally:
        thread.stop()


def test_a_lost_line_link_ends_its_state_as_no_data_and_a_new_stop_code_is_a_new_stop() -> None:
    """Issue 16: Held 101 -> Held 202 goes to the OEE service as a new stop; when the OPC UA
    link drops, the line's state ends at once as "undefined" (no data), not running on through
    the outage; once the link is back the state is read again and sent as a change."""
    import asyncio

    from devices.drivers.opcua import PackMLCommand, PackMLState
    from devices.sim.opcua import PackMLMachine
    from mes.gateway.simulation import Simulation

    machine = PackMLMachine(acting_s=0.05, item_interval_s=0.05, defect_every=5)
    samples: list[LineSample] = []
    simulation = Simulation(scales=(), machine=machine)
    gateway = Gateway([], store=MemoryReadingStore(), board=MemoryHealthBoard(), line_sink=samples.append,
                      simulation=simulation)
    thread = GatewayThread(gateway).start(timeout=90)

    def on_gateway_loop(coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, gateway.loop).result(30)

    try:
        wait_for(lambda: samples[:1], timeout=30, what="the first line sample")
        assert machine.command(PackMLCommand.RESET)
        wait_for(lambda: machine.state is PackMLState.IDLE, timeout=10, what="idle")
        assert machine.command(PackMLCommand.START)
        wait_for(lambda: machine.state is PackMLState.EXECUTE, timeout=10, what="execute")
        assert machine.command(PackMLCommand.HOLD, 101)
        wait_for(lambda: [x for x in samples if (x.state, x.stop_reason) == ("held", "101")], timeout=20,
                 what="Held 101 forwarded")
        machine.stop_reason = 202  # the PLC publishes another stop code, still Held
        wait_for(lambda: [x for x in samples if (x.state, x.stop_reason) == ("held", "202")], timeout=20,
                 what="Held 202 forwarded as a new stop")
        before = len(samples)
        gone_at = datetime.now(UTC)
        on_gateway_loop(simulation.line_sim.go_away())
        lost = wait_for(lambda: [x for x in samples[before:] if x.state == "undefined"], timeout=20,
                        what="the line's state ended as no data")[0]
        assert lost.processed is None and lost.stop_reason is None and lost.at >= gone_at
        assert not any(x.state for x in samples[before:samples.index(lost)])  # no state change but this one
        driver = gateway.devices["LINE-1"].driver
        assert driver.is_connected, "the gateway leaves reconnecting to the driver: it does not close it"
        on_gateway_loop(simulation.line_sim.come_back())
        back_at = time.monotonic()
        next_attempt = driver._next_attempt_at or back_at  # the driver's own backoff decides
        wait_for(lambda: [x for x in samples[samples.index(lost) + 1:] if (x.state, x.stop_reason) == ("held", "202")],
                 timeout=30, what="the state read again after the reconnect")
        # back within the driver's next attempt and one poll (interval_s 1), not a gateway backoff on top
        assert time.monotonic() - max(back_at, next_attempt) <= driver.timeout_s + 1.0 + 1.0
        assert driver.reconnects == 1 and gateway.devices["LINE-1"].state.reconnects == 1
        assert [x.at for x in samples] == sorted(x.at for x in samples)
    finally:
        thread.stop()


def test_a_line_sample_the_oee_service_could_not_take_is_offered_again_in_order() -> None:
    """A passing database error must not lose a state change: the sample waits, first in
    line, and goes with its own time once the service takes samples again; a sample the
    service refuses outright is dropped and does not block the rest."""
    from devices.drivers.opcua import PackMLCommand, PackMLState
    from devices.sim.opcua import PackMLMachine
    from mes.gateway.runner import LineSampleRefused
    from mes.gateway.simulation import Simulation

    machine = PackMLMachine(acting_s=0.1, item_interval_s=0.05, defect_every=5)
    taken: list[LineSample] = []
    offered: list[LineSample] = []
    database_down = threading.Event()

    def sink(sample: LineSample) -> None:
        offered.append(sample)
        if sample.state == "stopped" and not any(s.state == "stopped" for s in offered[:-1]):
            raise LineSampleRefused("the first sample is refused")  # dropped, never offered again
        if database_down.is_set():
            raise OSError("connection to the database lost")
        taken.append(sample)

    gateway = Gateway([], store=MemoryReadingStore(), board=MemoryHealthBoard(), line_sink=sink,
                      simulation=Simulation(scales=(), machine=machine))
    thread = GatewayThread(gateway).start(timeout=90)
    try:
        wait_for(lambda: offered, timeout=30, what="the first line sample")
        database_down.set()
        machine.command(PackMLCommand.RESET)
        wait_for(lambda: machine.state is PackMLState.IDLE, timeout=20, what="the line in Idle")
        after_idle = len(offered)
        # two more polls while the service is down: the state changes wait, first in line
        wait_for(lambda: len(offered) >= after_idle + 2, timeout=20, what="two more offers")
        assert not any(s.state in ("resetting", "idle") for s in taken)
        database_down.clear()
        wait_for(lambda: any(s.state == "idle" for s in taken), timeout=20, what="Idle taken after the outage")
    finally:
        thread.stop()
    states = [s.state for s in taken if s.state]
    # "resetting" too, if a poll saw it; the stop then ends the line's state as no data
    assert "stopped" not in states and states[-2:] == ["idle", "undefined"]
    assert [s.at for s in taken] == sorted(s.at for s in taken)
    assert len([s for s in offered if s.state == "stopped"]) == 1
    # the state change that waited was offered again and again as one sample, with its own time
    again = [s for s in offered if s.state in ("resetting", "idle") and offered.count(s) >= 2]
    assert again and again[0] in taken


def test_oee_over_a_lost_line_link_matches_the_hand_computed_reference(app: Flask) -> None:
    """Issue 16, against the real OEE service (SQLite and PostgreSQL): Held 101, then Held 202,
    then the OPC UA link drops, then it is back. By hand, from the times the gateway sent:
    Held 101 and Held 202 are two stops of their own lengths, the outage is no data (not a
    stop, not running), and nothing runs."""
    import asyncio
    from datetime import timedelta

    from devices.drivers.opcua import PackMLCommand, PackMLState
    from devices.sim.opcua import PackMLMachine
    from mes.gateway.service import line_sink
    from mes.gateway.simulation import Simulation
    from mes.oee.operations import oee

    machine = PackMLMachine(acting_s=0.05, item_interval_s=0.05, defect_every=5)
    sent: list[LineSample] = []
    real_sink = line_sink(app)

    def sink(sample: LineSample) -> None:
        real_sink(sample)
        sent.append(sample)

    simulation = Simulation(scales=(), machine=machine)
    gateway = Gateway([], store=MemoryReadingStore(), board=MemoryHealthBoard(), line_sink=sink, simulation=simulation)
    thread = GatewayThread(gateway).start(timeout=90)

    def on_gateway_loop(coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, gateway.loop).result(30)

    def first(state: str, reason: str | None, after: LineSample | None = None) -> LineSample:
        def found() -> LineSample | None:
            start = sent.index(after) + 1 if after is not None else 0
            return next((x for x in sent[start:] if (x.state, x.stop_reason) == (state, reason)), None)
        return wait_for(found, timeout=30, what=f"{state} {reason} recorded")

    try:
        wait_for(lambda: sent[:1], timeout=30, what="the first line sample")
        machine.command(PackMLCommand.RESET)
        wait_for(lambda: machine.state is PackMLState.IDLE, timeout=10, what="idle")
        machine.command(PackMLCommand.START)
        wait_for(lambda: machine.state is PackMLState.EXECUTE, timeout=10, what="execute")
        machine.command(PackMLCommand.HOLD, 101)
        held_101 = first("held", "101")
        machine.stop_reason = 202
        held_202 = first("held", "202", held_101)
        on_gateway_loop(simulation.line_sim.go_away())
        lost = first("undefined", None, held_202)
        on_gateway_loop(simulation.line_sim.come_back())
        back = first("held", "202", lost)
    finally:
        thread.stop()

    def seconds(a: LineSample, b: LineSample) -> Decimal:
        return Decimal((b.at - a.at) // timedelta(microseconds=1)) / 1_000_000

    with app.app_context():
        total = oee("LINE-1", held_101.at, back.at)["total"]
    assert Decimal(total["no_data_s"]) == seconds(lost, back) > 0
    assert Decimal(total["run_s"]) == 0
    # the stop code that changed within Held made two stops; each, unclassified and shorter than
    # the line's minor-stop threshold (issue 22), is a minor stop, and they end where the link was lost
    by_reason = {r["reason"]: Decimal(r["seconds"]) for r in total["downtime_by_reason"]}
    assert by_reason == {"Minor stop": seconds(held_101, lost)}


def test_line_samples_are_recorded_by_the_oee_service(app: Flask) -> None:
    """The real sink: state changes and counters of the simulated PackML line land in the OEE records."""
    from sqlalchemy import select

    from devices.drivers.opcua import PackMLCommand
    from devices.sim.opcua import PackMLMachine
    from mes.db import read_only_session
    from mes.gateway.service import line_sink
    from mes.gateway.simulation import Simulation
    from mes.oee.models import LineStateInterval

    machine = PackMLMachine(acting_s=0.1, item_interval_s=0.05, defect_every=5)
    gateway = Gateway([], store=MemoryReadingStore(), board=MemoryHealthBoard(), line_sink=line_sink(app),
                      simulation=Simulation(scales=(), machine=machine))
    thread = GatewayThread(gateway).start(timeout=90)

    def states() -> list[str]:
        # A fresh read-only transaction each poll: it sees the gateway's commits and never
        # takes SQLite's write lock, which the gateway's writes would otherwise wait for.
        with read_only_session() as session:
            return list(session.scalars(select(LineStateInterval.state).where(LineStateInterval.line_id == "LINE-1")
                                        .order_by(LineStateInterval.seq)))

    try:
        wait_for(lambda: states(), timeout=30, what="the first state interval")
        machine.command(PackMLCommand.RESET)
        wait_for(lambda: "Idle" in states(), timeout=20, what="Idle recorded")
        machine.command(PackMLCommand.START)
        wait_for(lambda: "Execute" in states(), timeout=20, what="Execute recorded")
    finally:
        thread.stop()
    recorded = states()
    assert recorded[0] == "Stopped" and recorded.index("Idle") < recorded.index("Execute")


def test_a_clean_gateway_stop_ends_each_lines_state_as_no_data(app: Flask) -> None:
    """Issue 16: when the gateway stops, nobody watches the line any more: its state ends at
    once as "no data" (Undefined) in the OEE records, not running on until the next start."""
    from sqlalchemy import select

    from devices.drivers.opcua import PackMLCommand, PackMLState
    from devices.sim.opcua import PackMLMachine
    from mes.db import read_only_session
    from mes.gateway.service import line_sink
    from mes.gateway.simulation import Simulation
    from mes.oee.models import LineStateInterval

    machine = PackMLMachine(acting_s=0.05, item_interval_s=0.05, defect_every=5)
    sent: list[LineSample] = []
    real_sink = line_sink(app)

    def sink(sample: LineSample) -> None:
        real_sink(sample)
        sent.append(sample)

    gateway = Gateway([], store=MemoryReadingStore(), board=MemoryHealthBoard(), line_sink=sink,
                      simulation=Simulation(scales=(), machine=machine))
    thread = GatewayThread(gateway).start(timeout=90)
    try:
        wait_for(lambda: sent[:1], timeout=30, what="the first line sample")
        machine.command(PackMLCommand.RESET)
        wait_for(lambda: machine.state is PackMLState.IDLE, timeout=10, what="idle")
        machine.command(PackMLCommand.START)
        wait_for(lambda: any(x.state == "execute" for x in sent), timeout=20, what="Execute recorded")
    finally:
        stopping_at = datetime.now(UTC)
        thread.stop()
    assert not thread._thread.is_alive()
    last = sent[-1]
    assert (last.state, last.processed, last.stop_reason) == ("undefined", None, None) and last.at >= stopping_at
    assert [x.state for x in sent if x.state][-2:] == ["execute", "undefined"]
    with read_only_session() as session:
        rows = list(session.execute(select(LineStateInterval.state, LineStateInterval.started_at)
                                    .where(LineStateInterval.line_id == "LINE-1").order_by(LineStateInterval.seq)))
    assert [state for state, _ in rows][-2:] == ["Execute", "Undefined"]
    assert rows[-1][1].astimezone(UTC) >= stopping_at


PLC_TAG = {"function": "holding_registers", "address": 0, "type": "uint16", "unit": "1"}


def test_one_line_per_state_change_and_no_library_chatter(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16: an unreachable Modbus device retried again and again logs one line for its state
    change and nothing from pymodbus ("Failed to connect", "Repeating...", tracebacks)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = DeviceSpec(device_id="PLC-GONE", driver="modbus", mode="poll",
                      config={"host": "127.0.0.1", "port": port, "tags": {"t": PLC_TAG},
                              "reconnect_initial_s": 0.02, "reconnect_max_s": 0.05})
    events = Events()
    caplog.set_level(logging.DEBUG)
    thread = GatewayThread(Gateway([spec], store=MemoryReadingStore(), board=MemoryHealthBoard(), emit=events)).start()
    try:
        wait_for(lambda: len([e for e in events.of("device_status") if not e["connected"]]) >= 5,
                 what="five failed attempts")
    finally:
        thread.stop()
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("pymodbus", "asyncua")]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("device PLC-GONE:")]
    assert len(lines) == 1 and "not reachable" in lines[0], lines


def test_gateway_configuration_is_checked_before_anything_runs(tmp_path: Path) -> None:
    good = tmp_path / "gateway.yaml"
    good.write_text(yaml.safe_dump({"devices": [
        {"device_id": "SCALE-01", "driver": "mtsics", "config": {"port": "/dev/ttyUSB0"}},
        {"device_id": "LINE-1", "driver": "opcua", "mode": "packml", "line": "LINE-1", "interval_s": 1,
         "config": {"url": "opc.tcp://127.0.0.1:4840", "nodes": {
             "state": {"node_id": "ns=2;s=S", "unit": "1"}, "processed": {"node_id": "ns=2;s=P", "unit": "pcs"},
             "defective": {"node_id": "ns=2;s=D", "unit": "pcs"}},
             "packml": {"state": "state", "processed": "processed", "defective": "defective"}}},
    ]}))
    specs = load_gateway_config(good)
    assert [s.device_id for s in specs] == ["SCALE-01", "LINE-1"] and specs[1].kind == "line"
    for data, message in (
        ({"devices": [{"device_id": "X", "driver": "no-such-driver"}]}, "device X"),
        ({"devices": [{"device_id": "X", "driver": "mtsics", "config": {"port": 5}}]}, "device X"),
        ({"devices": [{"device_id": "X", "driver": "mtsics", "config": {"port": "a"}}] * 2}, "twice"),
        ({"devices": [{"device_id": "X", "driver": "mtsics", "mode": "packml", "config": {"port": "a"}}]}, "opcua"),
        ({"devices": [{"driver": "mtsics"}]}, "device_id"),
        # one place for a networked driver's reconnect policy: its own config (issue 16)
        ({"devices": [{"device_id": "X", "driver": "modbus", "reconnect_max_s": 5,
                       "config": {"host": "127.0.0.1", "tags": {"t": PLC_TAG}}}]},
         "reconnects by itself"),
    ):
        with pytest.raises(GatewayConfigError, match=message):
            parse_gateway_config(data)
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_gateway_config(tmp_path / "missing.yaml")
    example = load_gateway_config(Path(__file__).resolve().parents[1] / "deploy" / "gateway.example.yaml")
    assert {s.device_id for s in example} == {"SCALE-FLOOR-01", "SCALE-BENCH-01", "LINE-1"}


# ================================================================ with the web app


def test_readings_reach_a_socketio_client_of_a_logged_in_kiosk(app: Flask, seeded: Seeded, live: LiveServer,
                                                                simulated: GatewayThread) -> None:
    user = LiveUser(live, seeded, "operator")
    events = Events()
    client = user.socket(events)
    try:
        ack = client.call("watch", {"devices": ["SCALE-BENCH-01"]}, namespace="/live", timeout=10)
        assert ack == {"ok": True, "rooms": ["device:SCALE-BENCH-01"]}
        wait_for(lambda: events.of("device_status"), what="the current status sent on watch")
        simulated.gateway.simulation.scales["SCALE-BENCH-01"].balance.set_weight("250.0")
        reading = wait_for(lambda: [r for r in events.of("reading") if r["value"] == "250.0"], what="the new weight")[0]
        assert reading["device_id"] == "SCALE-BENCH-01" and reading["unit"] == "g" and reading["stable"] is True
        assert reading["raw"].startswith("S S") and bytes.fromhex(reading["raw_hex"]).decode() == reading["raw"]
        assert reading["identity"]["make"] == "Mettler-Toledo" and reading["identity"]["serial_number"] == "BB6-0001"
        assert set(reading) >= {"device_id", "sequence", "status", "value", "unit", "stable", "raw", "raw_hex", "at",
                                "identity"}
        # The floor scale is not watched: none of its readings arrive.
        assert all(r["device_id"] == "SCALE-BENCH-01" for r in events.of("reading"))
        # Health over HTTP agrees.
        body = user.get("/api/v1/devices/SCALE-BENCH-01").json()
        assert body["connected"] is True and body["reading"]["value"] == "250.0" and body["age_ms"] < 5000
        listed = user.get("/api/v1/devices").json()
        assert listed["gateway"] == "in-process"
        assert {d["device_id"] for d in listed["devices"]} == {"SCALE-FLOOR-01", "SCALE-BENCH-01"}
        assert user.get("/api/v1/devices/NOPE-01").status_code == 404
        # The capture rules read the same reading from the store the gateway fills.
        from mes.gateway.store import reading_store

        assert reading_store(app).latest("SCALE-BENCH-01").value == Decimal("250.0")
    finally:
        client.disconnect()


def test_a_new_watcher_of_a_silent_scale_gets_no_number(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    """Issue 16: a kiosk that (re)opens the weigh screen while the scale is disconnected is told
    so and is not sent the scale's last reading (which it would show as a live number)."""
    from datetime import UTC, datetime

    from mes.gateway.health import DeviceState, health_board
    from mes.gateway.store import CapturedReading, reading_store

    for device_id, connected in (("SCALE-SILENT", False), ("SCALE-HEARD", True)):
        reading_store(app).put(CapturedReading(device_id=device_id, sequence=1, status="ok", value=Decimal("9.99"),
                                               unit="g", stable=True, raw=b"S S 9.99 g\r\n", at=datetime.now(UTC)))
        health_board(app).put(DeviceState(device_id=device_id, driver="mtsics", connected=connected,
                                          message="Connected." if connected else "Device not reachable."))
    events = Events()
    client = LiveUser(live, seeded, "operator").socket(events)
    try:
        client.call("watch", {"devices": ["SCALE-SILENT"]}, namespace="/live", timeout=10)
        client.call("watch", {"devices": ["SCALE-HEARD"]}, namespace="/live", timeout=10)
        wait_for(lambda: [r for r in events.of("reading") if r["device_id"] == "SCALE-HEARD"],
                 what="the connected scale's reading")  # sent after the silent scale's status
        statuses = {s["device_id"]: s["connected"] for s in events.of("device_status")}
        assert statuses == {"SCALE-SILENT": False, "SCALE-HEARD": True}
        assert [r["device_id"] for r in events.of("reading")] == ["SCALE-HEARD"]
    finally:
        client.disconnect()


def test_anonymous_socketio_connections_are_refused(app: Flask, live: LiveServer) -> None:
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(live.base, namespaces=["/live"], transports=["polling"], wait_timeout=5)
    forged = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        forged.connect(live.base, headers={"Cookie": "mes_session=forged"}, namespaces=["/live"],
                       transports=["polling"], wait_timeout=5)


def test_tare_and_zero_are_forwarded_to_the_driver(app: Flask, seeded: Seeded, live: LiveServer,
                                                   simulated: GatewayThread) -> None:
    operator = LiveUser(live, seeded, "operator")
    balance = simulated.gateway.simulation.scales["SCALE-BENCH-01"].balance
    def reading() -> dict[str, Any] | None:
        r = operator.get("/api/v1/devices/SCALE-BENCH-01")
        return r.json()["reading"] if r.status_code == 200 else None

    # connected and reading (the device is listed before its driver has its first reading)
    wait_for(reading, what="the bench balance's first reading")
    balance.set_weight("200.0")  # an empty container on the pan
    r = operator.post("/api/v1/devices/SCALE-BENCH-01/tare")
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and r.json()["tare"] == {"value": "200.0", "unit": "g"}
    wait_for(lambda: (now := reading()) is not None and now["value"] == "0.0", what="net zero after tare")
    # Zero with a load beyond the zero range (2 % of 6100 g): the balance refuses, and the API says why.
    r = operator.post("/api/v1/devices/SCALE-BENCH-01/zero")
    assert r.status_code == 409 and r.headers["Content-Type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/device-refused") and "zero" in r.json()["detail"]
    balance.set_weight("0.5")
    r = operator.post("/api/v1/devices/SCALE-BENCH-01/zero")
    assert r.status_code == 200 and r.json()["action"] == "zero"
    # A moving load: the balance cannot tare within its time-out and says it is busy.
    balance.set_unstable(True)
    simulated.gateway.simulation.scales["SCALE-BENCH-01"].stability_timeout_s = 0.2
    r = operator.post("/api/v1/devices/SCALE-BENCH-01/tare")
    assert r.status_code == 409 and r.json()["type"].endswith("/device-busy"), r.text
    balance.set_unstable(False)
    # Unknown device, wrong role, nobody logged in.
    assert operator.post("/api/v1/devices/NOPE-01/tare").status_code == 404
    qa = LiveUser(live, seeded, "qa")
    assert qa.post("/api/v1/devices/SCALE-BENCH-01/tare").status_code == 403
    assert requests.post(f"{live.base}/api/v1/devices/SCALE-BENCH-01/zero", timeout=10).status_code == 401


def test_tare_without_a_gateway_is_a_clear_problem(app: Flask, client: Any) -> None:
    from tests.helpers import logged_in

    s = logged_in(client, seed(("operator",)), "operator")
    r = s.post("/api/v1/devices/SCALE-01/tare")
    assert r.status_code == 503 and r.mimetype == "application/problem+json"
    assert "No device gateway" in r.get_json()["detail"]
    assert s.get("/api/v1/devices").get_json() == {"gateway": "none", "devices": []}


def test_simulation_endpoint_exists_only_when_simulation_is_on(app: Flask, seeded: Seeded) -> None:
    from mes.gateway.service import start_embedded, stop_embedded
    from mes.gateway.simulation import Simulation
    from tests.helpers import logged_in

    r = app.test_client().post("/api/v1/simulation/devices/SCALE-FLOOR-01", json={"load": "1.0"})
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    assert "/api/v1/simulation/devices/<device_id>" not in {r.rule for r in app.url_map.iter_rules()}

    simapp = sim_app(app)
    with simapp.app_context():
        start_embedded(simapp, [], simulation=Simulation(line=False), forward_lines=False)
        try:
            s = logged_in(simapp.test_client(), seeded, "operator")
            r = s.post("/api/v1/simulation/devices/SCALE-FLOOR-01", {"load": "1.234", "unit": "kg", "unstable": False})
            assert r.status_code == 200, r.get_json()
            assert r.get_json()["display"] == {"value": "1.234", "unit": "kg"}
            from mes.gateway.store import reading_store

            wait_for(lambda: (x := reading_store(simapp).latest("SCALE-FLOOR-01")) and x.value == Decimal("1.23"),
                     what="the floor scale showing 1.23 kg")
            r = s.post("/api/v1/simulation/devices/SCALE-BENCH-01", {"load": "0.25", "unit": "kg", "unstable": True})
            assert r.status_code == 200 and r.get_json()["display"]["value"] == "250.00"
            wait_for(lambda: (x := reading_store(simapp).latest("SCALE-BENCH-01")) and x.status == "dynamic",
                     what="a moving bench balance")
            assert s.post("/api/v1/simulation/devices/SCALE-FLOOR-01", {"load": "abc"}).status_code == 422
            assert s.post("/api/v1/simulation/devices/SCALE-FLOOR-01", {"load": "1", "unit": "lb"}).status_code == 422
            assert s.post("/api/v1/simulation/devices/NOPE", {"load": "1"}).status_code == 404
            qa = logged_in(simapp.test_client(), seeded, "qa")
            assert qa.post("/api/v1/simulation/devices/SCALE-FLOOR-01", {"load": "1"}).status_code == 403
        finally:
            stop_embedded(simapp)


def test_separate_gateway_process_reaches_the_browser_through_redis(app: Flask, seeded: Seeded,
                                                                    tmp_path: Path) -> None:
    """``mes gateway`` in its own process → Redis → the web worker → a Socket.IO client; tare back."""
    from mes.app import create_app
    from tests.conftest import base_config

    device = f"BAL-{uuid.uuid4().hex[:8].upper()}"
    web = create_app({**base_config(Path(app.config["MES_HOME"]), app.config["SQLALCHEMY_DATABASE_URI"]),
                      "MES_REDIS_URL": REDIS_URL})
    live = LiveServer(web)
    sim, sim_thread, url = scale_sim("10.00")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"devices": [{"device_id": device, "driver": "mtsics",
                                                   "config": {"port": url}, "mode": "stream"}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k == "MES_AUDIT_TAG_KEY_PATH"}
    env.update({"MES_HOME": app.config["MES_HOME"], "MES_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                "MES_SECRET_KEY": "test-secret-key", "MES_REDIS_URL": REDIS_URL, "MES_GATEWAY_CONFIG": str(config),
                "MES_LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([MES, "gateway", "--duration", "120"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = None
    try:
        with web.app_context():
            user = LiveUser(live, seeded, "operator")
            wait_for(lambda: user.get(f"/api/v1/devices/{device}").status_code == 200, timeout=60,
                     what="the gateway process reporting the device")
            events = Events()
            client = user.socket(events)
            assert client.call("watch", {"devices": [device]}, namespace="/live", timeout=10)["ok"] is True
            sim.balance.set_weight("77.70")
            reading = wait_for(lambda: [r for r in events.of("reading") if r["value"] == "77.70"], timeout=20,
                               what="a reading through the Redis message queue")[0]
            assert reading["device_id"] == device and reading["raw"].startswith("S S")
            body = user.get(f"/api/v1/devices/{device}").json()
            assert body["connected"] is True and body["identity"]["make"] == "Mettler-Toledo"
            r = user.post(f"/api/v1/devices/{device}/tare")
            assert r.status_code == 200, r.text
            assert r.json()["tare"] == {"value": "77.70", "unit": "g"}
            r = user.post(f"/api/v1/devices/{device}/zero")  # 77.7 g is beyond the zero range of a 220 g balance
            assert r.status_code == 409 and r.json()["type"].endswith("/device-refused")
            assert user.post("/api/v1/devices/UNKNOWN-X/tare").status_code == 404
    finally:
        if client is not None:
            client.disconnect()
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        live.stop()
        sim_thread.stop()
    assert proc.returncode == 0, out


def test_mes_gateway_refuses_to_start_without_redis_or_devices(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mes.cli import main

    env: dict[str, str | None] = {"MES_HOME": str(tmp_path), "MES_SECRET_KEY": "x", "MES_REDIS_URL": None,
                                  "MES_GATEWAY_CONFIG": None, "MES_SIMULATION": None, "MES_DATABASE_URL": None}
    done = CliRunner().invoke(main, ["gateway"], env=env)
    assert done.exit_code == 2 and "MES_REDIS_URL" in done.output and "Traceback" not in done.output
    env["MES_REDIS_URL"] = REDIS_URL
    done = CliRunner().invoke(main, ["gateway"], env=env)
    assert done.exit_code == 2 and "MES_GATEWAY_CONFIG" in done.output
    bad = tmp_path / "gw.yaml"
    bad.write_text("devices:\n  - {device_id: S1, driver: nope}\n")
    done = CliRunner().invoke(main, ["gateway", "--config", str(bad)], env=env)
    assert done.exit_code == 2 and "device S1" in done.output
