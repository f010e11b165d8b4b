"""OEE on the API and on a QA workstation page (a thin shell over :mod:`mes.oee.operations`).

``GET /api/v1/oee?line=LINE-1&from=…&to=…&group=shift|product`` answers the figures;
stops, downtime reasons and ideal rates have their own endpoints. ``/qa/oee`` shows
A, P, Q and OEE per shift and the downtime Pareto as server-rendered SVG (no script).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for

from mes.db import utcnow
from mes.errors import MESError, ValidationFailed
from mes.oee import charts
from mes.oee import operations as ops
from mes.plant_time import plant_zone
from mes.users.permissions import Permission as P
from mes.users.permissions import allowed
from mes.validation import ID_JSON_PATTERN
from mes.web import STR, created, csrf_token, endpoint, obj, parse_utc, principal

bp = Blueprint("oee", __name__, template_folder="templates")
API = "/api/v1/oee"
TAGS = ("oee",)

ID = {"type": "string", "pattern": ID_JSON_PATTERN}
DECIMAL = {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,6})?$"}
DATETIME = {"type": "string", "minLength": 10, "maxLength": 40}
REASON_SCHEMA = obj({"reason": {"type": "string", "minLength": 1, "maxLength": 100}, "planned": {"type": "boolean"},
                     "comment": STR}, ("reason",))
REASON_DEF_SCHEMA = obj({"code": ID, "label": {"type": "string", "minLength": 1, "maxLength": 100},
                         "category": {"type": "string", "maxLength": 32},
                         "plc_codes": {"type": "array", "maxItems": 200,
                                       "items": {"type": "string", "minLength": 1, "maxLength": 64}},
                         "active": {"type": "boolean"}}, ("code", "label", "category"))
WINDOW = obj({"from": DATETIME, "to": DATETIME, "note": STR}, ("from", "to"))
CALENDAR_SCHEMA = obj({"line": ID,
                       "shifts": {"type": "object", "additionalProperties": {"type": "array", "maxItems": 24,
                                                                             "items": {"type": "string"}}},
                       "holidays": {"type": "array", "maxItems": 400, "items": {"type": "string", "maxLength": 10}},
                       "maintenance": {"type": "array", "maxItems": 400, "items": WINDOW},
                       "oee_target": DECIMAL, "minor_stop_s": {"type": "integer"}, "startup_s": {"type": "integer"},
                       "effective_from": DATETIME, "comment": STR}, ("line", "shifts"))
CLOSE_SCHEMA = obj({"line": ID, "shift_start": DATETIME}, ("line", "shift_start"))
RATE_SCHEMA = obj({"line": ID, "product": ID, "units_per_minute": DECIMAL, "effective_from": DATETIME,
                   "comment": STR}, ("line", "units_per_minute"))


LINE_Q = {"line": {"required": True, "schema": ID, "description": "The line's id."}}
PERIOD_Q = {"from": {"required": True, "schema": DATETIME, "description": "Start of the range (ISO 8601 with zone)."},
            "to": {"required": True, "schema": DATETIME, "description": "End of the range (ISO 8601 with zone)."}}
RANGE_Q = {**LINE_Q, **PERIOD_Q}
FIGURES_Q = {**RANGE_Q, "group": {"required": False, "schema": {"type": "string", "enum": ["shift", "product"],
                                                                 "default": "shift"}}}


def _required(name: str) -> str:
    value = request.args.get(name, "").strip()
    if not value:
        raise ValidationFailed(f"The query parameter {name} is required.", field=name)
    return value


def _range() -> tuple[datetime, datetime]:
    start = parse_utc(_required("from"), "from")
    end = parse_utc(_required("to"), "to")
    assert start is not None and end is not None
    return start, end


@bp.get(API)
@endpoint(P.OEE_VIEW, tags=TAGS, query=FIGURES_Q)
def oee_figures() -> Response:
    """OEE of a line over a time range grouped by shift or product: ``?line=&from=&to=&group=shift|product``."""
    line = _required("line")
    start, end = _range()
    return jsonify(ops.oee(line, start, end, request.args.get("group", "shift")))


@bp.get(f"{API}/stops")
@endpoint(P.OEE_VIEW, tags=TAGS, query=RANGE_Q)
def oee_stops() -> Response:
    """The line's stop intervals in a range with their downtime reasons: ``?line=&from=&to=``."""
    line = _required("line")
    start, end = _range()
    return jsonify({"stops": ops.stops(line, start, end)})


@bp.post(f"{API}/stops/<interval_id>/reason")
@endpoint(P.OEE_MANAGE, schema=REASON_SCHEMA, tags=TAGS)
def oee_stop_reason(interval_id: str) -> Response:
    """Assign the downtime reason of a stop (``planned`` for breaks, planned maintenance, no order)."""
    row = ops.assign_downtime_reason(principal().actor(P.OEE_MANAGE), interval_id, g.body["reason"],
                                     planned=g.body.get("planned"), comment=g.body.get("comment"))
    return created({"downtime_reason": ops.reason_json(row)})


@bp.get(f"{API}/rates")
@endpoint(P.OEE_VIEW, tags=TAGS, query=LINE_Q)
def oee_rates() -> Response:
    """The ideal rates (units per minute) of a line, oldest first: ``?line=``."""
    return jsonify({"rates": [ops.rate_json(r) for r in ops.ideal_rates(_required("line"))]})


@bp.post(f"{API}/rates")
@endpoint(P.OEE_MANAGE, schema=RATE_SCHEMA, tags=TAGS)
def oee_rate_set() -> Response:
    """Set a line's ideal rate in units per minute, for one product or (no product) for any."""
    b = g.body
    row = ops.set_ideal_rate(principal().actor(P.OEE_MANAGE), b["line"], b["units_per_minute"],
                             product=b.get("product"),
                             effective_from=parse_utc(b.get("effective_from"), "effective_from"),
                             comment=b.get("comment"))
    return created({"rate": ops.rate_json(row)})


@bp.get(f"{API}/lines")
@endpoint(P.OEE_VIEW, tags=TAGS, query=PERIOD_Q)
def oee_lines() -> Response:
    """Every line's figures over a range side by side, with its OEE target: ``?from=&to=``."""
    start, end = _range()
    return jsonify({"lines": ops.compare_lines(start, end)})


@bp.get(f"{API}/reasons")
@endpoint(P.OEE_VIEW, tags=TAGS)
def oee_reasons() -> Response:
    """The downtime reason tree: loss categories with their reasons and PLC stop codes."""
    return jsonify({"categories": ops.tree_json(ops.reason_tree())})


@bp.post(f"{API}/reasons")
@endpoint(P.OEE_MANAGE, schema=REASON_DEF_SCHEMA, tags=TAGS)
def oee_reason_define() -> Response:
    """Add, change or retire (``active: false``) one reason of the tree."""
    b = g.body
    reason = ops.define_reason(principal().actor(P.OEE_MANAGE), b["code"], b["label"], b["category"],
                               plc_codes=b.get("plc_codes", []), active=b.get("active", True))
    return created({"reason": reason.as_json()})


@bp.get(f"{API}/calendars")
@endpoint(P.OEE_VIEW, tags=TAGS, query=LINE_Q)
def oee_calendars() -> Response:
    """The production calendar versions of a line, oldest first: ``?line=``."""
    cal = ops.calendars(ops.line_id_of(_required("line")))
    return jsonify({"calendars": [ops.calendar_json(r) for r in cal.rows]})


@bp.post(f"{API}/calendars")
@endpoint(P.OEE_MANAGE, schema=CALENDAR_SCHEMA, tags=TAGS)
def oee_calendar_set() -> Response:
    """A new production calendar of a line: shifts worked per weekday, holidays, maintenance
    windows, OEE target, minor-stop threshold and startup window."""
    b = g.body
    row = ops.set_line_calendar(principal().actor(P.OEE_MANAGE), b["line"], shifts=b["shifts"],
                                holidays=b.get("holidays", []), maintenance=b.get("maintenance", []),
                                oee_target=b.get("oee_target"),
                                minor_stop_s=b.get("minor_stop_s", ops.DEFAULT_MINOR_STOP_S),
                                startup_s=b.get("startup_s", ops.DEFAULT_STARTUP_S),
                                effective_from=parse_utc(b.get("effective_from"), "effective_from"),
                                comment=b.get("comment"))
    return created({"calendar": ops.calendar_json(row)})


@bp.post(f"{API}/shifts/close")
@endpoint(P.OEE_MANAGE, schema=CLOSE_SCHEMA, tags=TAGS)
def oee_shift_close() -> Response:
    """Close an ended shift of a line: its figures go out once as ``mes.oee.shift_closed.v1``."""
    b = g.body
    row = ops.close_shift(principal().actor(P.OEE_MANAGE), b["line"], parse_utc(b["shift_start"], "shift_start"))
    return created({"closure": {"line": row.line_id, "shift_start": row.shift_start.isoformat(),
                                "figures": row.figures}})


@bp.post(f"{API}/shifts/close-due")
@endpoint(P.OEE_MANAGE, tags=TAGS)
def oee_shifts_close_due() -> Response:
    """Close every shift of the last two days that ended 15 min ago or more, at once (each server's
    background jobs do it every MES_OEE_CLOSE_SECONDS)."""
    rows = ops.close_shifts_due(principal().actor(P.OEE_MANAGE))
    return created({"closed": [{"line": r.line_id, "shift_start": r.shift_start.isoformat()} for r in rows]})


# ------------------------------------------------------------------------------ page


def _local_input(value: str, field: str, zone: ZoneInfo) -> datetime:
    """A page date-time: ``2026-11-23T06:00`` in plant time, or ISO 8601 with a zone."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(f"{field} is not a date and time such as 2026-11-23T06:00.", field=field) from None
    return parsed.replace(tzinfo=zone) if parsed.tzinfo is None else parsed


@bp.get("/qa/oee")
@endpoint(P.OEE_VIEW, tags=("qa",))
def oee_page() -> Any:
    """OEE per shift, product or week with A, P and Q against the line's target, the downtime
    Pareto by duration and by frequency, the comparison of lines, and the stops to classify."""
    zone = plant_zone()
    lines = ops.known_lines()
    now_local = utcnow().astimezone(zone)
    yesterday = datetime.combine(now_local.date() - timedelta(days=1), datetime.min.time())
    default_from = yesterday.strftime("%Y-%m-%dT%H:%M")
    form = {"line": request.args.get("line", "").strip() or (lines[0] if lines else ""),
            "from": request.args.get("from", "").strip() or default_from,
            "to": request.args.get("to", "").strip() or now_local.strftime("%Y-%m-%dT%H:%M"),
            "group": request.args.get("group", "shift").strip() or "shift"}
    view: dict[str, Any] = {"result": None, "error": None}
    status = 200
    try:
        if form["line"]:
            start, end = _local_input(form["from"], "from", zone), _local_input(form["to"], "to", zone)
            result = ops.oee(form["line"], start, end, form["group"])
            comparison = ops.compare_lines(start, end)
            stops = ops.stops(form["line"], start, end)
            view = {"result": result, "error": None, "stops": stops, "comparison": comparison,
                    "group_chart": charts.shift_chart(result["groups"], result["oee_target"], form["group"]),
                    "pareto": charts.pareto_chart(result["total"]["downtime_by_reason"]),
                    "pareto_frequency": charts.pareto_chart(result["total"]["downtime_by_reason"], "frequency"),
                    "lines_chart": charts.lines_chart(comparison),
                    "tree": ops.tree_json(ops.reason_tree())}
    except MESError as exc:
        view["error"], status = exc.detail, exc.status
    return render_template("oee/oee.html", form=form, lines=lines, zone=zone.key, user=principal().user,
                           csrf=csrf_token(), pct=_pct, minutes=_minutes, groups=ops.GROUPS,
                           may_classify=allowed(principal().roles, P.OEE_MANAGE), **view), status


@bp.post("/qa/oee/stops/<interval_id>/reason")
@endpoint(P.OEE_MANAGE, tags=("qa",))
def oee_page_classify(interval_id: str) -> Any:
    """Classify a stop from the OEE page (a form), then show the page again."""
    ops.assign_downtime_reason(principal().actor(P.OEE_MANAGE), interval_id, request.form.get("reason", ""),
                               comment=request.form.get("comment", "").strip() or None)
    back = {k: request.form.get(k, "") for k in ("line", "from", "to", "group")}
    return redirect(url_for("oee.oee_page", **back), 303)


def _pct(ratio: str | None) -> str:
    """``"0.8125"`` -> ``"81.3 %"``; a dash when there is no figure."""
    return "–" if ratio is None else f"{(Decimal(ratio) * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)} %"


def _minutes(seconds: str) -> str:
    """``"5400"`` -> ``"90.0 min"``."""
    return f"{(Decimal(seconds) / 60).quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)} min"
