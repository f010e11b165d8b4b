"""Never sign over what the MES did not write (issue 17, spec §6 last rule).

Before the MES signs a checkpoint it verifies every entry since the checkpoint it builds
on, incrementally (cost proportional to the new entries plus O(log n) node reads):

* the *reference* is the newest checkpoint the MES knows it signed: the latest in the
  database, but never older than the copy kept outside the database beside the signing
  key (``audit-latest-checkpoint``) or the newest checkpoint a witness cosigned. A database
  whose checkpoints were deleted, or whose log is shorter than the reference, is refused;
* the stored subtree hashes must reproduce the reference's signed root, and the last entry
  it covers must be included in it (an inclusion proof against the signed root);
* every new entry must carry a valid tag, index columns matching its bytes, its stored
  leaf hash, ``prev`` chaining onto the entry before, and ``at`` not going backwards;
* the new root is computed from the verified frontier and the verified new leaves, and
  must equal the root the stored nodes give (proofs are served from them).

Any failure raises :class:`LogTampered` (a ValueError, so ``mes audit export`` prints it
as an error) naming the first bad seq; :func:`watch_log` runs the same check on every poll
of the background thread, turns ``/readyz`` red and raises the audit alarm.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from mes.audit import checkpoint as notes
from mes.audit import entry_tags, merkle
from mes.db import db

logger = logging.getLogger("mes.audit")


class LogTampered(ValueError):
    """The log in the database is not the log the MES wrote and signed."""

    def __init__(self, message: str, first_bad_seq: int | None = None) -> None:
        super().__init__(message)
        self.first_bad_seq = first_bad_seq

    def summary(self) -> str:
        where = f"first bad seq {self.first_bad_seq}: " if self.first_bad_seq is not None else ""
        return f"FAILED: {where}{self}"


@dataclass(frozen=True)
class Reference:
    """What the next checkpoint must extend: size, root and time (zero for an empty log)."""

    size: int
    root: bytes
    time: object | None
    source: str


# ----------------------------------------------------------------- state outside the database


def read_state(path: Path) -> str | None:
    """The latest checkpoint note this MES signed and committed, or None."""
    try:
        return Path(path).read_text("utf-8")
    except FileNotFoundError:
        return None


def write_state(path: Path, note: str) -> None:
    """Replace the kept note atomically, never with a smaller checkpoint."""
    path = Path(path)
    old = read_state(path)
    if old is not None:
        try:
            if notes.parse_checkpoint(old).size > notes.parse_checkpoint(note).size:
                return
        except notes.CheckpointError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(note, "utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ reference


def _verified(note: str, vkeys: list[notes.VerifierKey], what: str) -> notes.Checkpoint:
    try:
        return notes.verify_checkpoint(note, vkeys)
    except notes.CheckpointError as exc:
        raise LogTampered(f"{what} does not verify: {exc}") from None


def held_checkpoints(vkeys: list[notes.VerifierKey], *, ask_witnesses: bool = False
                     ) -> list[tuple[notes.Checkpoint, str]]:
    """The checkpoints held outside the database: the one kept beside the signing key, the
    newest one each witness cosigned as kept beside the key, and (``ask_witnesses``: for
    ``mes audit verify``, never on the signing path) as each witness itself answers."""
    from mes.audit.log import audit_log
    from mes.witness.client import live_witnessed_checkpoints, witnessed_checkpoints

    al = audit_log()
    out: list[tuple[notes.Checkpoint, str]] = []
    kept = read_state(al.state_path)
    if kept is not None:
        out.append((_verified(kept, vkeys, "the checkpoint kept beside the signing key"),
                    "the checkpoint kept beside the signing key"))
    for name, note in witnessed_checkpoints(al) + (live_witnessed_checkpoints(al) if ask_witnesses else []):
        try:
            out.append((notes.verify_checkpoint(note, vkeys), f"witness {name}"))
        except notes.CheckpointError:
            continue  # a cosigned note that does not verify is no reference
    return out


def reference(session: Session) -> Reference:
    """The newest checkpoint the MES (or a witness) vouches for; LogTampered if the
    database's checkpoints disagree with it."""
    from mes.audit.database_check import verifier_keys
    from mes.audit.log import latest_checkpoint

    vkeys = verifier_keys()
    # What is held outside is read first: a checkpoint is kept there only after its commit, so
    # a server publishing one meanwhile cannot make the database look as if it lost it.
    held = held_checkpoints(vkeys)
    row = latest_checkpoint(session)
    db_cp = None if row is None else _verified(row.note, vkeys, f"checkpoint {row.id} in the database")
    best = db_cp
    source = "the database"
    for cp, where in held:
        if db_cp is None or cp.size > db_cp.size:
            from mes.audit.log import tree_size

            size = tree_size(session)
            lost = f"; the log has {size} entries: entries from seq {size} on were deleted" if size < cp.size else ""
            raise LogTampered(f"{where} holds a checkpoint of size {cp.size}, the database's latest is "
                              f"{'missing' if db_cp is None else db_cp.size}: checkpoints were deleted{lost}",
                              size if size < cp.size else None)
        if best is None or cp.size > best.size:
            best, source = cp, where
    if best is None:
        return Reference(0, merkle.EMPTY_ROOT, None, "empty log")
    return Reference(best.size, best.root, best.time, source)


# ------------------------------------------------------------------- incremental verification


@dataclass
class VerifiedRows:
    """The rows (every column: bytes, leaf, tag, index columns) of the entries after one
    reference that this process has verified, with their ``at``. A row read again equal to
    the one verified needs no second check (its tag, hashes, chain and columns are what they
    were); a row changed in any column is unequal and checked in full. So the watch and the
    check before each signature cost a read of the new entries plus the checks of the ones
    not seen before, not a re-verification of everything since the last checkpoint."""

    ref: tuple[int, bytes] = (-1, b"")
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    ats: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    #: Beyond this many entries since the reference nothing more is kept (memory bound).
    LIMIT = 50_000

    def known(self, ref: Reference) -> tuple[list[tuple[Any, ...]], list[str]]:
        with self.lock:
            if self.ref != (ref.size, ref.root):
                return [], []
            return self.rows, self.ats

    def keep(self, ref: Reference, rows: list[tuple[Any, ...]], ats: list[str]) -> None:
        with self.lock:
            self.ref, self.rows, self.ats = (ref.size, ref.root), rows[:self.LIMIT], ats[:self.LIMIT]


def verified_rows() -> VerifiedRows:
    """This app's :class:`VerifiedRows` (one per process and app)."""
    from flask import current_app

    return current_app.extensions.setdefault("mes_audit_verified_rows", VerifiedRows())



def verify_since(session: Session, ref: Reference, size: int, *, reconcile: bool = True,
                 reread_verified: bool = True) -> bytes:
    """Verify entries ``ref.size .. size-1`` against ``ref``; return the root of ``size``.
    ``reconcile``: and reconcile the records the committed ones touched (the watch compares
    every table itself). ``reread_verified=False`` (the background publisher, right after
    its own check outside the append lock): the rows this process has verified are taken as
    verified, not read again, and the root is computed from their leaves, so the checkpoint
    signs exactly what was verified; a row changed since no longer matches it."""
    from mes.audit.log import _node_getter, audit_log, root

    if size < ref.size:
        raise LogTampered(f"the log has {size} entries but {ref.source} covers {ref.size}: entries were deleted",
                          size)
    get_nodes = _node_getter(session)
    conn = session.connection()
    frontier: dict[tuple[int, int], bytes] = {}
    prev_hex = "0" * 64
    last_at = ""
    if ref.size > 0:
        try:
            frontier = get_nodes(merkle.frontier(ref.size))
            stored_root = merkle.root_from_nodes(ref.size, frontier)
        except merkle.MissingNodeError:
            stored_root = b""
        if stored_root != ref.root:
            raise LogTampered(f"an entry before seq {ref.size} was changed: the stored tree no longer gives the "
                              f"signed root of size {ref.size}")
        rows = list(entry_tags.iter_rows(conn, ref.size - 1, ref.size))
        if not rows:
            raise LogTampered(f"seq {ref.size - 1} is missing", ref.size - 1)
        data = bytes(rows[0][1])
        leaf = merkle.leaf_hash(data)
        proof = merkle.inclusion_proof_from_nodes(ref.size - 1, ref.size, get_nodes)
        if not merkle.verify_inclusion(leaf, ref.size - 1, ref.size, proof, ref.root):
            raise LogTampered(f"seq {ref.size - 1}: the entry differs from the one the signed checkpoint covers",
                              ref.size - 1)
        prev_hex, last_at = leaf.hex(), json.loads(data)["at"]
    key = audit_log().tag_key()
    cache = verified_rows()
    known, known_ats = cache.known(ref)
    rows: list[tuple[Any, ...]] = []
    ats: list[str] = []
    leaves: list[bytes] = []
    seq = ref.size
    if not reread_verified and known:
        trusted = known[:size - ref.size]
        rows, ats = list(trusted), list(known_ats[:len(trusted)])
        leaves = [bytes(r[2]) for r in trusted]
        prev_hex, last_at = leaves[-1].hex(), ats[-1]
        seq += len(trusted)
    for row in entry_tags.iter_rows(conn, seq, size):
        values = tuple(row)
        i = seq - ref.size
        if i < len(known) and known[i] == values:  # verified before, unchanged since (see VerifiedRows)
            at = known_ats[i]
        else:
            problem, entry = entry_tags.check_row(key, row, seq)
            if problem is not None or entry is None:
                raise LogTampered(f"seq {seq}: {problem}", seq)
            if entry["prev"] != prev_hex:
                raise LogTampered(f"seq {seq}: prev does not match the leaf hash of seq {seq - 1}", seq)
            at = entry["at"]
            if at < last_at:
                raise LogTampered(f"seq {seq}: at goes backwards", seq)
        prev_hex, last_at = bytes(row[2]).hex(), at
        rows.append(values)
        ats.append(at)
        leaves.append(bytes(row[2]))
        seq += 1
    if seq != size:
        raise LogTampered(f"seq {seq} is missing", seq)
    nodes = dict(frontier)
    for level, index, h in merkle.nodes_completed_by_batch(ref.size, leaves, frontier):
        nodes[(level, index)] = h
    new_root = merkle.root_from_nodes(size, nodes)
    try:
        stored = root(size, session)
    except merkle.MissingNodeError:
        stored = b""
    if stored != new_root:
        raise LogTampered(f"the stored Merkle nodes from seq {ref.size} on differ from the entries", ref.size)
    cache.keep(ref, rows, ats)
    if reconcile:
        reconcile_new_entries(ref.size)
    return new_root


def reconcile_new_entries(start: int) -> None:
    """The records the committed entries from ``start`` on describe must match the tables
    (cost proportional to those entries). Read in a snapshot of what is committed: the
    caller's own transaction may be half way through a change whose entry comes later."""
    from mes.audit.reconcile import reconcile_since, snapshot, watch_state

    result = watch_state().since(start)  # the watch's records, extended with the new entries
    if result is None:  # this process has not read the log yet: replay the touched entities
        with snapshot() as conn:
            top = conn.exec_driver_sql("SELECT max(seq) FROM audit_entries").scalar()
            end = 0 if top is None else top + 1
            result = reconcile_since(conn, start, end)
    if not result.ok:
        first = result.first
        assert first is not None
        raise LogTampered(f"a record differs from the audit log: {first.line()}", first.seq)


def check_new_entries(session: Session | None = None) -> int:
    """Verify every entry since the reference checkpoint (read only); returns the size."""
    from mes.audit.log import tree_size

    session = session or db.session
    ref = reference(session)
    size = tree_size(session)
    verify_since(session, ref, size, reconcile=False)  # the watch then compares every table
    return size


def watch_log(*, compare_tables: bool = True) -> str | None:
    """For the background thread, every poll: verify the new entries (and publish a
    checkpoint when due) and, with ``compare_tables``, compare every GMP table with the log.
    On tampering: /readyz red and one audit alarm; returns the failure line (None when all is
    well)."""
    from mes.audit.log import checkpoint_if_due

    def poll() -> None:
        check_new_entries()
        if compare_tables:
            _reconcile_tables()
        if checkpoint_if_due() is not None:
            db.session.commit()
        else:
            db.session.rollback()
        _watch_witnesses()

    return _watched(poll)


def publish_soon() -> str | None:
    """For the background thread, woken when the log nears a checkpoint (800 entries or
    45 s): verify the new entries and reconcile the records they touch *before* taking the
    append lock, then publish. Under the lock only what was appended meanwhile is left to
    check, so the floor's appends wait milliseconds, not the whole check."""
    from mes.audit.log import checkpoint_due_soon, publish_checkpoint

    def publish() -> None:
        if not checkpoint_due_soon():
            db.session.rollback()
            return
        start = reference(db.session).size
        check_new_entries()
        db.session.rollback()
        reconcile_new_entries(start)
        if publish_checkpoint(reread_verified=False, unless_published_meanwhile=True) is not None:
            db.session.commit()
        else:
            db.session.rollback()

    return _watched(publish)


def _watched(work: Callable[[], None]) -> str | None:
    """Run ``work``; on tampering: /readyz red and one audit alarm, the failure line returned."""
    from mes.audit.alarms import raise_audit_alarm
    from mes.system.readiness import record_audit_result

    try:
        work()
        return None
    except LogTampered as exc:
        db.session.rollback()
        line = exc.summary()
        record_audit_result(False, line)
        raise_audit_alarm(f"Audit log verification failed: {line}", {"first_bad_seq": exc.first_bad_seq,
                                                                     "source": "checkpoint watch"})
        return line


def _reconcile_tables() -> None:
    """Every GMP table against the records the log describes (kept in memory, extended
    with the new entries only): a direct edit of a record is found at the next comparison
    (:data:`mes.jobs.TABLES_COMPARE_SECONDS`)."""
    from mes.audit.reconcile import watch_state

    result = watch_state().poll()
    if not result.ok:
        first = result.first
        assert first is not None
        raise LogTampered(f"a record differs from the audit log: {first.line()}", first.seq)


def _watch_witnesses() -> None:
    """Resubmit to witnesses that are behind; alarm when one has not cosigned a checkpoint
    older than ``MES_AUDIT_WITNESS_MAX_AGE_SECONDS``."""
    from flask import current_app

    from mes.audit.alarms import raise_audit_alarm
    from mes.audit.log import audit_log, latest_checkpoint
    from mes.witness.client import configured_witnesses, stale_witnesses, submit_in_background

    if not configured_witnesses():
        return
    limit = int(current_app.config.get("MES_AUDIT_WITNESS_MAX_AGE_SECONDS", 900))
    stale = stale_witnesses(limit)
    cp = latest_checkpoint()
    db.session.rollback()
    if cp is not None:
        submit_in_background(audit_log(), cp.note)
    for name in stale:
        raise_audit_alarm(f"Witness {name} has not cosigned the audit checkpoint of size {cp.size if cp else 0} "
                          f"for more than {limit} s", {"witness": name})
