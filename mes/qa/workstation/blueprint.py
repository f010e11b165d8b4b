"""QA workstation pages (issue 19): the lists (batches, work orders, deviations, lots on
hold), the batch page with review by exception first and the full record on demand, and
QA's e-signatures (deviation disposition, audit-trail review, batch review, release /
conditional release / rejection), each with its meaning shown. Every rule is the service
layer's; a refusal is shown as the sentence it gives, with its status."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from flask import redirect, render_template, request, url_for

from mes.db import db
from mes.ebr.finishing import ebr_status
from mes.errors import MESError, ValidationFailed
from mes.execution import operations as ex
from mes.execution import qa_views, queries
from mes.execution.models import BatchStatus, DeviationStatus, Disposition, Severity, WorkOrderStatus
from mes.qa.blueprint import bp
from mes.signatures.operations import Credentials
from mes.users import operations as users
from mes.users.permissions import Permission as P
from mes.web import csrf_token, endpoint, principal

PER_PAGE = 50
DECISIONS = ("released", "conditionally_released", "rejected")
#: what each QA signature on these pages means (Part 11 §11.50: the meaning is shown and signed)
MEANINGS = {"disposition": "approved", "trail_review": "reviewed", "batch_review": "reviewed",
            "released": "released", "conditionally_released": "released", "rejected": "rejected"}
EXCEPTION_LABELS = {
    "deviation": "Deviation", "out_of_limits": "Out-of-limit value", "correction": "Correction",
    "recomputation": "Recomputed value", "late_entry": "Late entry", "comment": "Comment",
    "refused_attempt": "Refused attempt", "repeated_step": "Repeated step",
    "conditional_lot": "Conditionally released material", "override": "Override",
}


def _page_no() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) <= 100000 else 1


def _choice(name: str, allowed: type) -> str | None:
    value = request.args.get(name) or None
    return value if value in {m.value for m in allowed} else None


def _day(name: str) -> date | None:
    try:
        return date.fromisoformat(request.args.get(name) or "")
    except ValueError:
        return None


def _render(template: str, status: int = 200, **context: Any) -> Any:
    query = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template(template, user=principal().user, csrf=csrf_token(), query=query, **context), status


@bp.get("/")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def home() -> Any:
    """The QA workstation starts at the batches that wait for QA."""
    return redirect(url_for("qa.batches", status=BatchStatus.COMPLETED.value))


@bp.get("/batches")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def batches() -> Any:
    """Batches by state, product, line and start day, with exception counts and release blockers."""
    page = queries.list_batches(status=_choice("status", BatchStatus), product=request.args.get("product") or None,
                                line=request.args.get("line") or None, since=_day("since"), until=_day("until"),
                                page=_page_no(), per_page=PER_PAGE)
    return _render("qa/batches.html", page=page, rows=[qa_views.batch_row(b) for b in page.rows],
                   statuses=[s.value for s in BatchStatus])


@bp.get("/work-orders")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def work_orders() -> Any:
    """Work orders by state, product and line."""
    page = queries.list_work_orders(status=_choice("status", WorkOrderStatus),
                                    product=request.args.get("product") or None,
                                    line=request.args.get("line") or None, page=_page_no(), per_page=PER_PAGE)
    return _render("qa/work_orders.html", page=page, rows=[qa_views.work_order_row(w) for w in page.rows],
                   statuses=[s.value for s in WorkOrderStatus])


@bp.get("/deviations")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def deviations() -> Any:
    """Deviations, open first, by severity and age."""
    page = queries.list_deviations(status=_choice("status", DeviationStatus), severity=_choice("severity", Severity),
                                   batch=request.args.get("batch") or None, page=_page_no(), per_page=PER_PAGE)
    now = ex.clock()
    return _render("qa/deviations.html", page=page, rows=[qa_views.deviation_row(d, now) for d in page.rows],
                   statuses=[s.value for s in DeviationStatus], severities=[s.value for s in Severity])


@bp.get("/holds")
@endpoint(P.MATERIAL_VIEW, tags=("qa",))
def holds() -> Any:
    """Lots on hold (the active holds), oldest first."""
    page = queries.lots_on_hold(item=request.args.get("item") or None, page=_page_no(), per_page=PER_PAGE)
    return _render("qa/holds.html", page=page, rows=[qa_views.hold_row(h) for h in page.rows])


# ------------------------------------------------------------------------ the batch page


def _batch_page(batch_id: str, error: str | None = None, status: int = 200) -> Any:
    batch = ex.get_batch(batch_id)
    who = principal()
    found = ex.exceptions(batch_id)
    blockers = ex.release_blockers(batch_id, who.user_id) if batch.status in qa_views.AWAITING_QA else []
    open_devs = [d for d in ex.deviations_of(batch_id) if d.status == DeviationStatus.OPEN.value]
    return _render("qa/batch.html", status, batch=batch, product=queries.product_of(batch), exceptions=found,
                   labels=EXCEPTION_LABELS, blockers=blockers, open_devs=open_devs, error=error,
                   dispositions=[d.value for d in Disposition], meanings=MEANINGS, key=uuid.uuid4().hex,
                   unreviewed=sum(1 for e in found if e["reviewed"] is None),
                   can_release=batch.status == BatchStatus.REVIEWED.value,
                   ebr=ebr_status(batch_id) if batch.decided_at else None)


@bp.get("/batches/<batch_id>")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def batch(batch_id: str) -> Any:
    """A batch for review by exception: its exceptions first (each linked to its step and its
    audit entries, each marked reviewed once), then QA's signatures."""
    return _batch_page(batch_id)


@bp.get("/batches/<batch_id>/record")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def batch_record(batch_id: str) -> Any:
    """The full record of the batch, step by step: who, when, terminal, instrument and raw reply."""
    batch = ex.get_batch(batch_id)
    return _render("qa/record.html", batch=batch, steps=qa_views.full_record(batch_id))


def _signer() -> tuple[Any, Credentials, str | None]:
    """The signing session, the credentials typed on the form, the terminal; the first
    signature's acknowledgement is stored with it when ticked."""
    who = principal()
    terminal = who.terminal.id if who.terminal else None
    if who.user.esig_acknowledged_at is None and request.form.get("esig_ack") == "1":
        users.acknowledge_esig_accountability(who.user_id, terminal)
    return who.session, Credentials(request.form.get("password", ""), user_id=who.user_id), terminal


def _act(batch_id: str, action: Any) -> Any:
    try:
        action()
    except MESError as exc:
        db.session.rollback()  # nothing of the refused change is shown as if it had happened
        return _batch_page(batch_id, exc.detail, exc.status)
    return redirect(url_for("qa.batch", batch_id=batch_id))


@bp.post("/batches/<batch_id>/exceptions/reviewed")
@endpoint(P.BATCH_REVIEW, terminal=True, tags=("qa",))
def exception_reviewed(batch_id: str) -> Any:
    """Mark one exception of the batch reviewed, with a note."""
    who = principal()
    return _act(batch_id, lambda: ex.mark_exception_reviewed(who.actor(P.BATCH_REVIEW), batch_id,
                                                             request.form.get("key", ""), request.form.get("note")))


@bp.post("/deviations/<deviation_id>/disposition")
@endpoint(P.DEVIATION_DISPOSE, terminal=True, tags=("qa",))
def deviation_disposition(deviation_id: str) -> Any:
    """Disposition a deviation with an e-signature (meaning ``approved``)."""
    dev = ex.get_deviation(deviation_id)

    def sign() -> None:
        row, creds, terminal = _signer()
        ex.disposition_deviation(row, creds, deviation_id, request.form.get("disposition", ""),
                                 request.form.get("reason", ""), terminal=terminal,
                                 qms_ref=request.form.get("qms_ref") or None)
    return _act(dev.batch_id, sign)


@bp.post("/batches/<batch_id>/trail-review")
@endpoint(P.AUDIT_REVIEW, terminal=True, tags=("qa",))
def trail_review(batch_id: str) -> Any:
    """Sign the review of the batch's audit trail (meaning ``reviewed``)."""
    from mes.audit.review import review_trail

    ex.get_batch(batch_id)

    def sign() -> None:
        row, creds, terminal = _signer()
        review_trail(row, creds, batch_id, request.form.get("comment", "").strip() or "Audit trail reviewed.",
                     terminal)
    return _act(batch_id, sign)


@bp.post("/batches/<batch_id>/review")
@endpoint(P.BATCH_REVIEW, terminal=True, tags=("qa",))
def batch_review(batch_id: str) -> Any:
    """Sign the batch record as reviewed (meaning ``reviewed``)."""
    def sign() -> None:
        row, creds, terminal = _signer()
        ex.review_batch(row, creds, batch_id, terminal=terminal, comment=request.form.get("comment") or None)
    return _act(batch_id, sign)


@bp.post("/batches/<batch_id>/release")
@endpoint(P.BATCH_RELEASE, terminal=True, tags=("qa",))
def batch_release(batch_id: str) -> Any:
    """Release, conditionally release or reject the batch with an e-signature."""
    def sign() -> None:
        decision = request.form.get("decision", "")
        if decision not in DECISIONS:
            raise ValidationFailed("Choose the decision: released, conditionally released or rejected.")
        row, creds, terminal = _signer()
        ex.release_batch(row, creds, batch_id, decision, terminal=terminal,
                         comment=request.form.get("comment") or None, conditions=request.form.get("conditions") or None)
    return _act(batch_id, sign)


# ------------------------------------------------------------------------ control charts


@bp.get("/charts/<product>")
@endpoint(P.BATCH_VIEW, tags=("qa",))
def charts(product: str) -> Any:
    """Individuals charts of the product's numeric in-process checks over its last batches,
    with the recipe limits, drawn as SVG on the server."""
    from mes.qa import charts as charting

    last = min(max(int(request.args.get("last", "20")) if request.args.get("last", "20").isdigit() else 20, 2), 100)
    return _render("qa/charts.html", product=product, charts=charting.product_charts(product, last), last=last)
