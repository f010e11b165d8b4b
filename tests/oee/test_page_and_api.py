"""The OEE page and API over the new figures: a whole-shift breakdown shows 0 %, not a dash;
a stop is classified from the page with a form; the reason tree, calendars, line comparison
and shift closing on the API, with plain problem+json refusals."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from mes.oee import operations as ops
from tests.helpers import logged_in, seed
from tests.test_oee import GATEWAY, L, iso, plant, sample


def test_a_breakdown_shift_shows_zero_and_is_classified_on_the_page(app: Flask) -> None:
    plant(app)
    seeded = seed()
    ops.set_ideal_rate(GATEWAY, "LINE-1", "10", effective_from=L(0))
    ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"mon": ["early"]}, oee_target="0.85", effective_from=L(0))
    sample(L(6), "Held", 0, 0, reason="E1")
    sample(L(14), "Execute")
    sup = logged_in(app.test_client(), seeded, "supervisor")
    page = sup.get("/qa/oee?line=LINE-1&from=2026-03-02T06:00&to=2026-03-02T14:00")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<script" not in html and "style=" not in html
    assert "OEE <strong>0.0 %</strong> (target 85.0 %)" in html and "target 85.0 %" in html
    assert "<title>2026-03-02 early: OEE 0.0 %</title>" in html  # the worst shift is drawn, at 0
    stop_id = ops.stops("LINE-1", L(6), L(14))[0]["id"]
    assert f"/qa/oee/stops/{stop_id}/reason" in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    r = sup.client.post(f"/qa/oee/stops/{stop_id}/reason",
                        data={"csrf_token": token.group(1), "reason": "breakdown", "comment": "gearbox",
                              "line": "LINE-1", "from": "2026-03-02T06:00", "to": "2026-03-02T14:00",
                              "group": "shift"}, headers=sup._h())
    assert r.status_code == 303 and "/qa/oee?" in r.headers["Location"]
    (stop,) = ops.stops("LINE-1", L(6), L(14))
    assert stop["classification"]["category"] == "breakdown" and stop["reason"]["comment"] == "gearbox"
    week = sup.get("/qa/oee?line=LINE-1&from=2026-03-02T06:00&to=2026-03-02T14:00&group=week")
    assert week.status_code == 200 and "2026-W10" in week.get_data(as_text=True)
    product = sup.get("/qa/oee?line=LINE-1&from=2026-03-02T06:00&to=2026-03-02T14:00&group=product")
    assert product.status_code == 200 and "(no batch)" in product.get_data(as_text=True)
    qa = logged_in(app.test_client(), seeded, "qa")
    assert "/reason" not in qa.get("/qa/oee?line=LINE-1&from=2026-03-02T06:00&to=2026-03-02T14:00"
                                   ).get_data(as_text=True)  # QA looks, does not classify


def test_reason_tree_calendar_lines_and_closing_on_the_api(app: Flask) -> None:
    plant(app)
    seeded = seed()
    sup = logged_in(app.test_client(), seeded, "supervisor")
    r = sup.post("/api/v1/oee/reasons", {"code": "label_jam", "label": "Label jam", "category": "minor_stop",
                                         "plc_codes": ["101"]})
    assert r.status_code == 201 and r.get_json()["reason"]["planned"] is False
    cats = {c["category"]: c for c in sup.get("/api/v1/oee/reasons").get_json()["categories"]}
    assert "label_jam" in [x["code"] for x in cats["minor_stop"]["reasons"]]
    r = sup.post("/api/v1/oee/reasons", {"code": "x", "label": "X", "category": "speed_loss"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = sup.post("/api/v1/oee/calendars", {"line": "LINE-1", "shifts": {"mon": ["early", "late"]},
                                           "maintenance": [{"from": "2026-03-02T25:00:00Z", "to": iso(L(9))}]})
    assert r.status_code == 422 and r.get_json()["field"] == "maintenance"
    r = sup.post("/api/v1/oee/calendars", {"line": "LINE-1", "shifts": {"mon": ["early", "late"]},
                                           "oee_target": "0.8", "effective_from": iso(L(0))})
    assert r.status_code == 201 and r.get_json()["calendar"]["oee_target"] == "0.8"
    assert sup.get("/api/v1/oee/calendars?line=LINE-1").get_json()["calendars"][0]["shifts"]["mon"] == ["early", "late"]
    sample(L(6), "Execute", 0, 0)
    sample(L(7), "Held", 600, 6, reason="101", line="LINE-1")
    sample(L(6), "Execute", 0, 0, line="LINE-2")
    body: dict[str, Any] = sup.get(f"/api/v1/oee/lines?from={iso(L(6))}&to={iso(L(14))}").get_json()
    assert [x["line"] for x in body["lines"]] == ["LINE-1", "LINE-2"]
    assert body["lines"][0]["oee_target"] == "0.8" and body["lines"][1]["oee_target"] is None
    r = sup.post("/api/v1/oee/shifts/close", {"line": "LINE-1", "shift_start": iso(L(6))})
    assert r.status_code == 201 and r.get_json()["closure"]["figures"]["shift_name"] == "early"
    r = sup.post("/api/v1/oee/shifts/close", {"line": "LINE-1", "shift_start": iso(L(6))})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    r = sup.post("/api/v1/oee/shifts/close-due", {})
    assert r.status_code == 201 and {c["line"] for c in r.get_json()["closed"]} == {"LINE-1", "LINE-2"}
    assert sup.post("/api/v1/oee/shifts/close-due", {}).get_json()["closed"] == []
    qa = logged_in(app.test_client(), seeded, "qa")
    assert qa.post("/api/v1/oee/shifts/close", {"line": "LINE-1", "shift_start": iso(L(14))}).status_code == 403
