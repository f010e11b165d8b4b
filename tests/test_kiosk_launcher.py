"""The shop-floor panel's launcher (deploy/kiosk/mes-kiosk.sh): what it refuses to start without."""

from __future__ import annotations

import subprocess
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[1] / "deploy" / "kiosk" / "mes-kiosk.sh"


def test_the_kiosk_launcher_refuses_a_panel_without_a_cjk_font(tmp_path: Path) -> None:
    """Issue 15: recipe text and screens in Simplified Chinese need a CJK font on the panel;
    without one the launcher says which package to install instead of showing empty boxes."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in {"chromium": "exit 0", "fc-list": "exit 0", "logger": "exit 0"}.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "MES_KIOSK_URL": "https://mes.plant-01.example/kiosk/",
           "MES_TERMINAL_ID": "KIOSK-01", "MES_KIOSK_CONFIG": str(tmp_path / "absent.env"), "HOME": str(tmp_path)}
    run = subprocess.run(["bash", str(LAUNCHER)], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1, run
    assert "no Chinese (CJK) font installed (apt-get install fonts-noto-cjk)" in run.stderr
