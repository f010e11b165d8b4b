"""kiosk-ux.md rules 1, 2, 3, 4, 8 and 12 measured in headless Chromium on every kiosk screen a
person reaches without running a batch (login, lines, batches, a step, a blocked step, the QA
board, the error page), at 1920×1080 and 1280×800. The screens that only a running batch
reaches (weigh, signature, timer, complete...) are measured by the end-to-end test with the
same checks. Each screen is visited once per size; the rule tests read that measurement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kiosk import checks, flows
from tests.kiosk.harness import QA_TERMINAL, KioskServer, running_server

pytestmark = pytest.mark.browser

SCREENS = ["login", "lines", "batches", "step", "blocked", "board", "error"]
# abnormal states: alarm colour allowed, with text and icon (the board lists the blocked batch's
# deviation; the batches screen may colour only the blocked batch's mark, see the rule 3 test)
ALARM_SCREENS = {"blocked", "error", "board"}


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    home = tmp_path_factory.mktemp("kiosk-rules")
    with running_server("sqlite", templates, Path(home)) as srv:
        flows.new_work_order(srv, "ERP-RULES-STEP")
        flows.blocked_work_order(srv, "ERP-RULES-BLOCKED")
        yield srv


@pytest.fixture(scope="module")
def cache() -> dict[tuple[str, str], Any]:
    return {}


def reach(k: Any, server: KioskServer, screen: str) -> None:
    if screen == "login":
        flows.to_login(k)
    elif screen == "lines":
        got = flows.to_lines(k)
        assert got == "lines", f"after log-in the kiosk shows {got!r}, not the line choice"
    elif screen == "batches":
        flows.to_batches(k)
    elif screen == "step":
        got = flows.to_step(k, "ERP-RULES-STEP")
        assert got == "step", f"a fresh batch opened on {got!r}"
    elif screen == "blocked":
        got = flows.to_step(k, "ERP-RULES-BLOCKED")
        assert got == "blocked", f"a step with an open major deviation shows {got!r}, not 'blocked'"
    elif screen == "board":
        flows.to_board(k, server)
    elif screen == "error":  # a stale link: the batch does not exist
        flows.to_lines(k)
        k.goto("/kiosk/batches/B-NO-SUCH-BATCH")
        k.wait_screen("error")


def measure(open_kiosk: Callable[..., Any], server: KioskServer, size: str, screen: str,
            cache: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """Visit ``screen`` at ``size`` once; every rule's measurement (or why the screen was not reached)."""
    key = (size, screen)
    if key not in cache:
        terminal = QA_TERMINAL if screen == "board" else None
        k = open_kiosk(server, size, **({"terminal": terminal} if terminal else {}), start="")
        try:
            reach(k, server, screen)
            checks.live(k.page)  # the banners have decided (the connection check answered)
            k.shot(f"rules-{screen}")
            result = checks.generic(k.page, normal=screen not in ALARM_SCREENS)
            result["hover_css"] = checks.hover_rules(k.page)
            result["listeners"] = checks.listeners(k.page)
            result["hover_reveals"] = hover_sweep(k.page)
            result["position"] = checks.position(k.page)
            result["number_inputs"] = k.page.locator("input[type=number]").count()
            result["font_icons"] = checks.font_icons(k.page)
            # script errors and CSP refusals (an HTTP status such as the login page's 401 is not one)
            result["console"] = [c for c in k.console if "Failed to load resource" not in c]
            cache[key] = result
        except Exception as exc:  # noqa: BLE001 - every rule test of this screen reports it
            cache[key] = {"unreachable": f"{type(exc).__name__}: {str(exc)[:1500]}\n{server.log_tail(1500)}"}
    result = cache[key]
    if "unreachable" in result:
        pytest.fail(f"screen {screen!r} at {size} could not be reached: {result['unreachable']}", pytrace=False)
    return result


def hover_sweep(page: Any) -> list[str]:
    """Rule 4: hovering each control must not reveal or hide anything."""
    out = []
    before = page.evaluate(checks.VISIBLE_SET_JS)
    controls = page.locator(checks.CONTROLS)
    for i in range(min(controls.count(), 40)):
        el = controls.nth(i)
        if not el.is_visible():
            continue
        box = el.bounding_box()
        if not box:
            continue
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        checks.rendered(page)  # the hover state is drawn
        after = page.evaluate(checks.VISIBLE_SET_JS)
        if after != before:
            out.append(f"hovering control {i} ({el.evaluate('e => e.outerHTML.slice(0, 80)')}) changed the visible "
                       f"elements {before} -> {after}")
    page.mouse.move(0, 0)
    return out


def _ok(found: Any, what: str) -> None:
    assert not found, f"{what}:\n" + "\n".join(str(f) for f in found)


@pytest.mark.parametrize("screen", SCREENS)
def test_rule1_targets_at_least_20mm_and_2mm_apart(open_kiosk, server, size, screen, cache) -> None:
    m = measure(open_kiosk, server, size, screen, cache)
    assert m["position"]["panel"]["ppi"] == "141" and m["position"]["panel"]["dpr"] == "1", m["position"]["panel"]
    _ok(m["targets"], f"controls below {checks.min_target_px()} px or closer than 2 mm on {screen} at {size}")


@pytest.mark.parametrize("screen", SCREENS)
def test_rule2_text_sizes(open_kiosk, server, size, screen, cache) -> None:
    _ok(measure(open_kiosk, server, size, screen, cache)["text"], f"text too small on {screen} at {size}")


@pytest.mark.parametrize("screen", SCREENS)
def test_rule3_alarm_colour_only_for_abnormal_states_with_text_and_icon(open_kiosk, server, size, screen, cache) -> None:
    m = measure(open_kiosk, server, size, screen, cache)
    if screen in ALARM_SCREENS:
        _ok([c for c in m["colour"] if not c["labelled"]], f"alarm colour without text and icon on {screen} at {size}")
    elif screen == "batches":  # the line's blocked batch (ERP-RULES-BLOCKED) is marked, and nothing else
        _ok([c for c in m["colour"] if not (c["labelled"] and "batch-blocked" in c["el"])],
            f"alarm colour on the batches screen other than the blocked batch's mark, at {size}")
    else:
        _ok(m["colour"], f"alarm colour on the normal screen {screen} at {size}")


@pytest.mark.parametrize("screen", SCREENS)
def test_rule4_nothing_needs_hover_and_no_double_tap(open_kiosk, server, size, screen, cache) -> None:
    m = measure(open_kiosk, server, size, screen, cache)
    _ok(m["hover_css"], f":hover rules that reveal or move content on {screen}")
    _ok(m["hover_reveals"], f"hover changes what is shown on {screen} at {size}")
    bad = [x for x in m["listeners"] if x["type"] in ("dblclick", "mouseover", "mouseenter", "pointerover",
                                                         "pointerenter", "mousemove")]
    _ok(bad, f"double-tap or hover listeners on {screen}")


@pytest.mark.parametrize("screen", SCREENS)
def test_rule6_no_number_inputs(open_kiosk, server, size, screen, cache) -> None:
    assert measure(open_kiosk, server, size, screen, cache)["number_inputs"] == 0


@pytest.mark.parametrize("screen", SCREENS)
def test_rule8_where_you_are_and_one_primary_action(open_kiosk, server, size, screen, cache) -> None:
    m = measure(open_kiosk, server, size, screen, cache)
    pos = m["position"]
    _ok(m["operator_terminal"], f"operator/terminal on {screen}")
    if screen not in ("error",):
        _ok(m["primary"], f"primary action on {screen} at {size}")
    if screen in ("step", "blocked"):
        assert pos["header"], "no #batch-header on a batch screen"
        for f in ("step_position", "batch", "product", "operator", "terminal"):
            assert pos[f], f"#batch-header [data-field={f.replace('_', '-')}] is missing or empty: {pos}"
        wo = flows.work_order_id(server, "ERP-RULES-STEP" if screen == "step" else "ERP-RULES-BLOCKED")
        batch = flows.batch_of(server, wo)
        assert batch, "the kiosk did not start the batch"
        where = flows.current_step(server, batch)
        assert where is not None
        assert re.fullmatch(rf"Step {where['k']} of {where['n']}", pos["step_position"]), (pos, where)
        assert "Olivia Operator" in pos["operator"] or "op1" in pos["operator"], pos
        assert "KIOSK-01" in pos["terminal"], pos


@pytest.mark.parametrize("screen", SCREENS)
def test_rule3_icons_are_inline_svg(open_kiosk, server, size, screen, cache) -> None:
    """An icon next to an alarm's text must render on any kiosk: inline SVG, never a font glyph."""
    _ok(measure(open_kiosk, server, size, screen, cache)["font_icons"], f"font-glyph icons on {screen} at {size}")


@pytest.mark.parametrize("screen", SCREENS)
def test_rule12_axe_wcag22_aa_no_violation(open_kiosk, server, size, screen, cache) -> None:
    _ok(measure(open_kiosk, server, size, screen, cache)["axe"], f"axe-core violations on {screen} at {size}")


@pytest.mark.parametrize("screen", SCREENS)
def test_no_script_errors(open_kiosk, server, size, screen, cache) -> None:
    """The page ran without a JavaScript error or a CSP refusal (a strict CSP, no inline script)."""
    _ok(measure(open_kiosk, server, size, screen, cache)["console"], f"console errors on {screen} at {size}")


# ------------------------------------------------------------- ISA-101 colours (issue 15)


def test_isa101_a_batch_blocked_by_a_deviation_is_marked_in_the_batch_list(open_kiosk, server, size) -> None:
    k = open_kiosk(server, size, start="")
    assert flows.to_step(k, "ERP-RULES-STEP") == "step"  # started, if no test before did
    flows.to_batches(k)
    blocked = flows.batch_of(server, flows.work_order_id(server, "ERP-RULES-BLOCKED"))
    running = flows.batch_of(server, flows.work_order_id(server, "ERP-RULES-STEP"))
    assert blocked and running
    mark = k.page.locator("li", has_text=blocked).locator("[data-field=blocked]")
    assert mark.is_visible(), "the blocked batch is not marked in the list"
    assert "Blocked" in mark.inner_text() and "abnormal" in (mark.get_attribute("class") or "")
    assert k.page.locator("li", has_text=running).locator("[data-field=blocked]").count() == 0


def test_isa101_waiting_for_earlier_steps_is_neutral(open_kiosk, server, size) -> None:
    """Ordinary sequencing is not an alarm: a later step opened early says why, without alarm colour."""
    from mes.execution import operations as ex

    k = open_kiosk(server, size, start="")
    assert flows.to_step(k, "ERP-RULES-STEP") == "step"
    batch = flows.batch_of(server, flows.work_order_id(server, "ERP-RULES-STEP"))
    assert batch
    with server.db():
        later = ex.steps_of(batch)[3].step_id
    k.goto(f"/kiosk/batches/{batch}/steps/{later}")
    assert k.wait_screen(("blocked", "step")) == "blocked"
    assert "not done yet" in k.page.locator("#blocked-reason").inner_text()
    checks.live(k.page)
    assert checks.alarm_colours(k.page) == [], "waiting for earlier steps is shown in alarm colour"


def test_isa101_qa_board_form_is_not_in_the_alarm_block_and_no_disposition_is_chosen(open_kiosk, server, size) -> None:
    k = open_kiosk(server, size, terminal=QA_TERMINAL, start="")
    flows.to_board(k, server)
    form = k.page.locator("form.dispose").first
    assert form.is_visible()
    assert form.evaluate("f => f.closest('.abnormal') === null"), "the QA form sits inside the red alarm block"
    assert form.locator("select[name=disposition]").input_value() == "", "a disposition is pre-selected"
    alarm = k.page.locator("[data-deviation] .abnormal").first
    assert alarm.is_visible() and re.search(r"DEV-|D-", alarm.inner_text()), alarm.inner_text()
