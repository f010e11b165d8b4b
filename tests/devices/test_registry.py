"""Driver discovery: built-ins, entry points, lazy loading, broken plugins isolated."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from devices import available_drivers, create_driver, load_driver
from devices.drivers.aandd import AandDScale
from devices.drivers.mtsics import MtSicsScale
from devices.drivers.virtual import VirtualScale
from devices.errors import DriverLoadError, DriverNotFound
from devices.registry import BUILTIN_DRIVERS, ENTRY_POINT_GROUP, DriverRegistry
from tests.devices.helpers import run
from tests.devices.plugins import BROKEN_PLUGIN, EXAMPLE_PLUGIN, install_on_path


def test_builtins_are_known_and_listing_imports_nothing() -> None:
    code = (
        "import sys; from devices import available_drivers; names = available_drivers(); "
        "print(names, any(m.startswith(('devices.drivers.', 'serial')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'aandd', 'modbus', 'mtsics', 'opcua', 'virtual'" in out and out.strip().endswith("False")


def test_builtins_load_lazily_and_create() -> None:
    registry = DriverRegistry()
    assert registry.load("mtsics") is MtSicsScale
    assert registry.load("aandd") is AandDScale
    assert registry.load("virtual") is VirtualScale
    assert registry.source("mtsics").origin == "built-in"
    scale = registry.create("mtsics", "BAL-01", {"port": "loop://"})
    assert isinstance(scale, MtSicsScale) and not scale.is_connected


def test_module_level_functions() -> None:
    assert {"mtsics", "aandd", "virtual"} <= set(available_drivers())
    assert load_driver("virtual") is VirtualScale
    assert isinstance(create_driver("virtual", "V-1"), VirtualScale)


def test_unknown_driver() -> None:
    with pytest.raises(DriverNotFound, match=r"known: .*mtsics"):
        DriverRegistry().load("no-such-scale")


def test_builtin_targets_match_the_entry_points_to_declare() -> None:
    for name, target in BUILTIN_DRIVERS.items():
        module, _, attr = target.partition(":")
        assert getattr(__import__(module, fromlist=[attr]), attr).name == name


@pytest.mark.usefixtures("forget_plugin_modules")
def test_example_plugin_is_found_through_its_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = DriverRegistry()
    assert "example" not in registry.names()
    install_on_path(EXAMPLE_PLUGIN, tmp_path / "site", monkeypatch)
    registry.refresh()
    assert "example" in registry.names()
    source = registry.source("example")
    assert source.origin == "entry point in mes-example-scale 0.1.0"
    assert source.target == "mes_example_scale:ExampleScale" and source.entry_point is not None
    driver_class = registry.load("example")
    assert driver_class.__module__ == "mes_example_scale"

    async def body() -> None:
        async with registry.create("example", "EX-1", {"weight": "7.25"}) as scale:
            reading = await scale.read()
            assert str(reading.value) == "7.25" and reading.raw == b"W 7.25 g\r\n"

    run(body())


@pytest.mark.usefixtures("forget_plugin_modules")
def test_broken_plugins_are_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_on_path(EXAMPLE_PLUGIN, tmp_path / "site-a", monkeypatch)
    install_on_path(BROKEN_PLUGIN, tmp_path / "site-b", monkeypatch)
    registry = DriverRegistry()
    assert {"broken", "not-a-driver", "example", "mtsics"} <= set(registry.names())

    with pytest.raises(DriverLoadError) as info:
        registry.load("broken")
    message = str(info.value)
    assert "'broken'" in message and "mes-broken-scale 0.0.1" in message
    assert "ModuleNotFoundError" in message and "mes_no_such_vendor_sdk" in message
    with pytest.raises(DriverLoadError, match=r"not a devices\.Driver subclass"):
        registry.load("not-a-driver")

    # A plugin may not take over a built-in name.
    assert registry.load("mtsics") is MtSicsScale
    assert "mtsics" in registry.conflicts and "mes_broken_scale.impostor:Impostor" in registry.conflicts["mtsics"]

    with caplog.at_level(logging.WARNING, logger="devices.registry"):
        loaded = registry.load_all()
    assert {"example", "mtsics", "aandd", "virtual"} <= set(loaded)
    assert "broken" not in loaded and "not-a-driver" not in loaded
    assert "failed to load" in caplog.text
    assert set(registry.errors) == {"broken", "not-a-driver"}
    with pytest.raises(DriverLoadError):
        registry.load("broken")  # cached, same clear error


@pytest.mark.usefixtures("forget_plugin_modules")
def test_two_plugins_claiming_one_name_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_on_path(EXAMPLE_PLUGIN, tmp_path / "site-a", monkeypatch)
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "pyproject.toml").write_text(
        '[project]\nname = "mes-clone"\nversion = "1.0"\n'
        '[project.entry-points."mes.devices"]\nexample = "mes_clone:Other"\n'
    )
    install_on_path(clone, tmp_path / "site-b", monkeypatch)
    registry = DriverRegistry()
    with pytest.raises(DriverLoadError, match="claimed by several plugins"):
        registry.load("example")
    assert registry.load("virtual") is VirtualScale


def test_project_entry_points_for_builtins_are_not_conflicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    entries = "\n".join(f'{name} = "{target}"' for name, target in BUILTIN_DRIVERS.items())
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "open-mes-shadow"\nversion = "0.1.0"\n'
        f'[project.entry-points."{ENTRY_POINT_GROUP}"]\n{entries}\n'
    )
    install_on_path(project, tmp_path / "site", monkeypatch)
    registry = DriverRegistry()
    assert registry.conflicts == {}
    assert registry.load("aandd") is AandDScale
