"""Master data from ERP through adapters (``shared/specs/events.md`` §5): an anti-corruption
layer, so an ERP upgrade changes one adapter, never the MES schema.

Like python-can's bus interfaces: :class:`MasterDataAdapter` is an abstract base whose
template method :meth:`~MasterDataAdapter.pull` keeps the conditional-request bookkeeping
(``If-None-Match`` with the last ETag, ``If-Modified-Since`` with the last
``Last-Modified``; 304 means nothing changed) and the mapping to MES records, while a
plugin implements only :meth:`~MasterDataAdapter._fetch` (one HTTP GET, a file read, an
RFC call) and, if its ERP names things differently, :meth:`~MasterDataAdapter._map`.

Plugins are found by entry point (group ``mes.integration.adapters``) through
:class:`AdapterRegistry`; ``rest`` (a generic JSON-over-HTTP ERP, :mod:`.rest`) and
``virtual`` (in memory, for tests and demos, :mod:`.virtual`) are built in.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mes.integration.adapters"
RESOURCES = ("items", "boms", "work_orders")
BUILTIN_ADAPTERS: dict[str, str] = {
    "rest": "mes.integration.adapters.rest:RestAdapter",
    "virtual": "mes.integration.adapters.virtual:VirtualAdapter",
}


class AdapterError(Exception):
    """The ERP could not be reached or answered something the adapter cannot read."""


@dataclass(frozen=True)
class Validators:
    """What the last answer for a resource carried, sent back to ask "changed since?"."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


@dataclass(frozen=True)
class Fetched:
    """One answer of the ERP: 200 with records and new validators, or 304 (nothing changed)."""

    status: int
    records: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None
    last_modified: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True)
class Pulled:
    """The outcome of one pull of one resource."""

    resource: str
    changed: bool
    records: list[dict[str, Any]]
    validators: Validators


class MasterDataAdapter(abc.ABC):
    """Base of every ERP adapter. Subclasses implement :meth:`_fetch`; the base keeps the
    validators per resource, so a second pull with nothing changed is a cheap 304."""

    name: ClassVar[str] = "abstract"

    def __init__(self, **config: Any) -> None:
        self.config = dict(config)
        self.validators: dict[str, Validators] = {}

    # ------------------------------------------------------- template method
    def pull(self, resource: str) -> Pulled:
        """Ask the ERP for ``resource`` (items, boms, work_orders) if changed since the last pull."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown master-data resource {resource!r}; one of {', '.join(RESOURCES)}")
        known = self.validators.get(resource, Validators())
        fetched = self._fetch(resource, known)
        if fetched.not_modified:
            return Pulled(resource, False, [], known)
        if fetched.status != 200:
            raise AdapterError(f"{self.name}: {resource} answered {fetched.status}")
        new = Validators(fetched.etag, fetched.last_modified)
        records = [self._map(resource, r) for r in fetched.records]
        self.validators[resource] = new
        return Pulled(resource, True, records, new)

    def pull_all(self) -> dict[str, Pulled]:
        """Every resource once."""
        return {r: self.pull(r) for r in RESOURCES}

    # ------------------------------------------------------------ plug-in API
    @abc.abstractmethod
    def _fetch(self, resource: str, validators: Validators) -> Fetched:
        """Fetch ``resource`` sending ``validators`` (conditional request); 304 if unchanged."""

    def _map(self, resource: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """The ERP's record as the MES reads it (identity by default: the ERP speaks our names)."""
        return dict(record)

    def close(self) -> None:
        """Release connections (nothing by default)."""
        return None


class AdapterRegistry:
    """Adapter names → classes, from built-ins and the ``mes.integration.adapters`` entry points."""

    def __init__(self, group: str = ENTRY_POINT_GROUP, builtins: Mapping[str, str] | None = None) -> None:
        self.group = group
        self.builtins = dict(BUILTIN_ADAPTERS if builtins is None else builtins)

    def targets(self) -> dict[str, str]:
        """Name → ``module:attribute``; a plugin may not take over a built-in name with another target."""
        out = dict(self.builtins)
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self.builtins and ep.value != self.builtins[ep.name]:
                log.warning("adapter %r is built in; the plugin %s is refused", ep.name, ep.value)
                continue
            out.setdefault(ep.name, ep.value)
        return out

    def names(self) -> list[str]:
        return sorted(self.targets())

    def load(self, name: str) -> type[MasterDataAdapter]:
        target = self.targets().get(name)
        if target is None:
            raise AdapterError(f"no master-data adapter named {name!r}; known: {', '.join(self.names())}")
        module, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise AdapterError(f"adapter {name!r} ({target}) does not load: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, MasterDataAdapter)):
            raise AdapterError(f"adapter {name!r} ({target}) is not a MasterDataAdapter")
        return cls

    def create(self, name: str, **config: Any) -> MasterDataAdapter:
        return self.load(name)(**config)


default_registry = AdapterRegistry()


def create_adapter(name: str, **config: Any) -> MasterDataAdapter:
    """An adapter by name (``rest``, ``virtual`` or a plugin's)."""
    return default_registry.create(name, **config)
