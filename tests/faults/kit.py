"""What the fault scenarios share: a seeded database, ``mes run`` servers spawned as deployed
(``deploy/gunicorn.conf.py``), operators completing steps through the HTTP API, and the
checks every scenario ends with (each committed step recorded once, the audit log verifies,
the outbox drained).

The set-up is the execution benchmark's (:mod:`tests.bench.execution`): same recipe (only
instruction and numeric steps), same seeding, same server start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text

from tests.bench.execution import DEPLOY_CONFIG, _free_port, _seed, _stop

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; its value, or AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)  # polling a condition, not waiting for time to pass


def seed_database(url: str, home: Path, *, steps: int, work_orders: int, operators: int) -> dict[str, Any]:
    """Seed users, kiosks, the bench recipe and dispatched work orders into the migrated
    database at ``url`` (a copy of the session's template: see :func:`fresh_database`)."""
    from mes.app import create_app
    from mes.db import db
    from tests.conftest import base_config

    home.mkdir(parents=True, exist_ok=True)
    app = create_app(base_config(home, url))
    with app.app_context():
        seeded = _seed(steps, work_orders, operators)
        db.session.remove()
        db.engine.dispose()
    return seeded


@contextlib.contextmanager
def fresh_database(templates: dict[str, str], backend: str, sqlite_dir: Path) -> Iterator[str]:
    """A migrated, empty database copied from the session's template (conftest)."""
    from tests.conftest import _pg_admin, _pg_url

    if backend == "sqlite":
        path = sqlite_dir / "mes.sqlite3"
        shutil.copyfile(templates["sqlite"], path)
        yield f"sqlite:///{path}"
        return
    name = f"mes_fault_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{templates["postgresql"]}"'))
    try:
        yield _pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_env(url: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k in (
        "MES_AUDIT_TAG_KEY_PATH", "MES_ARGON2_TIME_COST", "MES_ARGON2_MEMORY_KIB", "MES_ARGON2_PARALLELISM")}
    env.update({"MES_HOME": str(home), "MES_DATABASE_URL": url, "MES_SECRET_KEY": "fault-secret-key-0123456789",
                "MES_SESSION_COOKIE_SECURE": "false", "MES_LOG_LEVEL": "WARNING",
                "MES_AUDIT_KEY_PATH": str(home / "audit-signing.key"), "MES_LOGIN_RATE_PER_MINUTE": "100000",
                **(extra or {})})
    return env


@dataclass
class Server:
    """One ``mes run`` (gunicorn master and its workers, in a session of their own)."""

    proc: subprocess.Popen
    base: str
    log: Path

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (the master's children)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        _stop([self.proc])


def start_server(url: str, home: Path, *, workers: int = 1, env: dict[str, str] | None = None,
                 cmd: tuple[str, ...] | None = None, name: str = "server") -> Server:
    """``mes run`` on a free loopback port, configured as deployed; waits for /healthz."""
    port = _free_port()
    log = home / f"{name}-{port}.log"
    args = list(cmd) if cmd else ["run", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                                  "--config", str(DEPLOY_CONFIG)]
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from mes.cli import main; main()", *args],
                                env=server_env(url, home, env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    if not cmd:
        wait_for(lambda: _healthy(server), 60, f"{server.base}/healthz")
    return server


def _healthy(server: Server) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"{server.base} exited:\n" + server.log.read_text(errors="replace")[-3000:])
    try:
        return requests.get(f"{server.base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(30)


@dataclass
class Operator:
    """One operator on one kiosk running one batch; remembers every completion the server
    answered 2xx (committed) and every attempt that failed."""

    base: str
    kiosk: str
    badge: str
    work_order: str
    client: Any = None
    batch_id: str = ""
    steps: list[tuple[str, str, int]] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: the longest time from an attempt that failed to the completion that then succeeded
    longest_stall_s: float = 0.0

    def start(self) -> None:
        from mes.execution.sim_operator import Login, login

        self.client = login(self.base, self.kiosk, Login(badge=self.badge, pin="2468"))
        batch = self.client.post(f"/api/v1/work-orders/{self.work_order}/batches", {})
        self.batch_id = batch["id"]
        self.steps = [(s["id"], s["kind"], s["version"]) for s in batch["steps"] if s["kind"] in ("instruction", "numeric")]

    def complete(self, index: int, key: str | None = None) -> dict[str, Any]:
        """Complete step ``index`` (with a fixed Idempotency-Key when given: a retry of the
        same tap records once)."""
        step_id, kind, version = self.steps[index]
        payload = {"confirm": True} if kind == "instruction" else {"value": "1.5"}
        out = self.client.post(f"/api/v1/batches/{self.batch_id}/steps/{step_id}/complete",
                               {"expected_version": version, "payload": payload},
                               headers={"Idempotency-Key": key or self.client.key()})
        self.committed.append(step_id)
        return out

    def run_through(self, deadline_s: float, retry_for_s: float = 20.0) -> None:
        """Complete every step in order; a failed attempt (connection reset, 5xx) is retried
        with the same Idempotency-Key, as the kiosk does, for up to ``retry_for_s``. A 409
        on a retry after a reset means the first attempt committed (the answer was lost):
        the idempotent replay answers it, so a 409 is a failure."""
        from mes.execution.sim_operator import ApiError

        for index in range(len(self.steps)):
            key = self.client.key()
            first = time.monotonic()
            failed = False
            while True:
                try:
                    self.complete(index, key)
                    if failed:
                        self.longest_stall_s = max(self.longest_stall_s, time.monotonic() - first)
                    break
                except (requests.RequestException, ApiError) as exc:
                    if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                        self.failures.append(f"{self.steps[index][0]}: {exc}")
                        return
                    failed = True
                    self.failures.append(f"retried {self.steps[index][0]}: {str(exc)[:200]}")
                    if time.monotonic() - first > retry_for_s or time.monotonic() > deadline_s:
                        self.failures.append(f"gave up on {self.steps[index][0]}")
                        return
                    time.sleep(0.05)  # the kiosk's retry back-off


@contextlib.contextmanager
def database_engine(url: str) -> Iterator[Any]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def completions_recorded(url: str, batch_id: str) -> dict[str, dict[str, Any]]:
    """Per step of the batch: its state, its completion audit entries and its step records
    (a committed completion has exactly one of each; a refused one none)."""
    with database_engine(url) as engine, engine.connect() as conn:
        steps = conn.execute(text("SELECT id, step_id, state FROM batch_steps WHERE batch_id = :b"),
                             {"b": batch_id}).all()
        audited = dict(conn.execute(text("SELECT entity_id, COUNT(*) FROM audit_entries WHERE "
                                         "action = 'batch.step.completed' AND batch_id = :b GROUP BY entity_id"),
                                    {"b": batch_id}).all())
        records = dict(conn.execute(text("SELECT batch_step_id, COUNT(*) FROM step_records WHERE batch_id = :b "
                                         "GROUP BY batch_step_id"), {"b": batch_id}).all())
    return {str(step_id): {"state": state, "audited": int(audited.get(bs_id, 0)), "records": int(records.get(bs_id, 0))}
            for bs_id, step_id, state in steps}


def check_batch(url: str, op: Operator) -> None:
    """Every step the operator saw committed is recorded exactly once (state, audit entry,
    step record); no other measured step is recorded."""
    recorded = completions_recorded(url, op.batch_id)
    for step_id, _kind, _version in op.steps:
        row = recorded[step_id]
        if step_id in op.committed:
            assert row == {"state": "completed", "audited": 1, "records": 1}, (step_id, row)
        else:
            assert row["audited"] == 0 and row["records"] == 0, (step_id, row)
    assert len(set(op.committed)) == len(op.committed), f"a completion answered twice: {op.committed}"


def outbox_undelivered(url: str) -> int:
    """Outbox events not yet delivered to an enabled endpoint (0 without endpoints)."""
    with database_engine(url) as engine, engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM integration_deliveries WHERE status = 'pending'")).scalar()
                   or 0)


def audit_verify(url: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mes.cli import main; main()", "audit", "verify"],
                          env=server_env(url, home), capture_output=True, text=True, cwd=ROOT, timeout=300)


def add_endpoint(url: str, home: Path, receiver_url: str) -> tuple[str, int]:
    """Register the receiver as a webhook endpoint; its secret and the audit seq it starts
    after (it receives every event committed later)."""
    from mes.app import create_app
    from mes.audit.log import Actor
    from mes.db import db
    from mes.integration import endpoints
    from tests.conftest import base_config

    app = create_app(base_config(home, url))
    with app.app_context():
        _, secret = endpoints.add_endpoint(Actor.system("faults"), "erp", receiver_url)
        db.session.commit()
        since = int(db.session.execute(text("SELECT COALESCE(MAX(seq), 0) FROM audit_entries")).scalar() or 0)
        db.session.remove()
        db.engine.dispose()
    return secret, since


def outbox_ids_since(url: str, since: int) -> set[str]:
    with database_engine(url) as engine, engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(text("SELECT id FROM outbox_events WHERE audit_seq > :s"), {"s": since})}


@dataclass
class Plant:
    """A small plant for one fault: database, servers, relay, webhook receiver, operators."""

    url: str
    home: Path
    seeded: dict[str, Any]
    receiver: Any
    since: int
    env: dict[str, str]
    servers: list[Server] = field(default_factory=list)
    relay: subprocess.Popen | None = None
    operators: list[Operator] = field(default_factory=list)
    produced: int = 0
    stop_producing: threading.Event = field(default_factory=threading.Event)
    producer: threading.Thread | None = None

    @property
    def base(self) -> str:
        return self.servers[0].base

    def start_relay(self) -> subprocess.Popen:
        with open(self.home / "relay.log", "ab") as out:
            self.relay = subprocess.Popen(
                [sys.executable, "-c", "from mes.cli import main; main()", "relay", "--poll", "0.05",
                 "--schedule", ",".join(["0.2"] * 50), "--timeout", "5",
                 "--lease", "15"],  # a killed relay's leases expire within the scenario
                env=server_env(self.url, self.home, self.env), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT)
        return self.relay

    def drive(self, retry_for_s: float = 30.0) -> list[threading.Thread]:
        """Every operator logs in, starts its batch and runs through it, each in a thread;
        beside them a producer of outbox events (the bench recipe's steps emit none) until
        the operators are done."""
        deadline = time.monotonic() + 300
        for op in self.operators:
            op.start()
        threads = [threading.Thread(target=op.run_through, args=(deadline, retry_for_s), daemon=True)
                   for op in self.operators]
        self.producer = threading.Thread(target=self._produce_events, daemon=True)
        self.producer.start()
        for t in threads:
            t.start()
        return threads

    def _produce_events(self) -> None:
        """One outbox event (with its audit entry, one transaction) every 20 ms on four
        aggregates, retried through faults, until :meth:`finish` stops it."""
        from mes.app import create_app
        from mes.audit.log import Actor, Event, record
        from mes.db import db
        from tests.conftest import base_config

        app = create_app(base_config(self.home, self.url))
        actor = Actor.system("faults-producer")
        n = 0
        with app.app_context():
            while not self.stop_producing.is_set():
                aggregate = "ABCD"[n % 4]
                try:
                    record(actor, "test.fact", ("batch", f"EV-{aggregate}"), after={"n": n},
                           event=Event("mes.material.consumed.v1", "batch", f"EV-{aggregate}", {"n": n}))
                    db.session.commit()
                    n += 1
                    self.produced = n
                except Exception:  # noqa: BLE001 - the fault under test; the next attempt retries
                    try:
                        db.session.rollback()
                    except Exception:  # noqa: BLE001 - the connection is gone: a new session
                        db.session.remove()
                time.sleep(0.02)  # the producer's pace
            db.session.remove()
            db.engine.dispose()

    def committed(self) -> int:
        return sum(len(op.committed) for op in self.operators)

    def finish(self, threads: list[threading.Thread], recovery_s: float) -> dict[str, Any]:
        """Wait for the operators; then the checks every scenario ends with. Returns figures."""
        for t in threads:
            t.join(300)
        self.stop_producing.set()
        if self.producer is not None:
            self.producer.join(60)
        for op in self.operators:
            assert not [f for f in op.failures if not f.startswith("retried")], op.failures
            assert op.committed == [s[0] for s in op.steps], (op.work_order, op.committed)
            check_batch(self.url, op)
            assert op.longest_stall_s <= recovery_s, f"{op.kiosk}: stalled {op.longest_stall_s:.1f} s"
        wanted = outbox_ids_since(self.url, self.since)
        wait_for(lambda: wanted <= {r.webhook_id for r in self.receiver.accepted()}, 60,
                 f"the outbox drained to the receiver ({len(wanted)} events)")
        verified = audit_verify(self.url, self.home)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert len(wanted) >= self.produced > 0
        return {"completions": self.committed(), "events": len(wanted),
                "longest_stall_s": round(max(op.longest_stall_s for op in self.operators), 2),
                "retries": sum(1 for op in self.operators for f in op.failures if f.startswith("retried"))}

    def stop(self) -> None:
        self.stop_producing.set()
        for server in self.servers:
            server.stop()
        if self.relay is not None and self.relay.poll() is None:
            _stop([self.relay])


@contextlib.contextmanager
def plant(templates: dict[str, str], tmp_path: Path, *, backend: str = "postgresql", operators: int = 3,
          steps: int = 12, instances: int = 1, workers: int = 1, env: dict[str, str] | None = None) -> Iterator[Plant]:
    """A seeded database, ``instances`` x ``mes run``, a relay to a loopback webhook receiver
    and ``operators`` operators, each with a dispatched work order."""
    from tests.integration.receiver import Receiver

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    receiver = Receiver().start()
    with fresh_database(templates, backend, tmp_path) as url:
        seeded = seed_database(url, home, steps=steps, work_orders=operators, operators=operators)
        secret, since = add_endpoint(url, home, receiver.url)
        receiver.secrets.append(secret)
        p = Plant(url, home, seeded, receiver, since, dict(env or {}))
        try:
            for n in range(instances):
                p.servers.append(start_server(url, home, workers=workers, env=p.env, name=f"web{n}"))
            p.start_relay()
            p.operators = [Operator(p.servers[n % instances].base, seeded["kiosks"][n], f"B{n}",
                                    seeded["work_orders"][n]) for n in range(operators)]
            yield p
        finally:
            p.stop()
            receiver.stop()
