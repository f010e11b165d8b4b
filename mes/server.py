"""The production server: gunicorn with threaded workers (Flask-SocketIO's simple-websocket
transport works with them), configured in code so ``mes run`` needs no extra files."""

from __future__ import annotations

import gc
import os
from typing import Any

from gunicorn.app.base import BaseApplication


class MESServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn application that loads ``mes.wsgi:app`` in each worker."""

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
        from mes.jobs import start_background_jobs
        from mes.wsgi import app

        start_background_jobs(app)
        if app.config.get("MES_SIMULATION"):
            # `mes demo`: the device gateway with its simulated scales and line runs in this worker.
            from mes.gateway.service import start_embedded

            start_embedded(app, wait=False)
        # Keep the app's long-lived start-up objects out of every later full collection:
        # those collections, not queries, were the p99 of short requests.
        gc.collect()
        gc.freeze()
        return app


def serve(bind: str, workers: int, threads: int, config_file: str | None = None, **extra: Any) -> None:
    """Run gunicorn in the foreground until stopped."""
    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 30,
        "accesslog": None,
        "errorlog": "-",
        "forwarded_allow_ips": os.environ.get("MES_FORWARDED_ALLOW_IPS", "127.0.0.1"),
        # as deploy/gunicorn.conf.py: gunicorn's own 2 s closes a kiosk's idle connection
        # while it may be sending its next request (a reset the client cannot tell apart)
        "keepalive": int(os.environ.get("MES_KEEPALIVE", "75")),
        **extra,
    }
    MESServer(options, config_file).run()
