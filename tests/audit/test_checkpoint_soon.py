"""Checkpoints off the floor's requests (issues 13 and 14, the execution benchmark): the
background thread publishes before a request has to, holds the append lock only for what
was appended after its own check, and never waits for a pooled connection while holding
it. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text

from mes.audit import checkpoint_guard, log
from mes.audit.database_check import verify_database
from mes.db import db
from tests.conftest import base_config
from tests.test_audit_log import _append, _drop_triggers


@pytest.fixture
def soon(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """Checkpoints due at 20 entries, wanted from 5: a log of 10 under a checkpoint."""
    monkeypatch.setattr(log, "CHECKPOINT_EVERY_ENTRIES", 20)
    monkeypatch.setattr(log, "CHECKPOINT_SOON_ENTRIES", 5)
    _append(10)
    log.publish_checkpoint()
    db.session.commit()
    log.checkpoint_wanted().clear()
    return app


def test_a_commit_near_a_checkpoint_wakes_the_background_and_it_publishes(soon: Flask) -> None:
    _append(4, start=10)
    assert not log.checkpoint_wanted().is_set()  # 4 entries past the last: not near yet
    _append(1, start=14)
    assert log.checkpoint_wanted().is_set()  # set after the commit, not before
    assert log.latest_checkpoint().size == 10  # no request signed it
    assert checkpoint_guard.publish_soon() is None
    assert log.latest_checkpoint().size == 15 == log.tree_size()
    # woken again (by the other server, say) with nothing near: nothing more is signed
    assert checkpoint_guard.publish_soon() is None
    assert log.latest_checkpoint().size == 15
    assert verify_database().ok


def test_a_request_still_publishes_at_the_hard_limit_when_the_background_is_behind(soon: Flask) -> None:
    _append(20, start=10)  # nobody answers the wake-up
    assert log.latest_checkpoint().size == 30  # signed in the transaction of the entry 20 past the last


def test_the_background_signs_only_what_it_verified(soon: Flask, backend: str) -> None:
    """Rows verified outside the lock are not read again under it: the root is computed from
    the verified leaves, so the checkpoint vouches for the entries as verified, and an entry
    edited in between fails verification against it."""
    _append(6, start=10)
    verified_root = log.root(16)
    checkpoint_guard.check_new_entries()  # the check outside the lock
    db.session.rollback()
    _drop_triggers(backend)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET leaf_hash = :h WHERE seq = 12"), {"h": b"\x00" * 32})
    cp = log.publish_checkpoint(reread_verified=False)
    assert cp is not None and cp.size == 16 and cp.root == verified_root
    db.session.commit()
    result = verify_database()
    assert not result.ok and result.first_bad_seq == 12


def test_the_check_before_a_checkpoint_needs_no_pooled_connection(database_url: str, tmp_path: Path) -> None:
    """One pooled connection, held by the transaction that appends and signs: the check of
    the records before signing reads through a connection of its own, so the checkpoint is
    signed at once instead of after the pool's timeout (or never)."""
    from mes.app import create_app
    from mes.audit.reconcile import watch_state
    from mes.db import engine_options

    home = tmp_path / "home"
    home.mkdir()
    options = {**engine_options(database_url), "pool_size": 1, "max_overflow": 0, "pool_timeout": 5}
    app = create_app({**base_config(home, database_url), "SQLALCHEMY_ENGINE_OPTIONS": options})
    with app.app_context():
        try:
            _append(10)
            assert checkpoint_guard.watch_log() is None  # the watch has read the log
            assert watch_state().expected.size == 10
            log.record(log.Actor.system("test"), "batch.step.completed", ("batch_step", "B-1/10"), batch="B-1",
                       after={"value": "10.50", "unit": "kg"})
            started = time.monotonic()
            cp = log.publish_checkpoint()  # in the appending transaction, holding the lock
            assert cp is not None and cp.size == 11
            db.session.commit()
            assert time.monotonic() - started < 5
        finally:
            db.session.remove()
            db.engine.dispose()
