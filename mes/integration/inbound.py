"""Inbound commands from QMS and ERP: ``POST /integration/v1/inbound`` (``shared/specs/events.md`` §4).

A command is a CloudEvent signed by its sender with the inbound secret the MES issued it
(Standard Webhooks, verified by the ``standardwebhooks`` library), and carries an
``Idempotency-Key``. :func:`receive` answers it:

1. no (or a malformed) ``Idempotency-Key`` → 400;
2. a signature no enabled peer's secret verifies, a timestamp more than 300 s off, or
   malformed webhook headers → 401 (never 500);
3. the key seen before with a different body → 422; while its first request still runs →
   409; after → the stored first answer, byte for byte;
4. otherwise the command is carried out by the peer's system actor through the service
   layer (:mod:`mes.integration.inbound_types`), and its answer is stored *in the same
   transaction* as the change it made, so a change and "it was done" commit together.

Errors are RFC 9457 problem+json. Peers and their secrets: :func:`add_peer`,
:func:`rotate_peer_secret` (the old secret verifies beside the new one for a while).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from standardwebhooks.webhooks import Webhook

from mes.audit.log import Actor, record
from mes.db import as_utc, db, utcnow
from mes.errors import AuthenticationFailed, Conflict, MESError, NotFound, ValidationFailed
from mes.integration.endpoints import ROTATION_OVERLAP, fingerprint, new_secret
from mes.integration.inbound_models import IdempotencyRecord, IdempotencyState, InboundPeer, PeerState
from mes.validation import identifier

log = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300
"""How far (either way) a ``webhook-timestamp`` may be from the MES's clock."""
LEASE = timedelta(seconds=60)
"""How long a command may run before a retry with its key may take it over (a crashed worker)."""
KEY_MAX = 255
PROBLEM_TYPE = "application/problem+json"
PROBLEM_BASE = "https://open-mes.dev/problems/"  # as mes.web's (a test holds them equal; no web import here)
_KEY_RE = re.compile(r'^(?:"([\x21\x23-\x7e]{1,255})"|([\x21\x23-\x7e]{1,255}))$')
_ID_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_TS_RE = re.compile(r"^[0-9]{1,12}$")
_SIG_RE = re.compile(r"^v1[a-z]?,[A-Za-z0-9+/=]{1,200}( v1[a-z]?,[A-Za-z0-9+/=]{1,200}){0,7}$")


class MissingIdempotencyKey(MESError):
    status, slug, title = 400, "idempotency-key-missing", "The Idempotency-Key header is missing"


class KeyReused(MESError):
    status, slug, title = 422, "idempotency-key-reused", "The Idempotency-Key was used for another request"


class StillRunning(MESError):
    status, slug, title = 409, "idempotency-key-in-progress", "A request with this Idempotency-Key is still running"


class BadSignature(AuthenticationFailed):
    slug, title = "webhook-signature-invalid", "The webhook signature does not verify"


@dataclass(frozen=True)
class Answer:
    """What the endpoint sends back: status, media type and the exact body bytes."""

    status: int
    body: bytes
    content_type: str = "application/json"
    replayed: bool = False


def problem_answer(exc: MESError, instance: str = "/integration/v1/inbound") -> Answer:
    """An RFC 9457 problem for ``exc`` (the same members as :func:`mes.web.problem`)."""
    body = {"type": PROBLEM_BASE + exc.slug, "title": exc.title, "status": exc.status, "detail": exc.detail,
            "instance": instance, **{k: v for k, v in exc.extra.items() if v is not None}}
    return Answer(exc.status, json.dumps(body, sort_keys=True, default=str).encode(), PROBLEM_TYPE)


# ------------------------------------------------------------------------ peers


def system_actor(peer_id: str) -> Actor:
    """The system actor a peer's commands are recorded under (``system:integration-<peer>``)."""
    return Actor(id=f"system:integration-{peer_id}", name=f"Integration {peer_id}", role="system")


def peer_json(row: InboundPeer) -> dict[str, Any]:
    """A peer as lists show it: never its secret, only the secret's fingerprint."""
    return {"id": row.id, "event_types": sorted(row.types()), "state": row.state,
            "secret_fingerprint": fingerprint(row.secret),
            "rotating_until": row.previous_secret_until.isoformat() if row.previous_secret_until else None,
            "created_at": row.created_at.isoformat(), "created_by": row.created_by}


def get_peer(peer_id: str) -> InboundPeer:
    row = db.session.get(InboundPeer, peer_id)
    if row is None:
        raise NotFound(f"There is no integration peer {peer_id}.")
    return row


def list_peers() -> list[InboundPeer]:
    return list(db.session.execute(select(InboundPeer).order_by(InboundPeer.id)).scalars())


def _peer_types(values: Any) -> str:
    from mes.integration.inbound_types import HANDLERS

    if values is None:
        return ""
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    out = set()
    for v in values:
        if not isinstance(v, str) or v.strip() not in HANDLERS:
            raise ValidationFailed(f"Each command type is one of {', '.join(sorted(HANDLERS))}.", field="event_types")
        out.add(v.strip())
    return " ".join(sorted(out))


def add_peer(actor: Actor, peer_id: str, event_types: Any = None) -> tuple[InboundPeer, str]:
    """Register a sender (a QMS, an ERP); returns it and the inbound secret it signs with (shown this once)."""
    peer_id = identifier(peer_id, "peer id", "id")
    types = _peer_types(event_types)
    if db.session.get(InboundPeer, peer_id) is not None:
        raise Conflict(f"The peer id {peer_id} is taken.")
    secret = new_secret()
    row = InboundPeer(id=peer_id, secret=secret, event_types=types, state=PeerState.ENABLED.value,
                      created_at=utcnow(), created_by=actor.id)
    db.session.add(row)
    record(actor, "integration.peer.added", ("integration_peer", peer_id),
           after={"event_types": types, "state": row.state, "secret": fingerprint(secret)})
    db.session.commit()
    return row, secret


def rotate_peer_secret(actor: Actor, peer_id: str, overlap: timedelta = ROTATION_OVERLAP) -> str:
    """A new inbound secret; the old one still verifies for ``overlap``. Returns the new secret (once)."""
    row = get_peer(peer_id)
    old, secret = row.secret, new_secret()
    row.previous_secret, row.previous_secret_until, row.secret = old, utcnow() + overlap, secret
    record(actor, "integration.peer.secret_rotated", ("integration_peer", row.id), before={"secret": fingerprint(old)},
           after={"secret": fingerprint(secret), "previous_verifies_until": row.previous_secret_until.isoformat()})
    db.session.commit()
    return secret


def set_peer_state(actor: Actor, peer_id: str, state: PeerState, reason: str) -> InboundPeer:
    """Accept commands from a peer again, or stop accepting them (they get 401)."""
    row = get_peer(peer_id)
    if row.state == state.value:
        raise Conflict(f"The peer {peer_id} is {state.value} already.")
    before, row.state = row.state, state.value
    record(actor, f"integration.peer.{'enabled' if state is PeerState.ENABLED else 'disabled'}",
           ("integration_peer", row.id), before={"state": before}, after={"state": state.value}, reason=reason)
    db.session.commit()
    return row


# ---------------------------------------------------------------- the request


def idempotency_key(headers: Mapping[str, str]) -> str:
    """The ``Idempotency-Key`` (a structured-header string, ``"<uuid>"``; quotes optional)."""
    raw = headers.get("Idempotency-Key")
    match = _KEY_RE.match(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        raise MissingIdempotencyKey("Send an Idempotency-Key header (a quoted string such as a UUID, at most "
                                    f"{KEY_MAX} visible ASCII characters) with every command.")
    return match.group(1) or match.group(2)


def authenticate(headers: Mapping[str, str], body: bytes) -> InboundPeer:
    """The enabled peer whose inbound secret (or previous secret, during rotation) verifies the
    delivery, by the ``standardwebhooks`` library; :class:`BadSignature` (401) otherwise."""
    wanted = {k: headers.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    if not (_ID_RE.match(wanted["webhook-id"] or "") and _TS_RE.match(wanted["webhook-timestamp"] or "")
            and _SIG_RE.match(wanted["webhook-signature"] or "")):
        raise BadSignature("The webhook-id, webhook-timestamp and webhook-signature headers are missing or malformed.")
    ts = int(wanted["webhook-timestamp"] or "0")
    if abs(utcnow().timestamp() - ts) > TOLERANCE_SECONDS:
        raise BadSignature(f"The webhook-timestamp is more than {TOLERANCE_SECONDS} s from the MES's clock; "
                           "check the sender's clock and sign the delivery afresh.")
    now = utcnow()
    for peer in list_peers():
        if peer.state != PeerState.ENABLED.value:
            continue
        secrets = [peer.secret]
        if peer.previous_secret and peer.previous_secret_until and peer.previous_secret_until > now:
            secrets.append(peer.previous_secret)
        for secret in secrets:
            try:
                Webhook(secret).verify(body, dict(wanted), json_parse=False)
            except Exception:  # noqa: BLE001 - any failure of the library is "does not verify"
                continue
            return peer
    raise BadSignature("The webhook signature does not verify with any inbound secret the MES issued.")


def _type_of(body: bytes) -> str:
    """The command's type, for the idempotency row (the body is checked properly later)."""
    try:
        value = json.loads(body).get("type")
    except Exception:  # noqa: BLE001 - not JSON, too deep, not an object: parse_event says why
        return ""
    return value if isinstance(value, str) else ""


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _answer_of(rec: Any) -> Answer:
    return Answer(rec.status or 200, bytes(rec.response or b""), rec.content_type or "application/json", True)


def _read(peer_id: str, key: str) -> Any:
    """The idempotency row (Core: it is bookkeeping like the relay's deliveries, not a record)."""
    return db.session.execute(select(IdempotencyRecord.__table__).where(
        IdempotencyRecord.peer_id == peer_id, IdempotencyRecord.key == key)).first()


@dataclass(frozen=True)
class Claim:
    """A running command's idempotency row: who sent it under which key."""

    peer_id: str
    key: str


def claim(peer_id: str, key: str, body: bytes, event_id: str, event_type: str = "") -> Claim | Answer:
    """Start a command under ``key``: the new (committed) running claim, or the stored first
    answer; :class:`KeyReused` (422) for another body, :class:`StillRunning` (409) while it runs."""
    digest, now = _digest(body), utcnow()
    rec = _read(peer_id, key)
    if rec is None:
        try:
            db.session.execute(insert(IdempotencyRecord).values(
                peer_id=peer_id, key=key, body_sha256=digest, event_id=event_id[:255], event_type=event_type[:100],
                state=IdempotencyState.RUNNING.value, running_until=now + LEASE, created_at=now))
            db.session.commit()
            return Claim(peer_id, key)
        except IntegrityError:  # the same key at the same moment: the other request runs it
            db.session.rollback()
            rec = _read(peer_id, key)
            if rec is None:
                raise StillRunning("A request with this Idempotency-Key is starting; try again shortly.") from None
    db.session.rollback()  # end the read (SQLite holds its write lock for a transaction)
    if rec.body_sha256 != digest:
        raise KeyReused("This Idempotency-Key was first used with a different body; use a new key for a new "
                        "command.", first_event_id=rec.event_id)
    if rec.state == IdempotencyState.DONE.value:
        return _answer_of(rec)
    if rec.running_until is not None and as_utc(rec.running_until) > now:
        raise StillRunning("The first request with this Idempotency-Key is still being carried out; ask again "
                           "shortly for its answer.", retry_after=1)
    # the first request's worker died mid-way (its lease ran out): this request takes it over
    taken = db.session.execute(update(IdempotencyRecord).where(
        IdempotencyRecord.peer_id == peer_id, IdempotencyRecord.key == key,
        IdempotencyRecord.state == IdempotencyState.RUNNING.value,
        IdempotencyRecord.running_until == rec.running_until).values(running_until=now + LEASE)).rowcount
    db.session.commit()
    if not taken:
        raise StillRunning("Another request took this Idempotency-Key over at the same moment.", retry_after=1)
    return Claim(peer_id, key)


@dataclass
class Command:
    """One verified command being carried out: the handlers' context."""

    peer: InboundPeer
    claim: Claim
    event: dict[str, Any]
    actor: Actor
    staged: Answer | None = None

    @property
    def data(self) -> dict[str, Any]:
        return self.event["data"]

    def answer(self, result: dict[str, Any], status: int = 200) -> None:
        """Stage the success answer into the idempotency row, in this transaction: the service
        call that follows commits it together with its change (or rolls both back)."""
        body = json.dumps({"id": self.event["id"], "type": self.event["type"], "status": "applied",
                           "result": result}, sort_keys=True, default=str).encode()
        self.staged = Answer(status, body)
        _finish(self.claim, self.staged)


def _finish(c: Claim, answer: Answer) -> int:
    """Write the answer into the running row (Core UPDATE, in the current transaction)."""
    return db.session.execute(update(IdempotencyRecord).where(
        IdempotencyRecord.peer_id == c.peer_id, IdempotencyRecord.key == c.key,
        IdempotencyRecord.state == IdempotencyState.RUNNING.value).values(
        state=IdempotencyState.DONE.value, status=answer.status, content_type=answer.content_type,
        response=answer.body, completed_at=utcnow(), running_until=None)).rowcount


def _store_refusal(c: Claim, answer: Answer) -> None:
    """Keep a refusal as the key's first answer (its own transaction: the change rolled back)."""
    db.session.rollback()
    _finish(c, answer)
    db.session.commit()


def _release_lease(c: Claim) -> None:
    """An unexpected failure: let the next retry with this key run the command again."""
    db.session.rollback()
    db.session.execute(update(IdempotencyRecord).where(
        IdempotencyRecord.peer_id == c.peer_id, IdempotencyRecord.key == c.key,
        IdempotencyRecord.state == IdempotencyState.RUNNING.value).values(running_until=utcnow()))
    db.session.commit()


def receive(headers: Mapping[str, str], body: bytes) -> Answer:
    """Answer one inbound delivery (see the module's description for the order of checks)."""
    from mes.integration.inbound_types import dispatch, parse_event

    try:
        key = idempotency_key(headers)
        peer = authenticate(headers, body)
    except MESError as exc:
        db.session.rollback()
        if exc.status == 401:
            log.warning("inbound delivery refused: %s", exc.detail)
        return problem_answer(exc)
    peer_id, event_id = peer.id, str(headers.get("webhook-id"))
    try:
        claimed = claim(peer_id, key, body, event_id, _type_of(body))
    except MESError as exc:
        db.session.rollback()
        return problem_answer(exc)
    if isinstance(claimed, Answer):
        return claimed
    try:
        event = parse_event(body, peer)
        if event["id"] != event_id:
            raise ValidationFailed("The CloudEvent id must equal the webhook-id header.", field="id")
        command = Command(peer, claimed, event, system_actor(peer_id))
        dispatch(command)
        if command.staged is None:
            raise RuntimeError(f"handler for {event['type']} gave no answer")
        db.session.commit()  # the staged answer (its service call committed it already, usually)
        return command.staged
    except MESError as exc:
        answer = problem_answer(exc)
        _store_refusal(claimed, answer)
        return answer
    except Exception:
        _release_lease(claimed)
        raise


Handler = Callable[[Command], None]
