"""The QA workstation pages (issue 19), server side: the lists, the batch page with review by
exception, the full record, the e-signed disposition, audit-trail review, batch review and
release on the pages (each refusal shown as a sentence), and the control charts as SVG."""

from __future__ import annotations

import re
from html import unescape

from flask import Flask

from mes.execution import operations as ex
from tests.execution_helpers import make_world, second_qa
from tests.helpers import PASSWORD, logged_in
from tests.test_qa_release import _batch


def _form(s, url: str, data: dict[str, str]):
    return s.client.post(url, data={"csrf_token": s.csrf, **data}, headers=s.headers)


def test_qa_pages_take_a_batch_from_exceptions_to_release(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    batch_id = _batch(world, hardness="130")
    dev = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "other", "label smudged", step_id="w_bulk")
    second_qa(world)
    qa = logged_in(client, world.seeded, "qa")
    # the lists
    page = qa.get("/qa/batches?status=completed").get_data(as_text=True)
    assert batch_id in page and "not reviewed" in page
    assert dev.id in qa.get("/qa/deviations").get_data(as_text=True)
    assert "FG-PCM500-PACK" in qa.get("/qa/work-orders").get_data(as_text=True)
    assert qa.get("/qa/holds").status_code == 200
    assert qa.get("/qa/batches?status=bogus&since=nonsense&page=x").status_code == 200  # a bad filter is ignored
    # the batch page: exceptions first, each with its step and audit links
    html = qa.get(f"/qa/batches/{batch_id}").get_data(as_text=True)
    keys = [e["key"] for e in ex.exceptions(batch_id)]
    assert all(k in html for k in keys)
    assert html.index("Review by exception") < html.index("Release, conditional release")
    assert f"/qa/batches/{batch_id}/record#step-hardness" in html
    assert "Meaning of this signature: <strong>approved</strong>" in html
    # the full record, step by step with who, when, terminal, instrument and raw reply
    record = qa.get(f"/qa/batches/{batch_id}/record").get_data(as_text=True)
    assert 'id="step-w_bulk"' in record and "KIOSK-01" in record and "S S" in record
    # the disposition is signed on the page
    r = _form(qa, f"/qa/deviations/{dev.id}/disposition", {"disposition": "use_as_is", "reason": "legible",
                                                            "password": PASSWORD})
    assert r.status_code == 302 and ex.get_deviation(dev.id).status == "closed"
    # the batch review is refused with the reason while exceptions are unreviewed
    r = _form(qa, f"/qa/batches/{batch_id}/review", {"password": PASSWORD})
    assert r.status_code == 409 and "not reviewed" in unescape(r.get_data(as_text=True))
    # qa1 verified the QA gate: the page refuses their review of the batch's exceptions and says why
    first = ex.unreviewed_exceptions(batch_id)[0]["key"]
    r = _form(qa, f"/qa/batches/{batch_id}/exceptions/reviewed", {"key": first, "note": "ok"})
    assert r.status_code == 409 and "segregation of duties" in unescape(r.get_data(as_text=True))
    qa2 = logged_in(app.test_client(), world.seeded, "qa2")
    for key in [e["key"] for e in ex.unreviewed_exceptions(batch_id)]:
        assert _form(qa2, f"/qa/batches/{batch_id}/exceptions/reviewed", {"key": key, "note": "ok"}).status_code == 302
    assert ex.unreviewed_exceptions(batch_id) == []
    assert _form(qa2, f"/qa/batches/{batch_id}/trail-review", {"password": PASSWORD}).status_code == 302
    assert _form(qa2, f"/qa/batches/{batch_id}/review", {"password": PASSWORD}).status_code == 302
    assert ex.get_batch(batch_id).status == "reviewed"
    # nor may qa1 release it
    r = _form(qa, f"/qa/batches/{batch_id}/release", {"decision": "released", "password": PASSWORD})
    assert r.status_code == 409 and "segregation of duties" in unescape(r.get_data(as_text=True))
    r = _form(qa2, f"/qa/batches/{batch_id}/release", {"decision": "released", "password": PASSWORD})
    assert r.status_code == 302, r.get_data(as_text=True)
    assert ex.get_batch(batch_id).status == "released" and ex.get_batch(batch_id).decided_by == "qa2"


def test_control_charts_are_server_side_svg_with_the_recipe_limits(app: Flask, client, monkeypatch) -> None:
    world = make_world(monkeypatch)
    values = ["100", "104", "97", "130"]
    batches = []
    for v in values:
        batches.append(_batch(world, hardness=v))
        world.clock.advance(60)
    qa = logged_in(client, world.seeded, "qa")
    r = qa.get("/qa/charts/FG-PCM500-PACK")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "<svg" in html and "<script" not in html
    assert "recipe low 80" in html and "recipe high 120" in html and "UCL" in html
    # one point per batch in order, the value out of limits drawn as such
    assert len(re.findall(r"<circle ", html)) == len(values)
    shown = re.findall(r'<td class="value">([^<]+)</td>', html)
    assert shown == values
    assert html.count('fill="#b00020"><title>') == 1
