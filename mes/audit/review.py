"""Audit-trail reviews: QA reads a batch's trail and signs that it was reviewed.

The review record names what was reviewed (batch, last seq, number of entries, tree size
and root at that moment) so the signature binds to exactly that trail.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from mes.audit import log
from mes.audit.models import AuditEntry, AuditReview
from mes.db import db, utcnow
from mes.errors import ValidationFailed
from mes.signatures import operations as esig
from mes.users.models import UserSession
from mes.validation import get_or_404


@esig.record_provider("audit_review")
def review_record(review_id: str) -> dict[str, Any]:
    """The signable content of a review."""
    review = get_or_404(AuditReview, review_id, "Audit review")
    return {"id": review.id, "batch": review.batch_id, "through_seq": review.through_seq,
            "entries_reviewed": review.entries_reviewed, "tree_size": review.tree_size, "root": review.root,
            "comment": review.comment, "reviewer": review.reviewer_id}


def review_trail(session_row: UserSession, credentials: esig.Credentials, batch: str | None, comment: str,
                 terminal: str | None) -> AuditReview:
    """Record and sign (meaning ``reviewed``) a review of the trail as it is now. A batch's
    trail is reviewed by a person who took no part in the batch (segregation of duties,
    :func:`mes.execution.release.independent_of`); that refusal is audited."""
    if batch is not None:
        from mes.errors import Conflict
        from mes.execution.models import Batch
        from mes.execution.release import independent_of, refused_qa_action
        from mes.users.operations import actor_for

        if db.session.get(Batch, batch) is not None:
            try:
                independent_of(batch, session_row.user_id, "review its audit trail")
            except Conflict as exc:
                refused_qa_action(actor_for(session_row.user, "qa", terminal), batch, "audit_review", exc)
                raise
    query = select(func.count(), func.max(AuditEntry.seq)).select_from(AuditEntry)
    if batch is not None:
        query = query.where(AuditEntry.batch_id == batch)
    count, last = db.session.execute(query).one()
    if not count:
        raise ValidationFailed("There are no audit entries to review" + (f" for batch {batch}." if batch else "."))
    size = log.tree_size()
    number = (db.session.execute(select(func.count()).select_from(AuditReview)).scalar() or 0) + 1
    review = AuditReview(id=f"AR-{number:06d}", batch_id=batch, through_seq=last, entries_reviewed=count,
                         tree_size=size, root=log.root(size).hex(), comment=comment, reviewer_id=session_row.user_id,
                         created_at=utcnow())
    db.session.add(review)
    actor_role = "qa"
    from mes.users.operations import actor_for

    log.record(actor_for(session_row.user, actor_role, terminal), "audit.review.recorded", ("audit_review", review.id),
               batch=batch, after=review_record(review.id))
    esig.sign(session_row, credentials, "audit_review", review.id, "reviewed", role=actor_role, terminal=terminal,
              batch=batch, comment=comment or None, commit=False)
    db.session.commit()
    return review


def reviews_for(batch: str | None) -> list[AuditReview]:
    return list(db.session.execute(select(AuditReview).where(AuditReview.batch_id == batch)
                                   .order_by(AuditReview.created_at)).scalars())
