"""The kiosk browser tests' plumbing, shared with the benchmark (tests/bench/kiosk.py): a
real server process on a seeded database, and a person at a kiosk in a browser context.

* :class:`KioskServer` runs ``tests.kiosk.server`` (gunicorn, the production server) on a
  free loopback port against a migrated database seeded like ``mes demo``, with
  ``MES_SIMULATION=true`` so the gateway runs the simulated scales. It can be stopped and
  started again on the same port (connection-banner test).
* :class:`Kiosk` is one browser context enrolled as a terminal: navigation, the scanner,
  the keypad, screenshots to ``$MES_ARTIFACTS/kiosk`` (default ``artifacts/kiosk``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL, _pg_url, _worker, base_config
from tests.kiosk.checks import until

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MES_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MES_ARTIFACTS", ROOT / "artifacts")) / "kiosk"
KIOSK_TERMINAL = ("KIOSK-01", "demo-kiosk-01-key")
QA_TERMINAL = ("QA-WS-01", "demo-qa-ws-01-key")
VIEWPORTS = {"1920x1080": {"width": 1920, "height": 1080}, "1280x800": {"width": 1280, "height": 800}}
SECRET = "kiosk-browser-test-secret"
_dbs = itertools.count()


# ------------------------------------------------------------------------------ database


@contextmanager
def seeded_database(backend: str, templates: dict[str, str], home: Path) -> Iterator[str]:
    """A fresh copy of the migrated template, seeded like the demo; dropped afterwards."""
    if backend == "sqlite":
        path = home / "mes.sqlite3"
        shutil.copyfile(templates["sqlite"], path)
        url = f"sqlite:///{path}"
        seed_like_demo(url, home)
        yield url
        return
    name = f"mes_kiosk_{_worker()}_{next(_dbs)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{templates["postgresql"]}"'))
    try:
        url = _pg_url(name)
        seed_like_demo(url, home)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_like_demo(url: str, home: Path) -> None:
    from mes.app import create_app
    from mes.audit.log import Actor
    from mes.db import db
    from mes.demo import seed_demo, seed_equipment, seed_production
    from mes.equipment.plant import equip_for_recipe
    from mes.execution import recipes_store as store

    app = create_app(_app_config(url, home))
    with app.app_context():
        seed_demo()
        seed_production()
        seed_equipment()  # the simulated scales, LINE-1 and the dispensing booth, as `mes demo`
        # the rest of the example recipe's equipment (granulator, dryer, press...), cleaned and qualified
        for rv in store.list_versions(status="effective"):
            equip_for_recipe(Actor.system("kiosk-tests"), store.master_of(rv), line="LINE-1")
        # a second booth: the batch a test leaves unfinished keeps BOOTH-01 claimed on a shared server
        from mes.equipment import operations as eq

        booth = eq.get_equipment("BOOTH-01")
        eq.register_equipment(Actor.system("kiosk-tests"), "BOOTH-02", "room", booth.equipment_class,
                              "Dispensing booth 2", location="Dispensary", line="LINE-1",
                              clean_hold=timedelta(days=3))
        eq.record_cleaning(Actor.system("kiosk-tests"), "BOOTH-02", "routine")
        db.session.remove()
        db.engine.dispose()


def _app_config(url: str, home: Path) -> dict[str, Any]:
    cfg = base_config(home, url)
    cfg["SECRET_KEY"] = SECRET
    cfg.pop("TESTING", None)
    return cfg


# -------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KioskServer:
    """The MES in its own process (see tests/kiosk/server.py), and direct database access."""

    database_url: str
    home: Path
    idle_seconds: int = 300
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    _app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        return "postgresql" if self.database_url.startswith("postgresql") else "sqlite"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k == "MES_AUDIT_TAG_KEY_PATH"}
        env.update({
            "MES_HOME": str(self.home), "MES_DATABASE_URL": self.database_url, "MES_SECRET_KEY": SECRET,
            "MES_SESSION_COOKIE_SECURE": "false", "MES_SIMULATION": "true", "MES_LOG_LEVEL": "WARNING",
            "MES_AUDIT_KEY_PATH": str(self.home / "audit-signing.key"),
            "MES_KIOSK_IDLE_SECONDS": str(self.idle_seconds), "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        })
        return env

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kiosk.server", "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the kiosk server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the kiosk server did not answer /healthz in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Kill the server's process group (gunicorn master and worker) at once: a crash, not a drain."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def advance_clock(self, seconds: float) -> None:
        """Move the engine's step clock ahead (process timers); see tests/kiosk/server.py."""
        from tests.kiosk.server import OFFSET_FILE

        path = self.home / OFFSET_FILE
        current = float(path.read_text()) if path.exists() else 0.0
        path.write_text(str(current + seconds))

    # -- direct database access for assertions (a second app on the same database)
    @contextmanager
    def db(self) -> Iterator[Any]:
        """An app context on the server's database; yields ``mes.db.db``; the session is removed after."""
        from mes.app import create_app
        from mes.db import db

        if self._app is None:
            self._app = create_app(_app_config(self.database_url, self.home))
        with self._app.app_context():
            try:
                yield db
            finally:
                db.session.remove()

    def api(self) -> requests.Session:
        """An HTTP session of the supervisor logged in on the QA workstation (set scale loads,
        read devices and batches): API tokens are for integration accounts only, never a person's."""
        if getattr(self, "_http", None) is None:
            from mes.demo import DEMO_PASSWORD

            http = requests.Session()
            http.headers["X-MES-Terminal"] = f"{QA_TERMINAL[0]}:{QA_TERMINAL[1]}"
            http.headers["X-CSRF-Token"] = http.get(f"{self.url}/api/v1/auth/csrf").json()["csrf_token"]
            r = http.post(f"{self.url}/api/v1/auth/login", json={"user_id": "sup1", "password": DEMO_PASSWORD})
            assert r.status_code == 200, r.text
            http.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            self._http = http
        return self._http

    def close(self) -> None:
        self.stop()
        if self._app is not None:
            from mes.db import db

            with self._app.app_context():
                db.engine.dispose()


@contextmanager
def running_server(backend: str, templates: dict[str, str], home: Path, **kw: Any) -> Iterator[KioskServer]:
    home.mkdir(parents=True, exist_ok=True)
    with seeded_database(backend, templates, home) as url:
        server = KioskServer(url, home, **kw)
        server.start()
        try:
            yield server
        finally:
            server.close()


# ------------------------------------------------------------------------------- browser


@dataclass
class Kiosk:
    """One browser context enrolled as a terminal, on one server, at one viewport."""

    server: KioskServer
    context: Any
    page: Any
    size: str
    shots: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.server.url + path)

    def screen(self) -> str:
        return self.page.evaluate("document.body ? document.body.dataset.screen || '' : ''")

    def wait_screen(self, name: str | tuple[str, ...], timeout: float = 10_000) -> str:
        names = (name,) if isinstance(name, str) else name
        until(self.page, "names => names.includes(document.body && document.body.dataset.screen)",
                                    arg=list(names), timeout=timeout)
        return self.screen()

    def shot(self, label: str, full_page: bool = True) -> Path:
        """Screenshot the page into the artifacts folder (one file per screen, size and label);
        ``full_page=False``: only what the viewport shows (what the operator sees without scrolling)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
        path = ARTIFACTS / f"{self.size}-{safe}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        self.shots.append(path.name)
        return path

    # -- people at the kiosk
    def scan(self, code: str, gap_ms: float = 0) -> None:
        """A keyboard-wedge scanner: real key events ``gap_ms`` apart (default: as fast as the
        browser takes them), then Enter."""
        self.page.keyboard.type(code, delay=gap_ms)
        self.page.keyboard.press("Enter")

    def scan_until(self, code: str, shown: str, tries: int = 3) -> None:
        """Scan until the page shows it (``shown``: JS, the code as ``arg``). On a loaded machine
        a key can lag past the 60 ms a scanner allows; a person would simply scan again, after
        the 2 s in which a repeat is ignored. Rule 7's own test uses no retry."""
        for attempt in range(tries):
            self.scan(code)
            try:
                until(self.page, shown, arg=code, timeout=1500)
                return
            except TimeoutError:
                if attempt == tries - 1:
                    raise
                self.page.wait_for_timeout(2100)  # the kiosk ignores a repeat for 2 s: a rule about time

    def keypad(self, digits: str) -> None:
        """Tap digits on the on-screen keypad (clear first)."""
        pad = self.page.locator(".keypad:visible").first
        clear = pad.locator('button[data-key="clear"]')
        if clear.count():
            clear.click()
        for ch in digits:
            pad.locator(f'button[data-key="{ch}"]').click()

    def login(self, badge: str, pin: str) -> None:
        """Badge scan, PIN on the keypad, then the primary action."""
        if self.screen() != "login":
            self.goto("/kiosk/")
            self.wait_screen("login")
        self.page.wait_for_selector(".keypad:visible")
        until(self.page, "() => window.__kioskReady === true")  # keys before the script binds are lost
        self.scan_until(badge, "b => document.querySelector('input[name=badge]').value === b")
        self.keypad(pin)
        until(self.page, "n => (document.querySelector('[data-field=pin]') || {}).innerText.length === n", arg=len(pin))
        self.page.locator(".primary:visible").first.click()
        try:
            until(self.page, "document.body && document.body.dataset.screen !== 'login'", timeout=10_000)
        except TimeoutError:
            msg = self.page.locator("#message")
            raise AssertionError(f"badge {badge} did not log in; the kiosk says "
                                 f"{msg.inner_text().strip() if msg.count() else ''!r}") from None


def enrol(context: Any, base: str, terminal: tuple[str, str]) -> None:
    """Enrol the context as a registered terminal (the signed cookie the kiosk relies on)."""
    page = context.new_page()
    page.goto(f"{base}/terminal/enroll?terminal={terminal[0]}&key={terminal[1]}")
    page.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert terminal[0] in page.content(), "terminal enrolment failed"
    page.close()


