"""Socket.IO ``/live``: who may connect and watch, rooms, and ``publish`` from anywhere —
in one process and across web workers through the Redis message queue."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

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
    client = LiveUser(live_b, seeded, "supervisor").socket(events)  # a workstation: any line
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


def _websocket(url: str, headers: dict[str, str] | None = None) -> Any:
    """A simple-websocket client that keeps the frames which arrive with the 101 response.

    simple-websocket 1.1's ``Client.handshake`` stops at the first wsproto event (the accept)
    and leaves any frame read in the same ``recv`` in wsproto's buffer, where its reader
    thread looks only after more bytes arrive. The server sends the Engine.IO open packet
    straight after the 101, so on a busy machine that packet sat unread until the next
    frame, and the first ``receive`` timed out. Browsers do not lose it; this client must not.
    """
    import simple_websocket

    class Client(simple_websocket.Client):  # type: ignore[misc]
        def handshake(self) -> None:
            super().handshake()
            self._handle_events()  # the frames that came in with the 101, before the reader starts

    return Client.connect(url, headers=headers)


def test_a_frame_sent_with_the_101_response_is_received() -> None:
    """The helper above, against a server that writes the 101 and a frame in one ``send``."""
    import base64
    import hashlib
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            frame = b"\x81\x05hello"  # FIN + text, unmasked, 5 bytes
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frame)
            conn.recv(4096)  # hold the connection until the client closes it

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    ws = _websocket(f"ws://127.0.0.1:{port}/")
    try:
        assert ws.receive(timeout=5) == "hello"
    finally:
        ws.close()
        server.join(5)
        listener.close()


def test_the_websocket_transport_works_under_the_threaded_server(app: Flask, seeded: Seeded,
                                                                  live: LiveServer) -> None:
    """What a browser does: Engine.IO over a WebSocket (simple-websocket on the server), then /live."""
    import json

    user = LiveUser(live, seeded, "operator")
    cookie = "; ".join(f"{k}={v}" for k, v in user.http.cookies.items())
    url = live.base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = _websocket(url, headers={"Cookie": cookie, **user.headers})
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
    anonymous = _websocket(url)
    try:
        anonymous.receive(timeout=10)
        anonymous.send("40/live,")
        assert anonymous.receive(timeout=10).startswith("44/live,")  # connect error: refused
    finally:
        anonymous.close()


def test_a_socket_is_closed_when_its_session_ends(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    user = LiveUser(live, seeded, "operator")
    client = user.socket()
    try:
        assert client.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=10)["ok"] is True
        assert user.post("/api/v1/auth/logout").status_code == 200
        wait_for(lambda: not client.connected, what="the socket closed by the log-out")
    finally:
        client.disconnect()


def test_a_socket_of_a_session_ended_elsewhere_is_refused_at_its_next_event(app: Flask, seeded: Seeded,
                                                                             live: LiveServer) -> None:
    """Another worker ended the session (the socket is not in this process's rooms to close):
    the next event finds the session ended, is refused and closes the socket."""
    from mes.db import db
    from mes.users.models import UserSession

    user = LiveUser(live, seeded, "supervisor")
    client = user.socket()
    try:
        row = db.session.execute(db.select(UserSession).where(UserSession.user_id == "supervisor1",
                                                               UserSession.ended_at.is_(None))).scalar_one()
        row.ended_at = row.started_at
        from mes.audit.log import record
        from tests.helpers import SEED

        record(SEED, "auth.logout", ("user", "supervisor1"), after={"reason": "ended on another worker"})
        db.session.commit()
        told: list[Any] = []
        client.on("session_ended", told.append, namespace="/live")
        client.emit("watch", {"devices": ["SCALE-01"]}, namespace="/live")
        wait_for(lambda: not client.connected, what="the socket closed")
        assert told and told[0]["ok"] is False and "ended" in told[0]["detail"]
    finally:
        client.disconnect()


def test_a_kiosk_watches_only_its_own_line(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    client = LiveUser(live, seeded, "operator").socket()  # KIOSK-01 serves LINE-1
    try:
        assert client.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=10)["ok"] is True
        ack = client.call("watch_line", {"line": "LINE-2"}, namespace="/live", timeout=10)
        assert ack["ok"] is False and "LINE-1" in ack["detail"]
    finally:
        client.disconnect()


def test_a_tokens_socket_watches_only_within_its_scopes(app: Flask, seeded: Seeded, live: LiveServer) -> None:
    from mes.users import operations as ops
    from tests.helpers import SEED

    seed(("integrator",))
    _, secret = ops.issue_token(SEED, "integrator1", ["material.view"], "erp")
    client = socketio.Client(reconnection=False)
    client.connect(live.base, headers={"Authorization": f"Bearer {secret}"}, namespaces=["/live"],
                   transports=["polling"], wait_timeout=10)
    try:
        assert client.call("watch", {"devices": ["SCALE-01"]}, namespace="/live", timeout=10)["ok"] is False
        assert client.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=10)["ok"] is False
    finally:
        client.disconnect()
