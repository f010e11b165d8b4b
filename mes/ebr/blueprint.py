"""HTTP API of the eBR: the frozen signed PDF and its JSON (a thin shell over
:mod:`mes.ebr.operations`)."""

from __future__ import annotations

from flask import Blueprint, Response

from mes.ebr import operations as ops
from mes.users.permissions import Permission as P
from mes.web import endpoint

bp = Blueprint("ebr", __name__)
API = "/api/v1"


@bp.get(f"{API}/batches/<batch_id>/ebr.pdf")
@endpoint(P.BATCH_VIEW, tags=("batches",), media_type="application/pdf")
def ebr_pdf(batch_id: str) -> Response:
    """The batch's signed PDF/A-3b electronic batch record, as frozen at release."""
    doc = ops.stored(batch_id)
    return Response(doc.pdf, mimetype="application/pdf", headers={
        "Content-Disposition": f'inline; filename="ebr-{batch_id}.pdf"', "ETag": f'"{doc.sha256}"',
        "Cache-Control": "private, no-store"})


@bp.get(f"{API}/batches/<batch_id>/ebr.json")
@endpoint(P.BATCH_VIEW, tags=("batches",))
def ebr_json(batch_id: str) -> Response:
    """The batch's electronic batch record as data (mes.ebr/v1): the JSON embedded in the signed PDF."""
    return Response(ops.stored_json(batch_id), mimetype="application/json",
                    headers={"Cache-Control": "private, no-store"})
