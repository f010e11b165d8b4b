"""Issue 15 / kiosk-ux.md rule 13: a Chinese-speaking operator (badge 1002, language zh_Hans)
sees the PIN-change screen after a temporary reset and the OEE stop-reason screens in
Simplified Chinese, at 1280×800 and at 1920×1080: the zh-Hans catalogue's words are on the
screen, the English ones are not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.kiosk import checks, flows
from tests.kiosk.checks import until
from tests.kiosk.harness import KioskServer, running_server

pytestmark = pytest.mark.browser

TEMPORARY, NEW = "9753", "8024"


@pytest.fixture
def server(templates: dict[str, str], tmp_path: Path) -> Iterator[KioskServer]:
    with running_server("sqlite", templates, tmp_path / "home") as srv:
        with srv.db():
            from mes.audit.log import Actor
            from mes.db import utcnow
            from mes.oee import operations as oee
            from mes.users import operations as ops

            admin = ops.actor_for(ops.get_user("admin"), "admin", "QA-WS-01")
            ops.reset_credentials(admin, "op2", "forgot the PIN", pin=TEMPORARY)
            now = utcnow().replace(microsecond=0)
            for minutes, state in ((90, "Execute"), (60, "Stopping"), (59, "Stopped"), (40, "Starting"),
                                   (38, "Execute")):
                oee.record_line_sample(Actor.system("gateway"), flows.LINE, at=now - timedelta(minutes=minutes),
                                       state=state, processed=None, defective=None, source="opc.tcp://127.0.0.1/l1")
        yield srv


def _text(k) -> str:
    return str(k.page.evaluate("document.querySelector('main').innerText"))


def test_pin_change_and_stop_reasons_in_simplified_chinese(open_kiosk, server, size) -> None:
    k = open_kiosk(server, size, start="")
    k.login(flows.OPERATOR_ZH[0], TEMPORARY)
    k.wait_screen("pin")
    until(k.page, "() => window.__kioskReady === true")
    checks.rendered(k.page)
    k.shot("zh-pin-change", full_page=False)
    shown = _text(k)
    for zh in ("您的 PIN 已被重置：请设置您自己的 PIN", "临时 PIN", "新 PIN", "再次输入新 PIN", "设置 PIN"):
        assert zh in shown, (zh, shown)
    for en in ("Your PIN was reset", "Temporary PIN", "New PIN again", "Set PIN"):
        assert en not in shown, (en, shown)
    assert checks.axe(k.page) == []

    for field, digits in (("old_pin", TEMPORARY), ("new_pin", NEW), ("new_pin_again", NEW)):
        k.page.locator(f'.field[data-entry-target="{field}"]').click()
        k.keypad(digits)
    with k.page.expect_navigation(wait_until="commit", timeout=30_000):
        k.page.locator(".primary:visible").click(no_wait_after=True)
    k.wait_screen(("lines", "batches"))

    k.goto(f"/kiosk/lines/{flows.LINE}/stops")
    k.wait_screen("stops")
    checks.rendered(k.page)
    k.shot("zh-stops", full_page=False)
    shown = _text(k)
    assert f"{flows.LINE} 的停机" in shown and "选择原因" in shown and "计为：" in shown, shown
    assert "Pick reason" not in shown and "Counts as" not in shown, shown
    k.page.get_by_role("link", name="选择原因").first.click()
    k.wait_screen("reason")
    checks.rendered(k.page)
    k.shot("zh-stop-reason", full_page=False)
    shown = _text(k)
    assert f"{flows.LINE} 为什么停机？" in shown and "返回停机列表" in shown, shown
    assert "Why did" not in shown and "Back to the stops" not in shown, shown
    assert checks.axe(k.page) == []
