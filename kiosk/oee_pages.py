"""Kiosk screens for OEE: the operator picks the reason of a line's stop.

The line's stops of the last twelve hours, each one event from leaving Execute to returning
(all its PackML states), and for one stop the reasons of the plant's reason tree as large
buttons; the first tap shows what will be recorded, Confirm records it
(:func:`mes.oee.operations.assign_downtime_reason`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import redirect, request, url_for
from flask_babel import gettext as _

from kiosk.blueprint import _confirmed, _notice, _page, bp
from mes.db import utcnow
from mes.oee import operations as oee
from mes.users.permissions import Permission as P
from mes.web import endpoint, principal

RECENT = timedelta(hours=12)


@bp.get("/lines/<line>/stops")
@endpoint(P.OEE_CLASSIFY, tags=("kiosk",))
def line_stops(line: str) -> Any:
    """The line's stops of the last twelve hours, newest first, with how each counts now."""
    now = utcnow()
    stops = list(reversed(oee.stops(line, now - RECENT, now)))
    return _page("stops.html", "stops", line=line, stops=stops)


@bp.get("/stops/<interval_id>")
@endpoint(P.OEE_CLASSIFY, tags=("kiosk",))
def stop_reason(interval_id: str) -> Any:
    """The reasons an operator may pick for one stop, by loss category."""
    stop = oee.describe_stop(interval_id)
    return _page("stop_reason.html", "reason", stop=stop, line=stop["line"],
                 tree=[c for c in oee.tree_json(oee.reason_tree()) if c["reasons"]])


@bp.post("/stops/<interval_id>/reason")
@endpoint(P.OEE_CLASSIFY, terminal=True, tags=("kiosk",))
def pick_stop_reason(interval_id: str) -> Any:
    """Record the reason the operator picked and confirmed for the stop."""
    _confirmed()
    row = oee.assign_downtime_reason(principal().actor(P.OEE_CLASSIFY), interval_id, request.form.get("reason", ""))
    _notice(_("Stop classified: %(reason)s.", reason=row.reason))
    return redirect(url_for("kiosk.line_stops", line=row.line_id), 303)
