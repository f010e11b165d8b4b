"""OEE plant rules, one test each: QA-rejected batches count as defective, an unclassified
short stop is a minor stop, a reason code's category decides whether it is planned, a PLC
code means one reason, calendars are checked, and a shift's figures close once with their
outbox event. Every change here is audited with its event in the same transaction."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.models import AuditEntry
from mes.db import db
from mes.errors import Conflict, ValidationFailed
from mes.execution import operations as ex
from mes.integration.models import OutboxEvent
from mes.oee import operations as ops
from tests.execution_helpers import PACK_RECIPE, effective_recipe, make_world, start
from tests.test_oee import GATEWAY, PACK, L, plant, sample


def events(kind: str) -> list[dict[str, Any]]:
    rows = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == kind)
                              .order_by(OutboxEvent.audit_seq)).scalars()
    return [json.loads(r.body) for r in rows]


def test_units_of_a_batch_qa_rejected_are_defective(app: Flask, monkeypatch: Any) -> None:
    plant(app)
    world = make_world(monkeypatch)
    rv = effective_recipe(world, PACK_RECIPE, "pack.yaml")
    world.clock.now = L(5, 30)
    batch = start(world, rv, "10", "kg")
    ops.set_ideal_rate(GATEWAY, "LINE-1", "10", product=PACK, effective_from=L(0))
    sample(L(6), "Execute", 0, 0)
    sample(L(7), None, 600, 6)
    world.clock.now = L(7)
    ex.release_batch(world.sessions["qa"], world.creds("qa"), batch, "rejected", terminal="QA-WS-01",
                     comment="contaminated")
    total = ops.oee("LINE-1", L(6), L(7))["total"]
    # 600 units, the line counted 6 bad and QA rejected the other 594: quality 0, OEE 0
    assert (total["total_count"], total["defective_count"], total["qa_rejected_count"]) == (600, 600, 594)
    assert (total["quality"], total["oee"], total["production_rejects"]) == ("0.0000", "0.0000", 6)


def test_an_unclassified_short_stop_is_a_minor_stop(app: Flask) -> None:
    plant(app)
    ops.set_line_calendar(GATEWAY, "LINE-1", shifts={d: ["early", "late", "night"] for d in
                                                     ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
                          minor_stop_s=120, effective_from=L(0))
    sample(L(6), "Execute", 0, 0)
    sample(L(6, 10), "Suspended", reason="starved")  # 59 s: a minor stop
    sample(L(6, 10).replace(second=59), "Execute")
    sample(L(6, 12), "Suspended", reason="starved")  # 3 min: unassigned
    sample(L(6, 15), "Execute")
    minor, long = ops.stops("LINE-1", L(6), L(7))
    assert minor["classification"]["category"] == "minor_stop"
    assert long["classification"] == {"label": "unassigned (Suspended starved)", "category": "unclassified",
                                      "planned": False, "source": "unassigned"}
    total = ops.oee("LINE-1", L(6), L(7))["total"]
    assert total["losses_s"]["minor_stop"] == "59" and total["losses_s"]["unclassified"] == "180"
    assert total["stops_by_reason"][0] == {"reason": "Minor stop", "category": "minor_stop", "planned": False,
                                           "stops": 1}


def test_a_reason_codes_category_decides_whether_it_is_planned(app: Flask) -> None:
    sample(L(6), "Held", reason="7")
    (stop,) = ops.stops("LINE-1", L(5), L(7))
    with pytest.raises(ValidationFailed, match="category decides"):
        ops.assign_downtime_reason(GATEWAY, stop["id"], "breakdown", planned=True)
    row = ops.assign_downtime_reason(GATEWAY, stop["id"], "maintenance")
    assert row.planned is True
    (event,) = events("mes.oee.stop_classified.v1")
    assert event["subject"] == "line/LINE-1" and event["data"]["category"] == "planned_maintenance"
    entry = db.session.execute(select(AuditEntry).where(AuditEntry.action == "oee.downtime_reason_assigned")
                               ).scalar_one()
    assert json.loads(entry.entry_bytes)["after"]["states"] == ["Held"]


def test_a_plc_stop_code_means_one_reason(app: Flask) -> None:
    ops.define_reason(GATEWAY, "jam", "Jam at labeller", "minor_stop", plc_codes=["101", 102])
    tree = {r["category"]: r["reasons"] for r in ops.tree_json(ops.reason_tree())}
    assert [r["code"] for r in tree["minor_stop"]] == ["jam", "minor_stop"]  # the defaults stay
    assert tree["minor_stop"][0]["plc_codes"] == ["101", "102"]
    with pytest.raises(ValidationFailed, match="already means reason jam"):
        ops.define_reason(GATEWAY, "drive", "Drive fault", "breakdown", plc_codes=["101"])
    with pytest.raises(ValidationFailed, match="category"):
        ops.define_reason(GATEWAY, "slow", "Slow", "speed_loss")
    ops.define_reason(GATEWAY, "jam", "Jam at labeller", "minor_stop", active=False)
    assert "jam" not in ops.reason_tree()
    assert len(events("mes.oee.reason_defined.v1")) == 2


def test_a_calendar_names_the_plants_shifts(app: Flask) -> None:
    plant(app)
    with pytest.raises(ValidationFailed, match="names of the plant's shifts"):
        ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"mon": ["day"]})
    with pytest.raises(ValidationFailed, match="weekdays"):
        ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"monday": ["early"]})
    with pytest.raises(ValidationFailed, match="not a date"):
        ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"mon": ["early"]}, holidays=["25.12.2026"])
    with pytest.raises(ValidationFailed, match="OEE target"):
        ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"mon": ["early"]}, oee_target="85")
    with pytest.raises(ValidationFailed, match="ends after"):
        ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"mon": ["early"]},
                              maintenance=[{"from": "2026-03-02T10:00:00Z", "to": "2026-03-02T09:00:00Z"}])
    row = ops.set_line_calendar(GATEWAY, "LINE-1", shifts={"mon": ["early"]}, holidays=["2026-12-25"],
                                maintenance=[{"from": "2026-03-02T09:00:00Z", "to": "2026-03-02T10:00:00Z",
                                              "note": "lubrication"}], effective_from=L(0))
    assert ops.calendar_json(row)["shifts"]["tue"] == []
    # a stop in the maintenance window is planned, counted under the window's note
    sample(L(9), "Stopped")
    sample(L(11), "Execute")
    total = ops.oee("LINE-1", L(9), L(12))["total"]
    assert (total["planned_stop_s"], total["downtime_s"]) == ("3600", "3600")
    assert total["downtime_by_reason"][0]["reason"] == "lubrication"
    (event,) = events("mes.oee.line_calendar_set.v1")
    assert event["data"]["holidays"] == ["2026-12-25"]


def test_a_shift_closes_once_with_its_figures_event(app: Flask) -> None:
    plant(app)
    ops.set_ideal_rate(GATEWAY, "LINE-1", "10", effective_from=L(0))
    sample(L(6), "Execute", 0, 0)
    sample(L(13), "Held", 4200, 42)
    ops.close_shift(GATEWAY, "LINE-1", L(6))
    with pytest.raises(Conflict, match="already closed"):
        ops.close_shift(GATEWAY, "LINE-1", L(6))
    with pytest.raises(ValidationFailed, match="No shift starts"):
        ops.close_shift(GATEWAY, "LINE-1", L(7))
    (event,) = events("mes.oee.shift_closed.v1")
    data = event["data"]
    assert event["subject"] == "line/LINE-1" and event["time"] == "2026-03-02T13:00:00.000000Z"
    # early: run 420 of 480 min, 4200 units = 420 ideal min, 42 bad: A = 0.875, P = 1, Q = 0.99,
    # OEE = 0.86625, to four places half-even: 0.8662
    assert (data["shift_name"], data["availability"], data["performance"], data["quality"], data["oee"]) == (
        "early", "0.8750", "1.0000", "0.9900", "0.8662")
    due = ops.close_shifts_due(GATEWAY)
    assert due and ops.close_shifts_due(GATEWAY) == []
    # the payload follows the schema the MES serves for the type (named in its dataschema)
    schema = app.test_client().get("/integration/v1/schemas/mes.oee.shift_closed.v1.json")
    assert schema.status_code == 200 and event["dataschema"] == "/integration/v1/schemas/mes.oee.shift_closed.v1.json"
    for sent in events("mes.oee.shift_closed.v1"):
        errors = [e.message for e in jsonschema.Draft202012Validator(schema.get_json()).iter_errors(sent["data"])]
        assert errors == [], errors


def test_rework_is_counted_apart_from_scrap(app: Flask) -> None:
    plant(app)
    ops.set_ideal_rate(GATEWAY, "LINE-1", "10", effective_from=L(0))
    ops.record_line_sample(GATEWAY, "LINE-1", at=L(6), state="Execute", processed=0, defective=0, reworked=0,
                           source="opc.tcp://127.0.0.1:4840/line-1")
    ops.record_line_sample(GATEWAY, "LINE-1", at=L(7), state=None, processed=600, defective=6, reworked=12,
                           source="opc.tcp://127.0.0.1:4840/line-1")
    with pytest.raises(ValidationFailed, match="comes with"):
        ops.record_line_sample(GATEWAY, "LINE-1", at=L(7, 1), state=None, processed=None, defective=None,
                               reworked=13, source="opc.tcp://127.0.0.1:4840/line-1")
    total = ops.oee("LINE-1", L(6), L(7))["total"]
    # 600 made, 6 scrapped, 12 to rework: good at first pass 582, Q = 0.97, OEE = 1 × 1 × 0.97
    assert (total["defective_count"], total["reworked_count"], total["good_count"]) == (6, 12, 582)
    assert (total["quality"], total["oee"]) == ("0.9700", "0.9700")
