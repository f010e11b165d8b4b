"""Simulated ERP and QMS for demos and tests (``mes sim erp``, ``mes sim qms``; loopback).

Each serves, on one port:

- ``GET /items``, ``/boms``, ``/work-orders`` (ERP): master data as JSON with a strong
  ``ETag`` and ``Last-Modified``; ``If-None-Match`` / ``If-Modified-Since`` give 304;
- ``POST /hooks/mes``: the MES's outbound events, each verified with the ``standardwebhooks``
  library (not with the MES's code) and kept (``GET /received`` lists them);

and sends signed commands to the MES (:func:`send_command`): QMS holds, releases and
deviation dispositions; ERP work order releases.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

INBOUND_PATH = "/integration/v1/inbound"


def command_event(event_type: str, data: dict[str, Any], source: str, subject: str | None = None) -> dict[str, Any]:
    """A CloudEvent command (structured mode) as events.md §4 wants it."""
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": event_type,
             "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "datacontenttype": "application/json",
             "data": data}
    if subject:
        event["subject"] = subject
    return event


def signed_headers(secret: str, event_id: str, body: bytes, key: str, at: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers (signed by the library) and the ``Idempotency-Key``."""
    at = at or datetime.now(UTC)
    return {"Content-Type": "application/cloudevents+json; charset=utf-8", "webhook-id": event_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(event_id, at, body), "Idempotency-Key": f'"{key}"'}


def send_command(mes_url: str, secret: str, event_type: str, data: dict[str, Any], *, source: str,
                 key: str | None = None, timeout: float = 15.0) -> tuple[int, Any]:
    """Sign and POST one command to the MES; returns the status and the answer's JSON."""
    event = command_event(event_type, data, source)
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = signed_headers(secret, event["id"], body, key or str(uuid.uuid4()))
    r = requests.post(mes_url.rstrip("/") + INBOUND_PATH, data=body, headers=headers, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


class MasterData:
    """Master-data resources with a strong ETag and a Last-Modified each (changes bump both)."""

    def __init__(self, resources: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.lock = threading.Lock()
        self.resources: dict[str, list[dict[str, Any]]] = {}
        self.modified: dict[str, float] = {}
        for name, records in (resources or {}).items():
            self.set(name, records)

    def set(self, name: str, records: list[dict[str, Any]]) -> None:
        with self.lock:
            self.resources[name] = list(records)
            self.modified[name] = float(int(datetime.now(UTC).timestamp()))

    def answer(self, name: str, if_none_match: str | None, if_modified_since: str | None) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if name not in self.resources:
                return 404, {}, b""
            body = json.dumps(self.resources[name], sort_keys=True).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            modified = self.modified[name]
        headers = {"ETag": etag, "Last-Modified": formatdate(modified, usegmt=True), "Cache-Control": "no-cache"}
        if if_none_match is not None:
            if etag in [t.strip() for t in if_none_match.split(",")] or if_none_match.strip() == "*":
                return 304, headers, b""
        elif if_modified_since:
            try:
                since = parsedate_to_datetime(if_modified_since).timestamp()
            except (TypeError, ValueError):
                since = None
            if since is not None and modified <= since:
                return 304, headers, b""
        return 200, {**headers, "Content-Type": "application/json"}, body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


class SimServer:
    """One simulated peer on ``127.0.0.1:<port>``: master data (ERP) and a verifying webhook receiver."""

    PATHS = {"/items": "items", "/boms": "boms", "/work-orders": "work_orders"}

    def __init__(self, name: str, webhook_secrets: list[str] | None = None, master_data: MasterData | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.webhook_secrets = list(webhook_secrets or [])
        self.master_data = master_data or MasterData()
        self.echo = echo
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self.cond = threading.Condition()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _webhook(self, body: bytes, headers: dict[str, str]) -> int:
        for secret in self.webhook_secrets:
            try:
                Webhook(secret).verify(body, headers)
            except (WebhookVerificationError, ValueError):
                continue
            event = json.loads(body)
            with self.cond:
                self.received.append(event)
                self.cond.notify_all()
            if self.echo:
                self.echo(f"{self.name}: received {event.get('type')} {event.get('subject')} (verified)")
            return 204
        with self.cond:
            self.rejected += 1
        if self.echo:
            self.echo(f"{self.name}: refused a delivery whose signature does not verify")
        return 401

    def start(self, port: int = 0, host: str = "127.0.0.1") -> SimServer:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/received":
                    with sim.cond:
                        body = json.dumps(sim.received).encode()
                    self._send(200, {"Content-Type": "application/json"}, body)
                    return
                resource = sim.PATHS.get(self.path.split("?")[0])
                if resource is None:
                    self._send(404, {}, b"")
                    return
                self._send(*sim.master_data.answer(resource, self.headers.get("If-None-Match"),
                                                   self.headers.get("If-Modified-Since")))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                if self.path != "/hooks/mes":
                    self._send(404, {}, b"")
                    return
                self._send(sim._webhook(body, dict(self.headers.items())), {}, b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server((host, port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


DEMO_MASTER_DATA: dict[str, list[dict[str, Any]]] = {
    "items": [{"code": "API-PARA", "name": "Paracetamol", "base_uom": "kg", "kind": "api"}],
    "boms": [],
    "work_orders": [],
}
