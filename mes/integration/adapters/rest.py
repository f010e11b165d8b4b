"""A generic REST ERP: ``GET <base_url>/<resource>`` answering a JSON list (or ``{"<resource>": [...]}``)
with ``ETag`` / ``Last-Modified``, asked conditionally (``If-None-Match``, ``If-Modified-Since``)."""

from __future__ import annotations

from typing import Any, ClassVar

import requests

from mes.integration.adapters import AdapterError, Fetched, MasterDataAdapter, Validators


class RestAdapter(MasterDataAdapter):
    """Config: ``base_url``; optional ``paths`` (resource → path), ``token`` (Bearer), ``timeout`` (s)."""

    name: ClassVar[str] = "rest"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if not config.get("base_url"):
            raise AdapterError("the rest adapter needs base_url")
        self.base_url = str(config["base_url"]).rstrip("/")
        self.paths: dict[str, str] = {"work_orders": "work-orders", **(config.get("paths") or {})}
        self.timeout = float(config.get("timeout", 10))
        self.session = requests.Session()
        if config.get("token"):
            self.session.headers["Authorization"] = f"Bearer {config['token']}"

    def _fetch(self, resource: str, validators: Validators) -> Fetched:
        url = f"{self.base_url}/{self.paths.get(resource, resource)}"
        try:
            r = self.session.get(url, headers={"Accept": "application/json", **validators.headers()},
                                 timeout=self.timeout)
        except requests.RequestException as exc:
            raise AdapterError(f"rest: GET {url} failed: {exc}") from exc
        if r.status_code == 304:
            return Fetched(304)
        if r.status_code != 200:
            return Fetched(r.status_code)
        try:
            body = r.json()
        except ValueError as exc:
            raise AdapterError(f"rest: GET {url} did not answer JSON") from exc
        records = body.get(resource) if isinstance(body, dict) else body
        if not isinstance(records, list) or not all(isinstance(x, dict) for x in records):
            raise AdapterError(f"rest: GET {url} did not answer a list of records")
        return Fetched(200, records, r.headers.get("ETag"), r.headers.get("Last-Modified"))

    def close(self) -> None:
        self.session.close()
