"""A webhook receiver on loopback that checks every delivery with the ``standardwebhooks``
library (not with the MES's own code), as an ERP or QMS built on it would.

Answers are scripted: a queue of ``(status, headers)`` answers, then ``default``. It can be
stopped and started again on the same port (a receiver that is down refuses connections).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog of 5 drops SYNs from parallel senders (1 s retries)
    daemon_threads = True


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    content_type: str
    body: bytes
    event: dict[str, Any]
    verified_with: list[str]  # the secrets the library accepted it with
    at: float = field(default_factory=time.monotonic)
    status: int = 204


class Receiver:
    def __init__(self, secrets: list[str] | None = None, *, keep_alive: bool = False) -> None:
        self.secrets: list[str] = list(secrets or [])
        #: HTTP/1.1 with connections kept open, as a receiver behind a web server answers (off by
        #: default: a stopped receiver must refuse every sender, even one holding a connection)
        self.keep_alive = keep_alive
        #: TCP connections accepted so far
        self.connections = 0
        self.received: list[Received] = []
        self.rejected: list[str] = []
        self.answers: deque[tuple[int, dict[str, str]]] = deque()
        self.default: tuple[int, dict[str, str]] = (204, {})
        #: when set, answers each verified event instead of ``answers``/``default``
        self.policy: Callable[[dict[str, Any]], tuple[int, dict[str, str]]] | None = None
        #: when set, called before each answer (outside the lock): a peer that holds its reply
        #: until a condition holds, e.g. until a second sender has joined in
        self.hold: Callable[[], None] | None = None
        self.cond = threading.Condition()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/mes"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                with receiver.cond:
                    receiver.connections += 1

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                if receiver.hold is not None:
                    receiver.hold()
                ok = []
                for secret in receiver.secrets:
                    try:
                        Webhook(secret).verify(body, headers)
                        ok.append(secret)
                    except WebhookVerificationError:
                        pass
                with receiver.cond:
                    status, extra = receiver.answers.popleft() if receiver.answers else receiver.default
                    if ok and receiver.policy is not None:
                        status, extra = receiver.policy(json.loads(body))
                    if ok:
                        receiver.received.append(Received(
                            headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""),
                            headers.get("webhook-signature", ""), headers.get("Content-Type", ""), body,
                            json.loads(body), ok, status=status))
                    else:
                        receiver.rejected.append(headers.get("webhook-id", ""))
                        status, extra = 401, {}
                    receiver.cond.notify_all()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        """Wait until ``predicate(received)`` holds; fail with what arrived if it does not in time."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.received), timeout):
                raise AssertionError(f"timed out; received {[(r.webhook_id, r.status) for r in self.received]}, "
                                     f"rejected {self.rejected}")
            return list(self.received)

    def accepted(self) -> list[Received]:
        """Deliveries answered 2xx (what the receiver took in)."""
        with self.cond:
            return [r for r in self.received if 200 <= r.status < 300]


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Wait until ``check()`` is truthy (polling a condition, not sleeping a fixed time)."""
    end = time.monotonic() + timeout
    gate = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        gate.wait(0.02)
