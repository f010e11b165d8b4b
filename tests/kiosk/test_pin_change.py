"""A badge holder whose PIN an administrator reset sets their own on the kiosk (Part 11
§11.300(b); issue 18): the log-in with the temporary PIN leads to the PIN screen (the
temporary PIN, the new one twice, on the on-screen keypad), which calls the same service
as ``POST /api/v1/auth/pin``. Measured at 1920×1080 and 1280×800: every control on the
screen without scrolling, kiosk-ux.md rules 1, 2, 8 and 12."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.kiosk import checks
from tests.kiosk.checks import until
from tests.kiosk.harness import KioskServer, running_server

pytestmark = pytest.mark.browser

BADGE, USER = "1001", "op1"
TEMPORARY, NEW = "9753", "8024"

# every control a person can act on, and whether it lies inside the viewport at scroll 0
_OUT_OF_VIEW_JS = """
() => {
  window.scrollTo(0, 0);
  const out = [];
  for (const el of document.querySelectorAll('main button, main a[href], main input:not([type=hidden]), main [role=button]')) {
    if (!el.getClientRects().length) continue;
    const r = el.getBoundingClientRect();
    if (r.top < 0 || r.left < 0 || r.bottom > window.innerHeight + 0.5 || r.right > window.innerWidth + 0.5)
      out.push(`${el.outerHTML.slice(0, 80)}: top ${r.top.toFixed(0)}, bottom ${r.bottom.toFixed(0)}, right ${r.right.toFixed(0)}; `
               + `the viewport is ${window.innerWidth}x${window.innerHeight}`);
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    with running_server("sqlite", templates, Path(tmp_path_factory.mktemp("kiosk-pin"))) as srv:
        yield srv


def _reset_pin(server: KioskServer) -> None:
    from mes.users import operations as ops

    with server.db():
        admin = ops.actor_for(ops.get_user("admin"), "admin", "QA-WS-01")
        ops.reset_credentials(admin, USER, "forgot the PIN", pin=TEMPORARY)


def _enter(k: Any, field: str, digits: str) -> None:
    k.page.locator(f'.field[data-entry-target="{field}"]').click()
    k.keypad(digits)
    until(k.page, "([f, n]) => (document.querySelector(`[data-field-of=${f}]`) || {}).innerText === '●'.repeat(n)",
          arg=[field, len(digits)])


def _submit(k: Any) -> None:
    """Tap Set PIN and wait until the server's answer replaces the page (as tests/kiosk/test_flows.py).
    The answer to this POST was seen to take more than 10 s on the shared test machine (cause
    not found yet), hence the longer wait for its first byte."""
    with k.page.expect_navigation(wait_until="commit", timeout=30_000):
        k.page.locator(".primary:visible").click(no_wait_after=True)


def _wait_message(k: Any, word: str) -> None:
    k.wait_screen("pin")
    msg = k.page.locator("#message[role=alert]")
    msg.wait_for(state="visible")
    assert word in msg.inner_text(), msg.inner_text()
    until(k.page, "() => window.__kioskReady === true")


def _pin_state(server: KioskServer) -> tuple[Any, list[str]]:
    from mes.audit.models import AuditEntry
    from mes.users.models import User

    with server.db() as db:
        reset_at = db.session.get(User, USER).pin_reset_at
        actions = [json.loads(e.entry_bytes)["action"] for e in db.session.execute(
            select(AuditEntry).where(AuditEntry.entity_id == USER).order_by(AuditEntry.seq)).scalars()]
        return reset_at, actions


def test_a_reset_pin_is_replaced_on_the_kiosk_pin_screen(open_kiosk, server, size) -> None:
    _reset_pin(server)
    k = open_kiosk(server, size, start="")
    # nobody with a temporary PIN in hand: the PIN screen is not reachable
    k.goto("/kiosk/pin")
    k.wait_screen("login")
    k.login(BADGE, TEMPORARY)
    k.wait_screen("pin")
    until(k.page, "() => window.__kioskReady === true")
    checks.rendered(k.page)
    k.shot("pin-change", full_page=False)
    assert k.page.evaluate(_OUT_OF_VIEW_JS) == []
    measured = checks.generic(k.page)
    assert measured["targets"] == [] and measured["text"] == [] and measured["axe"] == []
    assert measured["primary"] == [] and measured["operator_terminal"] == []
    assert k.page.locator("input[type=number]").count() == 0

    # two different new PINs: refused with a sentence, nothing changed
    _enter(k, "old_pin", TEMPORARY)
    _enter(k, "new_pin", NEW)
    _enter(k, "new_pin_again", "8025")
    _submit(k)
    _wait_message(k, "differ")
    assert _pin_state(server)[0] is not None
    assert k.page.evaluate(_OUT_OF_VIEW_JS) == []  # the message does not push a control off the screen

    # a wrong temporary PIN: refused, counted like any wrong PIN
    _enter(k, "old_pin", "1111")
    _enter(k, "new_pin", NEW)
    _enter(k, "new_pin_again", NEW)
    _submit(k)
    _wait_message(k, "wrong")
    assert "auth.pin.failed" in _pin_state(server)[1]

    # the temporary PIN and the new one twice: set, and logged in with it
    _enter(k, "old_pin", TEMPORARY)
    _enter(k, "new_pin", NEW)
    _enter(k, "new_pin_again", NEW)
    _submit(k)
    assert k.wait_screen(("lines", "batches"))
    reset_at, actions = _pin_state(server)
    assert reset_at is None and actions[-2:] == ["user.pin.changed", "auth.login"]
    # the new PIN is the one that logs in from now on
    k.page.locator("#logout-form button").click()
    k.wait_screen("login")
    k.login(BADGE, NEW)
    assert k.wait_screen(("lines", "batches"))
