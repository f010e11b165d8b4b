"""The full loop with the simulators: a QMS hold blocks the kiosk's lot check within one second,
release lifts it, a conditional release marks the consuming batch; the simulators verify the
MES's webhooks with the ``standardwebhooks`` library and serve master data with ETags; the
adapters (plugins, conditional requests) apply ERP master data through the service layer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from mes.audit.log import Actor
from mes.db import db
from mes.integration import endpoints, inbound
from mes.integration.adapters import AdapterError, AdapterRegistry, MasterDataAdapter, create_adapter, default_registry
from mes.integration.adapters.rest import RestAdapter
from mes.integration.adapters.virtual import VirtualAdapter
from mes.integration.master_data import sync
from mes.integration.relay import Relay
from mes.integration.sims import MasterData, SimServer, send_command
from mes.materials import operations as mat
from tests.helpers import SEED, release_lot_as_qa, seed
from tests.integration.receiver import eventually
from tests.test_gateway import LiveServer, LiveUser

ADMIN = Actor("admin1", "Admin One", "admin", "QA-WS-01")
OP = Actor("operator1", "Operator One", "operator", "KIOSK-01")
ROOT = Path(__file__).resolve().parents[2]


def _lot(lot_id: str) -> str:
    if db.session.get(mat.Item, "API-PARA") is None:
        mat.create_item(SEED, "API-PARA", "Paracetamol", "kg", "api")
    mat.receive_lot(SEED, "API-PARA", [mat.ContainerIn("10", "kg", f"{lot_id}-C1")], lot_id=lot_id)
    release_lot_as_qa(lot_id)
    return lot_id


def test_a_qms_hold_blocks_the_kiosk_within_one_second_release_lifts_it_conditional_marks_the_batch(
        app: Flask) -> None:
    seeded = seed(("operator", "admin"))
    lot = _lot("L-LOOP-1")
    _, secret = inbound.add_peer(ADMIN, "qms")
    db.session.remove()  # the server's threads write: end this thread's transaction (SQLite)
    live = LiveServer(app)
    try:
        kiosk = LiveUser(live, seeded, "operator")

        def scan() -> str:  # what the kiosk asks when the operator scans the lot's label
            r = kiosk.get(f"/kiosk/lots/{lot}?item=API-PARA")
            assert r.status_code == 200, r.text
            return r.text

        assert 'data-lot-ok="true"' in scan()
        t0 = time.monotonic()
        status, answer = send_command(live.base, secret, "qms.lot.hold_placed.v1",
                                      {"lot_id": lot, "hold_id": "H-LOOP-1", "scope": "all", "ncr_id": "NCR-501",
                                       "reason": "Foreign particle found in retained sample"}, source="urn:qms:sim")
        assert status == 200, answer
        page = eventually(lambda: (lambda t: t if 'data-lot-ok="false"' in t else None)(scan()), 1.0, "the hold")
        blocked_after = time.monotonic() - t0
        assert blocked_after <= 1.0, blocked_after
        assert 'data-status="on_hold"' in page and "NCR-501" in page and "Foreign particle" in page
        with app.app_context():
            with pytest.raises(mat.LotNotUsable, match="NCR-501"):
                mat.consume(OP, lot, f"{lot}-C1", "1", "kg", "B-LOOP-1")
            db.session.remove()

        t0 = time.monotonic()
        status, _ = send_command(live.base, secret, "qms.lot.hold_released.v1",
                                 {"hold_id": "H-LOOP-1", "disposition": "release", "approved_by": "qa.lead"},
                                 source="urn:qms:sim")
        assert status == 200
        eventually(lambda: 'data-lot-ok="true"' in scan(), 1.0, "the release")
        assert time.monotonic() - t0 <= 1.0

        # the simulator's command line: hold again, then release under conditions
        env = {**os.environ, "MES_INBOUND_SECRET": secret}
        for args in (["hold", "--lot", lot, "--hold-id", "H-LOOP-2", "--ncr", "NCR-502", "--reason", "CoA recheck"],
                     ["release", "--hold-id", "H-LOOP-2", "--disposition", "conditional_release",
                      "--conditions", "Identity test on each batch", "--approved-by", "qa.lead"]):
            run = subprocess.run([sys.executable, "-c", "from mes.cli import main; main()", "sim", "qms", *args,
                                  "--mes-url", live.base], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stdout + run.stderr
        assert 'data-lot-ok="true"' in scan()
        with app.app_context():
            c = mat.consume(OP, lot, f"{lot}-C1", "1", "kg", "B-LOOP-2")
            assert c.conditional and c.conditional_hold_id == "H-LOOP-2"
            assert mat.open_conditional_lots("B-LOOP-2") == [lot]
            assert mat.batches_consuming_conditionally(lot) == ["B-LOOP-2"]
            db.session.remove()
    finally:
        live.stop()


def test_simulators_verify_the_mes_webhooks_with_the_library(app: Flask) -> None:
    qms = SimServer("qms").start()
    try:
        _, secret = endpoints.add_endpoint(ADMIN, "qms", f"{qms.url}/hooks/mes", ["mes.material.consumed.v1"])
        qms.webhook_secrets.append(secret)
        lot = _lot("L-HOOK-1")
        mat.consume(OP, lot, f"{lot}-C1", "1", "kg", "B-HOOK-1")
        db.session.remove()
        relay = Relay(app, name="test-relay", schedule=[0.1])
        eventually(lambda: relay.run_once() >= 0 and qms.received, 20, "the delivery")
        assert qms.received[0]["type"] == "mes.material.consumed.v1" and qms.received[0]["data"]["lot_id"] == lot
        assert qms.rejected == 0
        qms.webhook_secrets[:] = ["whsec_" + "A" * 44]  # a receiver with the wrong secret refuses it
        import requests

        r = requests.post(f"{qms.url}/hooks/mes", data=b"{}", headers={"webhook-id": "x", "webhook-timestamp": "1",
                                                                       "webhook-signature": "v1,AAAA"}, timeout=5)
        assert r.status_code == 401 and qms.rejected == 1
    finally:
        qms.stop()


def test_rest_adapter_asks_conditionally_and_304_means_nothing_changed() -> None:
    data = MasterData({"items": [{"code": "API-PARA", "name": "Paracetamol", "base_uom": "kg", "kind": "api"}],
                       "boms": [], "work_orders": []})
    erp = SimServer("erp", master_data=data).start()
    try:
        adapter = create_adapter("rest", base_url=erp.url)
        assert isinstance(adapter, RestAdapter)
        first = adapter.pull("items")
        assert first.changed and first.records[0]["code"] == "API-PARA" and first.validators.etag
        again = adapter.pull("items")
        assert not again.changed and again.records == []  # 304
        data.set("items", [{"code": "API-PARA", "name": "Paracetamol Ph. Eur.", "base_uom": "kg", "kind": "api"}])
        changed = adapter.pull("items")
        assert changed.changed and changed.validators.etag != first.validators.etag
        only_date = create_adapter("rest", base_url=erp.url)
        only_date.pull("boms")
        import requests

        r = requests.get(f"{erp.url}/boms", headers={"If-Modified-Since": only_date.validators["boms"].last_modified},
                         timeout=5)
        assert r.status_code == 304
        with pytest.raises(AdapterError):
            create_adapter("rest", base_url="http://127.0.0.1:9").pull("items")  # nothing listens there
        adapter.close()
    finally:
        erp.stop()


class _Plugin(MasterDataAdapter):
    name = "plugin"

    def _fetch(self, resource: str, validators: Any) -> Any:
        from mes.integration.adapters import Fetched

        return Fetched(304)


def test_adapters_are_plugins_found_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"rest", "virtual"} <= set(default_registry.names())
    import importlib.metadata

    ep = importlib.metadata.EntryPoint("acme", f"{__name__}:_Plugin", "mes.integration.adapters")
    hijack = importlib.metadata.EntryPoint("rest", f"{__name__}:_Plugin", "mes.integration.adapters")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [ep, hijack])
    registry = AdapterRegistry()
    assert registry.load("acme") is _Plugin
    assert registry.load("rest") is RestAdapter  # a plugin may not take over a built-in name
    assert not registry.create("acme").pull("items").changed
    with pytest.raises(AdapterError, match="no master-data adapter"):
        registry.load("sap")


def test_master_data_pull_applies_new_items_and_work_orders_once(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    from mes.execution import operations as ex
    from mes.execution import recipes_store
    from tests.execution_helpers import PCM, effective_recipe, make_world

    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    product = recipes_store.master_of(recipes_store.get_version(rv)).product.code
    if db.session.get(mat.Item, product) is None:
        mat.create_item(SEED, product, "Paracetamol 500 mg tablets", "pcs", "finished_good")
    adapter = VirtualAdapter(
        items=[{"code": "EXC-NEW", "name": "Povidone K30", "base_uom": "kg", "kind": "excipient"},
               {"code": product, "name": "Another name", "base_uom": "pcs", "kind": "finished_good"}],
        boms=[{"bom_version": rv}, {"bom_version": "NO-SUCH"}],
        work_orders=[{"work_order_id": "WO-PULL-1", "item": product, "quantity": {"value": "200000", "uom": "pcs"},
                      "bom_version": rv, "status": "released"}])
    actor = inbound.system_actor("erp")
    report = sync(actor, adapter)
    assert report.created == ["item EXC-NEW", "work order WO-PULL-1"], report
    assert report.differences == [f"item {product}: ERP differs in name", "BOM NO-SUCH: no recipe version of that id "
                                  "in the MES"]
    assert ex.get_work_order("WO-PULL-1").status == "released"
    second = sync(actor, adapter)
    assert second.unchanged == ["items", "boms", "work_orders"] and not second.created
    assert adapter.requests[-1][1].get("If-None-Match") and adapter.requests[-1][1].get("If-Modified-Since")
    db.session.rollback()


def test_the_same_key_while_the_first_request_runs_gets_409_then_the_first_answer(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two deliveries of one command at once over HTTP: the second is told to wait (409 with
    Retry-After), a later one gets the first answer; the hold is placed once."""
    import json
    import threading
    import uuid

    import requests

    from mes.integration import inbound_types
    from mes.integration.sims import command_event, signed_headers

    seed(("admin",))
    lot = _lot("L-RACE-1")
    _, secret = inbound.add_peer(ADMIN, "qms")
    db.session.remove()
    entered, gate = threading.Event(), threading.Event()
    original = inbound_types.HANDLERS["qms.lot.hold_placed.v1"]

    def slow(command: Any) -> None:
        db.session.rollback()  # end the read before waiting (SQLite: a transaction holds the write lock)
        entered.set()
        gate.wait(20)
        original(command)

    monkeypatch.setitem(inbound_types.HANDLERS, "qms.lot.hold_placed.v1", slow)
    event = command_event("qms.lot.hold_placed.v1", {"lot_id": lot, "hold_id": "H-RACE-1", "scope": "all",
                                                     "reason": "Recall of supplier batch"}, "urn:qms:sim")
    body, key = json.dumps(event).encode(), str(uuid.uuid4())
    live = LiveServer(app)
    try:
        url = f"{live.base}/integration/v1/inbound"

        def post() -> requests.Response:
            return requests.post(url, data=body, headers=signed_headers(secret, event["id"], body, key), timeout=30)

        first: list[requests.Response] = []
        worker = threading.Thread(target=lambda: first.append(post()))
        worker.start()
        assert entered.wait(20)
        second = post()
        assert second.status_code == 409 and second.headers["Retry-After"] == "1"
        assert second.headers["Content-Type"].startswith("application/problem+json")
        gate.set()
        worker.join(30)
        assert first and first[0].status_code == 200, first[0].text if first else None
        third = post()
        assert third.status_code == 200 and third.content == first[0].content
        assert third.headers["Idempotent-Replayed"] == "true"
    finally:
        gate.set()
        live.stop()
    with app.app_context():
        assert [h.id for h in mat.holds_of(lot)] == ["H-RACE-1"]
        db.session.remove()
