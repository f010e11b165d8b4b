"""The audit watch runs in a process of its own beside the worker (mes.audit.watcher): its
verdicts reach the worker's /readyz, the checkpoints it publishes reach the worker's cached
size, it ends with the worker and is started again when it dies."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select, text

from mes.audit import log
from mes.audit.models import AuditCheckpoint
from mes.audit.watcher import AuditWatch
from mes.db import db
from mes.system.readiness import audit_status
from tests.faults.kit import wait_for
from tests.test_audit_log import _drop_triggers

ACTOR = log.Actor("u-1", "Una User", "operator", "K-1")


def _append(n: int) -> None:
    for i in range(n):
        log.record(ACTOR, "batch.step.completed", ("batch_step", f"B/{i}"), batch="B", after={"value": f"{i}.0"})
        db.session.commit()


@pytest.fixture
def watch(app: Flask) -> Iterator[AuditWatch]:
    w = AuditWatch(app)
    yield w
    w.stop()


def test_the_audit_watch_runs_in_its_own_process_and_its_verdict_reaches_readyz(app: Flask, client,
                                                                                 watch: AuditWatch) -> None:
    _append(5)
    db.session.remove()
    assert client.get("/readyz").status_code == 503  # not verified yet
    watch.start()
    wait_for(lambda: audit_status().state == "ok", 60, "the start-up verification")
    assert watch.pid is not None and watch.pid != os.getpid()
    assert client.get("/readyz").status_code == 200


def test_a_tampered_log_found_by_the_watch_process_turns_the_workers_readyz_red(app: Flask, client, backend: str,
                                                                                watch: AuditWatch) -> None:
    _append(5)
    db.session.remove()
    _drop_triggers(backend)
    with db.engine.begin() as conn:
        data = bytes(conn.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = 2")).scalar_one())
        conn.execute(text("UPDATE audit_entries SET entry_bytes = :b WHERE seq = 2"),
                     {"b": data.replace(b"2.0", b"9.0")})
    watch.start()
    wait_for(lambda: audit_status().state == "failed", 60, "the verdict")
    assert "first bad seq 2" in audit_status().detail
    r = client.get("/readyz")
    assert r.status_code == 503


def test_the_checkpoint_the_watch_process_publishes_reaches_the_workers_cached_size(app: Flask,
                                                                                   watch: AuditWatch) -> None:
    """Woken by the worker (a commit brought the log near a checkpoint), the watch process
    publishes; the worker's cached size follows, so its requests do not publish again early."""
    _append(3)
    db.session.remove()
    watch.start()
    wait_for(lambda: audit_status().state == "ok", 60, "the start-up verification")
    log.audit_log().last_checkpoint = (0, None)
    watch.wake()
    wait_for(lambda: (log.audit_log().last_checkpoint or (0,))[0] == 3, 60, "the published checkpoint")
    sizes = db.session.execute(select(AuditCheckpoint.size)).scalars().all()
    db.session.remove()
    assert sizes == [3]


def test_the_watch_process_ends_with_its_input_and_is_started_again_when_it_dies(app: Flask,
                                                                                 watch: AuditWatch) -> None:
    import signal

    _append(2)
    db.session.remove()
    watch.start()
    wait_for(lambda: watch.pid is not None, 60, "the watch process")
    first = watch.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: watch.pid not in (None, first), 60, "a new watch process")
    second = watch.pid
    assert second is not None
    proc = watch._proc
    assert proc is not None
    watch.stop()  # closes its input: it ends by itself, not killed
    assert proc.returncode == 0
    assert watch.pid is None
