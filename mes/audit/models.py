"""Audit log tables: entries (bytes stored exactly as hashed), Merkle nodes, checkpoints.

Database triggers (see the migration) refuse UPDATE and DELETE on all three tables, on
SQLite and on PostgreSQL, so not even the database owner can rewrite history without
first dropping a trigger, which ``mes audit verify`` then catches through the hashes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, LargeBinary, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db

AUDIT_TABLES = ("audit_entries", "audit_tree_nodes", "audit_checkpoints", "audit_cosignatures")


class AuditEntry(db.Model):
    """One entry of the log; ``entry_bytes`` is the canonical JSON that was hashed."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_entity", "entity_type", "entity_id"),
        Index("ix_audit_entries_batch_id", "batch_id"),
        Index("ix_audit_entries_actor_id", "actor_id"),
        Index("ix_audit_entries_action", "action"),
        Index("ix_audit_entries_at", "at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(100))
    actor_id: Mapped[str] = mapped_column(String(100))
    terminal_id: Mapped[str | None] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    entry_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # HMAC of entry_bytes with the tag key kept beside the signing key (mes.audit.entry_tags);
    # outside the hashed bytes. NULL only for an entry the upgrade could not vouch for.
    tag: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditTreeNode(db.Model):
    """Hash of a complete perfect subtree: level ``level`` covers leaves
    ``[index * 2**level, (index + 1) * 2**level)``. Roots and proofs cost O(log n)."""

    __tablename__ = "audit_tree_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column("idx", BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(db.Model):
    """A published signed checkpoint (C2SP signed note) over the first ``size`` entries."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    time: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(8))
    note: Mapped[str] = mapped_column(Text)


class AuditCosignature(db.Model):
    """A witness's cosignature line on checkpoint ``checkpoint_id`` (C2SP tlog-cosignature).

    A copy for exports: the witness keeps its own record outside this database, which is
    what ``mes audit verify`` trusts."""

    __tablename__ = "audit_cosignatures"
    __table_args__ = (Index("ix_audit_cosignatures_checkpoint", "checkpoint_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    checkpoint_id: Mapped[int] = mapped_column(BigInteger)
    witness: Mapped[str] = mapped_column(String(200))
    line: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]


class AuditReview(db.Model):
    """A QA review of an audit trail (one batch, or the whole log) up to ``through_seq``.

    It is a record of its own so that it can be signed (meaning ``reviewed``): release is
    refused without it (Annex 11 §9)."""

    __tablename__ = "audit_reviews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_id: Mapped[str | None] = mapped_column(String(64), index=True)
    through_seq: Mapped[int] = mapped_column(BigInteger)
    entries_reviewed: Mapped[int] = mapped_column(BigInteger)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    reviewer_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
