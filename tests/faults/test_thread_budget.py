"""A web instance's threads cannot run out (issue 21): under gunicorn's gthread worker a
WebSocket holds its thread while it is open, so without a limit the kiosks' live
connections could take every thread and a log-in or a step completion would wait in the
queue until its client gave up (seen at 100 kiosks on 80 threads: 30 s time-outs, no
sentence, no alarm). ``mes.realtime.LiveBudget`` serves at most ``MES_LIVE_CONNECTIONS``
live connections (by default the threads less a fifth, at least 2) and refuses the next at
once with a problem, an alarm and a metric.

Each test runs ``mes run`` as deployed, with 4 threads (so 2 live connections)."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio
from sqlalchemy import text

from mes.config import live_connections_for
from mes.execution.sim_operator import Login, login
from tests.faults.kit import Server, database_engine, fresh_database, seed_database, start_server, wait_for

THREADS = 4


@dataclass
class Small:
    server: Server
    url: str
    kiosk: str
    monitor: str  # a Prometheus token's secret


@pytest.fixture(params=["sqlite", "postgresql"])
def small(request: pytest.FixtureRequest, templates: dict[str, str], tmp_path: Path) -> Iterator[Small]:
    """``mes run`` with :data:`THREADS` threads on a seeded database."""
    home = tmp_path / "home"
    with fresh_database(templates, request.param, tmp_path) as url:
        seeded = seed_database(url, home, steps=2, work_orders=1, operators=1)
        server = start_server(url, home, env={"MES_THREADS": str(THREADS)})
        try:
            yield Small(server, url, seeded["kiosks"][0], _monitor_token(url, home))
        finally:
            server.stop()


def _monitor_token(url: str, home: Path) -> str:
    from mes.app import create_app
    from mes.audit.log import Actor
    from mes.db import db
    from mes.users import operations as ops
    from tests.bench.execution import PASSWORD
    from tests.conftest import base_config

    app = create_app(base_config(home, url))
    with app.app_context():
        ops.create_user(Actor.system("test"), "prom", "Prometheus", {"integrator"}, password=PASSWORD)
        _, secret = ops.issue_token(Actor.system("test"), "prom", ["system.monitor"], "metrics")
        db.session.remove()
        db.engine.dispose()
    return secret


def _live(base: str, client: Any) -> socketio.Client:
    """A kiosk's live connection (WebSocket, as the kiosk opens it), logged in."""
    sock = socketio.Client(reconnection=False)
    cookie = "; ".join(f"{k}={v}" for k, v in client.http.cookies.items())
    sock.connect(base, headers={"Cookie": cookie, **client.http.headers}, namespaces=["/live"],
                 transports=["websocket"], wait_timeout=10)
    return sock


def _metric(small: Small, name: str) -> float:
    answer = requests.get(f"{small.server.base}/metrics", headers={"Authorization": f"Bearer {small.monitor}"},
                          timeout=5)
    found = re.search(rf"^{name} (\S+)$", answer.text, re.M)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))


def test_live_connections_beyond_the_budget_are_refused_and_requests_still_find_a_thread(small: Small) -> None:
    base, url = small.server.base, small.url
    limit = live_connections_for(THREADS)
    assert limit == 2
    client = login(base, small.kiosk, Login(badge="B0", pin="2468"))
    held = [_live(base, client) for _ in range(limit)]
    try:
        assert all(s.connected for s in held)
        assert _metric(small, "mes_live_connections") == limit
        # one more: refused at once, with the reason, whichever transport asks
        t0 = time.monotonic()
        answer = requests.get(f"{base}/socket.io/", params={"EIO": "4", "transport": "polling"},
                              cookies=client.http.cookies, timeout=5)
        assert time.monotonic() - t0 < 2
        assert answer.status_code == 503, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.headers["Retry-After"] == "10"
        problem = answer.json()
        assert problem["type"].endswith("/live-connections-full") and problem["status"] == 503
        assert f"its {limit} live connections" in problem["detail"] and "MES_THREADS" in problem["detail"]
        with pytest.raises(socketio.exceptions.ConnectionError):
            _live(base, client)
        # the threads the live connections do not hold still serve requests, several at once,
        # while more live connections are asked for and refused
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            refused = [pool.submit(requests.get, f"{base}/socket.io/?EIO=4&transport=polling", timeout=5)
                       for _ in range(4)]
            started = time.monotonic()
            served = [pool.submit(client.get, "/api/v1/auth/me") for _ in range(4)]
            assert all(f.result(timeout=10)["user"]["id"] == client.user_id for f in served)
            assert time.monotonic() - started < 5
            assert all(f.result(timeout=10).status_code == 503 for f in refused)
        assert _metric(small, "mes_live_refused_total") >= 6
        # one alarm, however many refusals; audited
        with database_engine(url) as engine, engine.connect() as conn:
            alarms = conn.execute(text("SELECT message FROM alarms WHERE kind = 'live-connections' "
                                       "AND acknowledged_at IS NULL")).scalars().all()
            raised = conn.execute(text("SELECT count(*) FROM audit_entries WHERE action = 'alarm.raised'")).scalar()
        assert len(alarms) == 1 and "MES_THREADS" in alarms[0], alarms
        assert raised >= 1
        # a live connection closed gives its room back
        held.pop().disconnect()
        wait_for(lambda: _metric(small, "mes_live_connections") == limit - 1, 10, "the closed connection released")
        held.append(_live(base, client))
        assert held[-1].connected
    finally:
        for s in held:
            s.disconnect()
    wait_for(lambda: _metric(small, "mes_live_connections") == 0, 10, "every live connection released")
