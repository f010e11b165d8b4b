"""The kiosk tests' server process: the production server (gunicorn, threaded worker,
WebSocket-capable), configured from ``MES_*`` variables like ``mes run``.

    python -m tests.kiosk.server --bind 127.0.0.1:PORT

It is a separate process so a test can stop it (the kiosk must show the connection banner)
and start it again on the same port and database (the kiosk must recover and re-fetch).

The one test hook: the engine's step clock (``mes.execution.operations.clock``, which
tests replace, see tests/test_sim_operator.py) runs ``$MES_HOME/clock-offset-seconds``
seconds ahead of real time. A test writes that file to let a process timer elapse without
waiting 20 minutes; it is read on every call, so the offset can grow while the server runs.
Weigh steps all come before the first timer in the example recipe, so no device reading is
compared with a shifted clock.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

OFFSET_FILE = "clock-offset-seconds"


def install_clock_offset(home: Path) -> None:
    """Make the engine's clock read ``home/clock-offset-seconds`` ahead of real time."""
    from mes.db import utcnow
    from mes.execution import operations as ex

    path = home / OFFSET_FILE

    def shifted_clock() -> Any:
        try:
            offset = float(path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            offset = 0.0
        return utcnow() + timedelta(seconds=offset)

    ex.clock = shifted_clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--threads", type=int, default=32)
    args = ap.parse_args()
    home = Path(os.environ["MES_HOME"])
    from mes.server import MESServer

    class KioskTestServer(MESServer):
        def load(self) -> Any:
            install_clock_offset(home)
            return super().load()

    options = {"bind": args.bind, "workers": 1, "threads": args.threads, "worker_class": "gthread",
               "timeout": 60, "graceful_timeout": 2, "accesslog": None, "errorlog": "-", "loglevel": "warning",
               "forwarded_allow_ips": "127.0.0.1",
               # as `mes run` (mes.server.options_from_env): gunicorn's own 2 s closed a driver's
               # idle keep-alive connection as it sent its next request (RemoteDisconnected)
               "keepalive": 75}
    KioskTestServer(options).run()


if __name__ == "__main__":
    main()
