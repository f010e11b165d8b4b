"""The MES side of witnessing (spec §6): send every checkpoint, keep the cosignatures.

Configured by ``MES_AUDIT_WITNESSES`` (space-separated ``<url>=<witness verifier key>``).
After a transaction that signed a checkpoint commits, the checkpoint goes to every witness
on a background thread with the RFC 9162 consistency proof from the size the witness last
cosigned: a witness that is down delays nothing; the thread retries, and the checkpoint
watch (:func:`mes.audit.checkpoint_guard.watch_log`) resubmits and raises an alarm when a
witness's newest cosignature is older than ``MES_AUDIT_WITNESS_MAX_AGE_SECONDS``.

Each valid cosignature is kept twice: the witnessed note (the log's note plus the witness's
line) in ``witness-state/<witness>.note`` beside the signing key (outside the database, so
``mes audit verify`` can require the log to reach and agree with it), and the line in
``audit_cosignatures`` (so exports carry it).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from mes.audit import checkpoint as notes
from mes.witness.cosignature import WitnessKey, parse_witness_vkey, verify_cosignature

logger = logging.getLogger("mes.witness")

TIMEOUT_SECONDS = 5
WITNESS_LIST_FILE = "audit-witnesses"


@dataclass(frozen=True)
class WitnessConfig:
    url: str
    key: WitnessKey

    @property
    def file_name(self) -> str:
        return self.key.name.replace("/", "_")


def configured_witnesses(config: Any | None = None) -> list[WitnessConfig]:
    """The witnesses of ``MES_AUDIT_WITNESSES``; a malformed entry is a configuration error."""
    config = current_app.config if config is None else config
    spec = config.get("MES_AUDIT_WITNESSES") or ""
    if not spec and config.get("MES_AUDIT_KEY_PATH"):
        # the plant's witness list kept beside the key (``audit-witnesses``: one <url>=<vkey> a line),
        # so every `mes` command of this MES_HOME uses the same witnesses (the demo writes it)
        listed = Path(config["MES_AUDIT_KEY_PATH"]).parent / WITNESS_LIST_FILE
        if listed.is_file():
            spec = listed.read_text("utf-8")
    out = []
    for item in spec.split():
        url, sep, vkey = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"MES_AUDIT_WITNESSES: {item!r} is not <url>=<witness verifier key>")
        out.append(WitnessConfig(url.rstrip("/"), parse_witness_vkey(vkey)))
    return out


def state_dir(al: Any) -> Path:
    """Where the newest cosigned note of each witness is kept: beside the signing key."""
    return Path(al.key_path).parent / "witness-state"


def witnessed_checkpoints(al: Any) -> list[tuple[str, str]]:
    """``(witness name, newest cosigned checkpoint note)`` for every witness heard from."""
    folder = state_dir(al)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.note")):
        text = p.read_text("utf-8")
        out.append((p.stem, text))
    return out


def _kept(al: Any, witness: WitnessConfig) -> notes.Checkpoint | None:
    path = state_dir(al) / f"{witness.file_name}.note"
    try:
        return notes.parse_checkpoint(path.read_text("utf-8"))
    except (FileNotFoundError, notes.CheckpointError):
        return None


def _keep(al: Any, witness: WitnessConfig, note: str, line: str) -> None:
    folder = state_dir(al)
    folder.mkdir(parents=True, exist_ok=True)
    new = notes.parse_checkpoint(note)
    old = _kept(al, witness)
    if old is not None and old.size > new.size:
        return
    target = folder / f"{witness.file_name}.note"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(note + line, encoding="utf-8")
    os.replace(tmp, target)


@dataclass(frozen=True)
class Submission:
    """What one witness answered."""

    witness: str
    status: int
    detail: str


def _post(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(f"{url}/add-checkpoint", data=body, method="POST",
                                 headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310 - configured URL
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def submit(witness: WitnessConfig, note: str, checkpoint_id: int) -> Submission:
    """Send one checkpoint (app context) with the consistency proof from the witness's size;
    on 409 retry once from the size it names. Keeps a valid cosignature."""
    from mes.audit import log as audit
    from mes.audit.alarms import raise_audit_alarm
    from mes.audit.models import AuditCosignature
    from mes.db import db, utcnow

    al = audit.audit_log()
    cp = notes.parse_checkpoint(note)
    kept = _kept(al, witness)
    old = 0 if kept is None else kept.size
    status, text = 0, ""
    for _ in range(2):
        if old > cp.size:
            return Submission(witness.key.name, 409, f"the witness holds size {old}, larger than {cp.size}")
        proof = [] if old in (0, cp.size) else audit.consistency_proof(old, cp.size)
        body = f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n" + note
        status, text = _post(witness.url, body.encode("utf-8"))
        if status == 409 and text.strip().isdigit() and int(text.strip()) != old:
            old = int(text.strip())
            continue
        break
    db.session.rollback()
    if status == 200:
        line = next((ln + "\n" for ln in text.split("\n") if ln.startswith(f"{notes.SIGNATURE_PREFIX}{witness.key.name} ")), "")
        try:
            verify_cosignature(line, cp.body, witness.key)
        except notes.CheckpointError as exc:
            return Submission(witness.key.name, 502, f"the witness's answer is not its cosignature: {exc}")
        _keep(al, witness, note, line)
        last = db.session.execute(db.select(db.func.max(AuditCosignature.id))).scalar()
        db.session.add(AuditCosignature(id=(last or 0) + 1, checkpoint_id=checkpoint_id, witness=witness.key.name,
                                        line=line, received_at=utcnow()))
        db.session.commit()
        return Submission(witness.key.name, 200, line)
    if status == 422 or status == 409:
        raise_audit_alarm(f"Witness {witness.key.name} refused checkpoint {cp.size} ({status}): {text.strip()}",
                          {"witness": witness.key.name, "size": cp.size, "status": status})
    return Submission(witness.key.name, status, text.strip())


_submit_lock = threading.Lock()


def sync_witnesses() -> list[Submission]:
    """Send the latest checkpoint to every witness that has not cosigned it (app context).
    Errors (a witness down) are returned, not raised. One submission at a time per process
    (the background thread and an export may both ask). Ends the caller's transaction
    first: on SQLite an open one holds the write lock the other submitter needs."""
    from mes.db import db

    db.session.rollback()
    with _submit_lock:
        return _sync_witnesses()


def _sync_witnesses() -> list[Submission]:
    from mes.audit import log as audit
    from mes.db import db

    cp = audit.latest_checkpoint()
    db.session.rollback()
    if cp is None:
        return []
    out = []
    for witness in configured_witnesses():
        kept = _kept(audit.audit_log(), witness)
        if kept is not None and kept.size >= cp.size:
            continue
        try:
            out.append(submit(witness, cp.note, cp.id))
        except (OSError, urllib.error.URLError) as exc:
            db.session.rollback()
            out.append(Submission(witness.key.name, 0, f"unreachable: {exc}"))
    return out


def cosigners(checkpoint_id: int) -> set[str]:
    """The witnesses whose cosignature of checkpoint ``checkpoint_id`` is kept (app context)."""
    from mes.audit.models import AuditCosignature
    from mes.db import db

    return set(db.session.execute(db.select(AuditCosignature.witness).where(
        AuditCosignature.checkpoint_id == checkpoint_id)).scalars())


def submit_checkpoint(checkpoint_id: int) -> list[Submission]:
    """Send checkpoint ``checkpoint_id`` itself, not the latest, to every configured witness
    that has not cosigned it and still can (it holds no larger checkpoint): the eBR's release
    checkpoint gets its cosignatures. A witness that has moved past it answers nothing here
    (status 409 in the result). Under the submission lock, as :func:`sync_witnesses`."""
    from mes.audit import log as audit
    from mes.audit.models import AuditCheckpoint
    from mes.db import db

    db.session.rollback()
    with _submit_lock:
        cp = db.session.get(AuditCheckpoint, checkpoint_id)
        if cp is None:
            return []
        note, size, done = cp.note, cp.size, cosigners(checkpoint_id)
        db.session.rollback()
        out = []
        for witness in configured_witnesses():
            if witness.key.name in done:
                continue
            kept = _kept(audit.audit_log(), witness)
            if kept is not None and kept.size > size:
                out.append(Submission(witness.key.name, 409, f"the witness holds size {kept.size}, larger than {size}"))
                continue
            try:
                out.append(submit(witness, note, checkpoint_id))
            except (OSError, urllib.error.URLError) as exc:
                db.session.rollback()
                out.append(Submission(witness.key.name, 0, f"unreachable: {exc}"))
        return out


_pending = threading.Event()
_worker_lock = threading.Lock()


def submit_in_background(al: Any, note: str) -> None:
    """After a checkpoint was committed: wake the app's witness thread (never blocks)."""
    try:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:
        return
    with app.app_context():
        if not configured_witnesses():
            return
    _ensure_worker(app)
    app.extensions["mes_witness_wake"].set()


def _ensure_worker(app: Flask) -> None:
    with _worker_lock:
        if "mes_witness_wake" in app.extensions:
            return
        wake = threading.Event()
        stop = threading.Event()
        app.extensions["mes_witness_wake"] = wake
        app.extensions["mes_witness_stop"] = stop

        def loop() -> None:
            from mes.db import db

            delay = 1.0
            while True:
                wake.wait(timeout=delay)
                wake.clear()
                if stop.is_set():
                    return
                with app.app_context():
                    try:
                        results = sync_witnesses()
                    except Exception:  # noqa: BLE001 - the thread must not die
                        logger.exception("witness submission failed")
                        results = [Submission("?", 0, "error")]
                    finally:
                        db.session.remove()
                behind = [r for r in results if r.status != 200]
                delay = min(delay * 2, 60.0) if behind else 30.0

        thread = threading.Thread(target=loop, name="mes-witness", daemon=True)
        app.extensions["mes_witness_thread"] = thread
        thread.start()


def stop_background(app: Flask) -> None:
    """Stop the app's witness thread (its app is going away) and wait for it."""
    stop = app.extensions.get("mes_witness_stop")
    thread = app.extensions.get("mes_witness_thread")
    if stop is None or thread is None:
        return
    stop.set()
    app.extensions["mes_witness_wake"].set()
    thread.join(timeout=30)


def stale_witnesses(max_age_seconds: int) -> list[str]:
    """Witnesses whose newest cosignature does not cover a checkpoint that is older than
    ``max_age_seconds`` (for the alarm)."""
    from datetime import timedelta

    from mes.audit import log as audit
    from mes.db import utcnow

    cp = audit.latest_checkpoint()
    if cp is None:
        return []
    out = []
    for witness in configured_witnesses():
        kept = _kept(audit.audit_log(), witness)
        if (kept is None or kept.size < cp.size) and utcnow() - cp.time > timedelta(seconds=max_age_seconds):
            out.append(witness.key.name)
    return out


def fetch_witnessed(witness: WitnessConfig, origin: str) -> str | None:
    """Ask the witness itself for the newest checkpoint it cosigned (``GET /checkpoint/<origin>``);
    returned only if its cosignature verifies. None when the witness cannot be reached."""
    from urllib.parse import quote

    try:
        with urllib.request.urlopen(f"{witness.url}/checkpoint/{quote(origin, safe='')}",  # noqa: S310
                                    timeout=TIMEOUT_SECONDS) as resp:
            text = resp.read().decode("utf-8")
    except (OSError, urllib.error.URLError, UnicodeDecodeError):
        return None
    try:
        cp = notes.parse_checkpoint(text)
        verify_cosignature(next(ln for ln in text.split("\n")
                                if ln.startswith(f"{notes.SIGNATURE_PREFIX}{witness.key.name} ")), cp.body, witness.key)
    except (notes.CheckpointError, StopIteration):
        return None
    return text


def live_witnessed_checkpoints(al: Any) -> list[tuple[str, str]]:
    """For ``mes audit verify``: each configured witness's own newest cosigned checkpoint."""
    out = []
    for witness in configured_witnesses():
        text = fetch_witnessed(witness, al.key_name)
        if text is not None:
            out.append((f"{witness.key.name} (asked)", text))
    return out
