"""The simulated operator executes the demo batch through the real HTTP stack (a server on
loopback, its in-process gateway reading the simulated MT-SICS scales at 9600 baud), on
SQLite and PostgreSQL, and the database holds what it did: every weight came from a scale
through the gateway, never from the client."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import make_server

from mes.db import db, utcnow
from mes.execution import operations as ex
from mes.execution.models import Batch, BatchStep, Deviation, StepRecord, WorkOrder
from mes.execution.sim_operator import Login, SimOperator, SimulationStopped

KIOSK = "KIOSK-01:demo-kiosk-01-key"
QA_DESK = "QA-WS-01:demo-qa-ws-01-key"
DEMO_PASSWORD = "Demo-Passw0rd!"
FAST = 300.0  # the server's step clock runs 300x: a 20 min timer takes 4 s


@pytest.fixture
def server(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``mes demo`` on loopback: the demo data, MES_SIMULATION on, the gateway in the server."""
    from mes.app import create_app
    from mes.audit.log import Actor
    from mes.demo import seed_demo, seed_equipment, seed_production
    from mes.equipment.plant import equip_for_recipe
    from mes.execution import recipes_store
    from mes.gateway.service import start_embedded, stop_embedded
    from mes.gateway.simulation import Simulation
    from tests.conftest import base_config

    config = base_config(Path(app.config["MES_HOME"]), app.config["SQLALCHEMY_DATABASE_URI"])
    simapp = create_app({**config, "MES_SIMULATION": True})
    with simapp.app_context():
        seed_demo()
        seed_production()
        seed_equipment()
        # the rest of the plant the example recipe checks (granulator, dryer, press...)
        equip_for_recipe(Actor.system("demo"), recipes_store.master_of(recipes_store.list_versions()[0]),
                         line="LINE-1")
        db.session.remove()
        start_embedded(simapp, [], simulation=Simulation(line=False), forward_lines=False)
        start, t0 = utcnow(), time.monotonic()
        monkeypatch.setattr(ex, "clock", lambda: start + timedelta(seconds=(time.monotonic() - t0) * FAST))
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        srv = make_server("127.0.0.1", 0, simapp, threaded=True)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{srv.server_port}"
        finally:
            srv.shutdown()
            thread.join(5)
            stop_embedded(simapp)
            db.session.remove()


def _demo_work_order() -> str:
    wo = db.session.execute(select(WorkOrder.id).where(WorkOrder.erp_ref == "ERP-DEMO-1")).scalar_one()
    db.session.remove()  # end the read: on SQLite every transaction holds the write lock
    return wo


def test_sim_operator_completes_the_demo_batch(server: str) -> None:
    lines: list[str] = []
    wo = _demo_work_order()
    sim = SimOperator(server, KIOSK, Login(badge="1001", pin="2468"), verifier=Login(badge="2001", pin="8642"),
                      time_factor=FAST, echo=lines.append,
                      qa=Login(user_id="qa1", password=DEMO_PASSWORD), qa_terminal=QA_DESK)
    result = sim.run(wo)
    assert result.status == "completed", "\n".join(lines)
    db.session.remove()
    batch = db.session.get(Batch, result.batch_id)
    assert batch is not None and batch.status == "completed" and batch.work_order_id == wo
    steps = ex.steps_of(batch.id)
    assert steps and all(s.state == "completed" for s in steps)
    assert len(result.steps) == len(steps)
    assert sum(1 for line in lines if line[:3].strip().isdigit()) == len(steps)  # one line per step
    # every weighing consumed stock from a released lot, as much as the reading said
    from mes.materials import operations as mat

    consumed = mat.consumptions(batch_id=batch.id)
    weigh_steps = [s for s in steps if s.kind == "weigh"]
    assert weigh_steps
    for s in weigh_steps:
        mine = [c for c in consumed if c.step_id == s.step_id]
        assert mine, f"no consumption for {s.step_id}"
        spec = ex.control_recipe(batch).step(s.step_id)
        low, high = spec.window()
        assert low <= Decimal(s.result["total"]) <= high
        assert all(mat.check_usable(c.lot_id).ok for c in mine)
    # ...and each weight is the gateway's reading of a registered scale, with the device's own reply
    for rec in records_of_kind(batch.id, "container"):
        reading = rec.data["reading"]
        assert reading["device_id"] in ("SCALE-FLOOR-01", "SCALE-BENCH-01") and reading["identity"]
        assert bytes.fromhex(reading["raw_hex"]).startswith(b"S S") and reading["calibration"]["certificate"]
        # the reading confirmed is the one recorded; tare (weighed empty container), gross and net (issue 14)
        assert reading["confirmed"]["sequence"] <= reading["sequence"] and reading["confirmed"]["device_id"] == reading["device_id"]
        tare = rec.data["tare"]
        assert tare["source"] == "weighed_container" and tare["reading"]["confirmed"]["value"]
        assert Decimal(rec.data["gross"]) - Decimal(tare["value"]) == Decimal(rec.data["net"]) == Decimal(rec.value)
    # the active ingredient: two containers of the one identified lot
    pcm = [r for r in records_of_kind(batch.id, "container") if r.batch_step_id.endswith(":w_pcm")]
    identified = next(r.data["lot"] for r in records_of_kind(batch.id, "identification") if r.data["item"] == "RM-1001")
    assert len(pcm) == 2 and {r.data["lot"] for r in pcm} == {identified}
    assert len({r.data["container"] for r in pcm}) == 2
    # the lot on hold (NCR-0001) was never used
    assert not any(mat.check_usable(c.lot_id).code == "on_hold" for c in consumed)
    # nothing out of limits, no deviation, the signature gates were signed by the right people
    assert db.session.execute(select(Deviation).where(Deviation.batch_id == batch.id)).first() is None
    records = db.session.execute(select(StepRecord).where(StepRecord.batch_id == batch.id)).scalars().all()
    assert not [r.id for r in records if "out_of_limits" in (r.flags or []) or "late" in (r.flags or [])]
    signers = {r.batch_step_id.split(":", 1)[1]: r.recorded_by for r in records if r.kind == "signature"}
    assert signers["verify_pcm"] == "sup1" and signers["disp_setup_signed"] == "op1"
    assert signers["compression_reviewed"] == "sup1"
    # the produced lot exists with the batch's output
    out = next(s for s in steps if s.kind == "produce_output")
    assert db.session.get(mat.Lot, out.result["lot"]) is not None
    # the work order is in progress with this batch until QA releases it; nothing left to do
    assert db.session.get(WorkOrder, wo).status == "in_progress"
    assert db.session.execute(select(BatchStep).where(BatchStep.batch_id == batch.id,
                                                      BatchStep.state != "completed")).first() is None
    # parallel operations: steps of the charging operation were done while the binder was stirred
    assert ex.get_step(batch.id, "charge_pcm").completed_at < ex.get_step(batch.id, "binder_stir").completed_at
    # the booth was claimed for the batch and is dirty now that the batch ended
    from mes.equipment import operations as eqops

    assert ex.claimed_equipment(batch.id) == ["BOOTH-01"] and eqops.get_equipment("BOOTH-01").status == "dirty"
    db.session.remove()
    # QA finishes it through the API: audit-trail review, review and release, each e-signed
    assert sim.release_batch(batch.id) == "released", "\n".join(lines)
    assert db.session.get(Batch, batch.id).status == "released"
    assert db.session.get(WorkOrder, wo).status == "completed"
    db.session.remove()


def records_of_kind(batch_id: str, kind: str) -> list[StepRecord]:
    return list(db.session.execute(select(StepRecord).where(StepRecord.batch_id == batch_id,
                                                            StepRecord.kind == kind)).scalars())


def test_sim_operator_stops_with_the_problem_detail(server: str) -> None:
    """Without a verifier the first second-person gate cannot be signed: a clear stop, not a crash;
    a wrong PIN is refused with the server's detail."""
    wo = _demo_work_order()
    with pytest.raises(SimulationStopped) as stopped:
        SimOperator(server, KIOSK, Login(badge="1001", pin="0000"), echo=None).run(wo)
    assert "PIN" in str(stopped.value) and stopped.value.problem
    lines: list[str] = []
    with pytest.raises(SimulationStopped) as stopped:
        SimOperator(server, KIOSK, Login(badge="1001", pin="2468"), time_factor=FAST, echo=lines.append).run(wo)
    assert "verify_pcm" in str(stopped.value) and "second person" in str(stopped.value)
    db.session.remove()
    batch_id: Any = db.session.execute(select(Batch.id).where(Batch.work_order_id == wo)).scalar_one()
    assert ex.get_step(batch_id, "w_pcm").state == "completed"
    assert ex.get_step(batch_id, "verify_pcm").state == "ready"
    db.session.remove()
