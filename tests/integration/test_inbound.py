"""POST /integration/v1/inbound (events.md §4): signatures, idempotency, and each command type
carried out by the service layer as the peer's system actor; SQLite and PostgreSQL.

Every delivery here is signed by the ``standardwebhooks`` library (the sender's side), never
by the MES's own code."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from mes.audit.log import Actor
from mes.audit.models import AuditEntry
from mes.db import db
from mes.integration import inbound
from mes.integration.inbound_models import IdempotencyRecord
from mes.integration.sims import command_event, signed_headers
from mes.materials import operations as mat
from mes.web import PROBLEM_BASE
from tests.helpers import SEED, logged_in, release_lot_as_qa, seed

URL = "/integration/v1/inbound"
ADMIN = Actor("admin1", "Admin One", "admin", "QA-WS-01")
HOLD = "qms.lot.hold_placed.v1"


def _lot(lot_id: str = "L-IN-1") -> str:
    if db.session.get(mat.Item, "API-PARA") is None:
        mat.create_item(SEED, "API-PARA", "Paracetamol", "kg", "api")
    mat.receive_lot(SEED, "API-PARA", [mat.ContainerIn("10", "kg", f"{lot_id}-C1")], lot_id=lot_id)
    release_lot_as_qa(lot_id)
    return lot_id


def _peer(peer_id: str = "qms", types: list[str] | None = None) -> str:
    _, secret = inbound.add_peer(ADMIN, peer_id, types)
    return secret


def _body(event_type: str, data: dict[str, Any], source: str = "urn:qms:test") -> tuple[str, bytes]:
    event = command_event(event_type, data, source)
    return event["id"], json.dumps(event).encode()


def _send(client: FlaskClient, secret: str, event_type: str, data: dict[str, Any], *, key: str | None = None,
          body: tuple[str, bytes] | None = None, at: datetime | None = None) -> Any:
    event_id, raw = body or _body(event_type, data)
    headers = signed_headers(secret, event_id, raw, key or str(uuid.uuid4()), at)
    return client.post(URL, data=raw, headers=headers)


def _hold(lot_id: str, hold_id: str = "H-QMS-1", **extra: Any) -> dict[str, Any]:
    return {"lot_id": lot_id, "hold_id": hold_id, "scope": "all", "reason": "Supplier CoA mismatch",
            "ncr_id": "NCR-77", **extra}


def _audit(entity_id: str) -> list[dict[str, Any]]:
    rows = [json.loads(e) for e in db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.entity_id == entity_id).order_by(AuditEntry.seq)).scalars()]
    db.session.rollback()
    return rows


# ----------------------------------------------------------------- signatures


def test_inbound_secret_is_shown_once_and_rotation_keeps_the_old_one_for_the_overlap(client: FlaskClient) -> None:
    seeded = seed()
    admin = logged_in(client, seeded, "admin")
    r = admin.post("/api/v1/integration/peers", {"id": "qms", "event_types": [HOLD]})
    assert r.status_code == 201, r.get_json()
    old = r.get_json()["secret"]
    assert old.startswith("whsec_") and old not in admin.get("/api/v1/integration/peers").get_data(as_text=True)
    new = admin.post("/api/v1/integration/peers/qms/rotate", {"overlap_hours": 1}).get_json()["secret"]
    lot = _lot()
    assert _send(client, old, HOLD, _hold(lot, "H-1")).status_code == 200  # the old secret, during the overlap
    assert _send(client, new, HOLD, _hold(lot, "H-2")).status_code == 200
    r = _send(client, new, "erp.work_order.released.v1", {"work_order_id": "WO-1", "item": "X",
                                                          "quantity": {"value": "1", "uom": "kg"}, "bom_version": "R"})
    assert r.status_code == 403 and r.mimetype == "application/problem+json"  # not a type this peer may send
    newest = admin.post("/api/v1/integration/peers/qms/rotate", {"overlap_hours": 0}).get_json()["secret"]
    assert _send(client, new, HOLD, _hold(lot, "H-4")).status_code == 401  # no overlap: the previous one is done
    assert _send(client, old, HOLD, _hold(lot, "H-5")).status_code == 401
    assert _send(client, newest, HOLD, _hold(lot, "H-6")).status_code == 200
    assert admin.post("/api/v1/integration/peers/qms/disable", {"reason": "QMS retired"}).status_code == 200
    assert _send(client, newest, HOLD, _hold(lot, "H-3")).status_code == 401
    actions = [e["action"] for e in _audit("qms")]
    assert actions == ["integration.peer.added", "integration.peer.secret_rotated", "integration.peer.secret_rotated",
                       "integration.peer.disabled"]
    assert not any(old in json.dumps(e) or new in json.dumps(e) for e in _audit("qms"))


PAST_TOLERANCE = timedelta(seconds=inbound.TOLERANCE_SECONDS + 60)


def test_tampered_stale_and_malformed_deliveries_get_401_never_500(client: FlaskClient) -> None:
    secret = _peer()
    lot = _lot()
    event_id, raw = _body(HOLD, _hold(lot))
    good = signed_headers(secret, event_id, raw, "k-1")
    cases: dict[str, tuple[dict[str, str], bytes]] = {
        "tampered body": (good, raw.replace(b"Supplier", b"Supplyer")),
        "tampered id": ({**good, "webhook-id": "other"}, raw),
        "wrong secret": (signed_headers("whsec_" + "A" * 44, event_id, raw, "k-1"), raw),
        # a minute past the tolerance either way: the requests before them take time under load
        # (1 s past it, "future" came within it before its turn on a busy CI machine)
        "stale": (signed_headers(secret, event_id, raw, "k-1", datetime.now(UTC) - PAST_TOLERANCE), raw),
        "future": (signed_headers(secret, event_id, raw, "k-1", datetime.now(UTC) + PAST_TOLERANCE), raw),
        "no signature": ({k: v for k, v in good.items() if k != "webhook-signature"}, raw),
        "no timestamp": ({k: v for k, v in good.items() if k != "webhook-timestamp"}, raw),
        "timestamp not a number": ({**good, "webhook-timestamp": "nan"}, raw),
        "timestamp huge": ({**good, "webhook-timestamp": "9" * 12}, raw),
        "signature not base64": ({**good, "webhook-signature": "v1,***"}, raw),
        "signature scheme": ({**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v9,")}, raw),
    }
    for name, (headers, body) in cases.items():
        r = client.post(URL, data=body, headers=headers)
        assert r.status_code == 401, (name, r.status_code, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json" and r.get_json()["status"] == 401, name
        assert r.get_json()["type"] == PROBLEM_BASE + "webhook-signature-invalid", name  # the API's problem types
    assert mat.check_usable(lot).ok  # nothing of it was carried out
    assert db.session.execute(select(func.count()).select_from(IdempotencyRecord)).scalar() == 0
    db.session.rollback()
    assert client.post(URL, data=raw, headers=good).status_code == 200  # the untouched delivery is taken


HEADER_TEXT = st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
                        st.sampled_from(["", "v1,", "v1,AAAA", "1e9", "-1", "0x10", "v1, ", "\"\"", "nan", "inf"]))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature",
                                               "Idempotency-Key"]), HEADER_TEXT, max_size=4),
       body=st.one_of(st.binary(max_size=200), st.just(b'{"specversion": "1.0"}')),
       drop=st.sets(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]), max_size=3))
def _fuzz(client: FlaskClient, secret: str, fields: dict[str, str], body: bytes, drop: set[str]) -> None:
    event_id, raw = _body(HOLD, _hold("L-FUZZ"))
    headers = signed_headers(secret, event_id, raw, str(uuid.uuid4()))
    headers.update(fields)
    for name in drop:
        headers.pop(name, None)
    r = client.post(URL, data=body, headers=headers)
    key_ok = inbound._KEY_RE.match(headers.get("Idempotency-Key", "").strip()) is not None
    assert r.status_code == (401 if key_ok else 400), (headers, body, r.status_code, r.get_data(as_text=True))
    assert r.mimetype == "application/problem+json"


def test_fuzzed_headers_and_bodies_are_401_or_400_never_500(client: FlaskClient) -> None:
    secret = _peer()
    _fuzz(client, secret)  # the fuzzed deliveries never carry the body they were signed for


# ---------------------------------------------------------------- idempotency


def test_idempotency_key_missing_reused_in_progress_and_repeated(client: FlaskClient) -> None:
    secret = _peer()
    lot = _lot()
    event_id, raw = _body(HOLD, _hold(lot))
    headers = signed_headers(secret, event_id, raw, "k-1")
    r = client.post(URL, data=raw, headers={k: v for k, v in headers.items() if k != "Idempotency-Key"})
    assert r.status_code == 400 and r.mimetype == "application/problem+json" and "Idempotency-Key" in r.get_json()["detail"]
    first = client.post(URL, data=raw, headers=headers)
    assert first.status_code == 200 and first.get_json()["result"]["hold_id"] == "H-QMS-1"
    again = client.post(URL, data=raw, headers=signed_headers(secret, event_id, raw, "k-1"))  # signed afresh
    assert again.status_code == 200 and again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(mat.holds_of(lot)) == 1  # carried out once
    other = _send(client, secret, HOLD, _hold(lot, "H-QMS-2"), key="k-1")
    assert other.status_code == 422 and other.mimetype == "application/problem+json"
    # a command whose first request is still being carried out (its record is running)
    event_id2, raw2 = _body(HOLD, _hold(lot, "H-QMS-3"))
    assert isinstance(inbound.claim("qms", "k-2", raw2, event_id2), inbound.Claim)
    running = client.post(URL, data=raw2, headers=signed_headers(secret, event_id2, raw2, "k-2"))
    assert running.status_code == 409 and running.headers["Retry-After"] == "1"
    assert running.mimetype == "application/problem+json"
    assert len(mat.holds_of(lot)) == 1
    # a refusal is the key's first answer too: a repeat gets the same refusal, nothing runs twice
    bad = _send(client, secret, HOLD, _hold("L-NOT-HERE", "H-QMS-4"), key="k-3")
    assert bad.status_code == 404 and bad.mimetype == "application/problem+json"
    assert _send(client, secret, HOLD, _hold("L-NOT-HERE", "H-QMS-4"), key="k-3").status_code == 422  # new body
    invalid = _send(client, secret, HOLD, {"lot_id": lot}, key="k-4")
    assert invalid.status_code == 422 and "data" in invalid.get_json()["detail"]


def test_the_answer_and_the_change_commit_together(client: FlaskClient, monkeypatch: Any) -> None:
    """A hold refused by the service (its id taken) stores the refusal, never "applied"."""
    secret = _peer()
    lot = _lot()
    assert _send(client, secret, HOLD, _hold(lot), key="a").status_code == 200
    r = _send(client, secret, HOLD, _hold(lot), key="b")
    assert r.status_code == 409 and "exists already" in r.get_json()["detail"]
    rec = db.session.get(IdempotencyRecord, ("qms", "b"))
    assert rec is not None and rec.status == 409 and rec.state == "done" and rec.event_type == HOLD
    db.session.rollback()


# ----------------------------------------------------------------- the types


def test_hold_placed_released_and_conditionally_released_by_the_qms_actor(client: FlaskClient) -> None:
    secret = _peer()
    lot = _lot()
    r = _send(client, secret, HOLD, _hold(lot))
    assert r.status_code == 200, r.get_json()
    usable = mat.check_usable(lot, "API-PARA")
    assert usable.code == "on_hold" and "NCR-77" in usable.reason and "Supplier CoA mismatch" in usable.reason
    r = _send(client, secret, "qms.lot.hold_released.v1", {"hold_id": "H-QMS-1", "disposition": "release",
                                                           "approved_by": "qa.lead@qms"})
    assert r.status_code == 200 and mat.check_usable(lot, "API-PARA").ok
    _send(client, secret, HOLD, _hold(lot, "H-QMS-2"))
    r = _send(client, secret, "qms.lot.hold_released.v1", {"hold_id": "H-QMS-2", "disposition": "conditional_release",
                                                           "approved_by": "qa.lead@qms"})
    assert r.status_code == 422 and "conditions" in r.get_json()["detail"]  # the service's rule, not a copy
    r = _send(client, secret, "qms.lot.hold_released.v1", {"hold_id": "H-QMS-2", "disposition": "conditional_release",
                                                           "conditions": "Extra identity test per batch",
                                                           "approved_by": "qa.lead@qms"})
    assert r.status_code == 200
    c = mat.consume(Actor("operator1", "Operator One", "operator", "KIOSK-01"), lot, f"{lot}-C1", "1", "kg", "B-9")
    assert c.conditional and mat.open_conditional_lots("B-9") == [lot]
    entries = [e for e in _audit(lot) if e["action"].startswith("material.hold")]
    assert [e["action"] for e in entries] == ["material.hold.placed", "material.hold.released",
                                              "material.hold.placed", "material.hold.released"]
    assert {e["actor"]["id"] for e in entries} == {"system:integration-qms"}
    assert all(e["actor"]["role"] == "system" for e in entries)
    assert "qa.lead@qms" in entries[1]["reason"]
    _send(client, secret, HOLD, _hold(lot, "H-QMS-3"))
    r = _send(client, secret, "qms.lot.hold_released.v1", {"hold_id": "H-QMS-3", "disposition": "reject",
                                                           "approved_by": "qa.lead@qms"})
    assert r.status_code == 200 and mat.check_usable(lot).code == "rejected"


def test_erp_work_order_release_creates_and_releases_it_once(client: FlaskClient, monkeypatch: Any) -> None:
    from tests.execution_helpers import PCM, effective_recipe, make_world

    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    secret = _peer("erp", ["erp.work_order.released.v1"])
    from mes.execution import operations as ex
    from mes.execution import recipes_store

    item = recipes_store.master_of(recipes_store.get_version(rv)).product.code
    data = {"work_order_id": "WO-ERP-4711", "item": item, "quantity": {"value": "200000", "uom": "pcs"},
            "bom_version": rv, "due_date": "2026-12-24", "line": "LINE-1"}
    db.session.rollback()
    r = _send(client, secret, "erp.work_order.released.v1", data)
    assert r.status_code == 200, r.get_json()
    wo = ex.get_work_order("WO-ERP-4711")
    assert wo.status == "released" and wo.erp_ref == "WO-ERP-4711" and str(wo.due_date) == "2026-12-24"
    actions = [(e["action"], e["actor"]["id"]) for e in _audit("WO-ERP-4711")]
    assert actions == [("work_order.created", "system:integration-erp"), ("work_order.released", "system:integration-erp")]
    again = _send(client, secret, "erp.work_order.released.v1", data)  # a new key, the same work order
    assert again.status_code == 200 and again.get_json()["result"]["status"] == "released"
    assert len(_audit("WO-ERP-4711")) == 2
    bad = _send(client, secret, "erp.work_order.released.v1", {**data, "work_order_id": "WO-ERP-4712",
                                                               "bom_version": "NO-SUCH-RECIPE"})
    assert bad.status_code == 404 and bad.mimetype == "application/problem+json"


def test_qms_deviation_disposition_closes_it_under_the_same_rules(client: FlaskClient, monkeypatch: Any) -> None:
    from mes.execution import operations as ex
    from mes.execution import recipes_store
    from tests.execution_helpers import PCM, effective_recipe, make_world, start, stock

    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    master = recipes_store.master_of(recipes_store.get_version(rv))
    stock(world, master)
    batch_id = start(world, rv, "200000", "pcs")
    dev = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "housekeeping", "Label torn on drum")
    dev_id = dev.id
    db.session.rollback()
    secret = _peer()
    r = _send(client, secret, "qms.deviation.dispositioned.v1",
              {"deviation_id": dev_id, "disposition": "repeat_step", "approved_by": "qa.lead@qms"})
    assert r.status_code == 422 and "step" in r.get_json()["detail"]  # the service's rule: a batch deviation
    r = _send(client, secret, "qms.deviation.dispositioned.v1",
              {"deviation_id": dev_id, "disposition": "use_as_is", "capa_id": "CAPA-12", "approved_by": "qa.lead@qms"})
    assert r.status_code == 200, r.get_json()
    dev = ex.get_deviation(dev_id)
    assert dev.status == "closed" and dev.disposition == "use_as_is" and dev.qms_ref == "CAPA-12"
    closed = [e for e in _audit(dev_id) if e["action"] == "deviation.closed"][0]
    assert closed["actor"]["id"] == "system:integration-qms" and closed["after"]["approved_by"] == "qa.lead@qms"
    r = _send(client, secret, "qms.deviation.dispositioned.v1",
              {"deviation_id": dev_id, "disposition": "scrap", "approved_by": "qa.lead@qms"})
    assert r.status_code == 409 and "already closed" in r.get_json()["detail"]


def test_a_running_batch_is_stopped_at_its_next_consumption_never_undone(app: Flask, client: FlaskClient,
                                                                         monkeypatch: Any) -> None:
    """Guard against over-automation: the hold refuses the next weighing of the held lot with
    the reason, leaves the step already recorded as it was, and a conditional release lets the
    batch go on but keeps it from release until QA declares the conditions met."""
    from mes.execution import operations as ex
    from mes.execution import recipes_store
    from mes.materials.common import LotNotUsable
    from mes.recipes import model as rm
    from tests.execution_helpers import PCM, effective_recipe, make_world, start, stock, weigh_payload

    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    master = recipes_store.master_of(recipes_store.get_version(rv))
    stock(world, master)
    batch_id = start(world, rv, "200000", "pcs")
    cr = ex.control_recipe(ex.get_batch(batch_id))
    weighs = [ref.step for ref in cr.steps() if isinstance(ref.step, rm.WeighStep)]
    first = weighs[0]
    from tests.execution_helpers import run_until

    run_until(world, batch_id, stop_before=first.id)
    from tests.execution_helpers import do_step

    do_step(world, batch_id, first.id)
    held_lot = world.lots[first.item][0]
    before = [(c.id, c.qty) for c in mat.consumptions(batch_id=batch_id)]
    assert any(c.lot_id == held_lot for c in mat.consumptions(batch_id=batch_id))
    db.session.rollback()
    secret = _peer()
    r = _send(client, secret, HOLD, _hold(held_lot))
    assert r.status_code == 200 and r.get_json()["result"]["running_batches"] == [batch_id]
    assert [(c.id, c.qty) for c in mat.consumptions(batch_id=batch_id)] == before  # nothing recorded is touched
    assert ex.get_step(batch_id, first.id).state == "completed"
    later = next((s for s in weighs[1:] if s.item == first.item), None)
    spec = later or first
    container = mat.containers_of(held_lot)[0].id
    payload = weigh_payload(world, spec, held_lot, container, spec.target)
    import pytest

    with pytest.raises(LotNotUsable, match="NCR-77"):
        mat.consume(world.actor("operator"), held_lot, container, "0.001", "kg", batch_id,
                    item_code=first.item)
    assert payload  # the kiosk would send it; the service refused the consumption with the reason
    db.session.rollback()
    r = _send(client, secret, "qms.lot.hold_released.v1",
              {"hold_id": "H-QMS-1", "disposition": "conditional_release",
               "conditions": "Extra identity test per batch", "approved_by": "qa.lead@qms"})
    assert r.status_code == 200
    from mes.execution.release import release_blockers

    # the batch consumed the lot before the hold: the conditional release marks it all the same
    assert mat.open_conditional_lots(batch_id) == [held_lot]
    assert any(held_lot in p and "open conditions" in p for p in release_blockers(batch_id))
    c = mat.consume(world.actor("operator"), held_lot, container, "0.001", "kg", batch_id, item_code=first.item)
    assert c.conditional  # and it may go on consuming it, flagged
    assert mat.open_conditional_lots(batch_id) == [held_lot]
    mat.meet_conditions(Actor("qa1", "QA One", "qa", "QA-WS-01"), "H-QMS-1", "Identity test passed")
    assert mat.open_conditional_lots(batch_id) == []
    db.session.rollback()


def test_peer_cli_add_list_rotate_disable(app: Flask, database_url: str, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import PASSWORD

    seeded = seed()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MES_") or k.startswith("MES_ARGON2_") or k == "MES_AUDIT_TAG_KEY_PATH"}
    env.update({"MES_DATABASE_URL": database_url, "MES_HOME": str(tmp_path / "home"), "MES_SECRET_KEY": "x",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"], "MES_LOG_LEVEL": "WARNING",
                "MES_CLI_PASSWORD": PASSWORD})
    db.session.remove()  # let the commands write (SQLite)

    def mes(*args: str) -> Any:
        return subprocess.run([sys.executable, "-c", "from mes.cli import main; main()", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])

    admin = seeded.users["admin"]
    r = mes("peer", "add", "qms", "--type", HOLD, "--type", "qms.lot.hold_released.v1", "--as", admin)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip().split()[-1]
    assert secret.startswith("whsec_") and "shown once" in r.stdout
    r = mes("peer", "list")
    assert r.returncode == 0 and "qms" in r.stdout and secret not in r.stdout and HOLD in r.stdout
    r = mes("peer", "rotate", "qms", "--overlap-hours", "0", "--as", admin)
    assert r.returncode == 0 and r.stdout.strip().split()[-1] not in (secret, "")
    r = mes("peer", "disable", "qms", "--reason", "QMS migration", "--as", admin)
    assert r.returncode == 0 and "disabled qms" in r.stdout
    r = mes("peer", "add", "erp", "--type", "no.such.type", "--as", admin)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = mes("peer", "add", "erp", "--as", seeded.users["operator"])
    assert r.returncode == 1 and "may not" in r.stderr
