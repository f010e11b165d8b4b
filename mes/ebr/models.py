"""The frozen eBR of a decided batch: the signed PDF's bytes, as generated at release.

Written once in the release transaction; the database refuses any UPDATE or DELETE."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db


class EbrDocument(db.Model):
    """One batch's signed PDF/A-3b eBR and its SHA-256 (recorded in the audit log too)."""

    __tablename__ = "ebr_documents"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    json_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
