"""What the integration owner sees and is alarmed about: each endpoint's delivery state on
the API and the page, the backlog alarm (``MES_INTEGRATION_BACKLOG_ALARM_SECONDS``), replay
from the page (CSRF), and the reconciliation of a work order against what each endpoint
acknowledged. SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from mes.db import db, utcnow
from mes.integration import endpoints as ops
from mes.integration import monitor
from mes.integration.models import Delivery
from mes.integration.relay import Relay
from mes.jobs import watch_integration
from mes.users.models import Alarm
from tests.execution_helpers import PACK_RECIPE, effective_recipe, make_world, run_until, start, stock
from tests.helpers import logged_in, seed
from tests.integration.receiver import Receiver
from tests.integration.test_relay import ACTOR, produce


def rounds(relay: Relay, n: int = 20) -> None:
    for _ in range(n):
        relay.run_once()


def test_status_alarms_and_replay_from_the_page(app: Flask, client: FlaskClient) -> None:
    world_users = logged_in(client, seed(), "integrator")
    receiver = Receiver().start()
    try:
        ops.add_endpoint(ACTOR, "qms", receiver.url)
        receiver.secrets.append(db.session.get(ops.WebhookEndpoint, "qms").secret)
        receiver.stop()  # down: every attempt fails
        produce("A", 2)
        produce("B", 1)
        relay = Relay(app, name="r1", schedule=(0, 0), rng=random.Random(1))
        rounds(relay, 6)
        (status,) = monitor.endpoint_status()
        # A's head and B's only event are dead after three attempts; A's second waits behind its head
        assert (status["dead"], status["pending"], status["in_flight"], status["delivered"]) == (2, 1, 0, 0)
        assert status["last_error"]["attempts"] == 3 and "ConnectionError" in status["last_error"]["error"]
        assert status["oldest_undelivered_age_s"] is not None and status["latency_ms"]["samples"] == 0
        dead_alarms = db.session.execute(select(Alarm).where(Alarm.kind == "integration.dead_letter")).scalars().all()
        assert len(dead_alarms) == 2
        # the backlog alarm: once while open, whatever the number of watches
        app.config["MES_INTEGRATION_BACKLOG_ALARM_SECONDS"] = 3600
        assert watch_integration(app) == []
        app.config["MES_INTEGRATION_BACKLOG_ALARM_SECONDS"] = 0
        later = utcnow() + timedelta(seconds=5)
        assert monitor.watch_backlog(0, later) == ["qms"] and monitor.watch_backlog(0, later) == []
        kinds = sorted(a["kind"] for a in monitor.integration_alarms())
        assert kinds == ["integration.backlog", "integration.dead_letter", "integration.dead_letter"]
        # the API shows what is stored
        r = world_users.get("/api/v1/integration/status")
        assert r.status_code == 200 and r.get_json()["endpoints"][0]["dead"] == 2
        assert len(r.get_json()["alarms"]) == 3
        # the page shows it too, and replays the dead letters with a reason, CSRF-checked
        page = world_users.get("/qa/integration")
        assert page.status_code == 200 and b'data-field="dead">2<' in page.data and b"integration.backlog" in page.data
        refused = client.post("/qa/integration/replay", data={"scope": "dead", "endpoint": "qms", "reason": "up again"},
                              headers=world_users.headers)
        assert refused.status_code == 403
        empty = client.post("/qa/integration/replay", data={"scope": "dead", "endpoint": "qms", "reason": "",
                                                            "csrf_token": world_users.csrf}, headers=world_users.headers)
        assert empty.status_code == 422 and b"reason" in empty.data
        receiver.start()
        done = client.post("/qa/integration/replay", data={"scope": "dead", "endpoint": "qms", "reason": "up again",
                                                           "csrf_token": world_users.csrf}, headers=world_users.headers)
        assert done.status_code == 302 and "queued" in done.headers["Location"]
        rounds(relay, 10)
        (status,) = monitor.endpoint_status()
        assert (status["dead"], status["pending"], status["delivered"]) == (0, 0, 3)
        assert status["latency_ms"]["samples"] == 3 and status["last_error"] is None
        assert len(receiver.accepted()) == 3
    finally:
        receiver.stop()


def test_a_work_order_reconciles_against_each_endpoint(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch)
    receiver = Receiver().start()
    try:
        receiver.secrets.append(ops.add_endpoint(ACTOR, "erp", receiver.url)[1])
        rv = effective_recipe(world, PACK_RECIPE, "pack.yaml")
        from mes.execution import recipes_store as store

        stock(world, store.master_of(store.get_version(rv)))
        batch_id = start(world, rv, "10", "kg")
        run_until(world, batch_id)
        relay = Relay(app, name="r1")
        while relay.run_once():
            pass
        from mes.execution import operations as ex

        wo = ex.get_batch(batch_id).work_order_id
        # a second endpoint added afterwards has not been sent this work order's events
        ops.add_endpoint(ACTOR, "qms", "http://127.0.0.1:9/in", ["mes.material.consumed.v1"])
        report = monitor.reconcile(wo)
        assert report["batches"] == [batch_id] and report["mes"]["consumed"] and report["mes"]["produced"]
        erp, qms = report["endpoints"]
        assert erp["id"] == "erp" and erp["consumed"] == report["mes"]["consumed"]
        assert erp["produced"] == report["mes"]["produced"]
        assert erp["consumed_matches"] and erp["produced_matches"] and erp["not_acknowledged"] == []
        ours = {r.webhook_id for r in receiver.accepted() if r.event["subject"] in (f"batch/{batch_id}", f"work_order/{wo}")}
        assert erp["acknowledged"] == report["events"] == len(ours) >= 4
        assert not qms["consumed_matches"] and {n["type"] for n in qms["not_acknowledged"]} == {
            "mes.material.consumed.v1"}
        # the API answers the same; an unknown work order is a 404 problem
        client = app.test_client()
        s = logged_in(client, seed(), "integrator")
        r = s.get(f"/api/v1/integration/work-orders/{wo}/reconciliation")
        assert r.status_code == 200 and r.get_json() == _json(report)
        r = s.get("/api/v1/integration/work-orders/WO-NOPE/reconciliation")
        assert r.status_code == 404 and r.mimetype == "application/problem+json"
        page = s.get(f"/qa/integration/reconcile?work_order={wo}")
        assert page.status_code == 200 and b"consumption matches, production matches" in page.data
        assert b"DIFFERS" in page.data
        # the refusal when a delivery is taken back: the acknowledged figures no longer match
        db.session.execute(Delivery.__table__.update().where(Delivery.endpoint_id == "erp").values(status="pending"))
        db.session.commit()
        assert not monitor.reconcile(wo)["endpoints"][0]["consumed_matches"]
    finally:
        receiver.stop()


def _json(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))
