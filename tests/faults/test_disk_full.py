"""The disk full under the SQLite default, for real: the database on a small tmpfs that the
test fills. A full disk is refused with 507 ("the database disk is full; nothing was
recorded"), never a 500, and records nothing of the step; ``/readyz`` turns red (write probe
and free space); free space below ``MES_DISK_FREE_MARGIN_MB`` raises the storage alarm
before that; when space returns the server records again by itself.

PostgreSQL's disk-full (SQLSTATE 53100) is mapped the same way (unit test below)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from sqlalchemy.exc import OperationalError

from mes.system.storage import DISK_FULL_DETAIL, DiskFull, disk_full_error
from tests.faults.kit import Operator, audit_verify, check_batch, seed_database, start_server, wait_for

MB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MB tmpfs (the container runs as root; mounting is how the fault is made real)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(path: Path, leave: int = 0) -> None:
    """Write ``path`` until the file system has ``leave`` bytes free (or none)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            st = os.statvfs(path)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0:
                return
            os.write(fd, b"\0" * min(room, MB))
    except OSError as exc:
        assert exc.errno == 28, exc
    finally:
        os.close(fd)


def _alarms(db_file: Path) -> list[str]:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT message FROM alarms WHERE kind = 'storage'")]


def _ready(base: str) -> int:
    return requests.get(f"{base}/readyz", timeout=10).status_code


def test_a_full_disk_is_refused_clearly_readyz_turns_red_and_the_server_recovers(
        small_disk: Path, tmp_path: Path, templates: dict[str, str]) -> None:
    home = tmp_path / "home"
    db_file = small_disk / "mes.sqlite3"
    shutil.copyfile(templates["sqlite"], db_file)
    url = f"sqlite:///{db_file}"
    seeded = seed_database(url, home, steps=12, work_orders=1, operators=1)
    with sqlite3.connect(db_file) as conn:  # no WAL space left over from seeding: the disk decides
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    margin_mb = max(1, (free - 2 * MB) // MB)  # the alarm comes once 2 MB more are used
    server = start_server(url, home, env={"MES_DISK_FREE_MARGIN_MB": str(margin_mb)})
    try:
        op = Operator(server.base, seeded["kiosks"][0], "B0", seeded["work_orders"][0])
        op.start()
        op.complete(0)
        # ready once the audit watch process has verified the log at start-up (/readyz says
        # "pending" until then)
        wait_for(lambda: _ready(server.base) == 200, 60, "the start-up verification")
        assert _alarms(db_file) == []

        # below the margin, not full: ready, and the storage alarm is raised once
        _fill(small_disk / "ballast", leave=(margin_mb * MB) - 512 * 1024)
        wait_for(lambda: _ready(server.base) == 200 and _alarms(db_file), 20, "the storage alarm")
        assert _ready(server.base) == 200 and len(_alarms(db_file)) == 1
        assert "MES_DISK_FREE_MARGIN_MB" in _alarms(db_file)[0]
        op.complete(1)

        # full: the next completion is refused with a clear problem, nothing recorded
        _fill(small_disk / "ballast-2")
        from mes.execution.sim_operator import ApiError

        refused = None
        for index in range(2, len(op.steps)):  # WAL pages the file still holds may take a few more
            try:
                op.complete(index)
            except ApiError as exc:
                refused = (index, exc)
                break
        assert refused is not None, "the full disk never refused a write"
        index, exc = refused
        assert exc.status == 507, exc.problem
        assert exc.problem["type"].endswith("/disk-full") and exc.problem["detail"] == DISK_FULL_DETAIL
        assert "nothing was recorded" in exc.problem["detail"]
        wait_for(lambda: _ready(server.base) == 503, 10, "/readyz red on a full disk")
        check_batch(url, op)  # the refused step: not completed, no audit entry, no record

        # space returns: the same step is recorded, /readyz green again, without a restart
        (small_disk / "ballast-2").unlink()
        (small_disk / "ballast").unlink()
        wait_for(lambda: _ready(server.base) == 200, 10, "/readyz green once space returns")
        op.complete(index)
        op.complete(index + 1)
        check_batch(url, op)
        assert server.proc.poll() is None
    finally:
        server.stop()
    verified = audit_verify(url, home)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "internal-error" not in server.log.read_text(errors="replace")


def test_sqlite_disk_full_maps_to_the_problem() -> None:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode, exc.sqlite_errorname = 13, "SQLITE_FULL"
    wrapped = OperationalError("INSERT ...", {}, exc)
    found = disk_full_error(wrapped)
    assert isinstance(found, DiskFull) and found.status == 507 and found.detail == DISK_FULL_DETAIL
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5
    assert disk_full_error(OperationalError("x", {}, locked)) is None


def test_postgresql_disk_full_53100_maps_to_the_problem() -> None:
    pg = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert pg.sqlstate == "53100"
    found = disk_full_error(OperationalError("INSERT ...", {}, pg))
    assert isinstance(found, DiskFull) and found.status == 507
    other = psycopg.errors.OutOfMemory("out of memory")  # 53200: not a full disk
    assert disk_full_error(OperationalError("x", {}, other)) is None
    chained = RuntimeError("wrapped")
    chained.__cause__ = pg
    assert disk_full_error(chained) is not None


def test_a_lost_database_connection_maps_to_503_and_other_errors_stay_internal() -> None:
    from mes.system.storage import DatabaseUnavailable, database_problem

    lost = OperationalError("SELECT ...", {}, psycopg.OperationalError("server closed the connection"),
                            connection_invalidated=True)
    found = database_problem(lost)
    assert isinstance(found, DatabaseUnavailable) and found.status == 503 and "Idempotency-Key" in found.detail
    assert database_problem(OperationalError("x", {}, psycopg.OperationalError("syntax"))) is None
    assert database_problem(ValueError("not a database error")) is None
    # the driver's own error, raised outside SQLAlchemy (rows fetched after a pipeline)
    raw = psycopg.OperationalError("consuming input failed: terminating connection due to administrator command")
    assert isinstance(database_problem(raw), DatabaseUnavailable)
    try:
        try:
            raise psycopg.OperationalError("the connection is closed")
        except psycopg.OperationalError as inner:
            raise RuntimeError("while saving the session") from inner
    except RuntimeError as wrapped:
        assert isinstance(database_problem(wrapped), DatabaseUnavailable)
    assert database_problem(psycopg.OperationalError("division by zero")) is None
    # a subclass per SQLSTATE: pg_terminate_backend's 57P01, wrapped without "invalidated"
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert isinstance(database_problem(OperationalError("UPDATE ...", {}, shutdown)), DatabaseUnavailable)
    assert database_problem(OperationalError("x", {}, psycopg.errors.DivisionByZero("division by zero"))) is None
