"""Lot genealogy: API lot -> blend intermediate -> tablets, traced backward and forward with
quantities and batches; the depth limit and cycle guard; ``mes trace``; the trace bench."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import insert

from mes.audit.log import Actor
from mes.db import db, utcnow
from mes.errors import Conflict, NotFound, ValidationFailed
from mes.materials import operations as ops
from mes.materials.cli import register_cli, render_tree
from mes.materials.models import GenealogyLink, Lot
from tests.conftest import BACKENDS
from tests.helpers import logged_in, release_lot_as_qa, seed

QA = Actor("qa1", "QA One", "qa", "QA-WS-01")
SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
OP = Actor("operator1", "Operator One", "operator", "KIOSK-01")
ROOT = Path(__file__).resolve().parents[1]


def _receive(lot_id: str, item: str, qty: str, uom: str = "kg") -> None:
    ops.receive_lot(SUP, item, [ops.ContainerIn(qty, uom, f"{lot_id}-C1")], lot_id=lot_id)
    release_lot_as_qa(lot_id, "CoA reviewed")


def build_two_levels() -> dict[str, str]:
    """API + excipient -> blend (batch B-BLEND) -> two tablet lots (B-TAB-1, B-TAB-2)."""
    ops.create_item(SUP, "API-PARA", "Paracetamol", "kg", "api")
    ops.create_item(SUP, "EXC-MCC", "Microcrystalline cellulose", "kg", "excipient")
    ops.create_item(SUP, "INT-BLEND", "Paracetamol blend", "kg", "intermediate", shelf_life_days=90)
    ops.create_item(SUP, "FG-TAB", "Paracetamol 500 mg tablets", "pcs", "finished_good", shelf_life_days=1095)
    _receive("L-API", "API-PARA", "100")
    _receive("L-MCC", "EXC-MCC", "50")
    # the blend: API in two dispensings (25 kg + 15000 g), MCC once, and one weighing reversed
    ops.consume(OP, "L-API", "L-API-C1", "25", "kg", "B-BLEND", "S-1", "WO-1")
    ops.consume(OP, "L-API", "L-API-C1", "15000", "g", "B-BLEND", "S-1", "WO-1")
    wrong = ops.consume(OP, "L-MCC", "L-MCC-C1", "12", "kg", "B-BLEND", "S-2", "WO-1")
    ops.reverse_consumption(SUP, wrong.id, "Wrong target weight entered")
    ops.consume(OP, "L-MCC", "L-MCC-C1", "10", "kg", "B-BLEND", "S-2", "WO-1")
    blend = ops.produce(SUP, "INT-BLEND", "L-BLEND", "49.8", "kg", "B-BLEND", work_order_id="WO-1")
    assert blend.status == "quarantine" and blend.produced_by_batch == "B-BLEND"
    release_lot_as_qa("L-BLEND", "Blend uniformity passed")
    ops.consume(OP, "L-BLEND", "L-BLEND-C001", "20", "kg", "B-TAB-1", "S-1", "WO-2")
    ops.produce(SUP, "FG-TAB", "L-TAB-1", "40000", "pcs", "B-TAB-1", work_order_id="WO-2")
    ops.consume(OP, "L-BLEND", "L-BLEND-C001", "29.8", "kg", "B-TAB-2", "S-1", "WO-3")
    ops.produce(SUP, "FG-TAB", "L-TAB-2", "59600", "pcs", "B-TAB-2", work_order_id="WO-3")
    return {"api": "L-API", "blend": "L-BLEND"}


def _links(trace: ops.Trace) -> list[tuple[str, str, str, Decimal, str]]:
    return [(link.parent_lot_id, link.child_lot_id, link.batch_id, link.qty, link.uom) for link in trace.links]


def test_two_level_genealogy_backward_and_forward_with_quantities(app: Flask) -> None:
    build_two_levels()
    back = ops.trace_backward("L-TAB-1")
    assert back.root.lot_id == "L-TAB-1" and not back.truncated
    assert {lot_id: (lot.item_code, lot.depth) for lot_id, lot in back.lots.items()} == {
        "L-TAB-1": ("FG-TAB", 0), "L-BLEND": ("INT-BLEND", 1), "L-API": ("API-PARA", 2), "L-MCC": ("EXC-MCC", 2)}
    assert _links(back) == [
        ("L-BLEND", "L-TAB-1", "B-TAB-1", Decimal("20"), "kg"),
        ("L-API", "L-BLEND", "B-BLEND", Decimal("40000"), "g"),  # 25 kg + 15000 g, summed exactly in g
        ("L-MCC", "L-BLEND", "B-BLEND", Decimal("10"), "kg"),  # the reversed 12 kg is not in it
    ]
    fwd = ops.trace_forward("L-API")
    assert {lot_id: lot.depth for lot_id, lot in fwd.lots.items()} == {"L-API": 0, "L-BLEND": 1, "L-TAB-1": 2,
                                                                        "L-TAB-2": 2}
    assert _links(fwd) == [
        ("L-API", "L-BLEND", "B-BLEND", Decimal("40000"), "g"),
        ("L-BLEND", "L-TAB-1", "B-TAB-1", Decimal("20"), "kg"),
        ("L-BLEND", "L-TAB-2", "B-TAB-2", Decimal("29.8"), "kg"),
    ]
    tree = fwd.tree()
    assert tree["lot_id"] == "L-API" and [c["lot_id"] for c in tree["children"]] == ["L-BLEND"]
    blend = tree["children"][0]
    assert blend["qty"] == {"value": "40000", "uom": "g"} and blend["batch_id"] == "B-BLEND"
    assert [(c["lot_id"], c["qty"]["value"], c["batch_id"]) for c in blend["children"]] == [
        ("L-TAB-1", "20", "B-TAB-1"), ("L-TAB-2", "29.8", "B-TAB-2")]
    # the produced lots are in quarantine, with dates from the item's shelf life
    tab = db.session.get(Lot, "L-TAB-1")
    assert tab.status == "quarantine" and tab.expiry_date is not None
    assert ops.lot_remaining("L-TAB-1") == (Decimal(40000), "pcs")
    assert ops.lot_remaining("L-BLEND") == (Decimal(0), "kg")
    # a lot with no genealogy traces to itself only; an unknown lot is 404
    assert list(ops.trace_backward("L-API").lots) == ["L-API"] and ops.trace_backward("L-API").links == []
    with pytest.raises(NotFound):
        ops.trace_forward("L-NOPE")


def test_production_rules(app: Flask) -> None:
    build_two_levels()
    with pytest.raises(Conflict, match="exists already"):
        ops.produce(SUP, "FG-TAB", "L-TAB-1", "1", "pcs", "B-TAB-1")
    with pytest.raises(ValidationFailed, match="no recorded consumptions"):
        ops.produce(SUP, "FG-TAB", "L-TAB-9", "1", "pcs", "B-EMPTY")
    with pytest.raises(ValidationFailed, match="different kind of unit"):
        ops.produce(SUP, "FG-TAB", "L-TAB-9", "1", "kg", "B-TAB-1")
    with pytest.raises(ValidationFailed, match="not live consumptions"):
        ops.produce(SUP, "FG-TAB", "L-TAB-9", "1", "pcs", "B-TAB-1", consumption_ids=["nope"])
    # once a batch produced a lot from a consumption, the consumption is part of the record
    used = ops.consumptions(batch_id="B-TAB-1")[0]
    with pytest.raises(Conflict, match="already produced lot L-TAB-1"):
        ops.reverse_consumption(SUP, used.id, "too late")


def test_depth_limit_and_cycle_guard(app: Flask) -> None:
    build_two_levels()
    limited = ops.trace_backward("L-TAB-1", max_depth=1)
    assert limited.truncated and set(limited.lots) == {"L-TAB-1", "L-BLEND"}
    assert "depth limit 1 reached" in render_tree(limited)
    # a cycle cannot come from production, but a trace must end even if one were loaded
    db.session.commit()
    with db.engine.begin() as conn:
        conn.execute(insert(GenealogyLink.__table__), [{"parent_lot_id": "L-TAB-2", "child_lot_id": "L-API",
                                                         "batch_id": "B-ODD", "qty": Decimal(1), "uom": "pcs",
                                                         "created_at": utcnow()}])
    trace = ops.trace_forward("L-API", max_depth=10)
    assert not trace.truncated and set(trace.lots) == {"L-API", "L-BLEND", "L-TAB-1", "L-TAB-2"}
    assert trace.lots["L-TAB-2"].depth == 2
    walked = list(trace.walk())
    assert [(level, lot.lot_id, repeated) for level, _, lot, repeated in walked][-1] == (3, "L-API", True)
    with pytest.raises(ValidationFailed):
        ops.trace_forward("L-API", max_depth=0)


def test_trace_api(app: Flask) -> None:
    build_two_levels()
    op = logged_in(app.test_client(), seed(), "operator")
    r = op.get("/api/v1/lots/L-TAB-2/trace?direction=backward")
    assert r.status_code == 200, r.get_json()
    trace = r.get_json()["trace"]
    assert trace["direction"] == "backward" and trace["root"]["lot_id"] == "L-TAB-2"
    assert [(x["parent_lot_id"], x["qty"]) for x in trace["links"]] == [
        ("L-BLEND", {"value": "29.8", "uom": "kg"}), ("L-API", {"value": "40000", "uom": "g"}),
        ("L-MCC", {"value": "10", "uom": "kg"})]
    assert trace["tree"]["children"][0]["children"][0]["lot_id"] == "L-API"
    r = op.get("/api/v1/lots/L-API/trace?direction=forward&max_depth=1")
    assert r.get_json()["trace"]["truncated"] is True
    assert op.get("/api/v1/lots/L-API/trace?direction=sideways").status_code == 422
    assert op.get("/api/v1/lots/L-NOPE/trace").status_code == 404


def test_mes_trace_cli_prints_an_indented_tree(app: Flask) -> None:
    build_two_levels()
    db.session.commit()
    group = click.Group()
    register_cli(group)
    env = {"MES_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "MES_HOME": app.config["MES_HOME"],
           "MES_SECRET_KEY": "cli-test", "MES_LOG_LEVEL": "WARNING"}
    result = CliRunner().invoke(group, ["trace", "L-TAB-1"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "L-TAB-1  FG-TAB Paracetamol 500 mg tablets  [quarantine]",
        "  <- L-BLEND  INT-BLEND Paracetamol blend  [released]  20 kg used in batch B-TAB-1",
        "    <- L-API  API-PARA Paracetamol  [released]  40000 g used in batch B-BLEND",
        "    <- L-MCC  EXC-MCC Microcrystalline cellulose  [released]  10 kg used in batch B-BLEND",
        "3 lot(s) upstream, 3 link(s)",
    ]
    result = CliRunner().invoke(group, ["trace", "L-API", "--forward"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:4] == [
        "L-API  API-PARA Paracetamol  [released]",
        "  -> L-BLEND  INT-BLEND Paracetamol blend  [released]  took 40000 g in batch B-BLEND",
        "    -> L-TAB-1  FG-TAB Paracetamol 500 mg tablets  [quarantine]  took 20 kg in batch B-TAB-1",
        "    -> L-TAB-2  FG-TAB Paracetamol 500 mg tablets  [quarantine]  took 29.8 kg in batch B-TAB-2",
    ]
    result = CliRunner().invoke(group, ["trace", "L-NOPE"], env=env)
    assert result.exit_code == 1 and "Lot L-NOPE is not known" in result.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_bench_runs_at_tiny_size(backend: str) -> None:
    r = subprocess.run([sys.executable, "-m", "tests.bench.trace", "--db", backend, "--lots", "200", "--links", "2000",
                        "--samples", "20"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["benchmark"], out["db"], out["lots"], out["links"]) == ("trace", backend, 200, 2000)
    for name in ("backward", "forward"):
        assert out[name]["n"] == 20 and out[name]["links_mean"] > 0 and out[name]["p50_ms"] > 0
        assert out[f"ratio_{name}_p50_to_pk_p50"] > 0
