"""Audit entry authentication tags (issue 17) and witness cosignatures.

``audit_entries.tag`` holds HMAC-SHA256 of the entry bytes with the tag key that lives
beside the signing key (never in the database). Existing entries are tagged here when the
migration runs inside ``mes`` (which holds the key) and their chain checks out against the
latest signed checkpoint; otherwise they stay untagged and ``mes audit verify`` flags them.

``audit_cosignatures``: a witness's cosignature line on a checkpoint, append-only.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 02:40:00
"""
import logging

from alembic import op
import sqlalchemy as sa
import mes.db


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

logger = logging.getLogger("mes.migrations")


def upgrade() -> None:
    op.add_column('audit_entries', sa.Column('tag', sa.LargeBinary(length=32), nullable=True))
    op.create_table('audit_cosignatures',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('witness', sa.String(length=200), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.Column('received_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_cosignatures'))
    )
    op.create_index('ix_audit_cosignatures_checkpoint', 'audit_cosignatures', ['checkpoint_id'])
    mes.db.install_refusal_triggers(op, 'audit_cosignatures', immutable=True)
    _tag_existing()


def _tag_existing() -> None:
    try:
        from flask import current_app
        audit = current_app.extensions["mes_audit"]
    except (RuntimeError, KeyError):  # not run by `mes`: no key here, the entries stay untagged
        return
    from mes.audit.database_check import verifier_keys
    from mes.audit.entry_tags import tag_legacy_entries

    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    if pg:
        op.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_immutable")
    else:
        op.execute("DROP TRIGGER audit_entries_no_update")
    outcome = tag_legacy_entries(bind, audit.tag_key(bind), verifier_keys())
    (logger.warning if "untagged:" in outcome else logger.info)("%s", outcome)
    if pg:
        op.execute("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_immutable")
    else:
        op.execute("CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries BEGIN "
                   "SELECT RAISE(ABORT, 'mes: UPDATE on audit_entries is refused: records are never changed or "
                   "removed'); END")


def downgrade() -> None:
    raise RuntimeError("The audit log is never downgraded. Restore a backup instead.")
