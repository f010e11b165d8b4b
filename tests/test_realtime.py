"""Socket.IO ``/live``: who may connect and watch, rooms, and ``publish`` from anywhere —
in one process and across web workers through the Redis message queue."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import socketio
from flask import Flask

from mes import realtime
from tests.helpers import Seeded, seed
from tests.test_gateway import REDIS_URL, Events, LiveServer, LiveUser, wait_for


@pytest.fixture
def live(app: Flask) -> LiveServer:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def seeded(app: Flask) -> Seeded:
    return seed(("operator", "supervisor", "qa", "admin"))


def test_batch_changed_reaches_the_clients_watching_the_line(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    kiosk, other = Events(), Events()
    client = LiveUser(live, seeded, "operator").socket(kiosk)
    elsewhere = LiveUser(live, seeded, "supervisor").socket(other)
    try:
        assert client.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=10) == \
            {"ok": True, "rooms": ["line:LINE-1"]}
        assert elsewhere.call("watch_line", {"line": "LINE-2"}, namespace="/live", timeout=10)["ok"] is True
        payload = {"batch_id": "B-1", "line": "LINE-1", "step_id": "w_pcm"}
        realtime.publish("batch_changed", payload, realtime.line_room("LINE-1"))  # from the request thread
        assert wait_for(lambda: kiosk.of("batch_changed"), what="batch_changed")[0] == payload
        realtime.publish("batch_changed", {**payload, "line": "LINE-2"}, realtime.line_room("LINE-2"), app=app)
        wait_for(lambda: other.of("batch_changed"), what="the other line's event")
        assert len(kiosk.of("batch_changed")) == 1  # rooms keep lines apart
    finally:
        client.disconnect()
        elsewhere.disconnect()


def test_watch_is_checked_against_the_role_and_the_payload(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    operator = LiveUser(live, seeded, "operator").socket()
    admin = LiveUser(live, seeded, "admin").socket()  # logged in, so connected ...
    try:
        for bad in (None, {}, {"devices": []}, {"devices": "SCALE-01"}, {"devices": ["../x"]},
                    {"devices": [f"D{i}" for i in range(40)]}):
            ack = operator.call("watch", bad, namespace="/live", timeout=10)
            assert ack["ok"] is False and "device ids" in ack["detail"]
        assert operator.call("watch_line", {"line": ""}, namespace="/live", timeout=10)["ok"] is False
        ack = operator.call("watch", {"devices": ["SCALE-01", "SCALE-01"]}, namespace="/live", timeout=10)
        assert ack == {"ok": True, "rooms": ["device:SCALE-01"]}
        # ... but an administrator has no production view: no devices, no lines.
        assert admin.call("watch", {"devices": ["SCALE-01"]}, namespace="/live", timeout=10)["ok"] is False
        assert admin.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=10)["ok"] is False
    finally:
        operator.disconnect()
        admin.disconnect()


def test_a_watcher_is_told_at_once_that_a_device_is_not_reported(app: Flask, seeded: Seeded,
                                                                  live: LiveServer) -> None:
    events = Events()
    client = LiveUser(live, seeded, "operator").socket(events)
    try:
        client.call("watch", {"devices": ["SCALE-99"]}, namespace="/live", timeout=10)
        status = wait_for(lambda: events.of("device_status"), what="a status")[0]
        assert status == {"device_id": "SCALE-99", "connected": False, "age_ms": None,
                          "message": "The gateway has not reported this device."}
    finally:
        client.disconnect()


def test_an_ended_session_cannot_connect(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    user = LiveUser(live, seeded, "operator")
    assert user.post("/api/v1/auth/logout").status_code in (200, 204)
    with pytest.raises(socketio.exceptions.ConnectionError):
        user.socket()


def test_publish_crosses_web_workers_through_redis(app: Flask, seeded: Seeded) -> None:
    """Two web workers on one Redis: an event published in one reaches a client of the other."""
    from mes.app import create_app
    from tests.conftest import base_config

    config = {**base_config(Path(app.config["MES_HOME"]), app.config["SQLALCHEMY_DATABASE_URI"]),
              "MES_REDIS_URL": REDIS_URL}
    worker_a, worker_b = create_app(config), create_app(config)
    live_b = LiveServer(worker_b)
    events = Events()
    client = LiveUser(live_b, seeded, "operator").socket(events)
    line = f"LINE-{uuid.uuid4().hex[:6]}"
    try:
        assert client.call("watch_line", {"line": line}, namespace="/live", timeout=10)["ok"] is True
        payload = {"batch_id": "B-7", "line": line, "step_id": "s1"}
        with worker_a.app_context():
            realtime.publish("batch_changed", payload, realtime.line_room(line))
        assert wait_for(lambda: events.of("batch_changed"), timeout=15, what="the event via Redis")[0] == payload
        # The emit-only object of a separate process (the gateway) reaches it the same way.
        realtime.emitter(REDIS_URL).emit("batch_changed", {**payload, "step_id": "s2"}, to=realtime.line_room(line),
                                         namespace=realtime.NAMESPACE)
        wait_for(lambda: len(events.of("batch_changed")) == 2, timeout=15, what="the external emitter's event")
    finally:
        client.disconnect()
        live_b.stop()


def test_the_websocket_transport_works_under_the_threaded_server(app: Flask, seeded: Seeded,
                                                                  live: LiveServer) -> None:
    """What a browser does: Engine.IO over a WebSocket (simple-websocket on the server), then /live."""
    import json

    import simple_websocket

    user = LiveUser(live, seeded, "operator")
    cookie = "; ".join(f"{k}={v}" for k, v in user.http.cookies.items())
    url = live.base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = simple_websocket.Client.connect(url, headers={"Cookie": cookie, **user.headers})
    try:
        opened = ws.receive(timeout=10)
        assert opened.startswith("0") and json.loads(opened[1:])["upgrades"] == []
        ws.send("40/live,")
        assert ws.receive(timeout=10).startswith("40/live,{\"sid\"")
        ws.send('42/live,1["watch_line",{"line":"LINE-1"}]')  # an event with acknowledgement id 1
        ack = ws.receive(timeout=10)
        assert ack.startswith("43/live,1") and json.loads(ack[len("43/live,1"):]) == [{"ok": True,
                                                                                    "rooms": ["line:LINE-1"]}]
        realtime.publish("batch_changed", {"batch_id": "B-9", "line": "LINE-1", "step_id": None}, "line:LINE-1", app=app)
        message = ws.receive(timeout=10)
        while message == "2":  # an Engine.IO ping may come first
            ws.send("3")
            message = ws.receive(timeout=10)
        assert message.startswith("42/live,") and json.loads(message[len("42/live,"):]) == [
            "batch_changed", {"batch_id": "B-9", "line": "LINE-1", "step_id": None}]
    finally:
        ws.close()
    anonymous = simple_websocket.Client.connect(url)
    try:
        anonymous.receive(timeout=10)
        anonymous.send("40/live,")
        assert anonymous.receive(timeout=10).startswith("44/live,")  # connect error: refused
    finally:
        anonymous.close()
