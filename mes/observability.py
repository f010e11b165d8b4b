"""JSON logs with a request / correlation id, and Prometheus metrics.

Each request gets an id (the incoming ``X-Request-ID`` if it is sane, else a new one),
echoed in the response header and in every log line written while serving it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        try:
            rid = g.get("request_id")
        except RuntimeError:
            rid = None
        if rid:
            payload["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in self.RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


#: The MES's own loggers: they log at ``MES_LOG_LEVEL``.
OWN_LOGGERS = ("mes", "devices", "kiosk")
#: Libraries whose INFO lines are chatter to the person at the console (asyncua's server
#: alone writes about a thousand "add_node ..." lines when the simulated line starts).
QUIET_LIBRARIES = ("alembic", "asyncua", "pymodbus", "engineio", "socketio", "werkzeug", "urllib3", "apscheduler")


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class LibraryFilter(logging.Filter):
    """On the console, a library's records pass from WARNING up, unless the level is DEBUG;
    the MES's own records pass at the configured level (their loggers' level decides)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return self.level <= logging.DEBUG or record.levelno >= logging.WARNING or _is_own(record.name)


def configure_logging(level: str) -> None:
    """Send JSON lines to stderr (journald / docker collect them): the MES's own logs at
    ``level``, libraries' warnings and errors only (everything when ``level`` is DEBUG)."""
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h.formatter, JSONFormatter)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter())
        root.handlers[:] = [handler]
    for old in [f for f in handler.filters if isinstance(f, LibraryFilter)]:
        handler.removeFilter(old)
    handler.addFilter(LibraryFilter(numeric))
    root.setLevel(numeric)
    library_level = logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in QUIET_LIBRARIES:  # not even made into records: asyncua's are a thousand at start-up
        logging.getLogger(name).setLevel(library_level)
    from devices.network import show_link_chatter

    show_link_chatter(numeric <= logging.DEBUG)  # the network drivers' filter on those libraries
    for name in list(logging.root.manager.loggerDict):  # the library's own loggers follow it
        if any(name.startswith(quiet + ".") for quiet in QUIET_LIBRARIES):
            child = logging.getLogger(name)
            child.setLevel(logging.NOTSET)
            child.disabled = False


class Metrics:
    """Per-app Prometheus registry (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mes_http_requests_total", "HTTP requests", ["method", "endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("mes_http_request_seconds", "HTTP request latency", ["method", "endpoint"],
                                 registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.audit_size = Gauge("mes_audit_entries", "Audit log size (entries)", registry=self.registry)
        self.open_alarms = Gauge("mes_open_alarms", "Unacknowledged alarms", registry=self.registry)
        self.live_connections = Gauge("mes_live_connections", "Live connections (WebSocket, long-poll) served now",
                                      registry=self.registry)
        self.live_refused = Counter("mes_live_refused_total", "Live connections refused for want of a thread",
                                    registry=self.registry)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)


def _lock_wait() -> float | None:
    """Seconds this request's database session waited for the audit append lock, if it appended."""
    from mes.audit.log import LOCK_WAIT_KEY
    from mes.db import db

    return db.session.info.pop(LOCK_WAIT_KEY, None)


def init_app(app: Flask) -> None:
    metrics = Metrics()
    app.extensions["mes_metrics"] = metrics
    access = logging.getLogger("mes.access")

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.endpoint or "unmatched"
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        metrics.latency.labels(request.method, endpoint).observe(elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        waited = _lock_wait()  # this request's, also when it is not shown
        if g.get("principal") is not None:
            # The time spent in the app (W3C Server-Timing: browsers' developer tools show it
            # beside the network time, so a slow tap shows where it was slow). Only to
            # signed-in users: an anonymous caller learns nothing about the server's work.
            timing = f"app;dur={elapsed * 1000:.2f}"
            if waited is not None:  # of that, queueing for the audit log's append lock
                timing += f", audit-lock;dur={waited * 1000:.2f}"
            response.headers["Server-Timing"] = timing
        access.info("request", extra={"method": request.method, "path": request.path,
                                      "status": response.status_code, "ms": round(elapsed * 1000, 2)})
        return response
