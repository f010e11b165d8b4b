"""Fault tests of issue 20's "Done when": the receiver down while 1,000 events are produced,
then back; a relay SIGKILLed mid-batch and restarted. Each time every event arrives, in
``sequence`` order per aggregate, none lost, and a duplicate is only a redelivery with the
same ``webhook-id``. Every delivery is verified by the ``standardwebhooks`` library (the
receiver). SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.log import Event, record
from mes.db import db
from mes.integration.models import Delivery, OutboxEvent
from tests.helpers import example_data
from tests.integration.receiver import Receiver, eventually
from tests.integration.test_relay import ACTOR, add_endpoint, first_receipts, in_order_per_aggregate, read, relay

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def produce_many(n: int, aggregates: int, per_transaction: int = 20) -> None:
    """``n`` consumption events spread over ``aggregates`` batches, ``per_transaction`` per commit."""
    for i in range(n):
        batch = f"B-{i % aggregates}"
        record(ACTOR, "test.fact", ("batch", batch), after={"i": i},
               event=Event("mes.material.consumed.v1", "batch", batch,
                           example_data("mes.material.consumed.v1", batch_id=batch, i=i), correlation_id="WO-1"))
        if (i + 1) % per_transaction == 0 or i == n - 1:
            db.session.commit()


def owed_ids() -> set[str]:
    return set(read(select(Delivery.event_id)))


def check_exactly_once_in_order(receiver: Receiver, wanted: set[str]) -> None:
    got = first_receipts(receiver.received)
    assert {r.webhook_id for r in got} == wanted  # none lost, none invented
    assert len(got) == len(wanted)
    assert in_order_per_aggregate(receiver.received)
    # a duplicate is only a redelivery of the same event, byte for byte
    first = {r.webhook_id: r.body for r in got}
    assert all(r.body == first[r.webhook_id] for r in receiver.received if r.webhook_id in first)


def stall_answer(number: int) -> tuple[Any, threading.Event, threading.Event]:
    """A receiver policy that holds its ``number``-th answer until ``release`` is set; ``hit``
    is set when that answer is being held."""
    hit, release = threading.Event(), threading.Event()
    count = [0]

    def policy(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        count[0] += 1
        if count[0] == number:
            hit.set()
            release.wait(60)
        return 204, {}

    return policy, hit, release


def start_relay_process(app: Flask, database_url: str, home: Path, *options: str) -> subprocess.Popen[bytes]:
    """``mes relay`` with ``options`` as its own process on the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k.startswith("MES_ARGON2_")}
    env.update({"MES_DATABASE_URL": database_url, "MES_HOME": str(home), "MES_SECRET_KEY": "x",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"], "MES_LOG_LEVEL": "WARNING",
                "MES_AUDIT_TAG_KEY_PATH": os.environ["MES_AUDIT_TAG_KEY_PATH"]})
    cmd = [sys.executable, "-c", "from mes.cli import main; main()", "relay", "--poll", "0.02", "--batch", "20",
           *options]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_receiver_down_while_1000_events_are_produced_then_back(app: Flask, receiver: Receiver) -> None:
    add_endpoint(receiver)
    receiver.stop()
    with relay(app):
        produce_many(1000, aggregates=10)
        eventually(lambda: len([a for a in read(select(Delivery.attempts)) if a >= 1]) >= 10, timeout=60,
                   what="each aggregate's head tried and refused while the receiver is down")
        assert receiver.received == []
        receiver.start()
        wanted = set(read(select(OutboxEvent.id)))
        eventually(lambda: owed_ids() == wanted, timeout=60, what="every event owed to the endpoint")
        receiver.wait_for(lambda rs: len(first_receipts(rs)) >= len(wanted), timeout=180)
        eventually(lambda: set(read(select(Delivery.status))) == {"delivered"}, timeout=60,
                   what="every delivery recorded")
    assert len(wanted) >= 1000
    check_exactly_once_in_order(receiver, wanted)


def test_relay_sigkilled_mid_batch_then_restarted(app: Flask, receiver: Receiver, database_url: str,
                                                 tmp_path: Path) -> None:
    add_endpoint(receiver)
    produce_many(200, aggregates=20)
    wanted = set(read(select(OutboxEvent.id)))
    receiver.policy, hit, release = stall_answer(30)  # a batch is out: hold this answer until the relay is dead
    options = ("--timeout", "1", "--lease", "1", "--schedule", "0.05,0.05,0.05")
    first = start_relay_process(app, database_url, tmp_path / "home", *options)
    try:
        assert hit.wait(120), first.communicate(timeout=5) if first.poll() is not None else "no delivery stalled"
        first.send_signal(signal.SIGKILL)  # mid-batch: some answers in, their outcomes not recorded
        first.wait(30)
    finally:
        release.set()
    leased = [d for d in read(select(Delivery)) if d.claimed_by and d.status == "pending"]
    assert leased, "the killed relay left leased deliveries behind"
    second = start_relay_process(app, database_url, tmp_path / "home", *options)
    try:
        eventually(lambda: set(read(select(Delivery.status))) == {"delivered"} and owed_ids() == wanted,
                   timeout=180, what="every delivery recorded after the restart")
    finally:
        second.terminate()
        out = second.communicate(timeout=30)
    assert second.returncode in (0, -signal.SIGTERM), out
    check_exactly_once_in_order(receiver, wanted)
    redelivered = len(receiver.received) - len(wanted)
    assert redelivered >= 0  # the unrecorded answers came again, as the same events


def test_a_relay_stopped_with_sigterm_mid_round_records_the_round_and_leaves_no_lease(
        app: Flask, receiver: Receiver, database_url: str, tmp_path: Path) -> None:
    """A deploy or ``systemctl stop`` sends SIGTERM: the relay finishes the round in hand and
    records it, so none of its aggregates waits a lease out and nothing is sent twice."""
    add_endpoint(receiver)
    produce_many(100, aggregates=10)
    receiver.policy, hit, release = stall_answer(15)  # mid-round: held until the relay has been told to stop
    proc = start_relay_process(app, database_url, tmp_path / "home", "--run", "5")
    try:
        assert hit.wait(120), proc.communicate(timeout=5) if proc.poll() is not None else "no answer stalled"
        proc.send_signal(signal.SIGTERM)
    finally:
        release.set()
    out = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    received = {r.webhook_id for r in receiver.received}
    rows = read(select(Delivery))
    assert received, "the round in hand was sent"
    assert [d for d in rows if d.claimed_until is not None] == []  # no lease left behind
    # what the receiver got is recorded as delivered, and nothing else is
    assert {d.event_id for d in rows if d.status == "delivered"} == received
    assert len(receiver.received) == len(received)  # nothing was sent twice


def test_a_run_sends_an_aggregate_in_order_and_stops_at_its_first_failure(app: Flask, receiver: Receiver) -> None:
    from mes.integration.relay import Relay
    from tests.integration.test_relay import produce

    add_endpoint(receiver)
    ids = produce("A", 7)
    other = produce("B", 1)
    receiver.answers.extend([(204, {}), (204, {}), (503, {})])  # the third of A's run fails
    receiver.policy = None
    relay = Relay(app, name="runner", run=5, senders=1, schedule=(0, 0, 0))
    relay.run_once()
    attempts = {d.event_id: d.attempts for d in read(select(Delivery))}
    # A: 1 and 2 delivered, 3 failed once, 4 and 5 handed back unsent, 6 and 7 beyond the run
    assert [attempts[i] for i in ids] == [1, 1, 1, 0, 0, 0, 0]
    assert attempts[other[0]] == 1
    while relay.run_once():
        pass
    check_exactly_once_in_order(receiver, set(ids + other) | {r.webhook_id for r in receiver.received})
    assert [r.webhook_id for r in first_receipts(receiver.received) if r.event["subject"] == "batch/A"] == ids
