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


def test_the_devices_install_declares_everything_devices_and_its_testkit_import() -> None:
    """Issue 16: devices (with devices.testkit) works from the open-mes install alone: every
    third-party distribution a devices module imports is a core dependency, or, for the kit,
    in the ``testkit`` extra (pytest)."""
    import importlib.metadata as md
    import re
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    core, kit = names(project["dependencies"]), names(project["optional-dependencies"]["testkit"])
    providers = md.packages_distributions()
    needed: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                       else [])
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "devices":
                    continue
                for dist in providers.get(top, [top]):
                    needed.setdefault(dist.lower().replace("_", "-"), set()).add(path.name)
    missing = {d: files for d, files in needed.items() if d not in core and not (d in kit and files <= {"testkit.py"})}
    assert missing == {}
    assert "pytest" in kit and "pytest" not in core
