"""The devices package: public API, and it stands alone (no mes, no kiosk)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import devices

PACKAGE = Path(devices.__file__).parent


def test_public_api_is_exported() -> None:
    for name in devices.__all__:
        assert hasattr(devices, name), name
    assert devices.ENTRY_POINT_GROUP == "mes.devices"


def test_no_module_imports_mes_or_kiosk() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in ("mes", "kiosk")]
    assert offenders == []


def test_importing_everything_pulls_in_no_mes_or_kiosk() -> None:
    code = (
        "import sys, devices, devices.drivers.mtsics, devices.drivers.aandd, devices.drivers.virtual, "
        "devices.sim, devices.sim.scale, devices.testkit; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mes', 'kiosk')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
