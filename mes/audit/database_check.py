"""``mes audit verify`` against the live database, and the export the spec defines.

Verification re-reads every stored entry and runs the same checks an outside verifier
runs on an export (:mod:`mes.audit.verify`), then checks every published checkpoint
against the recomputed tree, the stored subtree hashes that serve proofs, and the
indexed columns against the entry bytes. The first bad ``seq`` is named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mes.audit import checkpoint as notes
from mes.audit import keys, log, merkle
from mes.audit.entry_rows import RowsResult, verify_rows
from mes.audit.models import AuditCheckpoint, AuditCosignature, AuditEntry, AuditTreeNode
from mes.audit.reconcile_rules import Expected
from mes.audit.verify import first_unprovable, verify_checkpoint_history
from mes.db import db
from mes.witness.client import configured_witnesses, sync_witnesses
from mes.witness.cosignature import cosigned_by


@dataclass
class DatabaseCheck:
    """Outcome of verifying the log in the database."""

    entries: int
    checkpoints: int
    first_bad_seq: int | None = None
    errors: list[str] = field(default_factory=list)
    root: bytes = b""
    latest_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.ok:
            return (f"OK: {self.entries} entries and {self.checkpoints} checkpoints verified; "
                    f"root {self.root.hex()}")
        where = f"first bad seq {self.first_bad_seq}: " if self.first_bad_seq is not None else ""
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"FAILED: {where}{self.errors[0]}{more}"

    def fail_all(self, messages: list[str], seq: int | None) -> None:
        for message in messages:
            self.fail(message, seq)

    def fail(self, message: str, seq: int | None) -> None:
        self.errors.append(message)
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq


def verifier_keys() -> list[notes.VerifierKey]:
    """The current verifier key first (outside tools may read only the first line), then
    every archived one (after rotations)."""
    from flask import current_app

    pinned = (current_app.config.get("MES_AUDIT_VERIFIER_KEYS") or "").split()
    if pinned:  # pinned in the configuration: a key file swapped beside the database verifies nothing
        return [notes.parse_vkey(v) for v in pinned]
    al = log.audit_log()
    current = al.vkey()
    archived = keys.all_verifier_keys(al.verifier_dir) if al.verifier_dir.exists() else []
    return [notes.parse_vkey(v) for v in [current, *sorted(set(archived) - {current})]]


def verify_database(session: Session | None = None, *, workers: int | None = None, held: bool = True) -> DatabaseCheck:
    """Re-verify the whole log: chain, canonical bytes, time, checkpoints, stored nodes,
    tags and index columns, records reconciled; ``held``: and the checkpoints held outside
    the database (a restore checks those itself, to tell an older backup from a forged one)."""
    if session is None:
        from mes.audit.reconcile import snapshot

        db.session.rollback()
        # one snapshot for the log and the tables it is reconciled with (REPEATABLE READ on
        # PostgreSQL; a read transaction on SQLite, never its write lock)
        with snapshot() as conn, Session(bind=conn) as ro:
            return verify_database(ro, workers=workers, held=held)
    rows = verify_rows(session.connection(), _tag_key_if_any(), workers=workers)
    stream = rows.stream
    cps = list(session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).scalars())
    result = DatabaseCheck(entries=stream.entries, checkpoints=len(cps), root=stream.root,
                           latest_size=cps[-1].size if cps else 0)
    for message in stream.errors:
        result.fail(message, stream.first_bad_seq)
    if stream.first_bad_seq is not None and not stream.errors:
        result.fail("entry error", stream.first_bad_seq)
    parsed, cp_errors = verify_checkpoint_history([c.note for c in cps], verifier_keys(), stream.tree,
                                                  label="checkpoint")
    result.fail_all(cp_errors, None)
    for row, cp in zip(cps, parsed, strict=True):
        if cp is not None and (cp.size != row.size or cp.root != bytes(row.root)):
            result.fail(f"checkpoint {row.id}: stored size or root differs from its signed note", None)
    _check_columns(rows.stored_leaves, stream, result)
    _check_frontier(session, stream, result)
    expected = _check_tags(session, rows, result, workers)
    if held:
        _check_held(stream, result)
    if result.first_bad_seq is None:  # (records replay the entries only up to the first bad one:
        _check_records(session, expected, result)  # with a bad entry every later change would differ)
    if result.errors and result.first_bad_seq is None:
        # Only the signed checkpoints caught it (entries, hashes and nodes were all rewritten
        # consistently): name the first entry no consistent checkpoint vouches for.
        result.first_bad_seq = first_unprovable(parsed, stream.tree) or 0
    return result


def _check_held(stream, result: DatabaseCheck) -> None:
    """The log must reach, and agree with, every checkpoint held outside the database (kept
    beside the signing key, cosigned by a witness): a truncated or rewritten log fails even
    with its checkpoints deleted from the database."""
    from mes.audit.checkpoint_guard import LogTampered, held_checkpoints

    try:
        held = held_checkpoints(verifier_keys(), ask_witnesses=True)
    except LogTampered as exc:
        result.fail(str(exc), None)
        return
    size = stream.tree.size
    for cp, where in held:
        if cp.size > size:
            result.fail(f"{where} covers {cp.size} entries but the log has {size}: entries from seq {size} on "
                        "were deleted", size)
        elif cp.root != stream.tree.root(cp.size):
            result.fail(f"the log is not consistent with the checkpoint of size {cp.size} held by {where}", None)
        if result.checkpoints == 0 or cp.size > result.latest_size:
            result.fail(f"{where} holds a checkpoint of size {cp.size}; the database's checkpoints end at "
                        f"{result.latest_size}: checkpoints were deleted", None)


def _check_records(session: Session, expected: Expected, result: DatabaseCheck) -> None:
    """The GMP records must be what the log says (:mod:`mes.audit.reconcile`), replayed from
    the entries the tag pass parsed."""
    from mes.audit.reconcile import compare

    _, diffs = compare(session.connection(), expected)
    for diff in sorted(diffs, key=lambda d: (d.seq is None, d.seq or 0))[:20]:
        result.fail(f"record differs from the audit log: {diff.line()}", diff.seq)


def _tag_key_if_any() -> bytes | None:
    """The tag key for the one read of the rows, or None (then :func:`_check_tags` asks
    again where the tags were always checked, and a missing key fails there as before)."""
    try:
        return log.audit_log().tag_key()
    except Exception:  # noqa: BLE001 - asked again, and raised, by _check_tags
        return None


def _check_tags(session: Session, rows: RowsResult, result: DatabaseCheck, workers: int | None) -> Expected:
    """Every entry's authentication tag and unhashed index columns (mes.audit.entry_tags),
    checked in the one read of the rows (:func:`verify_rows`), which also folded each
    parsed entry into the records it describes."""
    if not rows.tags_checked:  # no key at the read: ask again (raises as before), read again
        rows = verify_rows(session.connection(), log.audit_log().tag_key(), workers=workers)
    if rows.problem is not None:
        seq, problem = rows.problem
        result.fail(f"seq {seq}: {problem}", seq)
    return rows.expected


def verify_database_safely(*, workers: int | None = None, held: bool = True) -> DatabaseCheck:
    """:func:`verify_database` that never raises: a crash is itself a failed verification
    (whatever a DBA did to the tables, the answer is one FAILED line, not a traceback)."""
    try:
        return verify_database(workers=workers, held=held)
    except Exception as exc:  # noqa: BLE001 - reported as the failure it is
        db.session.rollback()
        size = 0
        try:
            size = log.tree_size()
            db.session.rollback()
        except Exception:  # noqa: BLE001
            db.session.rollback()
        result = DatabaseCheck(entries=size, checkpoints=0)
        result.fail(f"the log could not be verified ({type(exc).__name__}: {exc})", None)
        return result


def _check_columns(stored: bytes, stream, result: DatabaseCheck) -> None:
    """The stored leaf-hash column must be the hash of the stored bytes (the next append
    chains onto it)."""
    computed = stream.tree.packed_leaves()
    if stored == computed:
        return
    for seq in range(min(len(stored), len(computed)) // 32):
        if stored[32 * seq:32 * seq + 32] != computed[32 * seq:32 * seq + 32]:
            result.fail(f"seq {seq}: stored leaf hash differs from the hash of the entry bytes", seq)
            return


def _check_frontier(session: Session, stream, result: DatabaseCheck) -> None:
    """The stored subtree hashes that serve roots and proofs must match the recomputed tree."""
    size = stream.tree.size
    get_nodes = log._node_getter(session)
    wanted = merkle.nodes_needed_for_root(size)
    stored = get_nodes(wanted)
    for key in wanted:
        if stored.get(key) != stream.tree.get_node(*key):
            level, index = key
            # Descend the stored subtrees to the first leaf whose original hash differs.
            while level > 0:
                left = (level - 1, 2 * index)
                if get_nodes([left]).get(left) != stream.tree.get_node(*left):
                    level, index = left
                else:
                    level, index = level - 1, 2 * index + 1
            result.fail(f"seq {index}: the entry differs from the one originally appended "
                        "(stored Merkle leaf)", index)
            return
    count = session.execute(select(func.count()).select_from(AuditTreeNode).where(AuditTreeNode.level == 0)).scalar()
    if count != size:
        result.fail(f"{count} stored leaf nodes for {size} entries", min(count or 0, size))


# ------------------------------------------------------------------------- export


def witnessed_notes(session: Session) -> dict[int, str]:
    """Every checkpoint's note with the witnesses' cosignature lines (one per witness, the
    first received), by checkpoint id: what exports carry (spec §6)."""
    lines: dict[int, dict[str, str]] = {}
    for c in session.execute(select(AuditCosignature).order_by(AuditCosignature.id)).scalars():
        lines.setdefault(c.checkpoint_id, {}).setdefault(c.witness, c.line)
    return {c.id: c.note + "".join(lines.get(c.id, {}).values())
            for c in session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).scalars()}


def witnessed_note(cp: AuditCheckpoint, session: Session | None = None) -> str:
    """One checkpoint's note with its witnesses' cosignature lines (API answers carry them)."""
    session = session or db.session
    lines: dict[str, str] = {}
    for c in session.execute(select(AuditCosignature).where(AuditCosignature.checkpoint_id == cp.id)
                             .order_by(AuditCosignature.id)).scalars():
        lines.setdefault(c.witness, c.line)
    return cp.note + "".join(lines.values())


def export(out: Path, batch: str | None = None, session: Session | None = None) -> dict[str, int | str]:
    """Write the spec's export (§4) into ``out``; a fresh checkpoint first covers every entry."""
    session = session or db.session
    log.publish_checkpoint(session)
    session.commit()
    if configured_witnesses():
        sync_witnesses()  # the export's checkpoint cosigned now, if the witnesses answer
    cp = log.latest_checkpoint(session)
    if cp is None:
        raise ValueError("the audit log is empty; nothing to export")
    out.mkdir(parents=True, exist_ok=True)
    query = select(AuditEntry.seq, AuditEntry.entry_bytes).where(AuditEntry.seq < cp.size).order_by(AuditEntry.seq)
    if batch is not None:
        query = query.where(AuditEntry.batch_id == batch)
    seqs = []
    with open(out / "entries.jsonl", "wb") as fh:
        for seq, data in session.execute(query.execution_options(yield_per=20_000)):
            fh.write(bytes(data) + b"\n")
            seqs.append(seq)
    for name, data in _export_tail(session, cp, batch, seqs).items():
        (out / name).write_bytes(data)
    return {"entries": len(seqs), "checkpoint_size": cp.size, "root": cp.root.hex()}


def batch_export_files(batch: str, session: Session | None = None, *,
                       checkpoint: AuditCheckpoint | None = None) -> dict[str, bytes]:
    """A ``--batch`` export (§4) as file contents, in the caller's transaction (nothing
    committed): against ``checkpoint`` when given (the eBR's witnessed release checkpoint:
    the batch's entries it covers, their proofs against it, the history up to it, and only
    the witnesses whose cosignature it carries), else against a checkpoint published now
    over every entry so far if none covers them yet."""
    session = session or db.session
    if checkpoint is None:
        log.publish_checkpoint(session)
    cp = checkpoint or log.latest_checkpoint(session)
    if cp is None:
        raise ValueError("the audit log is empty; nothing to export")
    rows = session.execute(select(AuditEntry.seq, AuditEntry.entry_bytes).where(
        AuditEntry.seq < cp.size, AuditEntry.batch_id == batch).order_by(AuditEntry.seq)).all()
    files = {"entries.jsonl": b"".join(bytes(data) + b"\n" for _, data in rows)}
    files.update(_export_tail(session, cp, batch, [seq for seq, _ in rows], cosigners_only=checkpoint is not None))
    return files


def _export_tail(session: Session, cp: AuditCheckpoint, batch: str | None, seqs: list[int], *,
                 cosigners_only: bool = False) -> dict[str, bytes]:
    """The export's files after ``entries.jsonl``: checkpoint, the history up to it (its last
    line is the checkpoint), keys, witnesses (``cosigners_only``: those whose cosignature
    ``cp`` carries) and, for a batch, the proofs."""
    cosigned = witnessed_notes(session)
    history = [cosigned[c.id] for c in session.execute(select(AuditCheckpoint).where(
        AuditCheckpoint.id <= cp.id).order_by(AuditCheckpoint.id)).scalars()]
    witnesses = configured_witnesses()
    if cosigners_only:
        signed = set(cosigned_by(cosigned[cp.id], notes.parse_checkpoint(cp.note).body, [w.key for w in witnesses]))
        witnesses = [w for w in witnesses if w.key.name in signed]
    files = {"checkpoint": cosigned[cp.id].encode("utf-8"),
             "checkpoints.jsonl": "".join(json.dumps(note) + "\n" for note in history).encode("utf-8"),
             "log.vkey": ("\n".join(v.text for v in verifier_keys()) + "\n").encode("utf-8"),
             "witnesses": "".join(w.key.text + "\n" for w in witnesses).encode("utf-8")}
    if batch is not None:
        if not seqs:
            raise ValueError(f"no audit entries for batch {batch!r}")
        proofs = {"checkpoint": cosigned[cp.id],
                  "entries": [{"seq": s, "proof": [h.hex() for h in log.inclusion_proof(s, cp.size, session)]} for s in seqs]}
        files["proofs.json"] = (json.dumps(proofs, indent=1) + "\n").encode("utf-8")
    return files
