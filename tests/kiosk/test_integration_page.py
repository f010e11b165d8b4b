"""The integration owner's page in headless Chromium at 1920×1080: each endpoint's pending,
in-flight, failed and dead counts, oldest undelivered age, latency and last error shown in
the viewport without scrolling equal what is stored; the dead-letter alarm is shown; the
replay button (a POST form with the CSRF token) queues the dead letters again."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mes.demo import DEMO_PASSWORD
from tests.integration.receiver import Receiver
from tests.kiosk.harness import QA_TERMINAL, KioskServer, running_server

pytestmark = pytest.mark.browser
FIELDS = ("state", "pending", "in_flight", "failed", "dead", "delivered", "oldest", "latency", "last_error")


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    home = tmp_path_factory.mktemp("integration-page")
    with running_server("sqlite", templates, Path(home)) as srv:
        yield srv


def stored(server: KioskServer, as_of: str | None = None) -> dict[str, dict[str, str]]:
    """What the page must show for each endpoint, from the database (ages as of ``as_of``, the
    time the page says it shows)."""
    from datetime import datetime

    from mes.integration import monitor
    from mes.integration.blueprint import _age

    with server.db():
        rows = monitor.endpoint_status(datetime.fromisoformat(as_of) if as_of else None)
    out = {}
    for e in rows:
        lat = e["latency_ms"]
        out[e["id"]] = {
            "state": e["state"], "pending": str(e["pending"]), "in_flight": str(e["in_flight"]),
            "failed": str(e["failed"]), "dead": str(e["dead"]), "delivered": str(e["delivered"]),
            "oldest": _age(e["oldest_undelivered_age_s"]),
            "latency": f"{lat['p50']} ms / {lat['p95']} ms" if lat["samples"] else "—",
            "last_error": "—" if not e["last_error"] else
            f"{e['last_error']['error']} ({e['last_error']['attempts']} attempt"
            f"{'s' if e['last_error']['attempts'] != 1 else ''}, event {e['last_error']['event_id']})"}
    return out


def shown(k: Any) -> dict[str, dict[str, str]]:
    """The endpoint table as the page shows it, each cell checked to be inside the viewport."""
    out: dict[str, dict[str, str]] = {}
    view = k.page.viewport_size
    for row in k.page.locator("#endpoints tbody tr").all():
        endpoint = row.get_attribute("data-endpoint")
        cells = {}
        for name in FIELDS:
            cell = row.locator(f'[data-field="{name}"]')
            box = cell.bounding_box()
            assert box and box["x"] >= 0 and box["y"] >= 0, (endpoint, name)
            assert box["x"] + box["width"] <= view["width"] and box["y"] + box["height"] <= view["height"], \
                f"{endpoint} {name} is outside the {view} viewport: {box}"
            cells[name] = cell.inner_text().strip()
        out[endpoint] = cells
    return out


def as_of(k: Any) -> str:
    return k.page.locator("#as-of").get_attribute("data-at")


def test_the_page_shows_what_is_stored_and_replays(open_kiosk: Any, server: KioskServer) -> None:
    from mes.audit.log import Actor, Event, record
    from mes.db import db
    from mes.integration import endpoints as ops
    from mes.integration.relay import Relay
    from tests.helpers import example_data

    receiver = Receiver().start()
    try:
        with server.db():
            actor = Actor.system("test")
            receiver.secrets.append(ops.add_endpoint(actor, "erp", receiver.url)[1])
            ops.add_endpoint(actor, "qms", "http://127.0.0.1:9/hooks")  # nothing listens: every attempt fails
            for i in range(3):
                record(actor, "test.fact", ("batch", "B-9"), after={"i": i},
                       event=Event("mes.batch.completed.v1", "batch", "B-9", example_data("mes.batch.completed.v1")))
                db.session.commit()
            relay = Relay(server._app, name="page-test", schedule=(0, 0), rng=random.Random(3))
            for _ in range(8):
                relay.run_once()
        want = stored(server)
        assert want["qms"]["dead"] == "1" and want["qms"]["pending"] == "2" and want["erp"]["delivered"] == "3"
        k = open_kiosk(server, "1920x1080", terminal=QA_TERMINAL, start="")
        k.goto("/qa/login?next=/qa/integration")
        k.page.locator("input[name=user_id]").fill("admin")
        k.page.locator("input[name=password]").fill(DEMO_PASSWORD)
        k.page.locator("button[type=submit]").click()
        k.page.wait_for_url("**/qa/integration")
        k.shot("integration", full_page=False)
        assert shown(k) == stored(server, as_of(k))
        alarm = k.page.locator('[data-alarm="integration.dead_letter"][data-endpoint="qms"]')
        assert alarm.count() == 1 and "could not be delivered to qms" in alarm.inner_text()
        assert alarm.bounding_box()["y"] + alarm.bounding_box()["height"] <= 1080
        # replay the dead letter: reason, button; the page says so and shows the new state
        row = k.page.locator('#endpoints tr[data-endpoint="qms"]')
        row.locator("input[name=reason]").fill("QMS is back")
        row.locator("button[type=submit]").click()
        k.page.wait_for_url("**/qa/integration?message=*")
        assert "1 delivery queued again." in k.page.locator("#message").inner_text()
        after = shown(k)
        assert after == stored(server, as_of(k)) and after["qms"]["dead"] == "0" and after["qms"]["pending"] == "3"
        assert not [c for c in k.console if "Failed to load resource" not in c]
    finally:
        receiver.stop()
