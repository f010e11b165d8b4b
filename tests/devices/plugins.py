"""Make a plugin's entry points visible without pip: a dist-info on a temp sys.path.

Why not ``pip install``: it mutates the shared venv (other engineers run tests
in it, xdist workers run in parallel), needs the build backend, and leaves
state behind if a test dies. ``importlib.metadata`` discovers distributions by
scanning ``sys.path`` for ``*.dist-info`` directories, so writing the
``METADATA`` and ``entry_points.txt`` that ``pip install`` would write – taken
from the plugin's own ``pyproject.toml`` – into a temporary directory on
``sys.path`` exercises exactly the discovery code path, in milliseconds, and
is undone by ``monkeypatch``.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).parent
EXAMPLE_PLUGIN = HERE / "example_plugin"
BROKEN_PLUGIN = HERE / "broken_plugin"


def install_on_path(project: Path, site: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Expose ``project`` (a plugin source tree) as an installed distribution."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    name, version = meta["name"], meta["version"]
    dist_info = site / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in meta.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{key} = {value}" for key, value in entries.items())
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(project))  # the package itself, as an install would
    importlib.invalidate_caches()
    return name
