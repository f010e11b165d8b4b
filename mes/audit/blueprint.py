"""Audit trail API: entries with filters, the latest checkpoint, inclusion proofs."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from mes.audit import log
from mes.audit.models import AuditCheckpoint, AuditEntry
from mes.db import db
from mes.errors import NotFound
from mes.signatures.credentials import credentials_from
from mes.users.permissions import Permission as P
from mes.web import created, endpoint, parse_utc, query_int

bp = Blueprint("audit", __name__)
MAX_PAGE = 500


def filtered_entries(args: dict[str, Any], limit: int | None) -> list[AuditEntry]:
    """Entries matching the viewer's filters (batch, user, action prefix, time, after seq)."""
    q = select(AuditEntry).order_by(AuditEntry.seq)
    if args.get("batch"):
        q = q.where(AuditEntry.batch_id == args["batch"])
    if args.get("user"):
        q = q.where(AuditEntry.actor_id == args["user"])
    if args.get("action"):
        q = q.where(AuditEntry.action.startswith(args["action"], autoescape=True))
    if args.get("entity"):
        q = q.where(AuditEntry.entity_id == args["entity"])
    if args.get("since") is not None:
        q = q.where(AuditEntry.at >= args["since"])
    if args.get("until") is not None:
        q = q.where(AuditEntry.at < args["until"])
    if args.get("after") is not None:
        q = q.where(AuditEntry.seq > args["after"])
    if limit is not None:
        q = q.limit(limit)
    return list(db.session.execute(q).scalars())


def request_filters() -> dict[str, Any]:
    after = query_int("after", 0, 0, 2**63 - 1) if request.args.get("after") else None
    return {
        "batch": request.args.get("batch"), "user": request.args.get("user"), "action": request.args.get("action"),
        "entity": request.args.get("entity"), "since": parse_utc(request.args.get("since"), "since"),
        "until": parse_utc(request.args.get("until"), "until"), "after": after,
    }


_TEXT_Q = {"schema": {"type": "string"}, "description": "A filter: an unknown value matches nothing."}
_TIME_Q = {"schema": {"type": "string", "format": "date-time"}, "description": "ISO 8601 with zone, years 1970 to 2199."}
ENTRIES_Q = {"limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1, "default": 100},
                       "description": "At most this many entries (the server caps a page)."},
             "after": {"schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                       "description": "The last seq of the previous page."},
             "batch": _TEXT_Q, "user": _TEXT_Q, "action": _TEXT_Q, "entity": _TEXT_Q, "since": _TIME_Q, "until": _TIME_Q}


@bp.get("/api/v1/audit/entries")
@endpoint(P.AUDIT_VIEW, tags=("audit",), query=ENTRIES_Q)
def entries() -> Response:
    """Audit entries, filtered by batch, user, action, entity and time; paged by seq."""
    limit = min(query_int("limit", 100, 1, 2**31 - 1), MAX_PAGE)
    rows = filtered_entries(request_filters(), limit)
    return jsonify({"entries": [json.loads(r.entry_bytes) for r in rows],
                    "next_after": rows[-1].seq if len(rows) == limit else None})


@bp.get("/api/v1/audit/checkpoint")
@endpoint(P.AUDIT_VIEW, tags=("audit",))
def checkpoint() -> Response:
    """The latest signed checkpoint (with its witnesses' cosignatures), the verifier key and
    the witnesses' verifier keys."""
    from mes.audit.database_check import witnessed_note
    from mes.witness.client import configured_witnesses

    cp = log.latest_checkpoint()
    return jsonify({"checkpoint": witnessed_note(cp) if cp else None, "size": cp.size if cp else 0,
                    "vkey": log.audit_log().vkey(), "witnesses": [w.key.text for w in configured_witnesses()]})


@bp.get("/api/v1/audit/entries/<int:seq>/proof")
@endpoint(P.AUDIT_VIEW, tags=("audit",))
def proof(seq: int) -> Response:
    """RFC 9162 inclusion proof of one entry against the latest checkpoint."""
    cp: AuditCheckpoint | None = log.latest_checkpoint()
    if cp is None or seq >= cp.size or seq < 0:
        raise NotFound(f"entry {seq} is not covered by a published checkpoint yet")
    from mes.audit.database_check import witnessed_note

    path = log.inclusion_proof(seq, cp.size)
    return jsonify({"seq": seq, "checkpoint": witnessed_note(cp), "proof": [h.hex() for h in path]})


SIGN_FIELDS = {"password": {"type": "string", "maxLength": 500}, "pin": {"type": "string", "maxLength": 16},
               "user_id": {"type": "string", "maxLength": 64}, "badge": {"type": "string", "maxLength": 64}}


def _review_json(r: Any) -> dict[str, Any]:
    from mes.signatures.operations import signatures_for

    return {"id": r.id, "batch": r.batch_id, "through_seq": r.through_seq, "entries_reviewed": r.entries_reviewed,
            "tree_size": r.tree_size, "root": r.root, "comment": r.comment, "reviewer": r.reviewer_id,
            "created_at": r.created_at.isoformat(),
            "signatures": [s.__dict__ for s in signatures_for("audit_review", r.id)]}


@bp.post("/api/v1/audit/reviews")
@endpoint(P.AUDIT_REVIEW, terminal=True, tags=("audit",),
          schema={"type": "object", "additionalProperties": False,
                  "properties": {"batch": {"type": ["string", "null"], "maxLength": 64},
                                 "comment": {"type": "string", "maxLength": 4000}, **SIGN_FIELDS}})
def create_review() -> Response:
    """Record and e-sign (meaning: reviewed) a review of a batch's audit trail."""
    from flask import g

    from mes.audit.review import review_trail
    from mes.errors import Forbidden
    from mes.web import principal

    who = principal()
    if who.session is None:
        raise Forbidden("Only a person in an interactive session can sign; API tokens cannot.")
    review = review_trail(who.session, credentials_from(g.body), g.body.get("batch"), g.body.get("comment", ""),
                          who.terminal.id if who.terminal else None)
    return created({"review": _review_json(review)})


@bp.get("/api/v1/audit/reviews")
@endpoint(P.AUDIT_VIEW, tags=("audit",), query={"batch": _TEXT_Q})
def list_reviews() -> Response:
    """Audit-trail reviews of a batch (``?batch=``) or of the whole log."""
    from mes.audit.review import reviews_for

    return jsonify({"reviews": [_review_json(r) for r in reviews_for(request.args.get("batch"))]})


@bp.get("/api/v1/signatures/<record_type>/<record_id>")
@endpoint(P.AUDIT_VIEW, tags=("audit",))
def record_signatures(record_type: str, record_id: str) -> Response:
    """Every e-signature on a record, each checked against the record as it is now."""
    from mes.signatures.operations import signatures_for

    return jsonify({"record": {"type": record_type, "id": record_id},
                    "signatures": [s.__dict__ for s in signatures_for(record_type, record_id)]})
