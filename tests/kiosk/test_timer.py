"""Issue 15, the timer step through a shift: before the minimum time, Stop is not the primary
action and says "early"; stopping early says what it does (a major deviation that stops the
batch) and asks again; "Minimum time reached in mm:ss" is as prominent as the elapsed time;
past the minimum, Stop is the primary action and stops without a deviation. At 1920×1080
and 1280×800.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kiosk import checks, flows
from tests.kiosk.driver import Driver
from tests.kiosk.harness import KioskServer, running_server
from tests.kiosk.test_fold import _timer_step, restock

pytestmark = pytest.mark.browser

_SIZE_OF = """sel => parseFloat(getComputedStyle(document.querySelector(sel)).fontSize)"""


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    with running_server("sqlite", templates, Path(tmp_path_factory.mktemp("kiosk-timer"))) as srv:
        restock(srv, batches=4)
        for size in ("1920x1080", "1280x800"):
            flows.new_work_order(srv, f"ERP-TIMER-{size}")
            flows.new_work_order(srv, f"ERP-TIMER-EARLY-{size}")
        yield srv


def _records(server: KioskServer, batch: str) -> list[dict[str, Any]]:
    return flows.step_records(server, batch)


def _running_timer(open_kiosk: Any, server: KioskServer, size: str, order: str) -> tuple[Any, Driver, str, dict[str, Any]]:
    """The batch of ``order`` brought to its first timer, which the kiosk starts: the kiosk,
    its driver, the batch and the step."""
    batch = _timer_step(server, order)
    k = open_kiosk(server, size, start="")
    flows.to_lines(k)
    drv = Driver(k, server, batch)
    step = flows.current_step(server, batch)
    assert step and step["kind"] == "timer", step
    drv.ensure_on_step(step)
    if k.page.locator("[data-start]").count():
        drv.commit(step)
        k.wait_screen("step")
    return k, drv, batch, step


def test_timer_stop_is_not_the_primary_action_before_the_minimum(open_kiosk, server, size) -> None:
    k, drv, batch, step = _running_timer(open_kiosk, server, size, f"ERP-TIMER-{size}")
    checks.live(k.page)

    # running, minimum not reached: nothing to do but wait
    stop = k.page.locator("[data-stop-timer]")
    assert "primary" not in (stop.get_attribute("class") or ""), "Stop is the primary action before the minimum"
    assert stop.inner_text().strip() == "Stop early"
    assert k.page.locator(".primary:visible").count() == 0, "another primary action while the timer must run"
    countdown = k.page.locator("#timer [data-field=countdown]")
    assert re.search(r"Minimum time reached in \d+:\d\d", countdown.inner_text()), countdown.inner_text()
    elapsed_px = k.page.evaluate(_SIZE_OF, "#timer [data-field=elapsed]")
    countdown_px = k.page.evaluate(_SIZE_OF, "#timer [data-field=countdown]")
    assert countdown_px >= elapsed_px, f"the countdown is {countdown_px} px, the elapsed time {elapsed_px} px"
    assert checks.not_in_view(k.page, ["#timer [data-field=elapsed]", "#timer [data-field=countdown]",
                            "[data-stop-timer]"]) == {}

    # stopping early says what it does and asks again; Cancel records nothing
    before = _records(server, batch)
    stop.click()
    dialog = k.page.locator("#confirm-dialog")
    dialog.wait_for(state="visible")
    consequence = dialog.locator(".consequence")
    assert consequence.is_visible(), "stopping early does not say what it does"
    assert "major deviation" in consequence.inner_text() and "batch stops" in consequence.inner_text()
    assert checks.not_in_view(k.page, ["#confirm-dialog .consequence", "#confirm-dialog [data-action=confirm]"]) == {}
    k.shot("timer-stop-early")
    dialog.locator("[data-action=cancel]").click()
    dialog.wait_for(state="hidden")
    assert _records(server, batch) == before, "cancelling the early stop recorded something"

    # past the minimum: Stop is the primary action and stops without a deviation
    server.advance_clock(20 * 60 + 5)
    k.page.reload()
    k.wait_screen("step")
    assert "primary" in (stop.get_attribute("class") or "") and stop.inner_text().strip() == "Stop timer"
    assert "Minimum time reached" in countdown.inner_text()
    stop.click()
    dialog.wait_for(state="visible")
    assert consequence.is_hidden(), "a stop within the window warns of a deviation"
    dialog.locator("[data-action=confirm]").click()
    assert k.wait_screen(("step", "blocked", "complete")) == "step", "a stop within the window blocked the batch"
    after = flows.current_step(server, batch)
    assert after is not None and after["id"] != step["id"]


def test_a_timer_stopped_early_says_so_as_a_warning_never_with_a_check_mark(open_kiosk, server, size) -> None:
    """ISA-101 (issue 15): the deviation the system raises for an early stop is told as a
    warning, with its words, never with a ✓."""
    from mes.execution import operations as ex

    k, drv, batch, step = _running_timer(open_kiosk, server, size, f"ERP-TIMER-EARLY-{size}")
    drv.commit(step, control="[data-stop-timer]:visible")
    with server.db():
        devs = [d for d in ex.deviations_of(batch) if d.category == "time_out_of_window"]
    assert len(devs) == 1, devs
    notice = k.page.locator("#notice")
    assert notice.is_visible() and devs[0].id in notice.inner_text(), notice.all_inner_texts()
    assert notice.locator("[data-icon=check], .icon-check").count() == 0, "a ✓ beside a deviation the system raised"
    assert "abnormal-amber" in (notice.get_attribute("class") or "")
