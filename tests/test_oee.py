"""OEE per line, shift and product: a scripted day on LINE-1 computed by hand, counter
resets, downtime reasons, a product change mid-shift, DST days, bad input, append-only
records, and the /qa/oee page for the right roles only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from mes.audit.log import Actor
from mes.audit.models import AuditEntry
from mes.db import db
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.oee import operations as ops
from mes.oee.models import CounterSample, LineStateInterval
from tests.execution_helpers import PACK_RECIPE, effective_recipe, make_world, start
from tests.helpers import logged_in, seed

ZURICH = ZoneInfo("Europe/Zurich")
GATEWAY = Actor.system("gateway")
PACK = "FG-PCM500-PACK"
BLISTER = "FG-PCM500-BLISTER"
BLISTER_RECIPE = PACK_RECIPE.replace("MR-PCM500-PACK", "MR-PCM500-BLISTER").replace(PACK, BLISTER)


def L(hour: int, minute: int = 0, day: int = 2, month: int = 3) -> datetime:
    """A plant time (Europe/Zurich) on the scripted day, 2026-03-02 (CET, UTC+1)."""
    return datetime(2026, month, day, hour, minute, tzinfo=ZURICH)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def sample(at: datetime, state: str | None, processed: int | None = None, defective: int | None = None,
           reason: str | None = None, line: str = "LINE-1") -> None:
    ops.record_line_sample(GATEWAY, line, at=at, state=state, processed=processed, defective=defective,
                           stop_reason=reason, source="opc.tcp://127.0.0.1:4840/line-1")


def plant(app: Flask) -> None:
    app.config["MES_TIMEZONE"] = "Europe/Zurich"
    app.config["MES_SHIFTS"] = "early=06:00,late=14:00,night=22:00"


def scripted_day(app: Flask, monkeypatch: Any) -> Any:
    """LINE-1 on 2026-03-02, early and late shift (06:00-22:00 plant time).

    ===== ======================================================== =================
    time  the line                                                 counters p / d
    ===== ======================================================== =================
    05:30 batch A (FG-PCM500-PACK, ideal 10/min) starts
    06:00 Execute                                                  1000 / 10 (baseline)
    08:00 Held, code 101 (supervisor: "jam at labeller")           2080 / 37
    08:30 Execute after a restart: the counters were reset          0 / 0
    10:00 batch B (FG-PCM500-BLISTER, ideal 20/min) starts          900 / 9
    12:00 Stopped (supervisor: "lunch break", planned)             3060 / 33
    12:30 Execute
    14:00 (shift change)                                           4680 / 51
    16:00 Suspended, code "starved" (no reason assigned)           6840 / 51
    16:20 Execute
    18:00 Stopped (supervisor: "no order", planned)                8640 / 71
    20:00 Undefined: the line does not know its state (no data)
    ===== ======================================================== =================
    """
    plant(app)
    world = make_world(monkeypatch)
    pack_rv = effective_recipe(world, PACK_RECIPE, "pack.yaml")
    blister_rv = effective_recipe(world, BLISTER_RECIPE, "blister.yaml")
    world.clock.now = L(5, 30).astimezone(UTC)
    start(world, pack_rv, "10", "kg")
    world.clock.now = L(10).astimezone(UTC)
    start(world, blister_rv, "10", "kg")
    sup = world.actor("supervisor")
    ops.set_ideal_rate(sup, "LINE-1", "5", product=PACK, effective_from=L(0, day=1))  # superseded next day
    ops.set_ideal_rate(sup, "LINE-1", "10", product=PACK, effective_from=L(0))
    ops.set_ideal_rate(sup, "LINE-1", "20", product=BLISTER, effective_from=L(0))
    sample(L(6), "Execute", 1000, 10)
    sample(L(8), "Held", 2080, 37, reason="101")
    sample(L(8, 30), "execute", 0, 0)  # names in any case
    sample(L(10), None, 900, 9)
    sample(L(12), "Stopped", 3060, 33)
    sample(L(12, 30), "6")  # PackTags state number 6 = Execute
    sample(L(14), None, 4680, 51)
    sample(L(16), "Suspended", 6840, 51, reason="starved")
    sample(L(16, 20), "Execute")
    sample(L(18), "Stopped", 8640, 71)
    sample(L(20), "Undefined")
    return world


def stop_at(when: datetime) -> dict[str, Any]:
    stops = ops.stops("LINE-1", L(6), L(22))
    return next(s for s in stops if s["started_at"] == iso(when))


def figures(g: dict[str, Any]) -> tuple[Any, ...]:
    return (g["planned_production_s"], g["run_s"], g["downtime_s"], g["planned_stop_s"], g["no_data_s"],
            g["total_count"], g["good_count"], g["availability"], g["performance"], g["quality"], g["oee"])


def test_scripted_day_by_shift_and_by_product(app: Flask, monkeypatch: Any) -> None:
    world = scripted_day(app, monkeypatch)
    seeded = world.seeded
    sup = logged_in(app.test_client(), seeded, "supervisor")
    stops = sup.get(f"/api/v1/oee/stops?line=LINE-1&from={iso(L(6))}&to={iso(L(22))}").get_json()["stops"]
    assert [(s["state"], s["stop_reason"]) for s in stops] == [
        ("Held", "101"), ("Stopped", None), ("Suspended", "starved"), ("Stopped", None)]
    jam, lunch, _, no_order = (s["id"] for s in stops)
    # a reason is assigned afterwards and may be reassigned: the latest counts, both stay on record
    r = sup.post(f"/api/v1/oee/stops/{jam}/reason", {"reason": "changeover"})
    assert r.status_code == 201
    r = sup.post(f"/api/v1/oee/stops/{jam}/reason", {"reason": "jam at labeller", "comment": "label web torn"})
    assert r.status_code == 201 and r.get_json()["downtime_reason"]["reason"] == "jam at labeller"
    assert sup.post(f"/api/v1/oee/stops/{lunch}/reason", {"reason": "lunch break", "planned": True}).status_code == 201
    assert sup.post(f"/api/v1/oee/stops/{no_order}/reason", {"reason": "no order", "planned": True}).status_code == 201
    entries = db.session.execute(select(AuditEntry).where(AuditEntry.action == "oee.downtime_reason_assigned")
                                 .order_by(AuditEntry.seq)).scalars().all()
    assert len(entries) == 4
    second = json.loads(entries[1].entry_bytes)
    assert second["before"] == {"reason": "changeover", "planned": False}
    assert second["after"]["reason"] == "jam at labeller"
    assert second["reason"] == "reason reassigned" and second["actor"]["role"] == "supervisor"

    r = sup.get(f"/api/v1/oee?line=LINE-1&from={iso(L(6))}&to={iso(L(22))}&group=shift")
    assert r.status_code == 200
    body = r.get_json()
    early, late = body["groups"]
    assert early["shift"]["name"] == "early" and early["shift"]["start"] == "2026-03-02T05:00:00.000000Z"
    assert late["shift"]["name"] == "late" and late["shift"]["end"] == "2026-03-02T21:00:00.000000Z"
    # early: 480 min known, 30 planned stop (lunch) -> 450 planned; run 120 + 210 + 90 = 420; jam 30.
    # counts 1080 + 0 (reset) + 900 + 2160 + 1620 = 5760, defective 27 + 0 + 9 + 24 + 18 = 78.
    # ideal minutes: pack 1080/10 + 900/10 = 198, blister 2160/20 + 1620/20 = 189 -> 387.
    # A = 420/450, P = 387/420, Q = 5682/5760, OEE = 387/450 * 5682/5760 = 0.848354…
    assert figures(early) == ("27000", "25200", "1800", "1800", "0", 5760, 5682,
                              "0.9333", "0.9214", "0.9865", "0.8484")
    assert early["counter_resets"] == 1 and early["ideal_run_s"] == str(387 * 60)
    assert early["downtime_by_reason"] == [
        {"reason": "jam at labeller", "category": "unclassified", "planned": False, "seconds": "1800", "stops": 1},
        {"reason": "lunch break", "category": "planned_break", "planned": True, "seconds": "1800", "stops": 1}]
    # one unplanned stop (the jam) in 420 min of run: MTBF 420 min, MTTR 30 min
    assert (early["stops"], early["mtbf_s"], early["mttr_s"]) == (1, "25200", "1800")
    # late: 14:00-20:00 known (360), 18:00-20:00 no order (planned, 120), 20:00-22:00 no data (120);
    # planned 240, run 120 + 100 = 220, starved 20 unassigned; counts 2160 + 1800, defective 0 + 20;
    # ideal 108 + 90 = 198 min. A = 220/240, P = 198/220, Q = 3940/3960.
    assert figures(late) == ("14400", "13200", "1200", "7200", "7200", 3960, 3940,
                             "0.9167", "0.9000", "0.9949", "0.8208")
    assert late["downtime_by_reason"] == [
        {"reason": "no order", "category": "planned_break", "planned": True, "seconds": "7200", "stops": 1},
        {"reason": "unassigned (Suspended starved)", "category": "unclassified", "planned": False,
         "seconds": "1200", "stops": 1}]
    # the whole range: planned 690, run 640, ideal 585, counts 9720, defective 98
    assert figures(body["total"]) == ("41400", "38400", "3000", "9000", "7200", 9720, 9622,
                                      "0.9275", "0.9141", "0.9899", "0.8393")
    oee_exact = Decimal(585) / 690 * Decimal(9622) / 9720
    assert body["total"]["oee"] == str(oee_exact.quantize(Decimal("0.0001")))

    # by product: A (pack) until batch B starts at 10:00; the counter sample at exactly 10:00
    # reports the units made up to 10:00, so it is still the pack's
    body = sup.get(f"/api/v1/oee?line=LINE-1&from={iso(L(6))}&to={iso(L(22))}&group=product").get_json()
    by = {g["product"]: g for g in body["groups"]}
    assert list(by) == [PACK, BLISTER]
    # pack: 06:00-10:00, run 120 + 90, jam 30; 1980 units (36 defective), ideal 198 min
    assert figures(by[PACK]) == ("14400", "12600", "1800", "0", "0", 1980, 1944, "0.8750", "0.9429", "0.9818", "0.8100")
    # blister: 10:00-22:00, planned 600 - 150 = 450, run 430, starved 20; 7740 units (62), ideal 387 min
    assert figures(by[BLISTER]) == ("27000", "25800", "1200", "9000", "7200", 7740, 7678,
                                    "0.9556", "0.9000", "0.9920", "0.8531")

    # the page shows the same figures with two charts and no script
    page = sup.get("/qa/oee?line=LINE-1&from=2026-03-02T06:00&to=2026-03-02T22:00")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "text/html" in page.content_type
    assert html.count("<svg") == 4 and "<script" not in html and "style=" not in html
    assert "83.9 %" in html and "84.8 %" in html and "jam at labeller" in html and "2026-03-02 late" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_counter_resets_and_sample_records(app: Flask) -> None:
    sample(L(6), "Execute", 500, 5)
    sample(L(7), None, 800, 6)
    sample(L(7, 30), None, 120, None)  # the line restarted: 120 made since; defective not reported
    sample(L(8), None, 150, 2)  # defective: first value after 6 went down to 2 -> reset
    rows = db.session.execute(select(CounterSample).order_by(CounterSample.seq)).scalars().all()
    assert [(r.processed_delta, r.defective_delta, r.processed_reset, r.defective_reset) for r in rows] == [
        (0, 0, False, False), (300, 1, False, False), (120, 0, True, False), (30, 2, False, True)]
    # a repeated state and no counters records nothing; each sample that records is one audit entry
    before = db.session.execute(select(func.count()).select_from(AuditEntry)).scalar()
    sample(L(8, 10), "Execute")
    assert db.session.execute(select(func.count()).select_from(LineStateInterval)).scalar() == 1
    assert db.session.execute(select(func.count()).select_from(AuditEntry)).scalar() == before
    sample(L(8, 20), "Held", reason="7")
    sample(L(8, 25), "Held", reason="8")  # a new stop code in the same state: a new interval
    assert db.session.execute(select(func.count()).select_from(LineStateInterval)).scalar() == 3
    entry = db.session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar()
    assert entry.action == "oee.line_sample_recorded" and entry.entity_type == "line" and entry.entity_id == "LINE-1"
    assert json.loads(entry.entry_bytes)["after"]["interval"]["stop_reason"] == "8"
    result = ops.oee("LINE-1", L(6), L(9), "shift")
    assert result["total"]["total_count"] == 450 and result["total"]["defective_count"] == 3
    assert result["total"]["counter_resets"] == 2


def test_records_are_append_only(app: Flask) -> None:
    sample(L(6), "Held", 10, 0, reason="1")
    stop = ops.stops("LINE-1", L(5), L(7))[0]
    ops.assign_downtime_reason(GATEWAY, stop["id"], "jam")
    ops.set_ideal_rate(GATEWAY, "LINE-1", "12.5")
    for statement in ("UPDATE oee_state_intervals SET state = 'Execute'", "DELETE FROM oee_state_intervals",
                      "UPDATE oee_counter_samples SET processed_delta = 0", "DELETE FROM oee_counter_samples",
                      "UPDATE oee_downtime_reasons SET planned = true", "DELETE FROM oee_downtime_reasons",
                      "UPDATE oee_ideal_rates SET comment = 'x'", "DELETE FROM oee_ideal_rates"):
        with pytest.raises(DatabaseError, match="refused|never"):
            with db.engine.begin() as conn:
                conn.execute(text(statement))


def test_shifts_on_dst_days(app: Flask) -> None:
    plant(app)
    # spring forward (2026-03-29 02:00 CET -> 03:00 CEST): the night shift is 7 h
    night = [s for s in ops.shifts_between(L(23, day=28), L(5, day=29)) if s.name == "night"]
    assert len(night) == 1 and night[0].day.isoformat() == "2026-03-28"
    assert night[0].end - night[0].start == timedelta(hours=7)
    # fall back (2026-10-25 03:00 CEST -> 02:00 CET): the night shift is 9 h
    night = [s for s in ops.shifts_between(L(23, day=24, month=10), L(5, day=25, month=10)) if s.name == "night"]
    assert len(night) == 1 and night[0].end - night[0].start == timedelta(hours=9)
    assert night[0].start == datetime(2026, 10, 24, 20, tzinfo=UTC)
    # a start time that does not exist that night (02:30) is taken an hour later, 03:30 CEST
    app.config["MES_SHIFTS"] = "02:30,14:30"
    first = [s for s in ops.shifts_between(L(0, day=29), L(23, day=29)) if s.day.isoformat() == "2026-03-29"][0]
    assert first.name == "Shift 1" and first.start == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)

    # OEE over the short night: running all night, 7 h planned, 7 h run
    app.config["MES_SHIFTS"] = "early=06:00,late=14:00,night=22:00"
    ops.set_ideal_rate(GATEWAY, "LINE-1", "2", effective_from=L(0, day=28))  # any product: no batch here
    sample(L(21, day=28), "Execute", 0, 0)
    sample(L(6, day=29), None, 700, 7)  # 07:00 of run at 2/min would be 840
    result = ops.oee("LINE-1", L(22, day=28), L(6, day=29), "shift")
    (g,) = result["groups"]
    assert g["shift"]["length_s"] == "25200" and g["shift"]["start_local"] == "2026-03-28T22:00:00+01:00"
    assert g["shift"]["end_local"] == "2026-03-29T06:00:00+02:00"
    assert figures(g) == ("25200", "25200", "0", "0", "0", 700, 693, "1.0000", "0.8333", "0.9900", "0.8250")


def test_bad_input_is_refused_with_reasons(app: Flask) -> None:
    seeded = seed()
    with pytest.raises(ValidationFailed, match="PackML"):
        sample(L(6), "Running")
    with pytest.raises(ValidationFailed, match="whole number"):
        sample(L(6), None, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed, match="between"):
        sample(L(6), None, -1)
    with pytest.raises(ValidationFailed, match="time zone"):
        sample(datetime(2026, 3, 2, 6), "Execute")
    with pytest.raises(ValidationFailed, match="future"):
        sample(datetime.now(UTC) + timedelta(hours=1), "Execute")
    with pytest.raises(ValidationFailed, match="state or a counter"):
        sample(L(6), None)
    with pytest.raises(ValidationFailed, match="line id"):
        sample(L(6), "Execute", line="LINE 1")
    sample(L(6), "Execute", 10, 0)
    with pytest.raises(Conflict, match="older"):
        sample(L(5), "Held")
    with pytest.raises(Conflict, match="older"):
        sample(L(5), None, 20, 0)
    execute = ops.stops("LINE-1", L(5), L(7))
    assert execute == []  # running is not a stop
    interval = db.session.execute(select(LineStateInterval)).scalar_one()
    with pytest.raises(Conflict, match="running"):
        ops.assign_downtime_reason(GATEWAY, interval.id, "jam")
    with pytest.raises(NotFound):
        ops.assign_downtime_reason(GATEWAY, "no-such-interval", "jam")
    with pytest.raises(ValidationFailed, match="float"):
        ops.set_ideal_rate(GATEWAY, "LINE-1", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed, match="more than zero"):
        ops.set_ideal_rate(GATEWAY, "LINE-1", "0")
    with pytest.raises(ValidationFailed, match="decimal places"):
        ops.set_ideal_rate(GATEWAY, "LINE-1", "1.0000001")

    qa = logged_in(app.test_client(), seeded, "qa")
    base = f"/api/v1/oee?line=LINE-1&from={iso(L(6))}&to={iso(L(8))}"
    for url, field in [
        (f"/api/v1/oee?from={iso(L(6))}&to={iso(L(8))}", "line"),
        (f"/api/v1/oee?line=LINE-1&to={iso(L(8))}", "from"),
        (f"/api/v1/oee?line=LINE-1&from=yesterday&to={iso(L(8))}", "from"),
        (f"/api/v1/oee?line=LINE-1&from=2026-03-02T06:00:00&to={iso(L(8))}", "from"),
        (f"/api/v1/oee?line=LINE-1&from={iso(L(8))}&to={iso(L(6))}", "to"),
        (f"/api/v1/oee?line=LINE-1&from=2025-01-01T00:00:00Z&to={iso(L(8))}", "to"),
        (base + "&group=month", "group"),
        (f"/api/v1/oee?line=LINE%201&from={iso(L(6))}&to={iso(L(8))}", "line"),
    ]:
        r = qa.get(url)
        assert r.status_code == 422 and r.mimetype == "application/problem+json", (url, r.get_json())
        assert r.get_json()["field"] == field, url
    r = qa.get(f"/api/v1/oee?line=LINE-9&from={iso(L(6))}&to={iso(L(8))}")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    assert qa.get(base).status_code == 200
    # QA may look, not configure
    r = qa.post("/api/v1/oee/rates", {"line": "LINE-1", "units_per_minute": "10"})
    assert r.status_code == 403
    sup = logged_in(app.test_client(), seeded, "supervisor")
    r = sup.post("/api/v1/oee/rates", {"line": "LINE-1", "units_per_minute": 10})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = sup.post("/api/v1/oee/rates", {"line": "LINE-1", "units_per_minute": "10", "product": PACK,
                                       "effective_from": iso(L(0))})
    assert r.status_code == 201 and r.get_json()["rate"]["ideal_rate"] == {"value": "10", "uom": "units/min"}
    assert sup.get("/api/v1/oee/rates?line=LINE-1").get_json()["rates"][0]["product"] == PACK
    r = sup.post(f"/api/v1/oee/stops/{interval.id}/reason", {"reason": "jam"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    # a bad range on the page is a plain sentence on the page itself
    page = sup.get("/qa/oee?line=LINE-1&from=2026-03-02T08:00&to=2026-03-02T06:00")
    assert page.status_code == 422 and "to must be after from" in page.get_data(as_text=True)


@pytest.mark.parametrize("role,allowed", [("supervisor", True), ("qa", True), ("operator", False),
                                          ("admin", False), ("integrator", False)])
def test_page_for_the_right_roles_only(app: Flask, role: str, allowed: bool) -> None:
    seeded = seed()
    sample(L(6), "Execute", 0, 0)
    sample(L(7), "Held", 60, 1, reason="12")
    s = logged_in(app.test_client(), seeded, role)
    r = s.get("/qa/oee?line=LINE-1&from=2026-03-02T06:00&to=2026-03-02T08:00")
    if allowed:
        assert r.status_code == 200 and "<svg" in r.get_data(as_text=True)
        assert "unassigned (Held 12)" in r.get_data(as_text=True)
        assert s.get("/qa/oee").status_code == 200  # defaults: the first line, yesterday and today
    else:
        assert r.status_code == 403 and "may not" in r.get_data(as_text=True)
        assert s.get(f"/api/v1/oee?line=LINE-1&from={iso(L(6))}&to={iso(L(8))}").status_code == 403
    anonymous = app.test_client().get("/qa/oee")
    assert anonymous.status_code == 302 and "/qa/login" in anonymous.headers["Location"]


def test_shift_setting_is_checked(tmp_path: Any) -> None:
    from mes.config import ConfigError, load_config

    env = {"MES_HOME": str(tmp_path), "MES_SECRET_KEY": "k"}
    assert load_config({**env, "MES_SHIFTS": "early=06:00, late=14:00,22:00"})["MES_SHIFTS"] == (
        ("early", 360), ("late", 840), ("Shift 3", 1320))
    for bad in ("6am", "06:00,25:00", "14:00,06:00", "06:00,06:00", "06:00,"):
        with pytest.raises(ConfigError, match="MES_SHIFTS"):
            load_config({**env, "MES_SHIFTS": bad})


def test_a_refused_sample_leaves_the_line_writable(app: Flask) -> None:
    sample(L(6), "Execute", 10, 0)
    with pytest.raises(Conflict):
        sample(L(5), "Held")
    assert not db.session().in_transaction()  # the refusal rolled back: no lock is kept
    sample(L(7), "Held", 20, 1, reason=101)  # type: ignore[arg-type]  (a numeric code is kept as text)
    (stop,) = ops.stops("LINE-1", L(6), L(8))
    assert stop["stop_reason"] == "101" and stop["ended_at"] is None
