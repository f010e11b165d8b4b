"""The audit log in the database: append, Merkle nodes, checkpoints, verification.

Service code never writes an audit row by hand. It changes its records in ``db.session``
and calls :func:`record` once per change; :func:`record` appends the entry, the Merkle
nodes it completes and, when asked, the outbox event, all in the caller's transaction.
A session guard (:func:`install_guard`) refuses to commit a transaction that changed a
record but recorded no entry, and refuses every ORM delete: forgetting is impossible.

Appends are serialised: on PostgreSQL by a transaction-scoped advisory lock, on SQLite by
the database write lock that ``BEGIN IMMEDIATE`` takes. So ``seq`` has no gaps.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, current_app
from sqlalchemy import Connection, Executable, event, func, insert, select
from sqlalchemy.orm import Session

from mes.audit import canonical, entry_tags, keys, merkle
from mes.audit import checkpoint as notes
from mes.audit.models import AUDIT_TABLES, AuditCheckpoint, AuditEntry
from mes.db import as_utc, db, defer_writes, defers_writes, in_read_transaction, pipelined, utcnow
from mes.integration.models import OutboxEvent
from mes.system import token as hsm

ADVISORY_LOCK_KEY = 0x4D45_5341  # "MESA"
CHECKPOINT_EVERY_ENTRIES = 1000
CHECKPOINT_EVERY = timedelta(seconds=60)
#: when the background thread is asked to publish, before a request has to (see
#: :func:`_maybe_checkpoint`): most checkpoints are then signed outside the floor's requests
CHECKPOINT_SOON_ENTRIES = 800
CHECKPOINT_SOON = timedelta(seconds=45)
CHECKPOINT_NOW_ACTIONS = ("esig.", "batch.released")

# Tables whose rows may change without an audit entry: the log itself, the outbox it
# writes, and session bookkeeping that is audited by its own log-in / log-out entries.
UNAUDITED_TABLES = frozenset(AUDIT_TABLES) | {"outbox_events", "alembic_version"}
# The append path sends its two INSERTs straight to the driver: it runs once per audited
# change, and SQLAlchemy's per-statement work was most of its cost.
_ENTRY_COLUMNS = ("seq, at, action, actor_id, terminal_id, entity_type, entity_id, batch_id, entry_bytes, leaf_hash, "
                  "tag")
_INSERT_ENTRY_SQLITE = f"INSERT INTO audit_entries ({_ENTRY_COLUMNS}) VALUES ({', '.join(['?'] * 11)})"
_INSERT_ENTRY_PG = f"INSERT INTO audit_entries ({_ENTRY_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})"
_INSERT_NODE_SQLITE = "INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (?, ?, ?)"


def _insert_nodes_pg(count: int) -> str:
    """One INSERT of ``count`` tree nodes (an append completes one node per level it closes)."""
    return "INSERT INTO audit_tree_nodes (level, idx, hash) VALUES " + ", ".join(["(%s, %s, %s)"] * count)


_INSERT_NODE_PG = _insert_nodes_pg(1)
# an append's outbox event goes through the driver with the entry (SQLAlchemy's insert()
# construct, its cache key and its compilation cost more than the round trip it rides in)
_EVENT_COLUMNS = ("id", "type", "subject", "sequence", "time", "audit_seq", "position", "body", "created_at")
_INSERT_EVENT_SQLITE = f"INSERT INTO outbox_events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join(['?'] * 9)})"
_INSERT_EVENT_PG = f"INSERT INTO outbox_events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join(['%s'] * 9)})"


def _stored_at(at: datetime) -> str:
    """``at`` as SQLAlchemy's SQLite DateTime stores it (naive UTC text), so the ORM reads
    it back like every other timestamp."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class UnauditedChangeError(RuntimeError):
    """A transaction tried to commit a change without an audit entry, or to delete a row."""


@dataclass(frozen=True)
class Actor:
    """Who acts, in which role, from which terminal; goes into every entry."""

    id: str
    name: str
    role: str
    terminal: str | None = None

    @classmethod
    def system(cls, component: str, terminal: str | None = None) -> Actor:
        return cls(id=f"system:{component}", name=f"MES {component}", role="system", terminal=terminal)

    def as_entry(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role}


@dataclass(frozen=True)
class Event:
    """An outbox event to write with the entry (``shared/specs/events.md`` §1)."""

    type: str
    aggregate_type: str
    aggregate_id: str
    data: dict[str, Any]
    correlation_id: str | None = None
    time: datetime | None = None


@dataclass
class _Head:
    """The end of the log as this transaction sees it (valid while it holds the lock)."""

    seq: int
    leaf_hash: bytes
    at: datetime
    frontier: dict[tuple[int, int], bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class AppendedEntry:
    """What :func:`record` appended."""

    seq: int
    at: datetime
    entry_bytes: bytes
    leaf_hash: bytes


@dataclass
class AuditLog:
    """The extension object: site id and checkpoint signing key, bound with ``init_app``."""

    site_id: str = "plant-01.example"
    key_path: Path | None = None
    tag_key_path: Path | None = None
    last_checkpoint: tuple[int, datetime | None] | None = None
    token: hsm.Token | None = None
    _key: Ed25519PrivateKey | hsm.TokenEd25519Key | None = field(default=None, repr=False)
    _tag_key: bytes | None = field(default=None, repr=False)

    def init_app(self, app: Flask) -> None:
        self.site_id = app.config["MES_SITE_ID"]
        self.key_path = Path(app.config["MES_AUDIT_KEY_PATH"])
        tag_path = app.config.get("MES_AUDIT_TAG_KEY_PATH") or self.key_path.parent / entry_tags.TAG_KEY_FILE
        self.tag_key_path = Path(tag_path)
        self.token = hsm.configured(app.config)
        app.extensions["mes_audit"] = self

    def tag_key(self, connection: Connection | None = None) -> bytes:
        """The entry authentication tag key (a file beside the signing key, or derived in the
        PKCS#11 token; created on first use).

        ``connection``: where to look for tagged entries before a missing key is created (a
        migration passes its own: a fresh connection would wait on the migration's locks)."""
        if self._tag_key is None:
            assert self.tag_key_path is not None, "AuditLog.init_app was not called"
            if self.token is not None:
                where, remedy = f"{hsm.AUDIT_TAG!r} in {self.token.describe()}", "restore the token from its backup"
                missing = not hsm.has_tag_secret(self.token)
            else:
                where, remedy = str(self.tag_key_path), "restore the key file (MES_AUDIT_TAG_KEY_PATH)"
                missing = not self.tag_key_path.exists()
            if missing and _log_has_tags(connection):
                # a new key would make every existing entry look forged: the key is missing, not new
                raise keys.KeyFileError(f"audit tag key {where} is missing but the audit log holds tagged entries: "
                                        f"{remedy}")
            self._tag_key = (hsm.tag_key(self.token, create=True) if self.token is not None
                             else entry_tags.load_or_create_tag_key(self.tag_key_path))
        return self._tag_key

    @property
    def state_path(self) -> Path:
        """The latest checkpoint this MES signed and committed, kept beside the key (outside
        the database): a DBA who deletes checkpoints cannot make the MES forget it."""
        assert self.key_path is not None, "AuditLog.init_app was not called"
        return self.key_path.parent / "audit-latest-checkpoint"

    @property
    def key_name(self) -> str:
        return notes.key_name(self.site_id)

    def signing_key(self) -> Ed25519PrivateKey | hsm.TokenEd25519Key:
        """The checkpoint key, created on first use: in the PKCS#11 token when one is
        configured, else in the instance folder (mode 0600)."""
        if self._key is None:
            assert self.key_path is not None, "AuditLog.init_app was not called"
            key: Ed25519PrivateKey | hsm.TokenEd25519Key = (
                hsm.audit_signing_key(self.token, create=True) if self.token is not None
                else keys.load_or_create_signing_key(self.key_path))
            keys.save_verifier_key(self.verifier_dir, self.key_name, keys.public_bytes(key))
            self._key = key
        return self._key

    @property
    def has_signing_key(self) -> bool:
        """Whether the log has a checkpoint key to speak of: the token's (made by ``mes init``),
        or the key file."""
        return self.token is not None or (self.key_path is not None and self.key_path.exists())

    @property
    def verifier_dir(self) -> Path:
        """Where every verifier key ever used is kept (old checkpoints verify after rotation)."""
        assert self.key_path is not None, "AuditLog.init_app was not called"
        return self.key_path.parent / "verifier-keys"

    def reload_key(self) -> None:
        self._key = None

    def vkey(self) -> str:
        return notes.vkey_text(self.key_name, keys.public_bytes(self.signing_key()))


_ANY_TAG_SQL = "SELECT 1 FROM audit_entries WHERE tag IS NOT NULL LIMIT 1"


def _log_has_tags(connection: Connection | None = None) -> bool:
    """Whether any entry in the database already carries a tag (read on ``connection``, or on
    a fresh one)."""
    if connection is not None:
        return connection.exec_driver_sql(_ANY_TAG_SQL).first() is not None
    try:
        with db.engine.connect() as conn:
            return conn.exec_driver_sql(_ANY_TAG_SQL).first() is not None
    except Exception:  # noqa: BLE001 - no database (yet): nothing tagged to protect
        return False


def audit_log() -> AuditLog:
    """The AuditLog bound to the current app."""
    return current_app.extensions["mes_audit"]


# --------------------------------------------------------------------------- append


_LOCK_SQL = f"SELECT pg_advisory_xact_lock({int(ADVISORY_LOCK_KEY)})"


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql(_LOCK_SQL)


#: Merkle frontiers of recent log ends, by (seq, leaf hash). A leaf hash covers its entry,
#: which names the previous leaf, so (seq, leaf) fixes every earlier leaf and therefore the
#: frontier: an entry here is right for any database whose last entry matches, committed
#: or not, and spares the node query on every append of a busy process.
_FRONTIERS: dict[tuple[int, bytes], dict[tuple[int, int], bytes]] = {}
_FRONTIERS_KEPT = 64


def _remember_frontier(seq: int, leaf: bytes, frontier: dict[tuple[int, int], bytes]) -> None:
    if len(_FRONTIERS) >= _FRONTIERS_KEPT:
        _FRONTIERS.clear()
    _FRONTIERS[(seq, leaf)] = frontier


_HEAD_SQL = "SELECT seq, leaf_hash, at FROM audit_entries ORDER BY seq DESC LIMIT 1"
#: The Merkle frontier of the log as it ends (mes.audit.merkle.frontier of seq + 1: one
#: perfect subtree per set bit of the size, at index (size >> level) - 1), read by primary key.
_FRONTIER_SQL_PG = (
    "SELECT f.l, f.i, (SELECT t.hash FROM audit_tree_nodes t WHERE t.level = f.l AND t.idx = f.i) FROM ("
    "SELECT l, ((h.seq + 1) >> l) - 1 AS i FROM (SELECT seq FROM audit_entries ORDER BY seq DESC LIMIT 1) h, "
    "generate_series(0, 62) l WHERE ((h.seq + 1) >> l) & 1 = 1) f")  # a primary-key look-up per node, whatever the plan
_LAST_SEQUENCE_SQL_PG = "SELECT max(sequence) FROM outbox_events WHERE subject = %s"
#: ``session.info`` key: seconds this session waited for the append lock (see :func:`_head`).
LOCK_WAIT_KEY = "audit_lock_wait_s"


def _head(session: Session, statements: Sequence[tuple[Executable, Any]] = (),
          subject: str | None = None) -> tuple[_Head | None, int | None]:
    """Take the append lock and read the end of the log (once per transaction), with the
    last outbox ``sequence`` of ``subject`` when given.

    Every kiosk's append waits while another holds the lock, and a holder that waits for an
    answer may wait again for its process's turn at the CPU: so on PostgreSQL the change's own
    writes (``statements``), the lock, the log end, the Merkle frontier of the log (which
    another server may have extended) and the subject's last event sequence go in one round
    trip (:func:`~mes.db.pipelined`), the entry, its tree nodes and its event in a second, and
    the commit is the third. (Each was a round trip of its own: under load the lock was held
    for 40-100 ms.)"""
    conn = session.connection()
    cached = session.info.get("audit_head")
    if cached is not None:
        for stmt, params in statements:
            conn.execute(stmt, params)
        return cached, (None if subject is None else _last_sequence(session, subject))
    waited = perf_counter()
    frontier: dict[tuple[int, int], bytes] | None = None
    last: int | None = None
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        with pipelined(conn):
            for stmt, params in statements:
                conn.execute(stmt, params)
            # the lock first: the reads after it, statements of their own, see every entry
            # committed before the lock was granted
            driver.cursor().execute(_LOCK_SQL)
            cursor = driver.cursor()
            cursor.execute(_HEAD_SQL)
            nodes = driver.cursor()
            nodes.execute(_FRONTIER_SQL_PG)
            if subject is not None:
                latest = driver.cursor()
                latest.execute(_LAST_SEQUENCE_SQL_PG, (subject,))
        row = cursor.fetchone()
        if row is not None:
            frontier = {(level, index): bytes(h) for level, index, h in nodes.fetchall() if h is not None}
        if subject is not None:
            last = latest.fetchone()[0]
    else:  # SQLite: BEGIN IMMEDIATE already holds the one write lock
        for stmt, params in statements:
            conn.execute(stmt, params)
        row = conn.exec_driver_sql(_HEAD_SQL).first()
        if subject is not None:
            last = _last_sequence(session, subject)
    # the wait for the append lock (with the change's own statements sent first), shown to
    # the caller in Server-Timing (audit-lock): the share of a slow tap spent queueing behind
    # other terminals' appends
    session.info[LOCK_WAIT_KEY] = session.info.get(LOCK_WAIT_KEY, 0.0) + perf_counter() - waited
    if row is None:
        return None, last
    seq, leaf, at = row
    leaf = bytes(leaf)
    at = as_utc(at)  # SQLite hands back its stored text
    wanted = merkle.frontier(seq + 1)
    if frontier is None or set(frontier) != set(wanted):
        frontier = _FRONTIERS.get((seq, leaf)) or _node_getter(session)(wanted)
    return _Head(seq, leaf, at, frontier), last


def _last_sequence(session: Session, subject: str) -> int | None:
    return session.execute(select(func.max(OutboxEvent.sequence)).where(OutboxEvent.subject == subject)).scalar()


def _node_getter(session: Session):
    """A batched node source over the stored subtree hashes: one indexed query per call.

    The SQL is written out per call (an OR of primary-key lookups, which SQLite and
    PostgreSQL both answer from the index) and sent without SQLAlchemy's compiler, whose
    cache would miss on every new shape.
    """

    def get_nodes(wanted: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        if not wanted:
            return {}
        conn = session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        where = " OR ".join([f"(level = {mark} AND idx = {mark})"] * len(wanted))
        params = tuple(v for key in wanted for v in key)
        rows = conn.exec_driver_sql(f"SELECT level, idx, hash FROM audit_tree_nodes WHERE {where}", params)
        return {(level, index): bytes(h) for level, index, h in rows}

    return get_nodes


def record(
    actor: Actor,
    action: str,
    entity: tuple[str, str],
    *,
    batch: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
    signature: dict[str, Any] | None = None,
    event: Event | None = None,
    session: Session | None = None,
    statements: Sequence[tuple[Executable, Any]] = (),
) -> AppendedEntry:
    """Append one audit entry (and its outbox event) to the caller's transaction.

    ``statements``: Core writes of the change this entry records, with their parameters,
    run before the entry (sent in the same round trip as the log-end read on PostgreSQL)."""
    session = session or db.session
    if in_read_transaction(session):  # it would fail at random under load: fail every time instead
        raise RuntimeError(f"{action}: an audited change inside a read transaction; call begin_writing() first")
    session.flush()
    _last_checkpoint(session)  # a process's first append reads it here, not under the lock
    subject = None if event is None else _subject(event)
    head, last_sequence = _head(session, statements, subject)
    seq = 0 if head is None else head.seq + 1
    now = utcnow()
    at = now if head is None or now > head.at else head.at + timedelta(microseconds=1)
    entry = {
        "v": canonical.ENTRY_VERSION,
        "seq": seq,
        "prev": canonical.ZERO_HASH if head is None else head.leaf_hash.hex(),
        "at": canonical.format_at(at),
        "actor": actor.as_entry(),
        "terminal": actor.terminal,
        "action": action,
        "entity": {"type": entity[0], "id": str(entity[1])},
        "batch": batch,
        "before": before,
        "after": after,
        "reason": reason,
        "signature": signature,
    }
    entry_bytes = canonical.canonical_bytes(entry)
    leaf = merkle.leaf_hash(entry_bytes)
    conn = session.connection()
    sqlite = conn.dialect.paramstyle == "qmark"
    frontier = {} if head is None else head.frontier
    nodes = merkle.nodes_completed_by_append(seq, leaf, frontier)
    tag = entry_tags.entry_tag(audit_log().tag_key(conn), entry_bytes)  # a first use looks on this connection
    entry_row = (seq, _stored_at(at) if sqlite else at, action, actor.id, actor.terminal, entity[0], str(entity[1]),
                 batch, entry_bytes, leaf, tag)
    event_row = None if event is None else _event_row(event, seq, at, last_sequence)
    if defers_writes(conn):
        # the entry, its tree nodes and its event go with the COMMIT (one round trip less
        # under the append lock), or before the transaction's next statement
        writes = [(_INSERT_ENTRY_PG, entry_row)]
        if nodes:
            writes.append((_insert_nodes_pg(len(nodes)), tuple(value for node in nodes for value in node)))
        if event_row is not None:
            writes.append((_INSERT_EVENT_PG, tuple(event_row[column] for column in _EVENT_COLUMNS)))
        defer_writes(conn, writes)
    else:
        with pipelined(conn):  # the entry, its tree nodes and its event: one round trip
            conn.exec_driver_sql(_INSERT_ENTRY_SQLITE if sqlite else _INSERT_ENTRY_PG, entry_row)
            conn.exec_driver_sql(_INSERT_NODE_SQLITE if sqlite else _INSERT_NODE_PG, list(nodes))
            if event_row is not None:
                if sqlite:
                    event_row = {**event_row, "time": _stored_at(event_row["time"]),
                                 "created_at": _stored_at(event_row["created_at"])}
                conn.exec_driver_sql(_INSERT_EVENT_SQLITE if sqlite else _INSERT_EVENT_PG,
                                     tuple(event_row[column] for column in _EVENT_COLUMNS))
    known = {**frontier, **{(level, i): h for level, i, h in nodes}}
    new_head = _Head(seq, leaf, at, {key: known[key] for key in merkle.frontier(seq + 1)})
    _remember_frontier(seq, leaf, new_head.frontier)
    session.info["audit_head"] = new_head
    session.info["audit_appended"] = True
    try:
        if action.startswith(CHECKPOINT_NOW_ACTIONS):
            publish_checkpoint(session)
        else:
            _maybe_checkpoint(session, new_head)
    except ValueError as exc:  # LogTampered: nothing is signed; the change itself still commits
        _flag_tampered(exc)
    return AppendedEntry(seq, at, entry_bytes, leaf)


def _flag_tampered(exc: ValueError) -> None:
    """The log failed the pre-signing check inside a business transaction: /readyz turns
    red at once; the checkpoint watch raises the alarm (an alarm row here would ride on the
    caller's transaction)."""
    import logging

    from mes.audit.checkpoint_guard import LogTampered
    from mes.system.readiness import record_audit_result

    if not isinstance(exc, LogTampered):
        raise exc
    logging.getLogger("mes.audit").error("checkpoint not signed: %s", exc.summary())
    record_audit_result(False, exc.summary())


CHECKPOINT_EVENT = "mes.audit.checkpoint.v1"


def event_position(seq: int | None = None, *, checkpoint_size: int | None = None) -> int:
    """An outbox event's place in commit order: ``2·seq + 1`` for audit entry ``seq``'s event,
    ``2·size`` for a checkpoint of ``size`` entries (after the last entry it covers, before the
    next one, which cannot be appended before the checkpoint commits: both hold the log lock)."""
    if checkpoint_size is not None:
        return 2 * checkpoint_size
    assert seq is not None
    return 2 * seq + 1


def _subject(ev: Event) -> str:
    return f"{ev.aggregate_type}/{ev.aggregate_id}"


def _write_event(session: Session, ev: Event, audit_seq: int, at: datetime, position: int | None = None) -> None:
    last = _last_sequence(session, _subject(ev))
    session.execute(insert(OutboxEvent).values(**_event_row(ev, audit_seq, at, last, position)))


def _event_row(ev: Event, audit_seq: int, at: datetime, last: int | None, position: int | None = None) -> dict[str, Any]:
    """The outbox row of ``ev`` (a value for each of :data:`_EVENT_COLUMNS`), the next in its
    subject's sequence after ``last`` (read under the append lock, which every outbox write
    holds)."""
    subject = _subject(ev)
    sequence = (last or 0) + 1
    event_id = str(uuid.uuid4())
    time = ev.time or at
    if time.tzinfo is None:
        raise ValueError(f"{ev.type}: a naive event time (UTC-aware only)")
    site = audit_log().site_id
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"urn:mes:{site}",
        "type": ev.type,
        "time": canonical.format_at(time),
        "subject": subject,
        "datacontenttype": "application/json",
        "dataschema": f"/integration/v1/schemas/{ev.type}.json",
        "partitionkey": ev.aggregate_id,
        "sequence": str(sequence),
        "sequencetype": "Integer",
        "data": ev.data,
    }
    if ev.correlation_id is not None:
        envelope["correlationid"] = ev.correlation_id
    body = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {"id": event_id, "type": ev.type, "subject": subject, "sequence": sequence, "time": time.astimezone(UTC),
            "audit_seq": audit_seq, "position": event_position(audit_seq) if position is None else position,
            "body": body, "created_at": utcnow()}


# ---------------------------------------------------------------------- tree reads


def tree_size(session: Session | None = None) -> int:
    session = session or db.session
    last = session.execute(select(func.max(AuditEntry.seq))).scalar()
    return 0 if last is None else last + 1


def root(size: int, session: Session | None = None) -> bytes:
    """MTH of the first ``size`` entries from the stored subtree hashes: O(log n)."""
    session = session or db.session
    return merkle.root_from_nodes(size, _node_getter(session))


def inclusion_proof(index: int, size: int, session: Session | None = None) -> list[bytes]:
    """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``: O(log n)."""
    session = session or db.session
    return merkle.inclusion_proof_from_nodes(index, size, _node_getter(session))


def consistency_proof(old_size: int, new_size: int, session: Session | None = None) -> list[bytes]:
    """RFC 9162 consistency proof from ``old_size`` to ``new_size`` (for witnesses): O(log n)."""
    session = session or db.session
    return merkle.consistency_proof_from_nodes(old_size, new_size, _node_getter(session))


# --------------------------------------------------------------------- checkpoints


def latest_checkpoint(session: Session | None = None) -> AuditCheckpoint | None:
    session = session or db.session
    return session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)).scalar()


def _last_checkpoint(session: Session) -> tuple[int, datetime | None]:
    """The latest checkpoint's size and time, cached per process (read once, before the
    append lock: a stale value can only make an append try to publish early)."""
    log = audit_log()
    if log.last_checkpoint is None:
        cp = latest_checkpoint(session)
        log.last_checkpoint = (0, None) if cp is None else (cp.size, cp.time)
    return log.last_checkpoint


def _maybe_checkpoint(session: Session, head: _Head) -> None:
    """Publish in this transaction when the log is 1000 entries or 60 s past the last
    checkpoint (audit-log.md §3). From 800 entries or 45 s on, the background thread is
    woken after commit to publish first (:func:`checkpoint_due_soon`), so a kiosk's request
    seldom carries the signing and the checks before it while holding the append lock."""
    # The last checkpoint's size and time are cached per process: a stale value can only
    # make us try to publish early, and publish_checkpoint re-reads under the lock.
    last = _last_checkpoint(session)
    size = head.seq + 1
    last_size, last_time = last
    if _past(size, head.at, last_size, last_time, CHECKPOINT_EVERY_ENTRIES, CHECKPOINT_EVERY):
        publish_checkpoint(session)
    elif _past(size, head.at, last_size, last_time, CHECKPOINT_SOON_ENTRIES, CHECKPOINT_SOON):
        session.info["audit_checkpoint_soon"] = True


def _past(size: int, at: datetime, last_size: int, last_time: datetime | None, entries: int,
          age: timedelta) -> bool:
    """Whether a log of ``size`` entries at time ``at`` is ``entries`` entries or ``age``
    past the checkpoint of ``last_size`` signed at ``last_time``."""
    return size - last_size >= entries or (last_time is not None and at - last_time >= age)


def _unpublished(session: Session) -> tuple[AuditCheckpoint | None, Any] | None:
    """The latest checkpoint and the log's newest (seq, at); None when that checkpoint covers the log."""
    last = latest_checkpoint(session)
    head = session.execute(select(AuditEntry.seq, AuditEntry.at).order_by(AuditEntry.seq.desc()).limit(1)).first()
    if head is None or (last is not None and last.size == head.seq + 1):
        return None
    return last, head


def checkpoint_wanted(app: Flask | None = None) -> threading.Event:
    """Set after a commit that brought the log near a checkpoint; the background thread
    (:mod:`mes.jobs`) waits on it."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions.setdefault("mes_checkpoint_wanted", threading.Event())


def checkpoint_due_soon(session: Session | None = None) -> bool:
    """Whether the log, read afresh, is 800 entries or 45 s past its latest checkpoint."""
    session = session or db.session
    unpublished = _unpublished(session)
    if unpublished is None:
        return False
    last, head = unpublished
    audit_log().last_checkpoint = None if last is None else (last.size, last.time)
    return last is None or _past(head.seq + 1, as_utc(head.at), last.size, as_utc(last.time),
                                 CHECKPOINT_SOON_ENTRIES, CHECKPOINT_SOON)


def publish_checkpoint(session: Session | None = None, *, reread_verified: bool = True,
                       unless_published_meanwhile: bool = False) -> AuditCheckpoint | None:
    """Sign and store a checkpoint over every entry so far (in the caller's transaction).

    Every entry since the checkpoint it extends is verified first
    (:func:`mes.audit.checkpoint_guard.verify_since`, ``reread_verified`` passed on); a log
    that is shorter than, or inconsistent with, the latest checkpoint the MES or a witness
    holds raises :class:`~mes.audit.checkpoint_guard.LogTampered` and nothing is signed.
    Returns None when the log is empty or the latest checkpoint already covers it, and with
    ``unless_published_meanwhile`` (the background publisher) when, read under the lock, the
    log is no longer near a checkpoint: another server published first.
    """
    return _publish_checkpoint(session, reread_verified=reread_verified,
                               unless_published_meanwhile=unless_published_meanwhile)


def _publish_checkpoint(session: Session | None, *, reread_verified: bool,
                        unless_published_meanwhile: bool) -> AuditCheckpoint | None:
    from mes.audit import checkpoint_guard as guard

    session = session or db.session
    session.flush()
    _lock(session)
    size = tree_size(session)
    last = latest_checkpoint(session)
    log = audit_log()
    ref = guard.reference(session)
    if size == 0 or (last is not None and last.size == size and ref.size == size):
        log.last_checkpoint = None if last is None else (last.size, last.time)
        return None
    if unless_published_meanwhile and last is not None and not _past(
            size, utcnow(), last.size, as_utc(last.time), CHECKPOINT_SOON_ENTRIES, CHECKPOINT_SOON):
        log.last_checkpoint = (last.size, last.time)
        return None
    tree_root = guard.verify_since(session, ref, size, reread_verified=reread_verified)
    now = utcnow().replace(microsecond=0)
    time = now if last is None or now >= last.time else last.time
    body = notes.checkpoint_body(log.key_name, size, tree_root, time)
    key = log.signing_key()
    note = notes.sign_checkpoint(body, log.key_name, key)
    cp = AuditCheckpoint(
        id=0 if last is None else last.id + 1, size=size, root=tree_root, time=time,
        key_id=notes.key_id(log.key_name, keys.public_bytes(key)).hex(), note=note,
    )
    session.add(cp)
    session.flush()
    # ERP and QMS keep it too and so become further witnesses of the log (events.md §1)
    _write_event(session, Event(CHECKPOINT_EVENT, "audit", log.key_name,
                                {"origin": log.key_name, "size": size, "root": base64.b64encode(tree_root).decode(),
                                 "time": canonical.format_at(time), "note": note}, time=time),
                 -size, time, position=event_position(checkpoint_size=size))
    log.last_checkpoint = (size, time)
    session.info["audit_published"] = True
    session.info["audit_published_note"] = note
    return cp


def _signed_in_transaction(session: Session) -> None:
    """After commit: keep the newest signed checkpoint beside the key (outside the
    database) and hand it to the witnesses (in the background)."""
    note = session.info.get("audit_published_note")
    if note is None:
        return
    from mes.audit.checkpoint_guard import write_state

    try:
        log = audit_log()
        write_state(log.state_path, note)
    except RuntimeError:  # no app context
        return
    from mes.witness.client import submit_in_background

    submit_in_background(log, note)


def checkpoint_if_due(session: Session | None = None) -> AuditCheckpoint | None:
    """For the scheduler: publish when entries have waited 60 s without a checkpoint."""
    session = session or db.session
    unpublished = _unpublished(session)
    if unpublished is None:
        return None
    last, _ = unpublished
    first_unpublished_at = session.execute(
        select(AuditEntry.at).where(AuditEntry.seq == (0 if last is None else last.size))
    ).scalar_one()
    if utcnow() - first_unpublished_at >= CHECKPOINT_EVERY:
        return publish_checkpoint(session)
    return None


# ------------------------------------------------------------------------- guard


def _reset(session: Session, *_: Any) -> None:
    for key in ("audit_head", "audit_appended", "audit_changed", "audit_published", "audit_published_note",
                "audit_checkpoint_soon"):
        session.info.pop(key, None)


def _after_commit(session: Session, *_: Any) -> None:
    try:
        if session.info.get("audit_checkpoint_soon"):
            try:
                checkpoint_wanted().set()
            except RuntimeError:  # no app context
                pass
        _signed_in_transaction(session)
    finally:
        _reset(session)


def _forget_rolled_back_checkpoint(session: Session, *_: Any) -> None:
    if session.info.get("audit_published"):
        try:
            audit_log().last_checkpoint = None
        except RuntimeError:  # no app context
            pass
    _reset(session)


def _table_of(obj: Any) -> str:
    return obj.__table__.name


def install_guard() -> None:
    """Refuse commits that change records without an audit entry, and every ORM delete."""
    if getattr(install_guard, "_installed", False):
        return

    @event.listens_for(Session, "before_flush")
    def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
        for obj in session.deleted:
            raise UnauditedChangeError(f"records are never deleted ({_table_of(obj)})")
        for obj in list(session.new) + list(session.dirty):
            if _table_of(obj) not in UNAUDITED_TABLES and session.is_modified(obj):
                session.info["audit_changed"] = _table_of(obj)

    @event.listens_for(Session, "before_commit")
    def _before_commit(session: Session) -> None:
        session.flush()
        changed = session.info.get("audit_changed")
        if changed and not session.info.get("audit_appended"):
            raise UnauditedChangeError(f"a change to {changed} was committed without an audit entry")

    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_rollback", _forget_rolled_back_checkpoint)
    event.listen(Session, "after_soft_rollback", _forget_rolled_back_checkpoint)
    install_guard._installed = True  # type: ignore[attr-defined]


def iter_entry_bytes(session: Session | None = None, batch_size: int = 50_000) -> Iterator[bytes]:
    """Every entry's stored bytes in seq order, streamed in chunks (for verify/export).

    Keyset pagination through the driver directly, each page planned as a scan of the primary
    key (:func:`mes.audit.entry_rows.key_scans`): a million rows in a few seconds."""
    from mes.audit.entry_rows import key_scans

    session = session or db.session
    conn = session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"SELECT seq, entry_bytes FROM audit_entries WHERE seq > {mark} ORDER BY seq LIMIT {int(batch_size)}"
    last = -1
    with key_scans(conn):
        while True:
            rows = conn.exec_driver_sql(sql, (last,)).fetchall()
            if not rows:
                return
            for _, data in rows:
                yield data if isinstance(data, bytes) else bytes(data)
            last = rows[-1][0]
