"""Finding drivers: the ``mes.devices`` entry-point group, loaded lazily.

A driver package declares, in its ``pyproject.toml``::

    [project.entry-points."mes.devices"]
    myscale = "my_package.module:MyScaleDriver"

:class:`DriverRegistry` lists names without importing anything, imports a
driver only when asked for it, and isolates failures: a plugin that does not
import, or is not a :class:`~devices.base.Driver` subclass, raises
:class:`~devices.errors.DriverLoadError` *for that name only*, and
:meth:`DriverRegistry.load_all` skips it with a logged warning while every
other driver stays available.

The built-in drivers are known even when the project's own entry points are
not installed (:data:`BUILTIN_DRIVERS`); when they are, the entry point and
the built-in name the same target. A plugin may not take over a built-in
name with a different target: that is refused with a clear message, because
silently swapping the driver behind a weighing step is not acceptable.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devices.base import Driver
from devices.errors import DriverLoadError, DriverNotFound

__all__ = [
    "BUILTIN_DRIVERS",
    "ENTRY_POINT_GROUP",
    "DriverRegistry",
    "DriverSource",
    "available_drivers",
    "create_driver",
    "default_registry",
    "load_driver",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mes.devices"

#: Built-in drivers, as ``module:attribute`` (the same values as the entry points).
BUILTIN_DRIVERS: dict[str, str] = {
    "mtsics": "devices.drivers.mtsics:MtSicsScale",
    "aandd": "devices.drivers.aandd:AandDScale",
    "virtual": "devices.drivers.virtual:VirtualScale",
    "modbus": "devices.drivers.modbus:ModbusTcpDriver",
    "opcua": "devices.drivers.opcua:OpcUaDriver",
}


@dataclass(frozen=True, slots=True)
class DriverSource:
    """Where a driver name comes from."""

    name: str
    target: str  #: "module:attribute"
    origin: str  #: "built-in" or "entry point in <distribution> <version>"
    entry_point: importlib.metadata.EntryPoint | None = None


class DriverRegistry:
    """Names → driver classes, discovered from entry points and built-ins."""

    def __init__(
        self,
        *,
        group: str = ENTRY_POINT_GROUP,
        builtins: Mapping[str, str] | None = None,
    ) -> None:
        self.group = group
        self.builtins = dict(BUILTIN_DRIVERS if builtins is None else builtins)
        self._sources: dict[str, DriverSource] | None = None
        self._conflicts: dict[str, str] = {}
        self._loaded: dict[str, type[Driver]] = {}
        self._errors: dict[str, DriverLoadError] = {}

    # ------------------------------------------------------------- discovery
    def refresh(self) -> None:
        """Forget what was discovered and loaded; scan entry points again on next use."""
        self._sources = None
        self._conflicts = {}
        self._loaded = {}
        self._errors = {}

    def _discover(self) -> dict[str, DriverSource]:
        if self._sources is not None:
            return self._sources
        sources = {
            name: DriverSource(name, target, "built-in") for name, target in self.builtins.items()
        }
        claims: dict[str, list[DriverSource]] = {}
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            origin = (
                f"entry point in {dist.metadata['Name']} {dist.version}"
                if dist is not None
                else "entry point"
            )
            claims.setdefault(ep.name, []).append(DriverSource(ep.name, ep.value, origin, ep))
        for name, found in claims.items():
            targets = {s.target for s in found}
            builtin = sources.get(name)
            if builtin is not None:
                if targets != {builtin.target}:
                    self._conflicts[name] = (
                        f"device driver {name!r} is built in ({builtin.target}); refused "
                        + ", ".join(f"{s.target} from {s.origin}" for s in found if s.target != builtin.target)
                    )
                    log.warning("%s", self._conflicts[name])
                continue
            if len(targets) > 1:
                self._conflicts[name] = f"device driver {name!r} is claimed by several plugins: " + ", ".join(
                    f"{s.target} from {s.origin}" for s in found
                )
                log.warning("%s", self._conflicts[name])
                continue
            sources[name] = found[0]
        self._sources = sources
        return sources

    def names(self) -> list[str]:
        """Sorted driver names, without importing any driver."""
        return sorted(self._discover())

    def source(self, name: str) -> DriverSource:
        """Where ``name`` comes from; DriverNotFound if unknown, DriverLoadError if contested."""
        sources = self._discover()
        if name in self._conflicts and name not in sources:
            raise DriverLoadError(self._conflicts[name])
        if name not in sources:
            raise DriverNotFound(
                f"no device driver named {name!r}; known: {', '.join(sorted(sources)) or 'none'}"
            )
        return sources[name]

    @property
    def conflicts(self) -> dict[str, str]:
        """Names refused because several targets claim them (name → message)."""
        self._discover()
        return dict(self._conflicts)

    # --------------------------------------------------------------- loading
    def load(self, name: str) -> type[Driver]:
        """Import and return the driver class for ``name`` (cached).

        Raises DriverNotFound for an unknown name and DriverLoadError for a
        plugin that fails to import or is not a Driver subclass.
        """
        if name in self._loaded:
            return self._loaded[name]
        if name in self._errors:
            raise self._errors[name]
        source = self.source(name)
        try:
            if source.entry_point is not None:
                obj: Any = source.entry_point.load()
            else:
                module_name, _, attr = source.target.partition(":")
                obj = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
        except Exception as exc:
            error = DriverLoadError(
                f"device driver {name!r} ({source.target}, {source.origin}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            self._errors[name] = error
            raise error from exc
        if not (isinstance(obj, type) and issubclass(obj, Driver)):
            error = DriverLoadError(
                f"device driver {name!r} ({source.target}, {source.origin}) is "
                f"{obj!r}, not a devices.Driver subclass"
            )
            self._errors[name] = error
            raise error
        self._loaded[name] = obj
        return obj

    def load_all(self) -> dict[str, type[Driver]]:
        """Every driver that loads; broken ones are logged and left out."""
        drivers: dict[str, type[Driver]] = {}
        for name in self.names():
            try:
                drivers[name] = self.load(name)
            except DriverLoadError as exc:
                log.warning("%s", exc)
        return drivers

    @property
    def errors(self) -> dict[str, DriverLoadError]:
        """Drivers that failed to load so far (name → error)."""
        return dict(self._errors)

    def create(self, name: str, device_id: str, config: Mapping[str, Any] | None = None) -> Driver:
        """Instantiate driver ``name`` for ``device_id`` (validated, not connected)."""
        return self.load(name)(device_id, config)


#: The process-wide registry used by the module functions below.
default_registry = DriverRegistry()


def available_drivers() -> list[str]:
    """Names of all registered drivers (built-in and plugins), without importing them."""
    return default_registry.names()


def load_driver(name: str) -> type[Driver]:
    """The driver class registered as ``name``."""
    return default_registry.load(name)


def create_driver(name: str, device_id: str, config: Mapping[str, Any] | None = None) -> Driver:
    """A new, unconnected driver instance: ``create_driver("mtsics", "BAL-01", {...})``."""
    return default_registry.create(name, device_id, config)
