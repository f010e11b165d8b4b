"""``mes demo`` on a fresh folder: serves, seeds once, reuses its data on the second run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

MES = str(Path(sys.executable).parent / "mes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(home: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update({"MES_HOME": str(home), "MES_LOG_LEVEL": "WARNING"})
    return subprocess.Popen([MES, "demo", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"demo exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("demo did not become ready")


def _stop(proc: subprocess.Popen) -> str:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # it already exited; its output says why
        pass
    out, _ = proc.communicate(timeout=60)
    return out


def test_demo_serves_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    for run in ("seeded", "reusing"):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start(home, port)
        try:
            _wait_ready(base, proc)
            checks = requests.get(f"{base}/readyz", timeout=5).json()["checks"]
            assert checks["audit"]["ok"] and checks["migrations"]["ok"]
            http = requests.Session()
            terminal = {"X-MES-Terminal": "KIOSK-01:demo-kiosk-01-key"}
            csrf = http.get(f"{base}/api/v1/auth/csrf", headers=terminal, timeout=5).json()["csrf_token"]
            r = http.post(f"{base}/api/v1/auth/login", json={"badge": "1001", "pin": "2468"},
                          headers={**terminal, "X-CSRF-Token": csrf}, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["user"]["id"] == "op1"
        finally:
            out = _stop(proc)
        assert run in out, out
        assert "1001 / 2468" in out and "http://127.0.0.1:" in out
