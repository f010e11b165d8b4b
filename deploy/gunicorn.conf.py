# Gunicorn configuration for the open-mes web application.
#
# `mes run` starts gunicorn with this file when it finds it under the working
# directory (or with --config FILE / MES_GUNICORN_CONFIG=FILE); `--bind`,
# `--workers` and `--threads` given to `mes run` override the values computed
# here. Everything else is tuned through MES_* environment variables (see
# deploy/systemd/mes.env.example); `mes run` checks them before it starts, so a
# bad value stops it with one line naming the variable:
#
#   MES_BIND                  listen address(es), comma separated
#                             (default 127.0.0.1:8000; "unix:/run/mes/web.sock" works too)
#   MES_WORKERS               worker processes (default 1, see below; "auto" = 2 x cores, max 8)
#   MES_THREADS               threads per worker (default 50)
#   MES_WORKER_TIMEOUT        seconds before a silent worker is killed (default 60)
#   MES_GRACEFUL_TIMEOUT      seconds to finish requests on stop/restart (default 30)
#   MES_KEEPALIVE             idle keep-alive seconds (default 75, > nginx upstream keepalive_timeout)
#   MES_MAX_REQUESTS          recycle a worker after N requests (default 0 = never)
#   MES_FORWARDED_ALLOW_IPS   proxies trusted for X-Forwarded-Proto (default 127.0.0.1,::1)
#   MES_ACCESS_LOG            1 = JSON access log on stdout (default off: nginx and the app log requests)
#   MES_LOG_LEVEL             gunicorn log level (default info)
#   MES_CONTROL_SOCKET        path of gunicorn's control socket for `gunicornc` (default: disabled)
#
# WORKERS AND SOCKET.IO -- read before raising MES_WORKERS
# Socket.IO's long-polling transport (used for the handshake and as the
# fallback when a WebSocket cannot be opened) sends several HTTP requests per
# session, and all of them must reach the *same process*. Gunicorn's workers
# share one listening socket and the kernel hands each connection to an
# arbitrary worker, so with more than one worker per gunicorn, polling clients
# get "400 Bad Request"/"Invalid session" and kiosks never connect reliably.
# Therefore:
#   * each gunicorn runs ONE worker with many threads (one thread is held per
#     open WebSocket, so MES_THREADS bounds the WebSocket clients per instance);
#   * to use more cores, run several instances on different ports
#     (systemd: mes-web@8001, mes-web@8002, ...), list them in the nginx
#     upstream with client-address stickiness, and let Redis (MES_REDIS_URL)
#     carry Socket.IO broadcasts between them.
# MES_WORKERS > 1 is only safe when every Socket.IO client is configured for
# the WebSocket transport only; gunicorn logs a warning when it is used.
#
# This file is plain Python executed by gunicorn at start-up; names starting
# with "_" are helpers and are ignored by gunicorn.

import datetime
import json
import logging
import os
import sys
import threading
import traceback

from gunicorn.glogging import Logger as _GunicornLogger

# The MES_* values are read and checked in one place, shared with `mes run`
# without a config file: a bad one raises mes.config.ConfigError naming it.
from mes.server import options_from_env as _options_from_env

_env = _options_from_env()


# --- Application and sockets -------------------------------------------------

# Used when gunicorn is started without an app argument; `mes run` may pass it.
wsgi_app = "mes.wsgi:app"

bind = _env["bind"]
backlog = 2048

# --- Workers -----------------------------------------------------------------

# gthread: WebSocket-capable with simple-websocket (the socket is taken over
# by a worker thread for the lifetime of the connection).
worker_class = "gthread"
workers = _env["workers"]
threads = _env["threads"]

# Total connections per worker (threads + idle keep-alive connections).
worker_connections = max(1000, threads * 4)

# No preloading: every worker imports the app itself and opens its own
# database pool / Redis connection after fork (sharing those across a fork
# corrupts them).
preload_app = False

# The arbiter kills a worker whose main loop has not checked in for this long.
# With gthread the main loop keeps checking in while threads serve long
# requests or WebSockets, so this catches a hung process, not a slow request.
timeout = _env["timeout"]

# On SIGTERM (systemctl stop/restart) workers stop accepting and get this long
# to finish in-flight requests; open WebSockets are then closed and the
# kiosks reconnect to another instance. Keep systemd's TimeoutStopSec above it.
graceful_timeout = _env["graceful_timeout"]

# Must exceed nginx's upstream `keepalive_timeout` (60s in deploy/nginx/mes.conf)
# so that nginx, not gunicorn, closes idle upstream connections (otherwise
# nginx can reuse a connection gunicorn is just closing -> sporadic 502).
keepalive = _env["keepalive"]

# Off by default: recycling a worker drops every WebSocket it holds. Enable
# (with jitter) only if a memory leak is being worked around.
max_requests = _env["max_requests"]
max_requests_jitter = _env["max_requests_jitter"]

# Heartbeat file on tmpfs; on a disk-backed /tmp fchmod() can stall workers.
if "worker_tmp_dir" in _env:
    worker_tmp_dir = _env["worker_tmp_dir"]

proc_name = "mes-web"

# gunicorn >= 25 opens a control socket for `gunicornc` by default (under
# $XDG_RUNTIME_DIR or ~/.gunicorn). It allows changing the worker count at run
# time, so it is opt-in here (set a distinct path per instance, e.g. under the
# instance's RuntimeDirectory).
if "control_socket" in _env:
    control_socket = _env["control_socket"]
    control_socket_mode = _env["control_socket_mode"]
else:
    control_socket_disable = True

# --- Reverse proxy -----------------------------------------------------------

# Only these peers may tell gunicorn the original scheme. nginx runs on the
# same host in the reference deployment; in containers set the proxy's address
# or network, never "*" on a port that other hosts can reach.
forwarded_allow_ips = _env["forwarded_allow_ips"]

# Trust exactly the one header nginx sets. gunicorn's default also honours
# X-Forwarded-Protocol / X-Forwarded-Ssl, which nginx passes through from the
# client untouched.
secure_scheme_headers = _env["secure_scheme_headers"]

# --- Logging -----------------------------------------------------------------
# The application logs JSON itself; gunicorn's own messages and (optional)
# access log are emitted as one JSON object per line too, so log shippers can
# parse stdout/stderr uniformly. Timestamps are UTC from the server clock.


class _JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "ts": datetime.datetime.fromtimestamp(
                record.created, tz=datetime.UTC
            ).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "mes_fields", None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class JsonLogger(_GunicornLogger):
    """gunicorn logger writing JSON lines (error log and access log)."""

    def setup(self, cfg):
        super().setup(cfg)
        formatter = _JsonFormatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter)

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        try:
            status = resp.status
            if isinstance(status, str):
                status = status.split(None, 1)[0]
            fields = {
                "event": "http_access",
                "remote_addr": environ.get("REMOTE_ADDR"),
                "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
                "request_id": environ.get("HTTP_X_REQUEST_ID"),
                "method": environ.get("REQUEST_METHOD"),
                # Path only: query strings may carry tokens.
                "path": environ.get("PATH_INFO"),
                "protocol": environ.get("SERVER_PROTOCOL"),
                "status": int(status) if str(status).isdigit() else status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "user_agent": environ.get("HTTP_USER_AGENT"),
            }
            self.access_log.info("access", extra={"mes_fields": fields})
        except Exception:
            self.error(traceback.format_exc())


logger_class = JsonLogger
errorlog = "-"  # stderr -> journald / docker logs
accesslog = _env["accesslog"]
loglevel = os.environ.get("MES_LOG_LEVEL", "").strip().lower() or "info"
if loglevel not in ("debug", "info", "warning", "error", "critical"):
    loglevel = "info"
capture_output = False

# --- Hooks -------------------------------------------------------------------


def when_ready(server):
    server.log.info(
        "mes-web ready: bind=%s workers=%s threads=%s",
        ",".join(server.cfg.bind), server.cfg.workers, server.cfg.threads,
    )
    if server.cfg.workers > 1:
        server.log.warning(
            "workers=%d: Socket.IO long-polling needs every request of a session "
            "on the same process; run one worker per instance and scale with "
            "more instances behind nginx unless all clients use WebSocket only",
            server.cfg.workers,
        )


def worker_abort(worker):
    # SIGABRT from the arbiter after `timeout`: dump every thread's stack so a
    # hang (e.g. blocked DB or device call) can be diagnosed from the log.
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        if frame is not None:
            worker.log.critical(
                "worker timeout, thread %s:\n%s", thread.name, "".join(traceback.format_stack(frame))
            )
