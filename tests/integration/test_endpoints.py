"""Webhook endpoints on the API and the CLI, and the pull feed; SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from mes.audit.log import Actor, Event, record
from mes.audit.models import AuditEntry
from mes.db import db
from mes.users import operations as users
from tests.helpers import PASSWORD, example_data, logged_in, seed

ACTOR = Actor.system("test")
API = "/api/v1/integration/endpoints"


def _token(user_id: str, scopes: list[str]) -> dict[str, str]:
    _, token = users.issue_token(ACTOR, user_id, scopes)
    return {"Authorization": f"Bearer {token}"}


def _actions(entity_id: str) -> list[str]:
    rows = list(db.session.execute(select(AuditEntry.action).where(AuditEntry.entity_id == entity_id)
                                   .order_by(AuditEntry.seq)).scalars())
    db.session.rollback()
    return rows


def test_endpoint_secret_shown_once_and_changes_audited(client: FlaskClient) -> None:
    seeded = seed()
    admin = logged_in(client, seeded, "admin")
    r = admin.post(API, {"id": "erp", "url": "https://erp.example/hooks", "event_types": ["mes.batch.released.v1"]})
    assert r.status_code == 201, r.get_json()
    secret = r.get_json()["secret"]
    assert secret.startswith("whsec_") and len(__import__("base64").b64decode(secret[6:])) == 32
    listed = admin.get(API)
    assert listed.status_code == 200 and secret not in listed.get_data(as_text=True)
    assert listed.get_json()["endpoints"][0]["event_types"] == ["mes.batch.released.v1"]
    rotated = admin.post(f"{API}/erp/rotate", {"overlap_hours": 1})
    new = rotated.get_json()["secret"]
    assert new != secret and rotated.get_json()["endpoint"]["rotating_until"]
    assert new not in admin.get(API).get_data(as_text=True)
    r = admin.post(f"{API}/erp/disable", {"reason": "ERP maintenance weekend"})
    assert r.status_code == 200 and r.get_json()["endpoint"]["state"] == "disabled"
    r = admin.post(f"{API}/erp/enable", {"reason": "ERP back"})
    assert r.get_json()["endpoint"]["state"] == "enabled"
    assert _actions("erp") == ["integration.endpoint.added", "integration.endpoint.secret_rotated",
                               "integration.endpoint.disabled", "integration.endpoint.enabled"]
    entries = db.session.execute(select(AuditEntry.entry_bytes).where(AuditEntry.entity_id == "erp")).scalars()
    assert not any(secret.encode() in e or new.encode() in e for e in entries)  # only fingerprints in the log
    db.session.rollback()


def test_endpoint_refusals_are_problem_json(client: FlaskClient) -> None:
    seeded = seed()
    admin = logged_in(client, seeded, "admin")
    r = admin.post(API, {"id": "erp", "url": "ftp://erp.example/x"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json" and "URL" in r.get_json()["detail"]
    r = admin.post(API, {"id": "erp", "url": "https://erp.example/x", "secret": "mine"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert admin.post(API, {"id": "erp", "url": "https://erp.example/x"}).status_code == 201
    r = admin.post(API, {"id": "erp", "url": "https://erp.example/y"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    r = admin.post(f"{API}/nope/disable", {"reason": "x"})
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    r = admin.post(f"{API}/erp/disable", {})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    operator = logged_in(client, seeded, "operator")
    r = operator.get(API)
    assert r.status_code == 403 and r.mimetype == "application/problem+json"
    r = client.get(API, headers=_token(seeded.users["integrator"], ["integration.endpoints"]))
    assert r.status_code == 200 and [e["id"] for e in r.get_json()["endpoints"]] == ["erp"]


def test_pull_events_after_id_by_type_and_subject(client: FlaskClient) -> None:
    seeded = seed()
    for i, (kind, batch) in enumerate([("consumed", "B-1"), ("consumed", "B-2"), ("completed", "B-1")]):
        event_type = f"mes.material.{kind}.v1" if kind == "consumed" else "mes.batch.completed.v1"
        record(ACTOR, "test.fact", ("batch", batch), after={"i": i}, event=Event(event_type, "batch", batch, example_data(event_type, i=i)))
        db.session.commit()
    headers = _token(seeded.users["integrator"], ["integration.events"])
    r = client.get("/integration/v1/events", headers=headers)
    assert r.status_code == 200 and r.mimetype == "application/cloudevents-batch+json"
    events = r.get_json()
    assert [(e["subject"], e["sequence"]) for e in events] == [("batch/B-1", "1"), ("batch/B-2", "1"), ("batch/B-1", "2")]
    after = client.get(f"/integration/v1/events?after={events[0]['id']}", headers=headers).get_json()
    assert [e["id"] for e in after] == [e["id"] for e in events[1:]]
    typed = client.get("/integration/v1/events?type=mes.batch.completed.v1", headers=headers).get_json()
    assert [e["id"] for e in typed] == [events[2]["id"]]
    subject = client.get("/integration/v1/events?subject=batch/B-1", headers=headers).get_json()
    assert [e["id"] for e in subject] == [events[0]["id"], events[2]["id"]]
    r = client.get("/integration/v1/events?after=not-an-event", headers=headers)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    r = client.get("/integration/v1/events?limit=lots", headers=headers)
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = client.get("/integration/v1/events", headers=_token(seeded.users["integrator"], ["integration.endpoints"]))
    assert r.status_code == 403


def test_endpoint_cli_add_list_rotate_disable(app: Flask, database_url: str, tmp_path: Path) -> None:
    seeded = seed()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MES_") or k.startswith("MES_ARGON2_") or k == "MES_AUDIT_TAG_KEY_PATH"}
    env.update({"MES_DATABASE_URL": database_url, "MES_HOME": str(tmp_path / "home"), "MES_SECRET_KEY": "x",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"], "MES_LOG_LEVEL": "WARNING",
                "MES_CLI_PASSWORD": PASSWORD})
    db.session.remove()  # let the commands write (SQLite)

    def mes(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from mes.cli import main; main()", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])

    admin = seeded.users["admin"]
    r = mes("endpoint", "add", "qms", "--url", "https://qms.example/in", "--type", "mes.deviation.raised.v1",
            "--as", admin)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip().split()[-1]
    assert secret.startswith("whsec_") and "shown once" in r.stdout
    r = mes("endpoint", "list")
    assert r.returncode == 0 and "qms" in r.stdout and secret not in r.stdout and "mes.deviation.raised.v1" in r.stdout
    r = mes("endpoint", "rotate", "qms", "--as", admin)
    assert r.returncode == 0 and r.stdout.strip().split()[-1] not in (secret, "")
    r = mes("endpoint", "set-url", "qms", "--url", "https://qms2.example/in", "--as", admin)
    assert r.returncode == 0 and "https://qms2.example/in" in r.stdout, r.stderr
    r = mes("endpoint", "set-url", "qms", "--url", "ftp://qms2.example/in", "--as", admin)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = mes("endpoint", "disable", "qms", "--reason", "QMS migration", "--as", admin)
    assert r.returncode == 0 and "disabled qms" in r.stdout
    r = mes("endpoint", "disable", "qms", "--reason", "again", "--as", admin)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = mes("endpoint", "add", "erp", "--url", "https://erp.example/in", "--as", seeded.users["operator"])
    assert r.returncode == 1 and "may not" in r.stderr
    r = mes("relay", "--schedule", "soon")
    assert r.returncode == 2 and "comma-separated seconds" in r.stderr
    assert _actions("qms") == ["integration.endpoint.added", "integration.endpoint.secret_rotated",
                               "integration.endpoint.url_changed", "integration.endpoint.disabled"]
    r = mes("endpoint", "dead-letters")
    assert r.returncode == 0 and [json.loads(line) for line in r.stdout.splitlines()] == []
