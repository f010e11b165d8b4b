"""Live data for kiosks and QA screens over Socket.IO (namespace ``/live``).

One :data:`socketio` object, created unbound and bound to the app in ``create_app`` with
``init_app``: threading async mode with simple-websocket, which works under the werkzeug
server and gunicorn's gthread workers. With ``MES_REDIS_URL`` set it uses Redis as its
message queue, so several web instances and a separate ``mes gateway`` process can all emit
to every connected browser.

Protocol (namespace ``/live``)
------------------------------
* A connection is accepted only from a logged-in session (the session cookie of a kiosk
  or QA login, with its terminal) or an API token; anonymous connections are refused.
* Client → server: ``watch {"devices": ["SCALE-01", ...]}`` joins the rooms
  ``device:<id>``; ``watch_line {"line": "LINE-1"}`` joins ``line:<id>``. Each answers
  (Socket.IO acknowledgement) ``{"ok": true, "rooms": [...]}`` or ``{"ok": false, "detail": ...}``.
* Server → client: ``reading`` (:meth:`mes.gateway.store.CapturedReading.to_json`),
  ``device_status`` ``{"device_id", "connected", "age_ms", "message"}`` and
  ``batch_changed`` ``{"batch_id", "line", "step_id"}`` (sent by the kiosk code through
  :func:`publish`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import flask_socketio
from flask import Flask, current_app, has_app_context, session

__all__ = ["LIVE_ALARM_KIND", "NAMESPACE", "LiveBudget", "close_room_sockets", "device_room", "emitter", "init_app", "line_room", "publish",
           "session_room", "socketio"]

log = logging.getLogger(__name__)

NAMESPACE = "/live"
#: Socket.IO channel shared by the web workers and the gateway on the Redis message queue.
CHANNEL = "mes-live"
_ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_WATCHED = 32

socketio = flask_socketio.SocketIO()
_state: dict[str, Any] = {"external": None}


def device_room(device_id: str) -> str:
    """The room a device's readings and status go to."""
    return f"device:{device_id}"


def line_room(line: str) -> str:
    """The room a line's batch events go to."""
    return f"line:{line}"


def init_app(app: Flask) -> None:
    """Bind Socket.IO to ``app`` (Redis message queue when ``MES_REDIS_URL`` is set).

    A Flask-SocketIO object serves one app; the first app of the process gets
    :data:`socketio`, any further one (tests build many apps) gets its own object with the
    same handlers, kept in ``app.extensions["socketio"]``.
    """
    sio = socketio
    if socketio.server is not None:
        sio = flask_socketio.SocketIO()
        _register_handlers(sio)
    url = app.config.get("MES_REDIS_URL") or None
    sio.init_app(app, async_mode="threading", message_queue=url, channel=CHANNEL,
                 cors_allowed_origins=None, logger=False, engineio_logger=False)
    budget = LiveBudget(app, app.wsgi_app, app.config["MES_LIVE_CONNECTIONS"])
    app.extensions["mes_live_budget"] = budget
    app.wsgi_app = budget  # type: ignore[method-assign]  # outside Socket.IO's own middleware


def emitter(redis_url: str) -> flask_socketio.SocketIO:
    """An emit-only Socket.IO object for a process without a web server (``mes gateway``)."""
    if _state["external"] is None or _state["external"][0] != redis_url:
        _state["external"] = (redis_url, flask_socketio.SocketIO(message_queue=redis_url, channel=CHANNEL))
    return _state["external"][1]


def publish(event: str, payload: dict[str, Any], room: str, *, app: Flask | None = None) -> None:
    """Send ``event`` with ``payload`` to every client in ``room`` of ``/live``.

    Usable from anywhere (a request, a service function, the gateway thread; pass ``app``
    outside an app context); a no-op when Socket.IO is not initialised, so domain code and
    tests never depend on it. A failure to deliver is logged, never raised: live data is a
    convenience, the record is in the database.
    """
    if app is None and has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    target: Any = app.extensions.get("socketio") if app is not None else None
    if target is None or target.server is None:
        target = socketio if socketio.server is not None else (_state["external"] or (None, None))[1]
    if target is None:
        return
    try:
        target.emit(event, payload, to=room, namespace=NAMESPACE)
    except Exception:  # noqa: BLE001 - a broken live channel must not break the caller
        log.warning("could not publish %s to %s", event, room, exc_info=True)


# --------------------------------------------------------------------- thread budget

#: The alarm raised when an instance refuses a live connection for want of room.
LIVE_ALARM_KIND = "live-connections"
#: How long a refused client is asked to wait before it tries again.
LIVE_RETRY_AFTER_S = 10
#: At most one alarm check per this many seconds while refusals go on.
LIVE_ALARM_EVERY_S = 60.0


class LiveBudget:
    """WSGI middleware that keeps a web instance's threads from running out.

    Under gunicorn's gthread worker a WebSocket holds its thread for as long as it is open,
    and so does a long-poll while it waits. Without a limit the live connections of the
    kiosks could take every thread, and a log-in or a step completion would wait in the
    queue until its client gave up (seen: 30 s time-outs, no sentence, no alarm). So at most
    ``limit`` live requests (``GET /socket.io/``: WebSocket or long-poll) are served at once;
    the threads beyond them stay free for requests. A live request beyond the limit is
    answered at once with 503 problem+json and ``Retry-After``, counted in
    ``mes_live_refused_total``, and raises the ``live-connections`` alarm (once while it is
    open). The kiosk then reads its scale over the REST API until it gets a live connection.
    """

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]], limit: int) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.limit = limit
        self.held = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._alarm_checked = -1e9

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET" or not environ.get("PATH_INFO", "").startswith("/socket.io"):
            return self.wsgi_app(environ, start_response)
        with self._lock:
            full = self.held >= self.limit
            if full:
                self.refused += 1
            else:
                self.held += 1
        self._gauge()
        if full:
            return self._refuse(environ, start_response)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._lock:
                    self.held -= 1
                self._gauge()

        try:
            result = self.wsgi_app(environ, start_response)
        except BaseException:
            release()
            raise
        return _Closing(result, release)

    def _gauge(self) -> None:
        metrics = self.app.extensions.get("mes_metrics")
        if metrics is not None:
            metrics.live_connections.set(self.held)

    def _refuse(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from mes.web import PROBLEM_BASE

        detail = (f"This server instance already serves its {self.limit} live connections "
                  "(MES_LIVE_CONNECTIONS); the rest of its threads are kept for requests. "
                  f"Live data waits; try again in {LIVE_RETRY_AFTER_S} s. The kiosk reads its scale "
                  "without it meanwhile. Add an instance or raise MES_THREADS.")
        body = json.dumps({"type": PROBLEM_BASE + "live-connections-full", "status": 503,
                           "title": "No room for another live connection", "detail": detail,
                           "instance": environ.get("PATH_INFO", "")}).encode()
        metrics = self.app.extensions.get("mes_metrics")
        if metrics is not None:
            metrics.live_refused.inc()
        self._alarm()
        start_response("503 Service Unavailable", [("Content-Type", "application/problem+json"),
                                                  ("Content-Length", str(len(body))),
                                                  ("Retry-After", str(LIVE_RETRY_AFTER_S))])
        return [body]

    def _alarm(self) -> None:
        """Raise the ``live-connections`` alarm unless one is open (looked at once a minute at
        most, so a storm of refusals costs no database work). Never raises."""
        now = time.monotonic()
        with self._lock:
            if now - self._alarm_checked < LIVE_ALARM_EVERY_S:
                return
            self._alarm_checked = now
        log.warning("live connection refused: all %s live connections of this instance are in use", self.limit,
                    extra={"live_limit": self.limit, "live_refused": self.refused})
        try:
            with self.app.app_context():
                from sqlalchemy import select

                from mes.audit.log import Actor
                from mes.db import db
                from mes.users.models import Alarm
                from mes.users.operations import raise_alarm

                try:
                    if db.session.execute(select(Alarm.id).where(Alarm.kind == LIVE_ALARM_KIND,
                                                                 Alarm.acknowledged_at.is_(None))).first() is None:
                        raise_alarm(Actor.system("live-budget"), LIVE_ALARM_KIND,
                                    f"A web instance refused live connections: its {self.limit} live connections "
                                    "(MES_LIVE_CONNECTIONS, from MES_THREADS) are all in use. Kiosks read their "
                                    "scales without live data meanwhile. Add an instance or raise MES_THREADS.",
                                    {"limit": self.limit, "refused": self.refused})
                    else:
                        db.session.rollback()
                finally:
                    db.session.remove()
        except Exception:  # noqa: BLE001 - the refusal stands whether or not the alarm is recorded
            log.exception("the live-connections alarm could not be raised")


class _Closing:
    """The app's answer, with ``release`` called once when the server closes it (a WebSocket's
    answer is closed when the socket is)."""

    def __init__(self, result: Iterable[bytes], release: Callable[[], None]) -> None:
        self._result = result
        self._release = release

    def __iter__(self) -> Any:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


# --------------------------------------------------------------------- handlers


def _who() -> Any:
    """The authenticated caller of the Socket.IO handshake, or None when anonymous."""
    from mes.errors import MESError
    from mes.web import _principal

    try:
        return _principal()
    except MESError:
        return None


def session_room(session_id: str) -> str:
    """The room of every socket opened by one log-in (closed when the session ends)."""
    return f"session:{session_id}"


def close_room_sockets(room: str, *, app: Flask | None = None) -> None:
    """Disconnect every socket in ``room`` of ``/live`` on this server (a session that ended,
    an account locked or deactivated); sockets on other workers are refused at their next
    event by the same check. A failure is logged, never raised."""
    if app is None and has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    target: Any = app.extensions.get("socketio") if app is not None else None
    if target is None or target.server is None:
        return
    try:
        for sid, _ in list(target.server.manager.get_participants(NAMESPACE, room)):
            target.server.disconnect(sid, namespace=NAMESPACE)
    except Exception:  # noqa: BLE001 - the session has ended in the database all the same
        log.warning("could not close the sockets of %s", room, exc_info=True)


def _connect(auth: Any = None) -> None:
    from mes.users.permissions import Permission, allowed

    who = _who()
    if who is None:
        raise flask_socketio.ConnectionRefusedError("Log in first: live data is for logged-in users only.")
    # What this connection may watch is worked out once, as the REST API would for this
    # caller (roles, narrowed by a token's scopes); the session is re-checked on every event.
    scopes = set(who.token.scopes) if who.token is not None else None
    session["live_permissions"] = sorted(p.value for p in Permission if allowed(who.roles, p)
                                         and (scopes is None or p.value in scopes))
    session["live_user"] = who.user_id
    session["live_session"] = who.session_id
    session["live_token"] = who.token.id if who.token is not None else None
    terminal = who.terminal
    session["live_line"] = terminal.line if terminal is not None and terminal.kind == "kiosk" else None
    flask_socketio.join_room(f"user:{who.user_id}")
    if who.session_id is not None:
        flask_socketio.join_room(session_room(who.session_id))


def _still_live() -> bool:
    """Whether the log-in (or token) this socket was opened with still holds; if not, the
    socket is closed: live data ends with the session."""
    from mes.db import db
    from mes.users.models import ApiToken, UserSession

    try:
        ok = False
        if session.get("live_session"):
            row = db.session.get(UserSession, session["live_session"])
            ok = row is not None and row.ended_at is None and row.user.active and not row.user.locked
        elif session.get("live_token"):
            token = db.session.get(ApiToken, session["live_token"])
            ok = token is not None and token.revoked_at is None and token.user.active and not token.user.locked
        db.session.rollback()
    except Exception:  # noqa: BLE001 - cannot tell: treat as ended
        log.warning("could not check a live session", exc_info=True)
        ok = False
    if not ok:  # told why, then closed (the event's acknowledgement is not sent on a closed socket)
        flask_socketio.emit("session_ended", ENDED)
        flask_socketio.disconnect()
    return ok


def _may_watch(permission_name: str) -> bool:
    permissions = session.get("live_permissions")
    return isinstance(permissions, list) and permission_name in permissions


ENDED = {"ok": False, "detail": "The session has ended; log in again."}


def _watch(data: Any = None) -> dict[str, Any]:
    if not _still_live():
        return ENDED
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list) or not devices or len(devices) > MAX_WATCHED \
            or not all(isinstance(d, str) and _ROOM_ID.match(d) for d in devices):
        return {"ok": False, "detail": f"Send {{\"devices\": [device ids]}} with 1 to {MAX_WATCHED} device ids."}
    if not _may_watch("equipment.view"):
        return {"ok": False, "detail": "Your role may not watch devices (equipment.view)."}
    rooms = [device_room(d) for d in dict.fromkeys(devices)]
    for room in rooms:
        flask_socketio.join_room(room)
    _send_current(devices)
    return {"ok": True, "rooms": rooms}


def _unwatch(data: Any = None) -> dict[str, Any]:
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        return {"ok": False, "detail": "Send {\"devices\": [device ids]}."}
    for d in devices:
        flask_socketio.leave_room(device_room(d))
    return {"ok": True}


def _watch_line(data: Any = None) -> dict[str, Any]:
    if not _still_live():
        return ENDED
    line = data.get("line") if isinstance(data, dict) else None
    if not isinstance(line, str) or not _ROOM_ID.match(line):
        return {"ok": False, "detail": "Send {\"line\": \"LINE-1\"}."}
    if not _may_watch("batch.view"):
        return {"ok": False, "detail": "Your role may not watch a line (batch.view)."}
    own = session.get("live_line")
    if own is not None and line != own:
        return {"ok": False, "detail": f"This kiosk serves line {own}; it does not watch {line}."}
    room = line_room(line)
    flask_socketio.join_room(room)
    return {"ok": True, "rooms": [room]}


def _send_current(devices: list[str]) -> None:
    """Give a new watcher the latest reading and status at once (no blank screen until the next one)."""
    try:
        from mes.gateway.health import device_state

        for device_id in devices:
            state = device_state(current_app, device_id)
            if state is None:
                flask_socketio.emit("device_status", {"device_id": device_id, "connected": False, "age_ms": None,
                                                      "message": "The gateway has not reported this device."})
                continue
            flask_socketio.emit("device_status", state.status_json())
            if state.reading is not None and state.connected:  # a silent device's last number is not shown
                flask_socketio.emit("reading", state.reading.to_json())
    except Exception:  # noqa: BLE001 - the watch itself has succeeded
        log.warning("could not send the current device state", exc_info=True)


def _register_handlers(sio: flask_socketio.SocketIO) -> None:
    sio.on_event("connect", _connect, namespace=NAMESPACE)
    sio.on_event("watch", _watch, namespace=NAMESPACE)
    sio.on_event("unwatch", _unwatch, namespace=NAMESPACE)
    sio.on_event("watch_line", _watch_line, namespace=NAMESPACE)


_register_handlers(socketio)
