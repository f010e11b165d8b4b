"""``mes demo`` on a fresh folder: serves, seeds once, reuses its data on the second run;
its console shows the URLs, badges and the MES's own log lines, not the libraries' chatter."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

MES = str(Path(sys.executable).parent / "mes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    """``mes demo`` in its own process group, its console (stdout and stderr) read as it comes."""

    def __init__(self, home: Path, port: int) -> None:
        # the user's defaults (MES_LOG_LEVEL unset: INFO), only the suite's cheap password hashing kept
        env = {k: v for k, v in os.environ.items() if not k.startswith("MES_") or k.startswith("MES_ARGON2_")}
        env["MES_HOME"] = str(home)
        self.proc = subprocess.Popen([MES, "demo", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"demo exited before printing {text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"demo did not print {text!r} within {timeout} s:\n{self.output[-3000:]}")
            time.sleep(0.1)


def _wait_ready(base: str, demo: Demo, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if demo.proc.poll() is not None:
            demo._reader.join(5)
            raise AssertionError(f"demo exited early:\n{demo.output}")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("demo did not become ready")


def _stop(demo: Demo) -> str:
    try:
        os.killpg(demo.proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # it already exited; its output says why
        pass
    demo.proc.wait(timeout=60)
    demo._reader.join(10)
    return demo.output


def _library_info_lines(out: str) -> list[str]:
    """Console lines that are a library's INFO (or DEBUG) record: alembic, asyncua, and the like."""
    noisy = []
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record["level"] in ("INFO", "DEBUG") and record["logger"].split(".")[0] not in ("mes", "devices", "kiosk"):
            noisy.append(line[:200])
    return noisy


def _the_loop_with_the_simulated_peers(base: str, demo: Demo, http: requests.Session, headers: dict[str, str],
                                       run: str) -> None:
    """Issue 20's loop in the demo: a change goes out to the simulated ERP and QMS, which
    verify it; a hold comes back from the QMS with the secret the console printed."""
    from mes.integration.sims import send_command

    line = next(x for x in demo.lines if "mes sim qms hold" in x)
    secret = line.split("--secret ", 1)[1].split()[0]
    assert secret.startswith("whsec_")
    if run == "seeded":  # the demo's work order starts once
        wos = http.get(f"{base}/api/v1/work-orders", params={"line": "LINE-1"}, headers=headers, timeout=10).json()
        r = http.post(f"{base}/api/v1/work-orders/{wos['work_orders'][0]['id']}/batches", json={}, headers=headers,
                      timeout=30)
        assert r.status_code in (200, 201), r.text
        demo.wait_for_line("erp: received mes.work_order.started.v1")
        demo.wait_for_line("qms: received mes.work_order.started.v1")
    lots = http.get(f"{base}/api/v1/lots", params={"status": "released"}, headers=headers, timeout=10).json()["lots"]
    lot = lots[0]["id"]
    status, answer = send_command(base, secret, "qms.lot.hold_placed.v1",
                                  {"lot_id": lot, "hold_id": f"QMS-H-{run}", "scope": "all", "reason": "NCR raised",
                                   "ncr_id": f"NCR-{run}"}, source="urn:qms:sim")
    assert 200 <= status < 300, answer
    held = http.get(f"{base}/api/v1/lots/{lot}", headers=headers, timeout=10).json()["lot"]
    assert any(h["id"] == f"QMS-H-{run}" and h["active"] and h["placed_by"] == "system:integration-qms-sim"
               for h in held["holds"]), held["holds"]


def test_demo_serves_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    for run in ("seeded", "reusing"):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        demo = Demo(home, port)
        try:
            _wait_ready(base, demo)
            # the simulated scales and the OPC UA line are up (asyncua's server has built its address space)
            demo.wait_for_line("gateway running 3 device(s)")
            ready = requests.get(f"{base}/readyz", timeout=5)  # anonymous: ready or not, no details
            assert ready.status_code == 200 and ready.json() == {"status": "ready"}
            http = requests.Session()
            terminal = {"X-MES-Terminal": "KIOSK-01:demo-kiosk-01-key"}
            csrf = http.get(f"{base}/api/v1/auth/csrf", headers=terminal, timeout=5).json()["csrf_token"]
            r = http.post(f"{base}/api/v1/auth/login", json={"badge": "1001", "pin": "2468"},
                          headers={**terminal, "X-CSRF-Token": csrf}, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["user"]["id"] == "op1"
            csrf = http.get(f"{base}/api/v1/auth/csrf", headers=terminal, timeout=5).json()["csrf_token"]  # a new session's
            _the_loop_with_the_simulated_peers(base, demo, http, {**terminal, "X-CSRF-Token": csrf}, run)
        finally:
            out = _stop(demo)
        assert run in out, out
        assert "1001 / 2468" in out and "http://127.0.0.1:" in out
        assert f"{base}/terminal/enroll?terminal=KIOSK-01&key=demo-kiosk-01-key" in out, out
        assert "alembic" not in out and "add_node" not in out, out[-3000:]
        assert _library_info_lines(out) == [], _library_info_lines(out)[:20]
        assert '"logger": "mes.gateway"' in out  # the MES's own INFO lines still show
