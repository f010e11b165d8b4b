"""The ``mes`` command as an operator of the system runs it: real processes, real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import BACKENDS, _pg_admin, _pg_url, _worker

MES = str(Path(sys.executable).parent / "mes")
ADMIN_PASSWORD = "First-Adm1n-Secret"


def run(args: list[str], home: Path, extra_env: dict[str, str] | None = None, input: str | None = None):
    # a clean MES environment, but the suite's cheap password hashing (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k.startswith("MES_ARGON2_")}
    env.update({"MES_HOME": str(home), "MES_LOG_LEVEL": "WARNING"})
    env.update(extra_env or {})
    return subprocess.run([MES, *args], capture_output=True, text=True, env=env, input=input, timeout=120)


@pytest.fixture(params=BACKENDS)
def empty_db(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """No database at all (SQLite: the default file in MES_HOME) or an empty PostgreSQL one."""
    if request.param == "sqlite":
        yield {}
        return
    name = f"mes_cli_{_worker()}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield {"MES_DATABASE_URL": _pg_url(name)}
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_init_on_an_empty_folder_then_check(tmp_path: Path, empty_db: dict[str, str]) -> None:
    home = tmp_path / "fresh"
    env = {**empty_db, "MES_ADMIN_PASSWORD": ADMIN_PASSWORD}
    r = run(["init"], home, {**env, "MES_LOG_LEVEL": "INFO"})  # the default level: the migrations run quietly
    assert r.returncode == 0, r.stderr
    assert "alembic" not in r.stdout + r.stderr, r.stderr[:2000]
    assert "created admin 'admin'" in r.stdout and "verifier key plant-01.example/mes/audit+" in r.stdout
    assert (home / "audit-signing.key").stat().st_mode & 0o077 == 0
    assert (home / "secret_key").stat().st_mode & 0o077 == 0
    r = run(["check"], home, empty_db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "schema at migration head" in r.stdout
    # idempotent: a second init creates nothing new
    r = run(["init"], home, env)
    assert r.returncode == 0 and "none created" in r.stdout
    # users are managed as a named admin, checked against the permission matrix
    r = run(["users", "add", "qa7", "--name", "Q A Seven", "--role", "qa", "--as", "admin"], home,
            {**empty_db, "MES_CLI_PASSWORD": ADMIN_PASSWORD, "MES_NEW_PASSWORD": "Qa-Seven-Passw0rd"})
    assert r.returncode == 0, r.stderr
    r = run(["users", "deactivate", "admin", "--reason", "x", "--as", "qa7"], home,
            {**empty_db, "MES_CLI_PASSWORD": "Qa-Seven-Passw0rd"})
    assert r.returncode == 1 and "may not" in r.stderr
    r = run(["users", "list"], home, empty_db)
    assert "qa7" in r.stdout and "admin" in r.stdout


@pytest.mark.parametrize("url", [
    "not a url at all",
    "mysql://root@127.0.0.1/mes",
    "postgresql+psycopg://nobody@127.0.0.1:1/mes",
])
def test_bad_database_url_is_one_line_naming_the_variable(tmp_path: Path, url: str) -> None:
    r = run(["check"], tmp_path, {"MES_DATABASE_URL": url, "MES_SECRET_KEY": "x"})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "MES_DATABASE_URL" in lines[0] and "Traceback" not in r.stderr


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    r = run(["check"], tmp_path, {"MES_PANEL_PPI": "lots", "MES_SECRET_KEY": "x"})
    assert r.returncode == 2 and r.stderr.strip() == "error: MES_PANEL_PPI is invalid: expected a positive whole number, got 'lots'"


def test_check_without_init_fails_clearly(tmp_path: Path) -> None:
    r = run(["check"], tmp_path / "nothing")
    assert r.returncode != 0 and "mes init" in r.stderr and "Traceback" not in r.stderr


def _init(home: Path, db_env: dict[str, str]) -> dict[str, str]:
    env = {**db_env, "MES_ADMIN_PASSWORD": ADMIN_PASSWORD}
    r = run(["init"], home, env)
    assert r.returncode == 0, r.stderr
    return db_env


def test_audit_verify_export_backup_restore(tmp_path: Path, empty_db: dict[str, str]) -> None:
    home = tmp_path / "plant"
    env = _init(home, empty_db)
    r = run(["audit", "verify"], home, env)
    assert r.returncode == 0 and r.stdout.startswith("OK:"), r.stdout + r.stderr
    r = run(["audit", "export", "--out", str(tmp_path / "export")], home, env)
    assert r.returncode == 0, r.stderr
    verified = subprocess.run([sys.executable, "-m", "mes.audit.verify", str(tmp_path / "export")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    r = run(["backup", "--out", str(tmp_path / "backup.bin")], home, env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "backup.bin.manifest.json").exists()
    # restoring over a database that holds records is refused without --force
    r = run(["restore", str(tmp_path / "backup.bin")], home, env)
    assert r.returncode == 1 and "--force" in r.stderr
    r = run(["restore", "--force", str(tmp_path / "backup.bin")], home, env)
    assert r.returncode == 0 and "reproduced" in r.stdout, r.stdout + r.stderr
    r = run(["audit", "verify"], home, env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_audit_verify_fails_and_names_the_seq(tmp_path: Path) -> None:
    home = tmp_path / "plant"
    _init(home, {})
    import sqlite3

    con = sqlite3.connect(home / "mes.sqlite3")
    con.execute("DROP TRIGGER audit_entries_no_update")
    data = con.execute("SELECT entry_bytes FROM audit_entries WHERE seq = 0").fetchone()[0]
    con.execute("UPDATE audit_entries SET entry_bytes = ? WHERE seq = 0", (bytes(data).replace(b"admin", b"admim"),))
    con.commit()
    con.close()
    r = run(["audit", "verify"], home)
    assert r.returncode == 1 and "first bad seq 0" in r.stdout, r.stdout + r.stderr


def test_key_rotation_keeps_old_checkpoints_verifiable(tmp_path: Path) -> None:
    home = tmp_path / "plant"
    _init(home, {})
    first = run(["audit", "checkpoint"], home).stdout
    r = run(["audit", "rotate-key"], home)
    assert r.returncode == 0 and "new verifier key" in r.stdout, r.stderr
    assert len(list((home / "verifier-keys").glob("*.vkey"))) == 2
    r = run(["audit", "verify"], home)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["audit", "export", "--out", str(tmp_path / "x")], home)
    assert r.returncode == 0
    history = (tmp_path / "x" / "checkpoints.jsonl").read_text().splitlines()
    assert json.loads(history[0]) == first.rstrip("\n") + "\n"
    assert len((tmp_path / "x" / "log.vkey").read_text().splitlines()) == 2
    verified = subprocess.run([sys.executable, "-m", "mes.audit.verify", str(tmp_path / "x")], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
