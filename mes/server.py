"""The production server: gunicorn with threaded workers (Flask-SocketIO's simple-websocket
transport works with them), configured in code so ``mes run`` needs no extra files."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import Application

from mes.config import ConfigError, _parse_bool, env_int, threads_of


class MESServer(Application):  # type: ignore[misc]
    """Gunicorn application that loads ``mes.wsgi:app`` in each worker (an ``Application``, not
    a ``BaseApplication``: that one cannot read a config file)."""

    def __init__(self, options: dict[str, Any], config_file: str | None = None) -> None:
        self.options = options
        self.config_file = config_file
        super().__init__()

    def load_config(self) -> None:
        if self.config_file:
            self.load_config_from_file(self.config_file)
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # The app keeps threads free for requests (MES_LIVE_CONNECTIONS, mes.realtime.LiveBudget)
        # out of the threads this worker really has, wherever they were set.
        os.environ["MES_THREADS"] = str(self.cfg.threads)
        from mes.jobs import start_background_jobs
        from mes.wsgi import app

        live = app.config["MES_LIVE_CONNECTIONS"]
        if live >= self.cfg.threads:
            logging.getLogger(__name__).warning(
                "MES_LIVE_CONNECTIONS=%s leaves none of the %s threads free for requests: live connections "
                "can hold them all and requests then wait", live, self.cfg.threads)
        start_background_jobs(app)
        if app.config.get("MES_SIMULATION"):
            # `mes demo`: the device gateway with its simulated scales and line runs in this worker.
            from mes.gateway.service import start_embedded

            start_embedded(app, wait=False)
        if app.config.get("MES_RELAY_IN_SERVER"):
            # `mes demo`: an outbox relay delivers to the webhook endpoints from this worker.
            from mes.integration.relay import RUN, start_in_background

            start_in_background(app, run=RUN)
        # Keep the app's long-lived start-up objects out of every later full collection:
        # those collections, not queries, were the p99 of short requests.
        gc.collect()
        gc.freeze()
        return app


DEPLOY_CONFIG = Path("deploy") / "gunicorn.conf.py"


def _env_int(name: str, default: int, minimum: int, maximum: int) -> int:
    return env_int(os.environ, name, default, minimum, maximum)


def _env_workers() -> int:
    if os.environ.get("MES_WORKERS", "").strip().lower() == "auto":
        # 2 x cores, capped: each worker holds its own database pool and MES_THREADS threads
        try:
            cores = len(os.sched_getaffinity(0))  # cpusets and CPUAffinity= count
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(2 * cores, 8))
    return _env_int("MES_WORKERS", 1, 1, 64)


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip()
    try:
        return bool(raw) and _parse_bool(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None


def options_from_env() -> dict[str, Any]:
    """Gunicorn settings from the ``MES_*`` web-server variables, with the defaults of
    ``deploy/gunicorn.conf.py``; a bad value raises :class:`ConfigError` naming it.

    ``mes run`` reads them even when it uses the deployed config file (which reads them too),
    so a typo stops the start with one line instead of a traceback from inside gunicorn."""
    options: dict[str, Any] = {
        "bind": [b.strip() for b in os.environ.get("MES_BIND", "127.0.0.1:8000").split(",") if b.strip()],
        "workers": _env_workers(),
        "threads": threads_of(os.environ),
        "worker_class": "gthread",
        "timeout": _env_int("MES_WORKER_TIMEOUT", 60, 10, 86400),
        "graceful_timeout": _env_int("MES_GRACEFUL_TIMEOUT", 30, 1, 3600),
        # above nginx's upstream keepalive_timeout (60 s): gunicorn's own 2 s closes a kiosk's
        # idle connection while it may be sending its next request (a reset the client cannot
        # tell apart from a lost request)
        "keepalive": _env_int("MES_KEEPALIVE", 75, 1, 3600),
        "max_requests": _env_int("MES_MAX_REQUESTS", 0, 0, 10**9),
        "accesslog": "-" if _env_flag("MES_ACCESS_LOG") else None,
        "errorlog": "-",
        "forwarded_allow_ips": os.environ.get("MES_FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
        # trust exactly the one header nginx sets, not X-Forwarded-Ssl / -Protocol from the client
        "secure_scheme_headers": {"X-FORWARDED-PROTO": "https"},
    }
    options["max_requests_jitter"] = options["max_requests"] // 10
    # gunicorn >= 25 opens a control socket that can change the worker count: opt-in only
    control_socket = os.environ.get("MES_CONTROL_SOCKET", "").strip()
    if control_socket:
        options.update(control_socket=control_socket, control_socket_mode=0o600)
    else:
        options["control_socket_disable"] = True
    if not options["bind"]:
        raise ConfigError("MES_BIND is empty: expected HOST:PORT (or unix:PATH), comma-separated")
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        options["worker_tmp_dir"] = "/dev/shm"  # the heartbeat file; a disk-backed /tmp can stall it
    return options


def config_file_for(explicit: str | None) -> str | None:
    """The gunicorn config file ``mes run`` uses: ``--config``, else ``MES_GUNICORN_CONFIG``,
    else ``deploy/gunicorn.conf.py`` under the working directory when it is there (the systemd
    units and the container start in the source tree), else none."""
    chosen = explicit or os.environ.get("MES_GUNICORN_CONFIG", "").strip() or None
    if chosen is not None:
        if not Path(chosen).is_file():
            raise ConfigError(f"gunicorn config file {chosen} does not exist")
        return chosen
    return str(DEPLOY_CONFIG) if DEPLOY_CONFIG.is_file() else None


def serve(bind: str | None = None, workers: int | None = None, threads: int | None = None,
          config_file: str | None = None, **extra: Any) -> None:
    """Run gunicorn in the foreground until stopped.

    Settings come from ``config_file`` or, without one, from :func:`options_from_env`;
    ``bind``, ``workers``, ``threads`` and ``extra``, when given, override either."""
    options = options_from_env()  # validated even when the file decides
    if config_file is not None:
        options = {"worker_class": "gthread"}
    given = {"bind": bind, "workers": workers, "threads": threads, **extra}
    options.update({key: value for key, value in given.items() if value is not None})
    MESServer(options, config_file).run()
