"""The QA workstation's lists in the API (issue 19): batches, work orders, deviations and lots
on hold, filtered and paged; exceptions marked reviewed through the API; each list declared
in the OpenAPI description."""

from __future__ import annotations

from flask import Flask

from mes.execution import operations as ex
from mes.materials import operations as mat
from tests.execution_helpers import make_world, second_qa
from tests.helpers import logged_in
from tests.test_qa_release import _batch


def test_qa_lists_filter_page_and_order(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    done = _batch(world, hardness="130")  # completed, with an out-of-limit value (a deviation dispositioned)
    world.clock.advance(3600)
    running = _batch(world, until="qa_gate")
    dev = ex.raise_deviation(world.actor("operator"), running, "critical", "other", "spill at the press")
    minor = ex.raise_deviation(world.actor("operator"), running, "minor", "other", "label smudged")
    qa = logged_in(client, world.seeded, "qa")
    # batches: newest first, filtered by state, with exception counts and release blockers
    r = qa.get("/api/v1/batches?per_page=1")
    body = r.get_json()
    assert r.status_code == 200 and body["total"] == 2 and body["pages"] == 2 and [b["id"] for b in body["batches"]] == [running]
    assert [b["id"] for b in qa.get("/api/v1/batches?per_page=1&page=2").get_json()["batches"]] == [done]
    [row] = qa.get("/api/v1/batches?status=completed").get_json()["batches"]
    stored = ex.exceptions(done)
    assert row["id"] == done and row["product"] == "FG-PCM500-PACK" and row["line"] == "LINE-1"
    assert row["exceptions"] == len(stored) and row["unreviewed_exceptions"] == len(stored) > 0
    assert row["release_blockers"] == ex.release_blockers(done)
    assert qa.get("/api/v1/batches?product=NOPE").get_json()["total"] == 0
    assert qa.get("/api/v1/batches?since=2190-01-01").get_json()["total"] == 0
    bad = qa.get("/api/v1/batches?status=lost")
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    assert qa.get("/api/v1/batches?since=yesterday").status_code == 422
    # work orders
    wos = qa.get("/api/v1/work-orders?status=in_progress").get_json()
    assert wos["total"] == 2 and {w["status"] for w in wos["work_orders"]} == {"in_progress"}
    # deviations: open first, critical before minor, then the closed ones
    devs = qa.get("/api/v1/deviations").get_json()["deviations"]
    assert [d["id"] for d in devs][:2] == [dev.id, minor.id] and devs[-1]["status"] == "closed"
    assert [d["id"] for d in qa.get("/api/v1/deviations?severity=minor&status=open").get_json()["deviations"]] == [minor.id]
    # lots on hold
    [bulk] = {c.lot_id for c in mat.consumptions(batch_id=done)}
    mat.place_hold(world.actor("qa"), bulk, "all", "supplier recall")
    [hold] = qa.get("/api/v1/holds").get_json()["holds"]
    assert hold["lot"] == bulk and hold["reason"] == "supplier recall"
    # an exception marked reviewed through the API
    key = stored[0]["key"]
    # qa1 signed the batch's QA gate: segregation of duties keeps them from reviewing it
    refused = qa.post(f"/api/v1/batches/{done}/exceptions/reviewed", {"key": key, "note": "assessed"})
    assert refused.status_code == 409 and "segregation of duties" in refused.get_json()["detail"]
    second_qa(world)
    qa = logged_in(client, world.seeded, "qa2")
    r = qa.post(f"/api/v1/batches/{done}/exceptions/reviewed", {"key": key, "note": "assessed"})
    assert r.status_code == 201, r.get_json()
    listed = qa.get(f"/api/v1/batches/{done}/exceptions").get_json()["exceptions"]
    assert next(e for e in listed if e["key"] == key)["reviewed"]["by"] == "qa2"
    assert qa.post(f"/api/v1/batches/{done}/exceptions/reviewed", {"key": key}).status_code == 409
    assert qa.post(f"/api/v1/batches/{done}/exceptions/reviewed", {"key": "nothing:1"}).status_code == 404
    # an operator may not mark exceptions reviewed
    op = logged_in(client, world.seeded, "operator")
    assert op.post(f"/api/v1/batches/{done}/exceptions/reviewed", {"key": stored[-1]["key"]}).status_code == 403


def test_qa_lists_are_declared_in_openapi(app: Flask, client) -> None:
    spec = client.get("/api/v1/openapi.json").get_json()
    for path, params in (("/api/v1/batches", {"status", "product", "line", "since", "until", "page", "per_page"}),
                         ("/api/v1/work-orders", {"status", "product", "line", "page", "per_page"}),
                         ("/api/v1/deviations", {"status", "severity", "batch", "page", "per_page"}),
                         ("/api/v1/holds", {"item", "page", "per_page"})):
        assert {p["name"] for p in spec["paths"][path]["get"]["parameters"] if p["in"] == "query"} == params
    assert "post" in spec["paths"]["/api/v1/batches/{batch_id}/exceptions/reviewed"]
