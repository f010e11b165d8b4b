"""Shared pieces of the benchmarks: a throw-away app on SQLite or PostgreSQL, percentiles."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("MES_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    return ap


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds."""
    ordered = sorted(samples_s)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "n": 0}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5) * 1000, 3), "p99_ms": round(pick(0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 3), "n": len(ordered)}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@contextmanager
def bench_database(backend: str) -> Iterator[str]:
    """A fresh, empty database URL (deleted afterwards)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        return
    name = f"mes_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_bench_app(url: str, home: Path):
    """A migrated app on ``url`` with its instance folder in ``home``."""
    from mes.app import create_app
    from mes.cli import upgrade_database

    home.mkdir(parents=True, exist_ok=True)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "MES_HOME": str(home), "SECRET_KEY": "bench",
                      "MES_AUDIT_KEY_PATH": str(home / "audit-signing.key"), "SESSION_COOKIE_SECURE": False,
                      "MES_LOG_LEVEL": "ERROR"})
    upgrade_database(app)
    return app


BARE_TABLE = "bench_bare"


def create_bare_table(conn: Any, backend: str, *, indexed: bool = False) -> None:
    """A plain table shaped like audit_entries, without chain, tree or triggers; with
    ``indexed`` it also has audit_entries' secondary indexes (same rows, same index work)."""
    blob = "BYTEA" if backend == "postgresql" else "BLOB"
    conn.execute(text(f"CREATE TABLE {BARE_TABLE} (seq BIGINT PRIMARY KEY, at VARCHAR(40), action VARCHAR(100), "
                      f"actor_id VARCHAR(100), entity_type VARCHAR(64), entity_id VARCHAR(200), batch_id VARCHAR(64), "
                      f"entry_bytes {blob}, leaf_hash {blob})"))
    if indexed:
        for name, cols in (("entity", "entity_type, entity_id"), ("batch", "batch_id"), ("actor", "actor_id"),
                           ("action", "action"), ("at", "at")):
            conn.execute(text(f"CREATE INDEX ix_{BARE_TABLE}_{name} ON {BARE_TABLE} ({cols})"))
