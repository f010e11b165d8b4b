"""The release in two steps (issue 19): the eBR embeds the *witnessed* release checkpoint.
With a real witness process the embedded checkpoint carries its cosignature; with the witness
down the decision stands and the eBR is pending (said plainly by the API and the QA page)
until the background job finishes it, exactly once; a release interrupted between its two
transactions is finished by the same job."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from mes import jobs
from mes.audit import checkpoint as notes
from mes.audit import log
from mes.audit.models import AuditEntry
from mes.audit.verify import verify_export_files
from mes.db import db
from mes.ebr import finishing, signing
from mes.ebr import operations as eo
from mes.ebr.models import EbrDocument
from mes.integration.models import OutboxEvent
from mes.users.models import Alarm
from mes.witness import client as witness_client
from mes.witness.cosignature import parse_witness_vkey, verify_cosignature
from tests.audit.test_witness import WITNESS_NAME, WitnessProcess, start_witness
from tests.ebr.helpers import released_batch
from tests.helpers import logged_in

ROOT = Path(__file__).resolve().parents[2]
MES = [sys.executable, "-c", "from mes.cli import main; main()"]


@pytest.fixture
def witnesses(app: Flask, tmp_path: Path) -> Iterator[list[WitnessProcess]]:
    """Witness processes a test starts (``start(home)``), all stopped at the end."""
    started: list[WitnessProcess] = []
    yield started
    witness_client.stop_background(app)
    for w in started:
        w.proc.terminate()
        w.proc.wait(timeout=30)


def _start(started: list[WitnessProcess], home: Path) -> WitnessProcess:
    w = start_witness(home, log.audit_log().vkey())
    started.append(w)
    return w


def _stopped(started: list[WitnessProcess], home: Path) -> WitnessProcess:
    """A witness that ran once (its key made) and is down: its URL refuses connections."""
    w = _start(started, home)
    w.proc.terminate()
    w.proc.wait(timeout=30)
    return w


def _use(app: Flask, w: WitnessProcess, wait_seconds: int = 10) -> None:
    app.config["MES_AUDIT_WITNESSES"] = f"{w.url}={w.vkey}"
    app.config["MES_EBR_WITNESS_WAIT_SECONDS"] = wait_seconds


def _mes(app: Flask, w: WitnessProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``mes`` command on this test's instance with ``w`` configured as its witness."""
    db.session.close()  # SQLite: the command writes; no reader of ours holds on
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update({"MES_HOME": app.config["MES_HOME"], "MES_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                "MES_SECRET_KEY": "cli-test", "MES_LOG_LEVEL": "WARNING",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"], "MES_AUDIT_WITNESSES": f"{w.url}={w.vkey}",
                "MES_AUDIT_TAG_KEY_PATH": os.environ["MES_AUDIT_TAG_KEY_PATH"],
                **{k: v for k, v in os.environ.items() if k.startswith("MES_EBR_")}})
    return subprocess.run([*MES, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _after(batch_id: str, action: str) -> list[dict[str, Any]]:
    rows = db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action == action).order_by(AuditEntry.seq)).scalars()
    return [json.loads(bytes(r))["after"] for r in rows]


def _released_events(batch_id: str) -> list[dict[str, Any]]:
    rows = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == "mes.batch.released.v1")).scalars()
    return [d for d in (json.loads(bytes(e.body))["data"] for e in rows) if d["batch_id"] == batch_id]


def _bundle(pdf: bytes) -> dict[str, bytes]:
    return eo.unzip_bundle(eo.attachments(pdf)[eo.BUNDLE_NAME])


def _cosigned_by(note: str, vkey: str) -> bool:
    key = parse_witness_vkey(vkey)
    body = notes.parse_checkpoint(note).body
    lines = [ln for ln in note.split("\n") if ln.startswith(f"{notes.SIGNATURE_PREFIX}{key.name} ")]
    return len(lines) == 1 and verify_cosignature(lines[0], body, key) > 0


def _assert_finished_once(batch_id: str) -> EbrDocument:
    """One stored eBR, one ebr.generated entry and one released event carrying the PDF's SHA-256."""
    db.session.rollback()
    doc = db.session.get(EbrDocument, batch_id)
    assert doc is not None and hashlib.sha256(doc.pdf).hexdigest() == doc.sha256
    assert [a["sha256"] for a in _after(batch_id, "ebr.generated")] == [doc.sha256]
    assert [e["ebr_sha256"] for e in _released_events(batch_id)] == [doc.sha256]
    assert db.session.execute(select(func.count()).select_from(EbrDocument).where(
        EbrDocument.batch_id == batch_id)).scalar() == 1
    return doc


def test_the_ebr_embeds_the_witness_cosignature_of_its_release_checkpoint(
        app: Flask, monkeypatch, tmp_path: Path, witnesses: list[WitnessProcess]) -> None:
    w = _start(witnesses, tmp_path / "witness")
    _use(app, w)
    _, batch_id = released_batch(monkeypatch)
    doc = _assert_finished_once(batch_id)  # within the release request: the witness answered
    (decision,) = _after(batch_id, "batch.released")
    files = _bundle(doc.pdf)
    note = files["checkpoint"].decode("utf-8")
    # the embedded checkpoint is the release checkpoint itself, with the witness's valid cosignature
    assert notes.parse_checkpoint(note).size == decision["release_checkpoint_size"]
    assert _cosigned_by(note, w.vkey)
    assert json.loads(files["proofs.json"])["checkpoint"] == note
    assert json.loads(files["checkpoints.jsonl"].splitlines()[-1]) == note
    assert files["witnesses"].decode() == w.vkey + "\n"
    (generated,) = _after(batch_id, "ebr.generated")
    assert generated["witnesses_cosigned"] == [WITNESS_NAME] and generated["witnesses_missing"] == []
    assert generated["release_checkpoint_size"] == generated["checkpoint_size"] == decision["release_checkpoint_size"]
    # the eBR verifier with the witness trusted, and the independent export verifier
    ca = signing.paths_from(app.config).ca_cert.read_bytes()
    report = eo.verify_pdf(doc.pdf, ca, trusted_witnesses=[w.vkey])
    assert report.ok and f"ok   release checkpoint cosigned by witness {WITNESS_NAME}" in report.lines()
    result = verify_export_files(files)
    assert result.ok and result.batch == batch_id, result.summary()
    other = start_witness(tmp_path / "other", log.audit_log().vkey())  # a trusted witness that never cosigned it
    witnesses.append(other)
    assert not eo.verify_pdf(doc.pdf, ca, trusted_witnesses=[w.vkey, other.vkey]).ok

    # `mes ebr verify` with the witness configured (so trusted) passes
    pdf_file = tmp_path / "ebr.pdf"
    pdf_file.write_bytes(doc.pdf)
    done = _mes(app, w, "ebr", "verify", str(pdf_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok   release checkpoint cosigned by witness {WITNESS_NAME}" in done.stdout


def test_with_the_witness_down_the_release_stands_and_the_job_finishes_the_ebr_once_it_cosigns(
        app: Flask, client, monkeypatch, tmp_path: Path, witnesses: list[WitnessProcess]) -> None:
    down = _stopped(witnesses, tmp_path / "witness")
    _use(app, down, wait_seconds=1)
    world, batch_id = released_batch(monkeypatch)
    # the decision is recorded; no eBR, no ebr.generated, no released event yet
    db.session.rollback()
    assert db.session.get(EbrDocument, batch_id) is None
    assert len(_after(batch_id, "batch.released")) == 1 and _after(batch_id, "ebr.generated") == []
    assert _released_events(batch_id) == []
    assert finishing.ebr_status(batch_id)["waiting_for"] == [WITNESS_NAME]
    # the API and the QA page say it plainly
    db.session.commit()
    qa = logged_in(client, world.seeded, "qa")
    r = qa.get(f"/api/v1/batches/{batch_id}/ebr.pdf")
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert f"waiting for witness {WITNESS_NAME}" in r.get_json()["detail"]
    page = qa.get(f"/qa/batches/{batch_id}").get_data(as_text=True)
    assert "is being finished" in page and f"waiting for witness {WITNESS_NAME}" in page
    done = _mes(app, down, "ebr", "export", batch_id, "--out", str(tmp_path / "ebr.pdf"))
    assert done.returncode == 1 and f"waiting for witness {WITNESS_NAME}" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "ebr.pdf").exists()
    db.session.rollback()
    # the job leaves it while the witness is down (the limit is far)
    assert finishing.finish_pending() == []
    assert db.session.get(EbrDocument, batch_id) is None

    up = _start(witnesses, tmp_path / "witness")  # the same witness (its key and store) back, on a new port
    assert up.vkey == down.vkey
    _use(app, up)
    db.session.rollback()  # the job's own session needs SQLite's write lock
    assert jobs.finish_pending_releases(app) == [batch_id]
    assert jobs.finish_pending_releases(app) == []
    doc = _assert_finished_once(batch_id)
    (decision,) = _after(batch_id, "batch.released")
    note = _bundle(doc.pdf)["checkpoint"].decode("utf-8")
    assert notes.parse_checkpoint(note).size == decision["release_checkpoint_size"] and _cosigned_by(note, up.vkey)
    assert _after(batch_id, "ebr.generated")[0]["witnesses_missing"] == []
    ca = signing.paths_from(app.config).ca_cert.read_bytes()
    assert eo.verify_pdf(doc.pdf, ca, trusted_witnesses=[up.vkey]).ok


def test_past_the_max_wait_the_ebr_is_generated_naming_the_missing_witness_with_an_alarm(
        app: Flask, monkeypatch, tmp_path: Path, witnesses: list[WitnessProcess]) -> None:
    down = _stopped(witnesses, tmp_path / "witness")
    _use(app, down, wait_seconds=0)
    world, batch_id = released_batch(monkeypatch)
    assert finishing.finish_pending() == []
    app.config["MES_EBR_WITNESS_MAX_WAIT_SECONDS"] = 60
    world.clock.advance(61)
    assert finishing.finish_pending() == [batch_id]
    assert finishing.finish_pending() == []
    doc = _assert_finished_once(batch_id)
    (generated,) = _after(batch_id, "ebr.generated")
    assert generated["witnesses_missing"] == [WITNESS_NAME] and generated["witnesses_cosigned"] == []
    assert json.loads(eo.attachments(doc.pdf)[eo.JSON_NAME])["release_witnesses"] == {
        "cosigned": [], "missing": [WITNESS_NAME]}
    alarms = db.session.execute(select(Alarm.message).where(Alarm.kind == "audit")).scalars().all()
    assert any(batch_id in m and WITNESS_NAME in m for m in alarms), alarms
    # the bundle lists only the witnesses whose cosignature it carries: it still verifies;
    # the eBR verifier told to trust the missing witness says so
    ca = signing.paths_from(app.config).ca_cert.read_bytes()
    assert verify_export_files(_bundle(doc.pdf)).ok
    assert eo.verify_pdf(doc.pdf, ca).ok
    report = eo.verify_pdf(doc.pdf, ca, trusted_witnesses=[down.vkey])
    assert f"FAIL release checkpoint cosigned by witness {WITNESS_NAME}" in report.lines()


def test_a_release_interrupted_between_its_two_transactions_is_finished_by_the_job(app: Flask, monkeypatch) -> None:
    generate, calls = eo.generate, []

    def dies_once(*args: Any, **kwargs: Any) -> eo.Generated:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the server process died here")
        return generate(*args, **kwargs)

    monkeypatch.setattr(eo, "generate", dies_once)
    _, batch_id = released_batch(monkeypatch)
    db.session.rollback()
    assert db.session.get(EbrDocument, batch_id) is None and _released_events(batch_id) == []
    assert "is being finished" in finishing.ebr_status(batch_id)["detail"]
    db.session.rollback()  # the job's own session needs SQLite's write lock
    assert jobs.finish_pending_releases(app) == [batch_id]
    assert jobs.finish_pending_releases(app) == []
    doc = _assert_finished_once(batch_id)
    assert doc.created_by == finishing.EBR_FINISHER.id
    ca = signing.paths_from(app.config).ca_cert.read_bytes()
    assert eo.verify_pdf(doc.pdf, ca).ok


def test_a_pending_ebr_that_keeps_failing_raises_one_alarm_after_five_minutes(app: Flask, monkeypatch) -> None:
    """A time-stamp authority down (or a key unreadable) after QA's decision: the job logs and
    retries; once the decision is older than STUCK_ALARM_AFTER, one audit alarm names the
    batch (not one per poll), and the eBR is made when the fault is gone."""
    from datetime import timedelta

    from mes.errors import Conflict

    generate, broken = eo.generate, [True]

    def authority_down(*args: Any, **kwargs: Any) -> eo.Generated:
        if broken[0]:
            raise Conflict("The electronic batch record cannot be signed: the time-stamp authority does not answer.")
        return generate(*args, **kwargs)

    monkeypatch.setattr(eo, "generate", authority_down)
    _, batch_id = released_batch(monkeypatch)
    db.session.rollback()

    def alarms() -> list[dict[str, Any]]:
        found = db.session.execute(select(Alarm.details).where(Alarm.message.contains(
            f"batch {batch_id} cannot be made"))).scalars().all()
        db.session.rollback()  # the job's own session needs SQLite's write lock
        return list(found)

    assert jobs.finish_pending_releases(app) == [] and alarms() == []  # just decided: logged, retried
    monkeypatch.setattr(finishing, "STUCK_ALARM_AFTER", timedelta(0))
    assert jobs.finish_pending_releases(app) == []
    assert jobs.finish_pending_releases(app) == []
    [details] = alarms()
    assert details["batch"] == batch_id and "time-stamp authority" in details["error"]
    broken[0] = False
    assert jobs.finish_pending_releases(app) == [batch_id]
    _assert_finished_once(batch_id)
