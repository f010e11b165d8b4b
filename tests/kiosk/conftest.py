"""Browser-test fixtures for the kiosk (plumbing in tests/kiosk/harness.py).

* ``chromium`` is one browser per test process (``/usr/bin/chromium``, never a downloaded
  one; missing means the run fails, it does not skip).
* ``open_kiosk`` opens a fresh context per call, enrolled as a terminal, at the viewport
  under test; ``size`` runs a test at 1920×1080 and at 1280×800 (dpr 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kiosk.checks import LISTENER_SPY
from tests.kiosk.harness import CHROMIUM, KIOSK_TERMINAL, VIEWPORTS, Kiosk, KioskServer, enrol


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian chromium (apt-get install -y chromium); "
                    "the kiosk tests never download a browser", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_kiosk(chromium: Any) -> Iterator[Callable[..., Kiosk]]:
    """Factory: a fresh context enrolled as a terminal, a page at the given viewport."""
    contexts: list[Any] = []

    def make(server: KioskServer, size: str, terminal: tuple[str, str] = KIOSK_TERMINAL, locale: str = "en-GB",
             start: str = "/kiosk/") -> Kiosk:
        context = chromium.new_context(viewport=VIEWPORTS[size], device_scale_factor=1, locale=locale,
                                       timezone_id="UTC", has_touch=False)
        contexts.append(context)
        context.set_default_timeout(10_000)
        context.add_init_script(LISTENER_SPY)
        enrol(context, server.url, terminal)
        page = context.new_page()
        kiosk = Kiosk(server, context, page, size)
        page.on("console", lambda m: kiosk.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: kiosk.console.append(f"pageerror: {e}"))
        if start:
            kiosk.goto(start)
        return kiosk

    yield make
    for c in contexts:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass


@pytest.fixture(params=list(VIEWPORTS))
def size(request: pytest.FixtureRequest) -> str:
    return str(request.param)
