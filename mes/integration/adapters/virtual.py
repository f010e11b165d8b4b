"""An in-memory ERP for tests and demos: records per resource, an ETag that changes with
them, and the same 304 answers a real ERP gives to a conditional request."""

from __future__ import annotations

import hashlib
import json
from email.utils import formatdate
from typing import Any, ClassVar

from mes.integration.adapters import RESOURCES, Fetched, MasterDataAdapter, Validators


class VirtualAdapter(MasterDataAdapter):
    """``VirtualAdapter(items=[...], boms=[...], work_orders=[...])``; :meth:`set` changes a resource."""

    name: ClassVar[str] = "virtual"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.data: dict[str, list[dict[str, Any]]] = {r: list(config.get(r) or []) for r in RESOURCES}
        self.modified: dict[str, float] = {r: 1.0e9 for r in RESOURCES}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def set(self, resource: str, records: list[dict[str, Any]], at: float) -> None:
        self.data[resource], self.modified[resource] = list(records), at

    def etag(self, resource: str) -> str:
        body = json.dumps(self.data[resource], sort_keys=True).encode()
        return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    def _fetch(self, resource: str, validators: Validators) -> Fetched:
        self.requests.append((resource, validators.headers()))
        etag, modified = self.etag(resource), formatdate(self.modified[resource], usegmt=True)
        if validators.etag == etag or (validators.etag is None and validators.last_modified == modified):
            return Fetched(304)
        return Fetched(200, [dict(r) for r in self.data[resource]], etag, modified)
