"""The relay delivers outbox events to a loopback receiver that verifies each one with the
``standardwebhooks`` library; every test runs on SQLite and PostgreSQL (``app`` fixture)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, select

from mes.audit.log import Actor, Event, record
from mes.audit.models import AuditEntry
from mes.db import db
from mes.integration import endpoints as ops
from mes.integration.models import Delivery, DeliveryStatus, EndpointState, OutboxEvent, WebhookEndpoint
from mes.integration.relay import (
    DEFAULT_SCHEDULE,
    JITTER,
    Outcome,
    Relay,
    parse_retry_after,
    retry_delay,
    start_in_background,
)
from mes.users.models import Alarm
from tests.helpers import example_data
from tests.integration.receiver import Received, Receiver, eventually

ACTOR = Actor.system("test")
FAST = (0.05,) * 200  # a fast schedule that outlasts any test's outage


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def add_endpoint(receiver: Receiver, endpoint_id: str = "erp", types: list[str] | None = None) -> str:
    _, secret = ops.add_endpoint(ACTOR, endpoint_id, receiver.url, types)
    receiver.secrets.append(secret)
    return secret


def produce(aggregate: str, n: int, event_type: str = "mes.material.consumed.v1") -> list[str]:
    """``n`` events of ``batch/<aggregate>``, each in its own transaction with its audit entry."""
    for i in range(n):
        record(ACTOR, "test.fact", ("batch", aggregate), after={"i": i},
               event=Event(event_type, "batch", aggregate, example_data(event_type, i=i), correlation_id="WO-1"))
        db.session.commit()
    return ids_of(f"batch/{aggregate}")


def ids_of(subject: str) -> list[str]:
    ids = list(db.session.execute(select(OutboxEvent.id).where(OutboxEvent.subject == subject)
                                  .order_by(OutboxEvent.sequence)).scalars())
    db.session.rollback()  # end the read: on SQLite it holds the write lock
    return ids


def read(query: Any) -> list[Any]:
    rows = list(db.session.execute(query).scalars())
    db.session.rollback()
    return rows


@contextmanager
def relay(app: Flask, schedule: tuple[float, ...] = FAST) -> Iterator[None]:
    thread, stop = start_in_background(app, schedule=schedule, poll_s=0.02, rng=random.Random(7))
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def first_receipts(received: list[Received]) -> list[Received]:
    """Each event's first accepted delivery, in arrival order."""
    seen: set[str] = set()
    out = []
    for r in received:
        if 200 <= r.status < 300 and r.webhook_id not in seen:
            seen.add(r.webhook_id)
            out.append(r)
    return out


def in_order_per_aggregate(received: list[Received], *, from_first_delivery: bool = False) -> bool:
    """Each aggregate's events were first taken in one after another in sequence order, from
    sequence 1, or with ``from_first_delivery`` from the first this receiver got (an
    aggregate whose events began before the endpoint was added)."""
    last: dict[str, int] = {}
    for r in first_receipts(received):
        seq, subject = int(r.event["sequence"]), r.event["subject"]
        if (subject in last or not from_first_delivery) and seq != last.get(subject, 0) + 1:
            return False
        last[subject] = seq
    return True


# ------------------------------------------------------------------- delivery


def test_event_delivered_as_signed_cloudevent(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    ids = produce("B-1", 3)
    with relay(app):
        got = receiver.wait_for(lambda rs: len(rs) >= 3)
    assert [r.webhook_id for r in got] == ids and not receiver.rejected
    bodies = read(select(OutboxEvent.body).where(OutboxEvent.id.in_(ids)).order_by(OutboxEvent.sequence))
    for r, body in zip(got, bodies, strict=True):
        assert r.body == body  # the stored bytes, byte for byte
        assert r.content_type == "application/cloudevents+json; charset=utf-8"
        assert r.event["id"] == r.webhook_id and r.event["specversion"] == "1.0"
        assert r.signature.startswith("v1,") and " " not in r.signature
        assert abs(int(r.timestamp) - datetime.now(UTC).timestamp()) < 60
    assert [r.event["sequence"] for r in got] == ["1", "2", "3"]
    assert read(select(Delivery.status)) == [DeliveryStatus.DELIVERED.value] * 3


def test_endpoint_event_type_filter(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver, types=["mes.batch.completed.v1"])
    produce("B-1", 2, "mes.material.consumed.v1")
    wanted = produce("B-2", 1, "mes.batch.completed.v1")
    with relay(app):
        got = receiver.wait_for(lambda rs: len(rs) >= 1)
        eventually(lambda: read(select(Delivery.status)) == ["delivered"], what="the one delivery recorded")
    assert [r.webhook_id for r in got] == wanted


def test_receiver_down_then_back_all_delivered_in_order(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    receiver.stop()
    with relay(app):
        for aggregate in ("A", "B", "C"):
            produce(aggregate, 5)
        eventually(lambda: len([a for a in read(select(Delivery.attempts)) if a >= 1]) == 3,
                   what="each aggregate's first event tried and refused")
        receiver.start()
        receiver.wait_for(lambda rs: len(first_receipts(rs)) == 15)
    got = first_receipts(receiver.received)
    assert in_order_per_aggregate(receiver.received)
    assert {r.webhook_id for r in got} == set(ids_of("batch/A") + ids_of("batch/B") + ids_of("batch/C"))


def test_failing_event_holds_back_only_its_aggregate(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    failing = {"batch/A"}
    receiver.policy = lambda ev: (500, {}) if ev["subject"] in failing else (204, {})
    a = produce("A", 2)
    b = produce("B", 2)
    with relay(app):
        receiver.wait_for(lambda rs: [r.webhook_id for r in first_receipts(rs)] == b)
        receiver.wait_for(lambda rs: sum(r.webhook_id == a[0] for r in rs) >= 3)  # A1 retried …
        assert a[1] not in {r.webhook_id for r in receiver.received}  # … and A2 waits behind it
        failing.clear()
        receiver.wait_for(lambda rs: len(first_receipts(rs)) == 4)
    assert [r.webhook_id for r in first_receipts(receiver.received)] == b + a
    assert len({r.webhook_id for r in receiver.received if r.webhook_id == a[0]}) == 1  # one id on every retry


def test_retry_after_is_honoured(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    receiver.answers.append((503, {"Retry-After": "1"}))
    ids = produce("A", 1)
    with relay(app, schedule=(0.01,) * 5):
        got = receiver.wait_for(lambda rs: len(rs) >= 2)
    assert [r.webhook_id for r in got] == ids * 2 and [r.status for r in got] == [503, 204]
    assert got[1].at - got[0].at >= 0.95  # not the 0.01 s of the schedule
    assert got[0].timestamp <= got[1].timestamp  # each attempt signed with its own time


def test_gone_endpoint_is_disabled(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    receiver.default = (410, {})
    first = produce("A", 1)
    with relay(app):
        eventually(lambda: read(select(WebhookEndpoint.state)) == [EndpointState.DISABLED.value],
                   what="the endpoint disabled")
        later = produce("A", 1)
        entries = read(select(AuditEntry).where(AuditEntry.action == "integration.endpoint.disabled"))
        assert [e.actor_id for e in entries] == ["system:relay"]
        receiver.default = (204, {})
        ops.set_state(ACTOR, "erp", EndpointState.ENABLED, "the ERP team moved the receiver back")
        receiver.wait_for(lambda rs: len(first_receipts(rs)) == 2)
    assert [r.webhook_id for r in first_receipts(receiver.received)] == first + later[1:]
    assert [r.status for r in receiver.received] == [410, 204, 204]


def test_dead_letter_after_the_schedule_then_replay(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    receiver.default = (500, {})
    ids = produce("A", 2)
    other = produce("B", 1)
    receiver.policy = lambda ev: (204, {}) if ev["subject"] == "batch/B" else receiver.default
    with relay(app, schedule=(0.01, 0.01)):
        eventually(lambda: read(select(Delivery.status).where(Delivery.event_id == ids[0])) == ["dead"],
                   what="the dead letter")
        assert sum(r.webhook_id == ids[0] for r in receiver.received) == 3  # first attempt + two retries
        alarms = read(select(Alarm).where(Alarm.kind == "integration.dead_letter"))
        assert len(alarms) == 1 and ids[0] in alarms[0].message
        assert [d["event_id"] for d in ops.dead_letters()] == [ids[0]]
        db.session.rollback()
        assert ids[1] not in {r.webhook_id for r in receiver.received}  # held behind the dead letter
        assert other[0] in {r.webhook_id for r in first_receipts(receiver.received)}
        receiver.policy = None
        receiver.default = (204, {})
        assert ops.replay(ACTOR, ops.Selection(event_id=ids[0]), reason="ERP fixed") == 1
        receiver.wait_for(lambda rs: len(first_receipts(rs)) == 3)
    assert [r.webhook_id for r in first_receipts(receiver.received)] == other + ids
    assert read(select(AuditEntry.action).where(AuditEntry.action == "integration.events.replayed")) == [
        "integration.events.replayed"]


def test_replay_by_aggregate_sends_same_id_signed_afresh(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    ids = produce("A", 2)
    with relay(app):
        receiver.wait_for(lambda rs: len(rs) == 2)
        eventually(lambda: read(select(Delivery.status)) == ["delivered"] * 2, what="both recorded")
        since = datetime.now(UTC) - timedelta(hours=1)
        assert ops.replay(ACTOR, ops.Selection(subject="batch/A", since=since), reason="ERP restore") == 2
        got = receiver.wait_for(lambda rs: len(rs) == 4)
    assert [r.webhook_id for r in got] == ids + ids
    assert [r.body for r in got[2:]] == [r.body for r in got[:2]]


def test_rotation_signs_with_old_and_new_secret(app: Flask, receiver: Receiver) -> None:
    old = add_endpoint(receiver)
    new = ops.rotate_secret(ACTOR, "erp")
    receiver.secrets.append(new)
    produce("A", 1)
    with relay(app):
        got = receiver.wait_for(lambda rs: len(rs) == 1)
        assert got[0].verified_with == [old, new] and len(got[0].signature.split(" ")) == 2
        newest = ops.rotate_secret(ACTOR, "erp", timedelta(0))  # no overlap: only the new one signs
        receiver.secrets.append(newest)
        produce("A", 1)
        got = receiver.wait_for(lambda rs: len(rs) == 2)
    assert got[1].verified_with == [newest]
    actions = read(select(AuditEntry.action).where(AuditEntry.entity_id == "erp").order_by(AuditEntry.seq))
    assert actions == ["integration.endpoint.added", "integration.endpoint.secret_rotated",
                       "integration.endpoint.secret_rotated"]


def test_two_relay_processes_never_send_twice_or_reorder(app: Flask, receiver: Receiver, database_url: str,
                                                        tmp_path: Path) -> None:
    add_endpoint(receiver)
    for aggregate in "ABCDEFGH":
        produce(aggregate, 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k.startswith("MES_ARGON2_")}
    env.update({"MES_DATABASE_URL": database_url, "MES_HOME": str(tmp_path / "home"), "MES_SECRET_KEY": "x",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"], "MES_LOG_LEVEL": "WARNING"})
    cmd = [sys.executable, "-c", "from mes.cli import main; main()", "relay", "--poll", "0.02", "--batch", "3", "--schedule", "0.05,0.05"]
    engine = None
    if database_url.startswith("postgresql"):
        # The first answer waits until the second relay has claimed something too: however
        # slowly one process starts, both take part (SKIP LOCKED lets them claim at once).
        engine = create_engine(database_url)
        held = threading.Event()

        def claimers() -> int:
            with engine.connect() as conn:
                return len(set(conn.execute(select(Delivery.claimed_by).where(Delivery.claimed_by.is_not(None)))))

        def hold_first_answer() -> None:
            if not held.is_set():
                held.set()
                eventually(lambda: claimers() >= 2, timeout=90, what="a claim by the second relay")

        receiver.hold = hold_first_answer
    relays = [subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE) for _ in range(2)]
    try:
        receiver.wait_for(lambda rs: len(rs) >= 48 or any(p.poll() is not None for p in relays), timeout=120)
        assert all(p.poll() is None for p in relays), [p.communicate(timeout=30) for p in relays]
        eventually(lambda: set(read(select(Delivery.status))) == {"delivered"}, what="every delivery recorded")
    finally:
        for p in relays:
            p.terminate()
        outputs = [p.communicate(timeout=30) for p in relays]
        receiver.hold = None
        if engine is not None:
            engine.dispose()
    ids = [r.webhook_id for r in receiver.received]
    assert len(ids) == len(set(ids)) == 48, outputs
    assert in_order_per_aggregate(receiver.received)
    if database_url.startswith("postgresql"):  # SKIP LOCKED lets both claim at once; SQLite's one writer may leave one idle
        claimed_by = set(read(select(Delivery.claimed_by)))
        assert len(claimed_by) == 2, "both relays took part"


# --------------------------------------------------------------- the schedule


def test_retry_schedule_with_jitter_then_dead_letter() -> None:
    rng = random.Random(1)
    for attempt, base in enumerate(DEFAULT_SCHEDULE, start=1):
        for _ in range(50):
            delay = retry_delay(attempt, DEFAULT_SCHEDULE, rng)
            assert delay is not None and base * (1 - JITTER) <= delay <= base * (1 + JITTER)
    assert DEFAULT_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert retry_delay(len(DEFAULT_SCHEDULE) + 1, DEFAULT_SCHEDULE, rng) is None  # 8 attempts, then dead
    assert retry_delay(1, DEFAULT_SCHEDULE, rng, retry_after=120.0) == 120.0


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Sun, 06 Dec 2026 04:01:00 GMT", now) == 60.0
    assert parse_retry_after("Sun, 06 Dec 2026 03:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    assert parse_retry_after("99999999", now) == 36000.0  # a hostile peer cannot park an event for years


def test_a_leased_delivery_is_not_claimed_again(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    a, b = produce("A", 2), produce("B", 1)
    relay_a, relay_b = Relay(app, name="relay-a"), Relay(app, name="relay-b")
    assert relay_a.fan_out() == 3 and relay_b.fan_out() == 0  # each event owed once
    first = relay_a.claim()
    assert sorted(c.event_id for c in first) == sorted([a[0], b[0]])  # the heads only: A2 waits behind A1
    assert relay_b.claim() == []  # leased to relay-a
    relay_a.record([Outcome(c, 204, None) for c in first])
    assert [c.event_id for c in relay_b.claim()] == [a[1]]
    assert read(select(Delivery.claimed_by).where(Delivery.event_id == a[1])) == ["relay-b"]


def test_a_redirect_is_a_failed_attempt_not_followed(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    elsewhere = Receiver().start()  # where a hostile peer points the relay
    try:
        receiver.answers.append((307, {"Location": elsewhere.url}))
        ids = produce("A", 1)
        with relay(app, schedule=(0.01,) * 3):
            got = receiver.wait_for(lambda rs: len(rs) >= 2)
            eventually(lambda: read(select(Delivery.last_status)) == [204], what="the retry recorded")
        assert [(r.webhook_id, r.status) for r in got] == [(ids[0], 307), (ids[0], 204)]
        assert elsewhere.received == [] and elsewhere.rejected == []
    finally:
        elsewhere.stop()


def test_the_relay_keeps_its_connection_to_a_receiver_open(app: Flask) -> None:
    """Keep-alive: a receiver behind a web server sees one connection for a backlog, not one per
    event (each new connection costs both sides a handshake, and a busy ERP runs out of ports)."""
    receiver = Receiver(keep_alive=True).start()
    try:
        add_endpoint(receiver)
        ids = produce("A", 30)
        with relay(app):
            got = receiver.wait_for(lambda rs: len(rs) >= 30)
            eventually(lambda: set(read(select(Delivery.status))) == {"delivered"}, what="every delivery recorded")
        assert [r.webhook_id for r in got] == ids
        assert receiver.connections == 1
    finally:
        receiver.stop()


def test_the_relay_uses_the_environments_proxy_unless_no_proxy_names_the_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3

    from mes.integration.relay import Connections

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("no_proxy", "qms.plant.example")
    connections = Connections(senders=2)
    through = connections.manager("https://erp.example/hooks")
    assert isinstance(through, urllib3.ProxyManager) and through.proxy.port == 3128
    assert connections.manager("https://qms.plant.example/hooks") is connections.direct
    assert connections.manager("http://erp.example/hooks") is connections.direct  # no http_proxy set


def test_a_long_chunked_answer_does_not_spoil_the_next_delivery() -> None:
    """A receiver's answer of unknown length (chunked), longer than the relay reads: the next
    event still goes out whole and its answer is read right (the relay closes a connection it
    did not read to the end rather than return it to the pool)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mes.integration.relay import ANSWER_READ_MAX, Claimed, Connections

    seen: list[bytes] = []

    class Chunked(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 4096
            for _ in range(ANSWER_READ_MAX // len(chunk) + 4):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        connections = Connections(senders=1)
        for n in range(2):
            c = Claimed("erp", f"E-{n}", 0, url, "whsec_x", None, None, b'{"n": %d}' % n)
            outcome = connections.post(c, {"webhook-id": c.event_id}, 5.0)
            assert (outcome.status, outcome.error) == (200, None)
        assert seen == [b'{"n": 0}', b'{"n": 1}']
    finally:
        server.shutdown()
        server.server_close()
