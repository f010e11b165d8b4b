"""The outbox relay: delivers outbox events to webhook endpoints (``shared/specs/events.md`` §2–3).

Each loop it (1) fans new outbox rows out to a delivery row per endpoint, in outbox
``position`` order (which is commit order: appends hold the log lock until commit), (2) claims due
deliveries that head their aggregate's line at their endpoint (no earlier undelivered event
of the same subject), with ``FOR UPDATE SKIP LOCKED`` and a lease, in a short transaction,
(3) POSTs them signed the Standard Webhooks way with no transaction open, and (4) records
the outcomes. So several relays may run against one PostgreSQL database without sending an
event twice or out of order, and a failing event holds back only its own aggregate.

At-least-once: a relay that dies between sending and recording leaves a lease that expires,
and the event is sent again with the same ``webhook-id``.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import urllib3
from flask import Flask
from sqlalchemy import ColumnElement, and_, event, func, insert, or_, select, update
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from mes.audit.log import Actor
from mes.db import as_utc, db, utcnow
from mes.integration.models import (
    Delivery,
    DeliveryCursor,
    DeliveryStatus,
    EndpointState,
    OutboxEvent,
    WebhookEndpoint,
)

log = logging.getLogger(__name__)

#: Seconds to wait after each failed attempt (events.md §3); after the last, the event is dead.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.2
TIMEOUT_S = 15.0
LEASE = timedelta(seconds=60)
RETRY_AFTER_MAX_S = 36000.0
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
#: PostgreSQL channel the outbox trigger (migration 0099) notifies when an insert commits
OUTBOX_CHANNEL = "mes_outbox"
RELAY_ACTOR = Actor.system("relay")
#: deliveries sent side by side, each to a different aggregate
SENDERS = 8
#: aggregates a relay takes a round: twice its senders, so a second relay finds the others
#: (measured: with 50, one relay took every line of a 20-aggregate backlog and the other idled)
BATCH = 16
#: events of one aggregate a relay sends one after another in a round (``mes relay --run``)
RUN = 25
#: a delivery not yet received: it holds back the later events of its aggregate at its endpoint
UNDELIVERED = (DeliveryStatus.PENDING.value, DeliveryStatus.DEAD.value)


def schedule_from_env() -> tuple[float, ...]:
    """``MES_RELAY_SCHEDULE`` (comma-separated seconds), else the spec's schedule."""
    text = os.environ.get("MES_RELAY_SCHEDULE", "").strip()
    return parse_schedule(text) if text else DEFAULT_SCHEDULE


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"5,300,1800"`` as seconds; ValueError with a plain sentence if it is not that."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"the retry schedule must be comma-separated seconds, not {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ValueError(f"the retry schedule must be comma-separated seconds, not {text!r}")
    return values


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (delay seconds or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max((when - now).total_seconds(), 0.0), RETRY_AFTER_MAX_S)


def retry_delay(failed_attempts: int, schedule: Sequence[float], rng: random.Random,
                retry_after: float | None = None) -> float | None:
    """Seconds until the next attempt after ``failed_attempts`` failures, ±20 % jitter;
    ``Retry-After`` instead when the receiver sent one. None: the schedule is spent (dead letter)."""
    if failed_attempts > len(schedule):
        return None
    if retry_after is not None:
        return retry_after
    base = schedule[failed_attempts - 1]
    return base * rng.uniform(1 - JITTER, 1 + JITTER)


def signature(endpoint: WebhookEndpoint | Any, msg_id: str, at: datetime, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` with the endpoint's secret, and with the
    previous secret too (space-separated) while a rotation lasts."""
    sigs = [Webhook(endpoint.secret).sign(msg_id, at, body)]
    if endpoint.previous_secret and endpoint.previous_secret_until and endpoint.previous_secret_until > at:
        sigs.append(Webhook(endpoint.previous_secret).sign(msg_id, at, body))
    return " ".join(sigs)


#: At most this much of a receiver's answer is read; the answer is not used, but reading a short
#: one to its end puts the connection back in the pool (keep-alive), where closing it unread
#: would cost a new TCP connection per event
ANSWER_READ_MAX = 64 * 1024


class Connections:
    """The relay's HTTP client: keep-alive connections per receiver, shared by its sending
    threads (urllib3, which ``requests`` is built on, used directly: a third of the CPU per
    event). A proxy named by the environment (``https_proxy``, ``no_proxy``...) is used as
    ``requests`` would; TLS is verified against the system's certificate store."""

    def __init__(self, senders: int) -> None:
        self.options: dict[str, Any] = {"maxsize": max(1, senders), "block": False, "retries": False,
                                        "headers": {"User-Agent": "open-mes-relay/1"}}
        self.direct = urllib3.PoolManager(**self.options)
        self.proxied: dict[str, urllib3.ProxyManager] = {}
        self.by_url: dict[str, urllib3.PoolManager] = {}
        self.lock = threading.Lock()

    def manager(self, url: str) -> urllib3.PoolManager:
        """The pool manager for ``url``: through the environment's proxy for it, if any (looked
        up once per URL: the environment of a running relay does not change)."""
        known = self.by_url.get(url)
        if known is not None:
            return known
        parts = urllib.parse.urlsplit(url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        with self.lock:
            if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
                manager: urllib3.PoolManager = self.direct
            else:
                manager = self.proxied.setdefault(proxy, urllib3.ProxyManager(proxy, **self.options))
            self.by_url[url] = manager
        return manager

    def post(self, c: Claimed, headers: dict[str, str], timeout_s: float) -> Outcome:
        """POST the stored body bytes; no redirect is followed, no retry made here (the schedule
        does that). A short answer is read to its end so its connection is kept; a longer one
        is left unread and its connection closed (no receiver can make the relay read megabytes)."""
        try:
            response = self.manager(c.url).request(
                "POST", c.url, body=c.body, headers={**headers, "Content-Type": CONTENT_TYPE},
                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), redirect=False, preload_content=False)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return Outcome(c, None, f"{type(exc).__name__}: {exc}"[:500])
        try:
            response.read(ANSWER_READ_MAX)
            more = response.read(1)  # a chunked answer has no length to look at: ask for one byte more
        except (urllib3.exceptions.HTTPError, OSError):
            more = b"?"  # the status is what counts; the connection is closed below
        if more:
            response.close()  # not read to its end: this connection cannot be reused
        response.release_conn()
        status = response.status
        return Outcome(c, status, None if 200 <= status < 300 else f"HTTP {status}", response.headers.get("Retry-After"))


@dataclass
class Claimed:
    """A delivery this relay holds the lease of, with what it needs to send it."""

    endpoint_id: str
    event_id: str
    attempts: int
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None
    body: bytes
    subject: str = ""


@dataclass
class Outcome:
    claimed: Claimed
    status: int | None
    error: str | None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Relay:
    """One relay worker. ``run_once`` does one fan-out, claim, send and record round."""

    def __init__(self, app: Flask, *, name: str | None = None, schedule: Sequence[float] | None = None,
                 batch: int = BATCH, poll_s: float = 0.25, timeout_s: float = TIMEOUT_S, lease: timedelta = LEASE,
                 rng: random.Random | None = None, senders: int = SENDERS, run: int = 1) -> None:
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.schedule = tuple(schedule if schedule is not None else schedule_from_env())
        self.batch = batch
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.lease = max(lease, timedelta(seconds=timeout_s + 10))  # room for a whole attempt
        self.rng = rng or random.Random()
        self.senders = senders
        self.run_length = max(1, run)
        self._pool: ThreadPoolExecutor | None = None
        self._http = Connections(senders)

    # ------------------------------------------------------------------ fan-out

    def fan_out(self, limit: int = 1000) -> int:
        """Owe each endpoint the outbox events committed since its cursor that its filter takes."""
        made = 0
        session = db.session
        try:
            cursors = session.execute(select(DeliveryCursor).with_for_update(skip_locked=True)).scalars().all()
            endpoints = {e.id: e.types() for e in session.execute(select(WebhookEndpoint)).scalars()}
            for cursor in cursors:
                rows = session.execute(
                    select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.subject, OutboxEvent.sequence,
                           OutboxEvent.position)
                    .where(OutboxEvent.position > cursor.position).order_by(OutboxEvent.position).limit(limit)
                ).all()
                if not rows:
                    continue
                types = endpoints.get(cursor.endpoint_id, frozenset())
                now = utcnow()
                owed = [{"endpoint_id": cursor.endpoint_id, "event_id": r.id, "subject": r.subject,
                         "sequence": r.sequence, "position": r.position, "status": DeliveryStatus.PENDING.value,
                         "attempts": 0, "next_attempt_at": now, "created_at": now}
                        for r in rows if not types or r.type in types]
                if owed:
                    session.execute(insert(Delivery), owed)
                session.execute(update(DeliveryCursor).where(DeliveryCursor.endpoint_id == cursor.endpoint_id)
                                .values(position=rows[-1].position))
                made += len(owed)
            session.commit()
        except Exception:
            session.rollback()
            raise
        return made

    # -------------------------------------------------------------------- claim

    def claim(self) -> list[Claimed]:
        """Lease up to ``batch`` due deliveries (see :func:`claim_due`)."""
        return claim_due(self.name[:100], self.batch, self.lease, self.run_length)

    # --------------------------------------------------------------------- send

    def send(self, c: Claimed) -> Outcome:
        """POST the stored body bytes, signed for this attempt; no redirect is followed."""
        now = utcnow()
        headers = {"webhook-id": c.event_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature(c, c.event_id, now, c.body)}
        return self._http.post(c, headers, self.timeout_s)

    # ------------------------------------------------------------------- record

    def record(self, outcomes: list[Outcome]) -> list[str]:
        """Write what happened (see :func:`record_outcomes`); returns the endpoints that answered 410."""
        return record_outcomes(outcomes, self.name[:100], self.schedule, self.rng)

    def _disable(self, endpoint_ids: list[str]) -> None:
        from mes.errors import Conflict
        from mes.integration.endpoints import set_state

        for endpoint_id in endpoint_ids:
            try:
                set_state(RELAY_ACTOR, endpoint_id, EndpointState.DISABLED, "the endpoint answered 410 Gone")
            except Conflict:
                db.session.rollback()

    # --------------------------------------------------------------------- loop

    def run_once(self) -> int:
        """One round; returns how many deliveries were attempted.

        A delivery is sent only while enough of its lease is left for a whole attempt, so no
        other relay can take it over while this one may still be sending it; the rest of the
        round's claims are handed back. After a 410 the endpoint's other claims are handed back."""
        self.fan_out()
        claimed = self.claim()
        if not claimed:
            return 0
        send_until = time.monotonic() + self.lease.total_seconds() - self.timeout_s - 5.0
        gone: set[str] = set()

        def attempt(run: list[Claimed]) -> list[tuple[Claimed, Outcome | None]]:
            """One aggregate's line at one endpoint, in sequence order; after a failure the rest
            of the run is handed back unsent (it waits behind the failed event)."""
            out: list[tuple[Claimed, Outcome | None]] = []
            stopped = False
            for c in run:
                if stopped or c.endpoint_id in gone or time.monotonic() > send_until:
                    out.append((c, None))
                    stopped = True
                    continue
                outcome = self.send(c)
                if outcome.status == 410:
                    gone.add(c.endpoint_id)
                stopped = not outcome.ok
                out.append((c, outcome))
            return out

        # each run is a different aggregate's line, so runs go out side by side
        lines: dict[tuple[str, str], list[Claimed]] = {}
        for c in claimed:  # claimed in position order: sequence order within each line
            lines.setdefault((c.endpoint_id, c.subject or c.event_id), []).append(c)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.senders, thread_name_prefix="mes-relay-send")
        results = [pair for run in self._pool.map(attempt, lines.values()) for pair in run]
        handed_back = [c for c, o in results if o is None]
        outcomes = [o for _, o in results if o is not None]
        self._release(handed_back)
        self._disable(self.record(outcomes))
        return len(outcomes)

    def _release(self, claims: list[Claimed]) -> None:
        """Hand leases back unsent (no attempt is counted)."""
        if not claims:
            return
        for c in claims:
            db.session.execute(update(Delivery).where(
                Delivery.endpoint_id == c.endpoint_id, Delivery.event_id == c.event_id,
                Delivery.claimed_by == self.name[:100]).values(claimed_until=None))
        db.session.commit()

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Deliver until ``stop`` is set (or ``duration`` seconds pass); a database or network
        failure is logged and retried after the poll interval, never fatal."""
        end = None if duration is None else time.monotonic() + duration
        with self.app.app_context():
            waiter = OutboxWaiter(db.engine.url, stop)
            while not stop.is_set() and (end is None or time.monotonic() < end):
                try:
                    busy = self.run_once()
                except Exception:  # noqa: BLE001 - the relay outlives a database restart
                    log.exception("relay round failed; retrying")
                    db.session.rollback()
                    busy = 0
                if busy < self.batch:
                    # a round that was not full left nothing due: wait for the next commit's
                    # notification (one that came during the round wakes it at once) instead
                    # of a round that finds nothing (half the relay's work at a kiosk's pace)
                    waiter.wait(self.poll_s)
            waiter.close()
            db.session.remove()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


_LOCAL_WAITERS: set[threading.Event] = set()
_LOCAL_WAKEUP_LOCK = threading.Lock()


def _install_local_wakeup() -> None:
    """Wake this process's relays when a session of this process commits an outbox row
    (``mes demo`` on SQLite: the server and its relay share the process)."""
    with _LOCAL_WAKEUP_LOCK:
        if getattr(_install_local_wakeup, "_installed", False):
            return

        @event.listens_for(Session, "do_orm_execute")
        def _outbox_written(state: Any) -> None:
            table = getattr(state.statement, "table", None)
            if state.is_insert and table is not None and table.name == OutboxEvent.__tablename__:
                state.session.info["outbox_written"] = True

        @event.listens_for(Session, "after_commit")
        def _wake(session: Session) -> None:
            if session.info.pop("outbox_written", False):
                for waiter in list(_LOCAL_WAITERS):
                    waiter.set()

        @event.listens_for(Session, "after_rollback")
        def _forget(session: Session) -> None:
            session.info.pop("outbox_written", None)

        _install_local_wakeup._installed = True  # type: ignore[attr-defined]


class OutboxWaiter:
    """Waits for the next outbox commit: on PostgreSQL a ``LISTEN`` on the channel the outbox
    trigger notifies at commit (so an event leaves within milliseconds, whichever process wrote
    it); elsewhere a commit in this process, or the poll interval."""

    def __init__(self, url: Any, stop: threading.Event) -> None:
        self.stop = stop
        self.local = threading.Event()
        _install_local_wakeup()
        _LOCAL_WAITERS.add(self.local)
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False) \
            if url.get_backend_name() == "postgresql" else None
        self.conn: Any = None

    def wait(self, seconds: float) -> None:
        if self.dsn is None:
            self.local.wait(seconds)
            self.local.clear()
            return
        try:
            if self.conn is None:
                import psycopg

                self.conn = psycopg.connect(self.dsn, autocommit=True)
                self.conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                return  # look once more: a commit may have come before the LISTEN
            for _ in self.conn.notifies(timeout=seconds, stop_after=1):
                pass
        except Exception:  # noqa: BLE001 - fall back to polling; reconnect next time
            log.warning("relay: outbox notifications unavailable; polling", exc_info=True)
            self.close()
            self.stop.wait(seconds)

    def close(self) -> None:
        _LOCAL_WAITERS.discard(self.local)
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


def claim_due(name: str, batch: int, lease: timedelta, run: int = 1) -> list[Claimed]:
    """Lease up to ``batch`` due deliveries of enabled endpoints, each the head of its aggregate's
    line at its endpoint: no earlier event of the same subject is undelivered there (pending,
    leased or dead). So events reach each endpoint in ``sequence`` order per aggregate and a
    failing event holds back only its own aggregate. ``FOR UPDATE SKIP LOCKED`` and the lease
    keep two relays from taking the same delivery.

    ``run`` > 1: with each head, up to ``run - 1`` of the line's next undelivered events that
    are due and not leased (stopping at the first that is not), sent one after another behind
    the head by the same relay; a line with a backlog then drains ``run`` events a round."""
    session = db.session
    now = utcnow()
    # each line's first undelivered event, ranked in one pass over the undelivered rows (a "no
    # earlier undelivered row" test per row costs the square of a line's backlog) and with no
    # join, so no table statistics can turn it into a pass per row
    ranked = select(Delivery.endpoint_id, Delivery.event_id, Delivery.status, Delivery.next_attempt_at,
                    Delivery.claimed_until, Delivery.position,
                    func.row_number().over(partition_by=(Delivery.endpoint_id, Delivery.subject),
                                           order_by=Delivery.sequence).label("place")) \
        .where(Delivery.status.in_(UNDELIVERED)).subquery()
    enabled = select(WebhookEndpoint.id).where(WebhookEndpoint.state == EndpointState.ENABLED.value)
    try:
        heads = session.execute(
            select(ranked.c.endpoint_id, ranked.c.event_id)
            .where(ranked.c.place == 1, _due(ranked.c, now), ranked.c.endpoint_id.in_(enabled))
            .order_by(ranked.c.next_attempt_at, ranked.c.position)
            .limit(batch)
        ).all()
        # then lock them, skipping any another relay is claiming right now; the lock re-reads
        # each row, so one that was leased or delivered meanwhile drops out
        keys = session.execute(
            select(Delivery.endpoint_id, Delivery.event_id).where(_these(heads), _due(Delivery, now))
            .order_by(Delivery.position).with_for_update(skip_locked=True)
        ).all() if heads else []
        if not keys:
            session.commit()
            return []
        if run > 1:
            keys = [*keys, *_followers(session, keys, run, now)]
        session.execute(update(Delivery).where(_these(keys)).values(claimed_until=now + lease, claimed_by=name))
        rows = session.execute(
            select(Delivery.endpoint_id, Delivery.event_id, Delivery.attempts, WebhookEndpoint.url,
                   WebhookEndpoint.secret, WebhookEndpoint.previous_secret, WebhookEndpoint.previous_secret_until,
                   OutboxEvent.body, Delivery.subject)
            .join(WebhookEndpoint, WebhookEndpoint.id == Delivery.endpoint_id)
            .join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
            .where(_these(keys))
            .order_by(Delivery.position)
        ).all()
        session.commit()
    except Exception:
        session.rollback()
        raise
    return [Claimed(*r) for r in rows]


def _due(t: Any, now: datetime) -> ColumnElement[bool]:
    """Pending, its next attempt due and not leased: of the deliveries table or of a query over it
    (``t``: the model or a subquery's columns)."""
    return and_(t.status == DeliveryStatus.PENDING.value, t.next_attempt_at <= now,
                (t.claimed_until.is_(None)) | (t.claimed_until <= now))


def _these(keys: Sequence[Any]) -> ColumnElement[bool]:
    """Deliveries by (endpoint, event) key, as ``endpoint = e AND event_id IN (...)`` per endpoint:
    PostgreSQL looks each up in the primary key, where a list of row values is planned as a scan."""
    by_endpoint: dict[str, list[str]] = {}
    for endpoint_id, event_id in keys:
        by_endpoint.setdefault(endpoint_id, []).append(event_id)
    return or_(*(and_(Delivery.endpoint_id == e, Delivery.event_id.in_(ids)) for e, ids in by_endpoint.items()))


def _followers(session: Session, heads: Sequence[Any], run: int, now: datetime) -> list[tuple[str, str]]:
    """The next undelivered deliveries behind each claimed head, in sequence order, while they
    are pending, due and not leased (the first that is not ends its line's run). Each line's
    next ``run - 1`` rows are read and locked, however long its backlog, and locked without
    SKIP LOCKED: a row skipped silently would let a later one overtake it."""
    lines = session.execute(select(Delivery.endpoint_id, Delivery.subject, Delivery.sequence).where(
        _these(heads))).all()
    out: list[tuple[str, str]] = []
    for endpoint_id, subject, sequence in lines:
        rows = session.execute(
            select(Delivery.event_id, Delivery.status, Delivery.next_attempt_at, Delivery.claimed_until)
            .where(Delivery.endpoint_id == endpoint_id, Delivery.subject == subject, Delivery.sequence > sequence,
                   Delivery.status != DeliveryStatus.DELIVERED.value)
            .order_by(Delivery.sequence).limit(run - 1).with_for_update()
        ).all()
        for r in rows:
            due = r.status == DeliveryStatus.PENDING.value and as_utc(r.next_attempt_at) <= now and (
                r.claimed_until is None or as_utc(r.claimed_until) <= now)
            if not due:
                break
            out.append((endpoint_id, r.event_id))
    return out


def record_outcomes(outcomes: list[Outcome], name: str, schedule: Sequence[float], rng: random.Random) -> list[str]:
    """Record attempts: 2xx delivered; 410 hands back the endpoints to disable; otherwise the next
    attempt after the schedule's delay (with jitter, or the receiver's ``Retry-After``), and after
    the last one the event is dead-lettered with an alarm for the integration owner."""
    from mes.users.operations import raise_alarm

    session = db.session
    now = utcnow()
    gone: list[str] = []
    try:
        delivered: dict[int, list[tuple[str, str]]] = {}
        for o in outcomes:
            if o.ok:
                delivered.setdefault(o.status or 0, []).append((o.claimed.endpoint_id, o.claimed.event_id))
        for status, keys in delivered.items():  # one statement for the usual case
            session.execute(update(Delivery).where(_these(keys),
                                                   Delivery.claimed_by == name).values(
                status=DeliveryStatus.DELIVERED.value, attempts=Delivery.attempts + 1, delivered_at=now,
                last_status=status, last_error=None, claimed_until=None))
        for o in outcomes:
            key = and_(Delivery.endpoint_id == o.claimed.endpoint_id, Delivery.event_id == o.claimed.event_id,
                       Delivery.claimed_by == name)
            attempts = o.claimed.attempts + 1
            if o.ok:
                continue
            if o.status == 410:
                gone.append(o.claimed.endpoint_id)
                session.execute(update(Delivery).where(key).values(
                    attempts=attempts, last_status=410, last_error="410 Gone: endpoint disabled",
                    claimed_until=None))
                continue
            delay = retry_delay(attempts, schedule, rng, parse_retry_after(o.retry_after, now))
            if delay is None:
                session.execute(update(Delivery).where(key).values(
                    status=DeliveryStatus.DEAD.value, attempts=attempts, dead_at=now, last_status=o.status,
                    last_error=o.error, claimed_until=None))
                raise_alarm(RELAY_ACTOR, "integration.dead_letter",
                            f"Event {o.claimed.event_id} could not be delivered to {o.claimed.endpoint_id} "
                            f"after {attempts} attempts ({o.error}); later events of its aggregate wait "
                            "until it is replayed.",
                            {"endpoint": o.claimed.endpoint_id, "event_id": o.claimed.event_id}, commit=False)
            else:
                session.execute(update(Delivery).where(key).values(
                    attempts=attempts, next_attempt_at=now + timedelta(seconds=delay), last_status=o.status,
                    last_error=o.error, claimed_until=None))
        session.commit()
    except Exception:
        session.rollback()
        raise
    return sorted(set(gone))


def start_in_background(app: Flask, **options: Any) -> tuple[threading.Thread, threading.Event]:
    """Run a relay on a daemon thread of this process (``mes demo``); set the event to stop it."""
    stop = threading.Event()
    relay = Relay(app, **options)
    thread = threading.Thread(target=relay.run, args=(stop,), name="mes-relay", daemon=True)
    thread.start()
    return thread, stop
