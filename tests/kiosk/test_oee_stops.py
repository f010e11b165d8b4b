"""kiosk-ux.md rules 1, 2, 3, 8 and 12 on the OEE stop screens (the line's stops, and the
reasons for one stop) in headless Chromium at 1920×1080: the same measurements as
tests/kiosk/test_rules.py, on a line that stopped with a PackML break an hour ago."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kiosk import checks, flows
from tests.kiosk.harness import KioskServer, running_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    home = tmp_path_factory.mktemp("kiosk-oee")
    with running_server("sqlite", templates, Path(home)) as srv:
        with srv.db():
            from mes.audit.log import Actor
            from mes.db import utcnow
            from mes.oee import operations as oee

            now = utcnow().replace(microsecond=0)
            for minutes, state in ((90, "Execute"), (60, "Stopping"), (59, "Stopped"), (40, "Starting"),
                                   (38, "Execute")):
                oee.record_line_sample(Actor.system("gateway"), flows.LINE, at=now - timedelta(minutes=minutes),
                                       state=state, processed=None, defective=None, source="opc.tcp://127.0.0.1/l1")
        yield srv


def measured(k: Any, screen: str) -> dict[str, Any]:
    k.wait_screen(screen)
    checks.live(k.page)
    k.shot(f"oee-{screen}")
    result = checks.generic(k.page)
    result["console"] = [c for c in k.console if "Failed to load resource" not in c]
    return result


def test_stop_screens_follow_the_kiosk_rules(open_kiosk: Any, server: KioskServer) -> None:
    k = open_kiosk(server, "1920x1080", start="")
    flows.to_lines(k)
    k.goto(f"/kiosk/lines/{flows.LINE}/stops")
    for name, m in (("stops", measured(k, "stops")),):
        for rule in ("targets", "text", "colour", "axe", "primary", "operator_terminal", "console"):
            assert not m[rule], f"{rule} on {name}: {m[rule]}"
    flows.click_text(k, "Pick reason")
    m = measured(k, "reason")
    for rule in ("targets", "text", "colour", "axe", "primary", "operator_terminal", "console"):
        assert not m[rule], f"{rule} on reason: {m[rule]}"
