"""Witnesses (spec §6): ``mes witness`` as a separate process on a loopback port, the MES
sending it every checkpoint, and verification against what the witness holds."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask

from mes.audit import checkpoint as notes
from mes.audit import checkpoint_guard, log, merkle
from mes.audit.database_check import export, verify_database, witnessed_note
from mes.audit.models import AuditCosignature
from mes.audit.verify import verify_export
from mes.db import db
from mes.witness import client
from mes.witness.cosignature import parse_witness_vkey, verify_cosignature
from tests.audit.test_tamper import _exec
from tests.test_audit_log import _append, _drop_triggers

WITNESS_NAME = "witness.test.example/w1"


@dataclass
class WitnessProcess:
    url: str
    vkey: str
    proc: subprocess.Popen

    def post(self, body: str) -> tuple[int, str, str]:
        req = urllib.request.Request(f"{self.url}/add-checkpoint", data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), exc.headers.get("Content-Type", "")


def start_witness(home: Path, log_vkey: str) -> WitnessProcess:
    """Start ``python -m mes.witness.server`` on a free loopback port; wait until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "log.vkey").write_text(log_vkey + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "mes.witness.server", "--home", str(home), "--name", WITNESS_NAME,
                             "--log-vkey", str(home / "log.vkey"), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # blocks until the server has bound its port
    second = proc.stdout.readline()
    assert first.startswith("witness ") and " listening on http://127.0.0.1:" in first, first + proc.stderr.read()
    url = first.split(" listening on ")[1].strip()
    vkey = second.strip().split("witness verifier key ")[1]
    deadline = time.monotonic() + 30
    while True:  # wait for the condition (it answers /healthz), not for a fixed time
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                raise
    return WitnessProcess(url, vkey, proc)


@pytest.fixture
def witness(app: Flask, tmp_path: Path) -> Iterator[WitnessProcess]:
    w = start_witness(tmp_path / "witness", log.audit_log().vkey())
    yield w
    client.stop_background(app)
    w.proc.terminate()
    w.proc.wait(timeout=30)


def _use(app: Flask, w: WitnessProcess) -> None:
    """Configure the MES to send its checkpoints to ``w``."""
    app.config["MES_AUDIT_WITNESSES"] = f"{w.url}={w.vkey}"


def _cosigned() -> str:
    """The newest witnessed note kept beside the key, after a synchronous submission (the
    background thread may have sent it first; the submission lock orders them)."""
    client.sync_witnesses()
    kept = dict(client.witnessed_checkpoints(log.audit_log()))
    assert len(kept) == 1, kept
    return next(iter(kept.values()))


def _checkpoint() -> log.AuditCheckpoint:
    cp = log.publish_checkpoint()
    db.session.commit()
    assert cp is not None
    return log.latest_checkpoint()


def test_witness_cosigns_each_checkpoint_with_a_consistency_proof(app: Flask, witness: WitnessProcess) -> None:
    _use(app, witness)
    _append(5)
    cp1 = _checkpoint()
    kept = _cosigned()
    key = parse_witness_vkey(witness.vkey)
    parsed = notes.parse_checkpoint(kept)
    assert parsed.size == 5 and kept.startswith(cp1.note)
    assert verify_cosignature(kept.split("\n")[-2], parsed.body, key) > 0
    _append(6, start=5)
    cp2 = _checkpoint()
    kept = _cosigned()  # old 5, a consistency proof from 5 to 11
    assert notes.parse_checkpoint(kept).size == cp2.size == 11
    assert client.sync_witnesses() == []  # nothing new to cosign
    assert witnessed_note(cp2) == kept  # what the API and exports carry
    rows = db.session.execute(db.select(AuditCosignature)).scalars().all()
    assert {r.checkpoint_id for r in rows} == {0, 1}
    # the witness's own store is not the MES database
    assert (Path(witness.proc.args[4]) / "witness.sqlite3").exists()
    assert verify_database().ok


def test_witness_protocol_answers(app: Flask, witness: WitnessProcess) -> None:
    _append(4)
    cp = _checkpoint()
    status, body, _ = witness.post(f"old 0\n\n{cp.note}")
    assert status == 200 and body.startswith("\u2014 " + WITNESS_NAME + " ") and body.endswith("\n")
    status, body, ctype = witness.post(f"old 0\n\n{cp.note}")  # stale old size
    assert status == 409 and body == "4\n" and ctype == "text/x.tlog.size"
    _append(4, start=4)
    cp2 = _checkpoint()
    wrong = base64.b64encode(b"\x01" * 32).decode()
    status, _, _ = witness.post(f"old 4\n{wrong}\n\n{cp2.note}")
    assert status == 422  # the consistency proof does not verify
    status, _, _ = witness.post(f"old 9\n\n{cp2.note}")
    assert status == 400  # old above the checkpoint's size
    forged = notes.sign_checkpoint(notes.checkpoint_body(cp2.note.split("\n")[0], 8, b"\x02" * 32, cp2.time),
                                   cp2.note.split("\n")[0], notes.Ed25519PrivateKey.generate())
    status, _, _ = witness.post(f"old 4\n\n{forged}")
    assert status == 403  # not signed by the log's key
    other = notes.sign_checkpoint(notes.checkpoint_body("other.example/mes/audit", 1, b"\x02" * 32, cp2.time),
                                  "other.example/mes/audit", notes.Ed25519PrivateKey.generate())
    assert witness.post(f"old 0\n\n{other}")[0] == 404
    proof = log.consistency_proof(4, 8)
    db.session.rollback()
    good = "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    assert witness.post(f"old 4\n{good}\n{cp2.note}")[0] == 200
    assert witness.post(f"old 4\n{good}\n{cp2.note}")[0] == 409  # the witness moved on to 8


def test_truncated_log_fails_verify_against_the_witness_even_without_local_copies(
        app: Flask, witness: WitnessProcess, backend: str) -> None:
    _use(app, witness)
    _append(10)
    _checkpoint()
    assert notes.parse_checkpoint(_cosigned()).size == 10
    _drop_triggers(backend)
    _exec("DELETE FROM audit_entries WHERE seq >= 7")
    _exec("DELETE FROM audit_tree_nodes WHERE level = 0 AND idx >= 7")
    _exec("DELETE FROM audit_checkpoints")
    al = log.audit_log()
    al.state_path.unlink()  # even the copies beside the key gone: the witness itself is asked
    for p in client.state_dir(al).glob("*.note"):
        p.unlink()
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 7, result.errors
    assert any("asked" in e for e in result.errors)


def test_export_carries_cosignatures_and_the_verifier_requires_them(app: Flask, witness: WitnessProcess,
                                                                    tmp_path: Path) -> None:
    _use(app, witness)
    _append(6)
    export(tmp_path / "x")
    out = tmp_path / "x"
    assert (out / "witnesses").read_text() == witness.vkey + "\n"
    assert WITNESS_NAME in (out / "checkpoint").read_text()
    assert verify_export(out).ok, verify_export(out).errors
    assert not verify_export(out, witnesses_required=2).ok
    note = (out / "checkpoint").read_bytes()
    last_line_start = note.rindex(b"\n", 0, len(note) - 1) + 1
    for i in range(last_line_start, len(note)):  # every byte of the cosignature line, and its newline
        for delta in (1, 2):
            changed = note[:i] + bytes([(note[i] + delta) % 256]) + note[i + 1:]
            (out / "checkpoint").write_bytes(changed)
            assert not verify_export(out).ok, (i, delta)
    (out / "checkpoint").write_bytes(note)
    w = (out / "witnesses").read_bytes()
    for i in range(len(w)):
        (out / "witnesses").write_bytes(w[:i] + bytes([(w[i] + 1) % 256]) + w[i + 1:])
        assert not verify_export(out).ok, i
    (out / "witnesses").write_bytes(w + b"\n")
    assert not verify_export(out).ok


def test_a_witness_that_is_down_delays_nothing_and_raises_an_alarm(app: Flask, tmp_path: Path) -> None:
    w = start_witness(tmp_path / "w", log.audit_log().vkey())
    w.proc.terminate()
    w.proc.wait(timeout=30)
    app.config["MES_AUDIT_WITNESSES"] = f"{w.url}={w.vkey}"
    _append(3)
    started = time.monotonic()
    _checkpoint()  # signs and commits without waiting for the witness
    assert time.monotonic() - started < 5
    results = client.sync_witnesses()
    assert results[0].status == 0 and "unreachable" in results[0].detail
    app.config["MES_AUDIT_WITNESS_MAX_AGE_SECONDS"] = 1
    _exec("SELECT 1")
    cp_time = log.latest_checkpoint().time
    db.session.rollback()
    while log.latest_checkpoint().time == cp_time and client.stale_witnesses(1) == []:
        db.session.rollback()
        if time.monotonic() - started > 30:
            break
        time.sleep(0.1)  # polling the condition: the checkpoint's age passes the 1 s limit
    assert client.stale_witnesses(1) == [WITNESS_NAME]
    assert checkpoint_guard.watch_log() is None  # the log itself is fine...
    db.session.rollback()
    from mes.users.models import Alarm

    alarms = db.session.query(Alarm).filter(Alarm.kind == "audit").all()
    client.stop_background(app)
    assert len(alarms) == 1 and WITNESS_NAME in alarms[0].message  # ...but the witness is behind


def test_merkle_consistency_proof_from_nodes_matches(app: Flask) -> None:
    _append(9)
    leaves = [merkle.leaf_hash(bytes(b)) for b in log.iter_entry_bytes()]
    for old in range(1, 9):
        assert log.consistency_proof(old, 9) == merkle.consistency_proof(old, leaves)
