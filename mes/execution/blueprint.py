"""HTTP API for execution: recipes, work orders, batches, step completion, deviations,
corrections, review and release — a thin shell over :mod:`mes.execution.operations`.

Step completion takes the ``Idempotency-Key`` header; execution and signing need a
registered terminal. Refusals are problem+json with the reason an operator acts on.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from mes.audit.blueprint import SIGN_FIELDS
from mes.ebr.finishing import ebr_status
from mes.errors import Forbidden, ValidationFailed
from mes.execution import operations as ops
from mes.execution import qa_views, queries
from mes.execution import recipes_store as store
from mes.execution.models import BatchStatus, DeviationStatus, Severity, WorkOrderStatus
from mes.gateway.store import reading_store
from mes.quantities import to_text_or_none
from mes.signatures.credentials import credentials_from
from mes.users.permissions import Permission as P
from mes.web import STR, created, endpoint, obj, parse_date, principal, query_int

bp = Blueprint("execution", __name__)
API = "/api/v1"
ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,139}$"}
DECIMAL = {"type": "string", "pattern": r"^-?[0-9]{1,15}(\.[0-9]{1,9})?$"}
TEXT = {"type": "string", "minLength": 1, "maxLength": 4000}


def _session_row() -> Any:
    who = principal()
    if who.session is None:
        raise Forbidden("Only a person in an interactive session can sign; API tokens cannot.")
    return who.session


def _terminal() -> str | None:
    who = principal()
    return who.terminal.id if who.terminal else None


# ---------------------------------------------------------------------------- recipes


@bp.get(f"{API}/recipes")
@endpoint(P.BATCH_VIEW, tags=("recipes",), query={"recipe_id": {"schema": {"type": "string"}}, "status": {"schema": {"type": "string"}}})
def list_recipes() -> Response:
    """Master recipe versions (filter by recipe_id, status)."""
    rows = store.list_versions(request.args.get("recipe_id"), request.args.get("status"))
    return jsonify({"recipes": [store.version_json(r) for r in rows]})


@bp.get(f"{API}/recipes/<version_id>")
@endpoint(P.BATCH_VIEW, tags=("recipes",))
def get_recipe(version_id: str) -> Response:
    """One master recipe version with its content and signatures."""
    return jsonify(store.version_json(store.get_version(version_id), detail=True))


@bp.get(f"{API}/recipes/<version_id>/diff/<other_id>")
@endpoint(P.BATCH_VIEW, tags=("recipes",))
def diff_recipe(version_id: str, other_id: str) -> Response:
    """What changed from one version to another."""
    return jsonify({"from": version_id, "to": other_id, "changes": store.diff_versions(version_id, other_id)})


@bp.post(f"{API}/recipes")
@endpoint(P.RECIPE_AUTHOR, schema=obj({"yaml": {"type": "string", "minLength": 1, "maxLength": 2_000_000},
                                       "name": {"type": "string", "maxLength": 300}}, ("yaml",)), tags=("recipes",))
def import_recipe() -> Response:
    """Import a master recipe (YAML text) as a new draft version."""
    rv = store.import_recipe(principal().actor(P.RECIPE_AUTHOR), g.body["yaml"], g.body.get("name") or "<upload>")
    return created(store.version_json(rv))


@bp.post(f"{API}/recipes/<version_id>/submit")
@endpoint(P.RECIPE_AUTHOR, tags=("recipes",))
def submit_recipe(version_id: str) -> Response:
    """Submit a draft for QA review."""
    return jsonify(store.version_json(store.submit_for_review(principal().actor(P.RECIPE_AUTHOR), version_id)))


@bp.post(f"{API}/recipes/<version_id>/approve")
@endpoint(P.RECIPE_APPROVE, terminal=True, schema=obj({"comment": TEXT, **SIGN_FIELDS}), tags=("recipes",))
def approve_recipe(version_id: str) -> Response:
    """QA approves a version under review with an e-signature."""
    rv = store.approve(_session_row(), credentials_from(g.body), version_id, terminal=_terminal(),
                       comment=g.body.get("comment"))
    return jsonify(store.version_json(rv))


@bp.post(f"{API}/recipes/<version_id>/effective")
@endpoint(P.RECIPE_APPROVE, tags=("recipes",))
def make_effective(version_id: str) -> Response:
    """Make an approved version effective (the previous one is superseded)."""
    return jsonify(store.version_json(store.make_effective(principal().actor(P.RECIPE_APPROVE), version_id)))


# ------------------------------------------------------------------------ work orders


@bp.post(f"{API}/work-orders")
@endpoint(P.WORK_ORDER_MANAGE, tags=("work orders",),
          schema=obj({"id": ID, "item": STR, "quantity": DECIMAL, "unit": STR, "recipe_version": ID, "line": STR,
                      "due_date": {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}, "erp_ref": STR},
                     ("item", "quantity", "unit", "recipe_version")))
def create_work_order() -> Response:
    """Create a work order (in the MES or from ERP)."""
    from datetime import date

    b = g.body
    due = date.fromisoformat(b["due_date"]) if b.get("due_date") else None
    wo = ops.create_work_order(principal().actor(P.WORK_ORDER_MANAGE), b["item"], b["quantity"], b["unit"],
                               b["recipe_version"], work_order_id=b.get("id"), line=b.get("line"), due_date=due,
                               erp_ref=b.get("erp_ref"))
    return created(ops.work_order_json(wo))


@bp.get(f"{API}/work-orders/<wo_id>")
@endpoint(P.BATCH_VIEW, tags=("work orders",))
def get_work_order(wo_id: str) -> Response:
    """One work order with its batches."""
    return jsonify(ops.work_order_json(ops.get_work_order(wo_id)))


@bp.post(f"{API}/work-orders/<wo_id>/release")
@endpoint(P.WORK_ORDER_MANAGE, tags=("work orders",))
def release_work_order(wo_id: str) -> Response:
    """Release a created work order for production."""
    return jsonify(ops.work_order_json(ops.release_work_order(principal().actor(P.WORK_ORDER_MANAGE), wo_id)))


@bp.post(f"{API}/work-orders/<wo_id>/dispatch")
@endpoint(P.WORK_ORDER_MANAGE, schema=obj({"line": STR}, ("line",)), tags=("work orders",))
def dispatch_work_order(wo_id: str) -> Response:
    """Dispatch a released work order to a line."""
    wo = ops.dispatch_work_order(principal().actor(P.WORK_ORDER_MANAGE), wo_id, g.body["line"])
    return jsonify(ops.work_order_json(wo))


# ---------------------------------------------------------------------------- batches


@bp.post(f"{API}/work-orders/<wo_id>/batches")
@endpoint(P.BATCH_EXECUTE, terminal=True, schema=obj({"batch_id": ID}), tags=("batches",))
def start_batch(wo_id: str) -> Response:
    """Start the batch of a dispatched work order (freezes the control recipe)."""
    batch = ops.start_batch(principal().actor(P.BATCH_EXECUTE), wo_id, batch_id=g.body.get("batch_id"))
    return created(ops.batch_json(batch))


@bp.get(f"{API}/batches/<batch_id>")
@endpoint(P.BATCH_VIEW, tags=("batches",))
def get_batch(batch_id: str) -> Response:
    """A batch with its state, steps, records and deviations."""
    return jsonify(ops.batch_json(ops.get_batch(batch_id)))


@bp.get(f"{API}/batches/<batch_id>/exceptions")
@endpoint(P.BATCH_VIEW, tags=("batches",))
def batch_exceptions(batch_id: str) -> Response:
    """Review by exception: deviations, out-of-limit values, corrections, refused attempts, comments."""
    return jsonify({"batch": batch_id, "exceptions": ops.exceptions(batch_id),
                    "release_blockers": ops.release_blockers(batch_id)})


STEP_BODY = obj({"expected_version": {"type": "integer", "minimum": 1},
                 "payload": {"type": "object", "maxProperties": 20}}, ("expected_version",))


def _key() -> str:
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        raise ValidationFailed("The Idempotency-Key header is required.", field="Idempotency-Key")
    who = principal()
    return f"{who.user_id}:{key}"


@bp.post(f"{API}/batches/<batch_id>/steps/<step_id>/start")
@endpoint(P.BATCH_EXECUTE, terminal=True, schema=STEP_BODY, tags=("batches",))
def start_step(batch_id: str, step_id: str) -> Response:
    """Start a step (timers start on the server clock)."""
    return jsonify(ops.start_step(principal().actor(P.BATCH_EXECUTE), batch_id, step_id, _key(),
                                  g.body["expected_version"]))


@bp.post(f"{API}/batches/<batch_id>/steps/<step_id>/complete")
@endpoint(P.BATCH_EXECUTE, terminal=True, schema=STEP_BODY, tags=("batches",))
def complete_step(batch_id: str, step_id: str) -> Response:
    """Complete a step (idempotent with the Idempotency-Key header). A weigh step names the
    scale (``device_id``); the server takes the weight from the gateway's latest reading. An
    equipment check confirms what the status label shows (``label_states``); a signer's
    first signature may carry the acknowledgement (``esig_acknowledged: true``)."""
    who = principal()
    return jsonify(ops.complete_step(who.actor(P.BATCH_EXECUTE), batch_id, step_id, g.body.get("payload") or {},
                                     _key(), g.body["expected_version"], session_row=lambda: who.session,
                                     readings=reading_store(current_app),
                                     max_reading_age_ms=int(current_app.config.get("MES_CAPTURE_MAX_AGE_MS", 3000)),
                                     max_failed_weighings=int(current_app.config.get("MES_WEIGH_MAX_FAILED_ATTEMPTS", 3))))


@bp.post(f"{API}/batches/<batch_id>/steps/<step_id>/sign")
@endpoint(P.ESIG_SIGN, terminal=True, tags=("batches",),
          schema=obj({"expected_version": {"type": "integer", "minimum": 1}, "comment": TEXT,
                      "esig_acknowledged": {"type": "boolean"}, **SIGN_FIELDS}, ("expected_version",)))
def sign_step(batch_id: str, step_id: str) -> Response:
    """Sign a signature gate in the role the recipe names (QA signs a QA gate without
    ``batch.execute``); idempotent with the Idempotency-Key header."""
    b = g.body
    payload = {k: b[k] for k in ("password", "pin", "user_id", "badge", "comment", "esig_acknowledged") if k in b}
    return jsonify(ops.sign_gate(_session_row(), batch_id, step_id, payload, _key(), b["expected_version"],
                                 terminal=_terminal()))


# ------------------------------------------------------------------------- deviations


@bp.post(f"{API}/batches/<batch_id>/deviations")
@endpoint(P.DEVIATION_RAISE, terminal=True, tags=("deviations",),
          schema=obj({"severity": {"enum": ["minor", "major", "critical"]}, "category": STR, "description": TEXT,
                      "step": STR, "evidence": {"type": "object"}}, ("severity", "category", "description")))
def raise_deviation(batch_id: str) -> Response:
    """Raise a deviation by hand."""
    b = g.body
    dev = ops.raise_deviation(principal().actor(P.DEVIATION_RAISE), batch_id, b["severity"], b["category"],
                              b["description"], step_id=b.get("step"), evidence=b.get("evidence"))
    return created(ops.deviation_json(dev))


@bp.post(f"{API}/deviations/<deviation_id>/disposition")
@endpoint(P.DEVIATION_DISPOSE, terminal=True, tags=("deviations",),
          schema=obj({"disposition": {"enum": ["use_as_is", "repeat_step", "rework", "scrap", "reject_batch"]},
                      "reason": TEXT, "qms_ref": STR, **SIGN_FIELDS}, ("disposition", "reason")))
def disposition(deviation_id: str) -> Response:
    """QA dispositions a deviation with an e-signature."""
    b = g.body
    dev = ops.disposition_deviation(_session_row(), credentials_from(b), deviation_id, b["disposition"], b["reason"],
                                    terminal=_terminal(), qms_ref=b.get("qms_ref"))
    return jsonify(ops.deviation_json(dev))


@bp.post(f"{API}/batches/<batch_id>/corrections")
@endpoint(P.BATCH_EXECUTE, terminal=True, tags=("batches",),
          schema=obj({"record": STR, "value": DECIMAL, "reason": TEXT}, ("record", "value", "reason")))
def correct(batch_id: str) -> Response:
    """Correct a recorded value with a reason (both values are kept)."""
    b = g.body
    rec = ops.correct_value(principal().actor(P.BATCH_EXECUTE), batch_id, b["record"], b["value"], b["reason"])
    return created({"record": rec.id, "corrects": rec.corrects, "value": to_text_or_none(rec.value), "unit": rec.unit})


# --------------------------------------------------------------------- review, release


@bp.post(f"{API}/batches/<batch_id>/review")
@endpoint(P.BATCH_REVIEW, terminal=True, schema=obj({"comment": TEXT, **SIGN_FIELDS}), tags=("batches",))
def review(batch_id: str) -> Response:
    """QA signs the batch record as reviewed (needs a signed audit-trail review)."""
    batch = ops.review_batch(_session_row(), credentials_from(g.body), batch_id, terminal=_terminal(),
                             comment=g.body.get("comment"))
    return jsonify(ops.batch_json(batch, steps=False))


@bp.post(f"{API}/batches/<batch_id>/release")
@endpoint(P.BATCH_RELEASE, terminal=True, tags=("batches",),
          schema=obj({"decision": {"enum": ["released", "conditionally_released", "rejected"]}, "comment": TEXT,
                      "conditions": TEXT, **SIGN_FIELDS}, ("decision",)))
def release(batch_id: str) -> Response:
    """QA releases (outright or under conditions) or rejects the batch with an e-signature;
    the batch's output lot follows the decision. ``ebr`` says whether the signed eBR is
    generated or still being finished (waiting for the audit witnesses)."""
    batch = ops.release_batch(_session_row(), credentials_from(g.body), batch_id, g.body["decision"],
                              terminal=_terminal(), comment=g.body.get("comment"), conditions=g.body.get("conditions"))
    return jsonify({**ops.batch_json(batch, steps=False), "ebr": ebr_status(batch_id)})


# ------------------------------------------------------------------ QA workstation lists

_Q_TEXT = {"schema": {"type": "string", "maxLength": 140}, "description": "A filter: an unknown value matches nothing."}
_Q_DATE = {"schema": {"type": "string", "format": "date"}, "description": "A UTC calendar day, YYYY-MM-DD."}
PAGE_Q = {"page": {"schema": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1},
                   "description": "Page number, from 1."},
          "per_page": {"schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                       "description": "Rows per page."}}
BATCHES_Q = {"status": {"schema": {"enum": [s.value for s in BatchStatus]}}, "product": _Q_TEXT, "line": _Q_TEXT,
             "since": _Q_DATE, "until": _Q_DATE, **PAGE_Q}
WORK_ORDERS_Q = {"status": {"schema": {"enum": [s.value for s in WorkOrderStatus]}}, "product": _Q_TEXT,
                 "line": _Q_TEXT, **PAGE_Q}
DEVIATIONS_Q = {"status": {"schema": {"enum": [s.value for s in DeviationStatus]}},
                "severity": {"schema": {"enum": [s.value for s in Severity]}}, "batch": _Q_TEXT, **PAGE_Q}
HOLDS_Q = {"item": _Q_TEXT, **PAGE_Q}


def _choice(name: str, allowed: type) -> str | None:
    """An enum query parameter (empty: none), or a 422 naming it."""
    value = request.args.get(name) or None
    if value is not None and value not in {m.value for m in allowed}:
        raise ValidationFailed(f"{name} must be one of {', '.join(m.value for m in allowed)}.", field=name)
    return value


def _paging() -> tuple[int, int]:
    return query_int("page", 1, 1, 100000), query_int("per_page", 50, 1, 200)


def _page_json(name: str, page: Any, rows: list[dict[str, Any]]) -> Response:
    return jsonify({name: rows, "page": page.page, "per_page": page.per_page, "total": page.total,
                    "pages": page.pages})


@bp.get(f"{API}/batches")
@endpoint(P.BATCH_VIEW, tags=("batches",), query=BATCHES_Q)
def list_batches() -> Response:
    """Batches, newest first, filtered by state, product, line and start day, with exception
    counts and release blockers; paged."""
    page_no, per_page = _paging()
    page = queries.list_batches(status=_choice("status", BatchStatus), product=request.args.get("product") or None,
                                line=request.args.get("line") or None,
                                since=parse_date(request.args.get("since") or None, "since"),
                                until=parse_date(request.args.get("until") or None, "until"),
                                page=page_no, per_page=per_page)
    return _page_json("batches", page, [qa_views.batch_row(b) for b in page.rows])


@bp.get(f"{API}/work-orders")
@endpoint(P.BATCH_VIEW, tags=("work orders",), query=WORK_ORDERS_Q)
def list_work_orders() -> Response:
    """Work orders, newest first, filtered by state, product and line; paged."""
    page_no, per_page = _paging()
    page = queries.list_work_orders(status=_choice("status", WorkOrderStatus),
                                    product=request.args.get("product") or None,
                                    line=request.args.get("line") or None, page=page_no, per_page=per_page)
    return _page_json("work_orders", page, [qa_views.work_order_row(w) for w in page.rows])


@bp.get(f"{API}/deviations")
@endpoint(P.BATCH_VIEW, tags=("deviations",), query=DEVIATIONS_Q)
def list_deviations() -> Response:
    """Deviations: open first, then by severity (critical first), then by age (oldest first); paged."""
    page_no, per_page = _paging()
    page = queries.list_deviations(status=_choice("status", DeviationStatus),
                                   severity=_choice("severity", Severity), batch=request.args.get("batch") or None,
                                   page=page_no, per_page=per_page)
    now = ops.clock()
    return _page_json("deviations", page, [qa_views.deviation_row(d, now) for d in page.rows])


@bp.get(f"{API}/holds")
@endpoint(P.MATERIAL_VIEW, tags=("materials",), query=HOLDS_Q)
def list_holds() -> Response:
    """Lots on hold: the active holds, oldest first, filtered by item; paged."""
    page_no, per_page = _paging()
    page = queries.lots_on_hold(item=request.args.get("item") or None, page=page_no, per_page=per_page)
    return _page_json("holds", page, [qa_views.hold_row(h) for h in page.rows])


@bp.post(f"{API}/batches/<batch_id>/exceptions/reviewed")
@endpoint(P.BATCH_REVIEW, terminal=True, tags=("batches",),
          schema=obj({"key": {"type": "string", "minLength": 1, "maxLength": 200}, "note": TEXT}, ("key",)))
def review_exception(batch_id: str) -> Response:
    """QA marks one exception of the batch reviewed (its ``key`` from the exception list), with a note."""
    row = ops.mark_exception_reviewed(principal().actor(P.BATCH_REVIEW), batch_id, g.body["key"], g.body.get("note"))
    return created({"batch": batch_id, "key": row.exception_key, "type": row.exception_type,
                    "reviewed_by": row.reviewed_by, "reviewed_at": row.reviewed_at.isoformat(), "note": row.note})
