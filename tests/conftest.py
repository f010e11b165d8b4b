"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

A schema is migrated once per backend and test process into a template (a file for
SQLite, a template database for PostgreSQL); each test gets a fresh copy, so tests are
isolated without rolling back (the audit triggers refuse DELETE and TRUNCATE anyway).
A second template per backend also holds the standard people and terminals of
:func:`tests.helpers.seed`; a test module that uses ``seed`` (directly or through
``tests.execution_helpers``) gets a copy of that one, and ``seed`` then finds them there.

Passwords and PINs are hashed at argon2's lowest cost in tests (``MES_ARGON2_*``, also
for the servers and commands the tests start): the production cost is tested on its own.

PostgreSQL is reached at ``MES_TEST_POSTGRES_URL`` (default the local trust-auth server);
if it is selected and cannot be reached the run fails, it does not skip. Choose backends
with ``MES_TEST_DATABASES=sqlite`` (default ``sqlite,postgresql``).
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

#: fixtures every test module may use: a SoftHSM2 token per test (tests/softhsm.py)
pytest_plugins = ("tests.softhsm",)

BACKENDS = [b.strip() for b in os.environ.get("MES_TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
PG_ADMIN_URL = os.environ.get("MES_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SHARED_DIR = Path(os.environ.get("MES_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
_counter = itertools.count()
#: argon2's lowest cost: one pass over 8 KiB in one lane. Exported so that every server and
#: `mes` command a test starts hashes at this cost too.
TEST_ARGON2 = {"MES_ARGON2_TIME_COST": 1, "MES_ARGON2_MEMORY_KIB": 8, "MES_ARGON2_PARALLELISM": 1}
for _name, _value in TEST_ARGON2.items():
    os.environ.setdefault(_name, str(_value))
# One audit entry tag key per test session (it lives outside every database): the seeded
# templates' entries are tagged with it, and each test's MES_HOME and `mes` subprocess check
# them with the same key, as one plant's servers share theirs.
os.environ.setdefault("MES_AUDIT_TAG_KEY_PATH",
                      str(Path(tempfile.mkdtemp(prefix="mes-tag-key-")) / "audit-tag.key"))

# One eBR signing identity (plant CA + document-signing certificate) per test session, made
# once here rather than two RSA-3072 keys in every test that releases a batch; the tests of
# the identity itself give their own paths. Workers inherit the controller's environment.
if "MES_EBR_SIGNING_CERT_PATH" not in os.environ:
    from mes.ebr.signing import SigningPaths, ensure_identity

    _ebr = Path(tempfile.mkdtemp(prefix="mes-ebr-identity-"))
    ensure_identity(SigningPaths(_ebr / "plant-ca.crt", _ebr / "plant-ca.key", _ebr / "ebr-signing.crt",
                                 _ebr / "ebr-signing.key"), "plant-01.example")
    os.environ.update(MES_EBR_CA_CERT_PATH=str(_ebr / "plant-ca.crt"),
                      MES_EBR_SIGNING_CERT_PATH=str(_ebr / "ebr-signing.crt"),
                      MES_EBR_SIGNING_KEY_PATH=str(_ebr / "ebr-signing.key"))


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0") + f"_{os.getpid()}"


def _pg_admin():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def _pg_url(name: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def base_config(home: Path, url: str) -> dict[str, Any]:
    return {
        "SQLALCHEMY_DATABASE_URI": url,
        "MES_HOME": str(home),
        "SECRET_KEY": "test-secret-key",
        "MES_AUDIT_KEY_PATH": str(home / "audit-signing.key"),
        "SESSION_COOKIE_SECURE": False,
        "TESTING": True,
        "MES_LOG_LEVEL": "WARNING",
        **TEST_ARGON2,
    }


def _migrate(home: Path, url: str) -> None:
    from mes.app import create_app
    from mes.cli import upgrade_database
    from mes.db import db

    app = create_app(base_config(home, url))
    upgrade_database(app)
    with app.app_context():
        db.engine.dispose()


def _seed(home: Path, url: str) -> None:
    """The standard people and terminals (:func:`tests.helpers.seed`) into a template copy."""
    from mes.app import create_app
    from mes.db import db
    from tests.helpers import seed

    app = create_app(base_config(home, url))
    with app.app_context():
        seed()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated template per backend: a file path for SQLite, a database name for PostgreSQL."""
    out: dict[str, str] = {}
    home = tmp_path_factory.mktemp("template-home")
    pg_template = None
    if "sqlite" in BACKENDS:
        path = home / "template.sqlite3"
        _migrate(home, f"sqlite:///{path}")
        out["sqlite"] = str(path)
        seeded = home / "template-seeded.sqlite3"
        shutil.copyfile(path, seeded)
        _seed(home, f"sqlite:///{seeded}")
        out["sqlite+seeded"] = str(seeded)
    if "postgresql" in BACKENDS:
        admin = _pg_admin()
        pg_template = f"mes_tpl_{_worker()}"
        try:
            with admin.connect() as conn:
                for name in (pg_template, f"{pg_template}_seeded"):
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{pg_template}"'))
        except Exception as exc:  # noqa: BLE001
            pytest.exit(f"PostgreSQL is selected but unreachable at {PG_ADMIN_URL}: {exc}", returncode=3)
        _migrate(home, _pg_url(pg_template))
        out["postgresql"] = pg_template
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_template}_seeded" TEMPLATE "{pg_template}"'))
        _seed(home, _pg_url(f"{pg_template}_seeded"))
        out["postgresql+seeded"] = f"{pg_template}_seeded"
        admin.dispose()
    yield out
    if pg_template:
        with _pg_admin().connect() as conn:
            for name in (pg_template, f"{pg_template}_seeded"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class _Dropper:
    """Drops finished PostgreSQL test databases on a background thread, so that a test does
    not wait for the server to remove its files (seconds on a busy machine). The queue is
    short, so drops cannot fall far behind; the session waits for the last ones."""

    def __init__(self) -> None:
        self.names: queue.Queue[str | None] = queue.Queue(maxsize=4)
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="drop-test-databases", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        admin = _pg_admin()
        while (name := self.names.get()) is not None:
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception as exc:  # noqa: BLE001 - reported when the session ends
                self.errors.append(f"{name}: {exc}")
        admin.dispose()

    def drop(self, name: str) -> None:
        self.names.put(name)

    def close(self) -> None:
        self.names.put(None)
        self.thread.join(120)
        assert not self.errors, f"test databases that could not be dropped: {self.errors}"


@pytest.fixture(scope="session")
def _dropper() -> Iterator[_Dropper]:
    dropper = _Dropper()
    yield dropper
    dropper.close()


def _uses_standard_seed(request: pytest.FixtureRequest) -> bool:
    """True for a test module that seeds the standard people: it imports
    :func:`tests.helpers.seed` or :func:`tests.execution_helpers.make_world`."""
    from tests import execution_helpers, helpers

    module = getattr(request.node, "module", None)
    return module is not None and any(
        value is helpers.seed or value is execution_helpers.make_world for value in vars(module).values())


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, templates: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each backend for one test."""
    backend = request.param
    template = templates[f"{backend}+seeded" if _uses_standard_seed(request) else backend]
    if backend == "sqlite":
        path = tmp_path / "mes.sqlite3"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    dropper: _Dropper = request.getfixturevalue("_dropper")
    name = f"mes_t_{_worker()}_{next(_counter)}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()
    yield _pg_url(name)
    dropper.drop(name)


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    from mes.app import create_app
    from mes.db import db

    home = tmp_path / "home"
    home.mkdir()
    application = create_app(base_config(home, database_url))
    with application.app_context():
        yield application
        db.session.remove()
        try:
            problems = outbox_problems(db.engine)
        finally:
            db.engine.dispose()
        assert not problems, "outbox events that do not follow their schema:\n" + "\n".join(problems[:20])


def outbox_problems(engine: Any) -> list[str]:
    """Every outbox event a test wrote, checked against the envelope of events.md §1 and the
    JSON Schema of its type (served at /integration/v1/schemas/<type>.json): run when each
    test's app is torn down, so no event type escapes its schema."""
    from sqlalchemy.exc import DBAPIError

    from mes.integration.event_schemas import event_errors

    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, type, body FROM outbox_events ORDER BY audit_seq, id")).all()
    except DBAPIError:  # a test that left no schema behind (migration tests)
        return []
    return [f"{event_id} {kind}: {problem}" for event_id, kind, body in rows
            for problem in event_errors(bytes(body))]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def backend(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the end-to-end kiosk runs (minutes each), then the other browser tests,
    then the rest, so that with ``-n 2`` neither worker is left alone with a long test at the
    end of the run. The order within a module is kept (its module-scoped server is shared)."""
    def weight(item: pytest.Item) -> int:
        if item.nodeid.startswith("tests/kiosk/test_end_to_end.py"):
            return 0
        return 1 if item.get_closest_marker("browser") else 2

    items.sort(key=weight)
