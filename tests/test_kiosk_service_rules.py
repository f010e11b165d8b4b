"""The kiosk asks the service: every check the kiosk makes is a service function, so an API
client meets the same rule (signer identity, label confirmation, the e-signature
acknowledgement, usable lot, dispositions, the values calculations see), what the operator
confirmed is recorded, and kiosk views manage no transactions. SQLite and PostgreSQL."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from kiosk import views as kv
from mes.audit.models import AuditEntry
from mes.db import db
from mes.equipment.labels import confirm_labels
from mes.errors import AuthenticationFailed, Forbidden, ValidationFailed
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.execution.models import Disposition, StepRecord
from mes.materials import operations as mat
from mes.signatures import operations as esig
from mes.users import operations as users
from tests import execution_helpers as eh
from tests.helpers import PASSWORD, SEED, Session, release_lot_as_qa
from tests.test_kiosk import Kiosk, message, pack_batch

KIOSK = Path(__file__).resolve().parents[1] / "kiosk"

RECIPE = """\
format: mes.master-recipe/v1
id: MR-RULES
version: 1
product: {code: FG-RULES, name: Rules product}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: RM-RULES, name: Raw material, role: ingredient, quantity: "2.000", unit: kg, tolerance: {percent: "1.0"}}
procedure:
  - id: prep
    title: Preparation
    operations:
      - id: setup
        title: Set up
        steps:
          - {id: booth, kind: equipment_check, title: Booth, instruction: Scan the booth label.,
             equipment_class: Dispensing booth, required_states: [clean, not_in_use]}
          - {id: signed, kind: signature, title: Set-up signed, instruction: Sign the set-up., meaning: performed,
             roles: [operator]}
          - {id: signed_again, kind: signature, title: Set-up signed again, instruction: Sign it again.,
             meaning: performed, roles: [operator]}
          - {id: id_raw, kind: identify, title: Identify, instruction: Scan the container., item: RM-RULES}
          - id: w_raw
            kind: weigh
            title: Weigh the raw material
            instruction: Weigh the raw material.
            item: RM-RULES
            scale: {readability: "1", unit: g, accuracy_class: II}
          - {id: tare, kind: numeric, title: Tare, instruction: Enter the tare., unit: kg, precision: 2, high: "5"}
          - {id: gross, kind: numeric, title: Gross, instruction: Enter the gross weight., unit: kg, precision: 2}
          - {id: net, kind: calculation, title: Net, instruction: Gross less tare., formula: gross - tare, unit: kg,
             precision: 2}
          - {id: out, kind: produce_output, title: Output, instruction: Weigh the output., item: FG-RULES,
             quantity: "2.000", unit: kg, yield_low: "90.0", yield_high: "101.0"}
"""


@pytest.fixture
def world(app: Flask, monkeypatch: pytest.MonkeyPatch) -> eh.World:
    w = eh.make_world(monkeypatch)
    # a person who has not acknowledged that their e-signature binds
    users.create_user(SEED, "operator4", "Operator Four", {"operator"}, password=PASSWORD, badge_id="B-op4", pin="1357")
    return w


def _batch(w: eh.World) -> str:
    rv = eh.effective_recipe(w, RECIPE, "rules.yaml")
    eh.stock(w, store.master_of(store.get_version(rv)))
    return eh.start(w, rv, "10.000", "kg")


def _api(app: Flask, w: eh.World, badge: str | None = None, pin: str = "2468", user_id: str = "operator1") -> Session:
    """An operator logged in to the API at the registered kiosk (badge + PIN, or user id + password)."""
    s = Session(app.test_client(), w.seeded.kiosk)
    r = s.badge_login(badge, pin) if badge else s.login(user_id)
    assert r.status_code == 200, r.get_json()
    return s


def _complete(s: Session, batch_id: str, step_id: str, payload: dict[str, Any]) -> Any:
    db.session.rollback()
    version = ex.get_step(batch_id, step_id).version
    return s.post(f"/api/v1/batches/{batch_id}/steps/{step_id}/complete",
                  {"expected_version": version, "payload": payload},
                  headers={"Idempotency-Key": f"k-{batch_id}-{step_id}-{version}-{len(json.dumps(payload))}"})


def _records(batch_id: str, step_id: str) -> list[StepRecord]:
    db.session.rollback()
    return [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:{step_id}"]


def _booth(w: eh.World) -> str:
    return w.equipment["Dispensing booth"]


# ------------------------------------------------------------------- signer identity


def test_a_signer_must_sign_with_their_own_badge(app: Flask, world: eh.World) -> None:
    operator = users.get_user("operator1")
    with pytest.raises(AuthenticationFailed, match="not yours"):
        esig.check_signer(operator, esig.Credentials("2468", badge="B-supervisor"))
    with pytest.raises(AuthenticationFailed, match="do not belong"):
        esig.check_signer(operator, esig.Credentials(PASSWORD, user_id="supervisor1"))
    esig.check_signer(operator, esig.Credentials("2468", badge="b-operator"))  # the badge reader's case is no matter
    batch_id = _batch(world)
    eh.run_until(world, batch_id, "signed")
    api = _api(app, world, badge="B-operator")
    # the API refuses another person's badge, as the kiosk does, and records nothing
    r = _complete(api, batch_id, "signed", {"badge": "B-supervisor", "pin": "2468"})
    assert r.status_code == 401 and "not yours" in r.get_json()["detail"]
    assert not _records(batch_id, "signed") and ex.get_step(batch_id, "signed").state == "ready"
    r = _complete(api, batch_id, "signed", {"badge": "B-operator", "pin": "2468"})
    assert r.status_code == 200, r.get_json()
    # later in the session the PIN alone signs (Part 11 §11.200), but a badge given must still be one's own
    r = _complete(api, batch_id, "signed_again", {"badge": "B-supervisor", "pin": "2468"})
    assert r.status_code == 401 and "not yours" in r.get_json()["detail"] and not _records(batch_id, "signed_again")
    r = _complete(api, batch_id, "signed_again", {"pin": "2468"})
    assert r.status_code == 200, r.get_json()
    assert [x.data["signer"] for x in _records(batch_id, "signed_again")] == ["operator1"]


# -------------------------------------------------------------------- label confirmed


def test_equipment_labels_must_be_confirmed(app: Flask, world: eh.World) -> None:
    assert confirm_labels(("clean", "not_in_use"), ["not_in_use", "clean"]) == ["clean", "not_in_use"]
    with pytest.raises(ValidationFailed, match="must show not in use") as refused:
        confirm_labels(("clean", "not_in_use"), ["clean"])
    assert refused.value.extra["missing"] == ["not_in_use"]
    with pytest.raises(ValidationFailed, match="Unknown label state shiny"):
        confirm_labels(("clean",), ["clean", "shiny"])
    with pytest.raises(ValidationFailed, match="list"):
        confirm_labels(("clean",), "clean")
    batch_id = _batch(world)
    api = _api(app, world)
    audit_before = db.session.execute(select(func.count()).select_from(AuditEntry)).scalar()
    # an API client that does not confirm the label is refused, as at the kiosk; nothing is recorded
    for payload in ({"equipment_id": _booth(world)}, {"equipment_id": _booth(world), "label_states": ["clean"]}):
        r = _complete(api, batch_id, "booth", payload)
        assert r.status_code == 422 and "Check the equipment label" in r.get_json()["detail"], r.get_json()
    assert not _records(batch_id, "booth") and ex.get_step(batch_id, "booth").state == "ready"
    assert db.session.execute(select(func.count()).select_from(AuditEntry)).scalar() == audit_before
    # the kiosk: a box not ticked is refused with the sentence, in the operator's language too
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-operator", "2468")
    url = f"/kiosk/batches/{batch_id}/steps/booth"
    k.get(url)
    r = k.post(url, {**k.form(), "confirmed": "1", "equipment_id": _booth(world), "states": ["clean"]})
    assert r.status_code == 422 and message(k.page) == ("Check the equipment label: it must show not in use. "
                                                         "Nothing was recorded.")
    assert not _records(batch_id, "booth")


def test_equipment_labels_confirmed_are_recorded(app: Flask, world: eh.World) -> None:
    batch_id = _batch(world)
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-operator", "2468")
    url = f"/kiosk/batches/{batch_id}/steps/booth"
    k.get(url)
    r = k.post(url, {**k.form(), "confirmed": "1", "equipment_id": _booth(world), "states": ["clean", "not_in_use"]})
    assert r.status_code == 200, message(k.page)
    rec = _records(batch_id, "booth")
    assert len(rec) == 1 and rec[0].data["label_states"] == ["clean", "not_in_use"]
    assert rec[0].data["registry_checked"] is True
    # the step's audit entry carries what the operator confirmed
    entry = db.session.execute(select(AuditEntry).where(AuditEntry.action == "batch.step.completed",
                                                        AuditEntry.entity_id == f"{batch_id}:booth")).scalar_one()
    after = json.loads(entry.entry_bytes)["after"]
    assert after["records"][0]["data"]["label_states"] == ["clean", "not_in_use"]


# -------------------------------------------------------------------- acknowledgement


def test_api_refuses_unacknowledged_signature(app: Flask, world: eh.World) -> None:
    operator4 = users.get_user("operator4")
    with pytest.raises(Forbidden, match="Acknowledge"):
        esig.check_acknowledged(operator4, False)
    assert esig.check_acknowledged(operator4, True) is True
    assert esig.check_acknowledged(users.get_user("operator1"), False) is False  # acknowledged once, long ago
    batch_id = _batch(world)
    eh.run_until(world, batch_id, "signed")
    api = _api(app, world, badge="B-op4", pin="1357")
    r = _complete(api, batch_id, "signed", {"badge": "B-op4", "pin": "1357"})
    assert r.status_code == 403 and "Acknowledge" in r.get_json()["detail"]
    # acknowledged with a signature that is refused for another reason: neither is kept
    r = _complete(api, batch_id, "signed", {"badge": "B-op4", "pin": "0000", "esig_acknowledged": True})
    assert r.status_code == 401 and "wrong PIN" in r.get_json()["detail"]
    db.session.rollback()
    assert users.get_user("operator4").esig_acknowledged_at is None and not _records(batch_id, "signed")
    # acknowledged with the signature: both are recorded, in one transaction
    r = _complete(api, batch_id, "signed", {"badge": "B-op4", "pin": "1357", "esig_acknowledged": True})
    assert r.status_code == 200, r.get_json()
    db.session.rollback()
    assert users.get_user("operator4").esig_acknowledged_at is not None
    acks = db.session.execute(select(AuditEntry).where(AuditEntry.action == "user.esig.acknowledged",
                                                       AuditEntry.entity_id == "operator4")).scalars().all()
    sig = db.session.execute(select(AuditEntry).where(AuditEntry.action == "esig.signed",
                                                      AuditEntry.actor_id == "operator4")).scalar_one()
    assert len(acks) == 1 and acks[0].seq < sig.seq
    assert [x.data["signer"] for x in _records(batch_id, "signed")] == ["operator4"]


def test_the_kiosk_acknowledgement_goes_with_the_signature(app: Flask, world: eh.World) -> None:
    batch_id = _batch(world)
    eh.run_until(world, batch_id, "signed")
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-op4", "1357")
    url = f"/kiosk/batches/{batch_id}/steps/signed"
    k.get(url)
    assert 'name="esig_ack"' in k.page
    r = k.post(url, {**k.form(), "confirmed": "1", "badge": "B-op4", "pin": "1357"})
    assert r.status_code == 403 and "Acknowledge" in message(k.page) and not _records(batch_id, "signed")
    r = k.post(url, {**k.form(), "confirmed": "1", "badge": "B-op4", "pin": "1357", "esig_ack": "1"})
    assert r.status_code == 200, message(k.page)
    db.session.rollback()
    assert users.get_user("operator4").esig_acknowledged_at is not None
    assert [x.data["signer"] for x in _records(batch_id, "signed")] == ["operator4"]


# ------------------------------------------------------- usable lot, dispositions, values


def test_the_lot_a_scan_shows_usable_is_the_lot_the_engine_accepts(app: Flask, world: eh.World) -> None:
    batch_id = _batch(world)
    eh.run_until(world, batch_id, "id_raw")
    held = mat.receive_lot(SEED, "RM-RULES", [mat.ContainerIn("5", "kg")])
    release_lot_as_qa(held.id, "released")
    mat.place_hold(world.actor("qa"), held.id, "all", "under investigation")
    shown = kv.resolve_label(held.id, "RM-RULES")
    usable = mat.check_usable(held.id, "RM-RULES")
    assert not shown.ok and (shown.status, shown.reason) == (usable.code, usable.reason)
    r = _complete(_api(app, world), batch_id, "id_raw", {"lot_id": held.id})
    assert r.status_code == 409 and r.get_json()["code"] == usable.code
    good = world.lots["RM-RULES"][0]
    assert kv.resolve_label(good, "RM-RULES").ok and mat.check_usable(good, "RM-RULES").ok


def test_the_kiosk_offers_the_engine_dispositions(app: Flask, world: eh.World) -> None:
    with app.test_request_context("/kiosk/board/LINE-1"):
        assert [value for value, _label in kv.dispositions()] == [d.value for d in Disposition]
    wo = pack_batch(world)
    batch_id = ex.start_batch(world.actor("operator"), wo).id
    ex.raise_deviation(world.actor("operator"), batch_id, "major", "spill", "spilled", step_id="id_bulk")
    qa = Kiosk(app.test_client(), world.seeded.workstation)
    qa.get("/kiosk/login")
    r = qa.client.post("/qa/login", data={"csrf_token": qa.csrf, "user_id": "qa1", "password": PASSWORD},
                       headers=qa.headers)
    assert r.status_code == 302
    qa.get("/kiosk/board/LINE-1")
    assert re.findall(r'<option value="([a-z_]+)">', qa.page) == [d.value for d in Disposition]


def test_the_kiosk_shows_the_values_the_engine_computes_with(app: Flask, world: eh.World) -> None:
    batch_id = _batch(world)
    eh.run_until(world, batch_id, "net", {"tare": {"value": "1.25"}, "gross": {"value": "4.50"}})
    tare = next(r for r in _records(batch_id, "tare") if r.kind == "value")
    ex.correct_value(world.actor("operator"), batch_id, tare.id, "1.50", "misread the display")
    values = ex.values_of(batch_id)
    assert (str(values["tare"]), str(values["gross"])) == ("1.50", "4.50")  # the correction, not the first
    assert kv.values_of(ex.get_batch(batch_id)) == values
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-operator", "2468")
    k.get(f"/kiosk/batches/{batch_id}/steps/net")
    assert "3.00" in k.page  # the preview computes with the corrected tare
    eh.do_step(world, batch_id, "net")
    assert ex.get_step(batch_id, "net").result["value"] == "3.00"


# ------------------------------------------------------------------ no transactions


def test_kiosk_views_manage_no_transactions() -> None:
    """Only the kiosk's refusal handler lets go of a refused request's session; no view
    commits, rolls back or flushes."""
    found = []
    for path in sorted(KIOSK.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("commit", "rollback", "flush", "begin", "begin_nested"):
                    found.append((path.name, fn.name, node.func.attr))
    assert found == [("blueprint.py", "_refusal", "rollback")]
