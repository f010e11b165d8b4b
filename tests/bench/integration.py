"""Benchmark: the outbox relay delivering to a local webhook receiver, beside a bare HTTP POST
loop to the same receiver measured in the same run.

Throughput: ``--events`` events (over ``--aggregates`` aggregates) committed, then ``--relays``
relays started (each as `mes relay` runs it: runs of ``--run`` events per aggregate, 8 senders);
events per second until the last arrives. Commit-to-receipt: ``--latency-events``
events committed one at a time while the relay runs (default poll interval); the time from
each commit to its arrival. Baseline: the same bodies POSTed one after another.

    python -m tests.bench.integration [--db sqlite|postgresql] [--events 2000] [--latency-events 200]
        [--relays 2] [--run 10]
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.bench.common import bench_database, make_bench_app, parser, percentiles, ratio


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog of 5 drops SYNs from parallel senders (1 s retries)
    daemon_threads = True


class Sink:
    """A receiver on loopback that notes when each webhook-id arrived and answers 204."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a web server answers

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink.cond:
                    sink.arrived.setdefault(self.headers.get("webhook-id", ""), time.perf_counter())
                    sink.cond.notify_all()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait(self, ids: list[str], timeout: float = 600.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: all(i in self.arrived for i in ids), timeout):
                raise RuntimeError(f"{sum(i in self.arrived for i in ids)} of {len(ids)} events arrived")


def run(backend: str, events: int, latency_events: int, aggregates: int, relays: int = 2,
        run_length: int = 10) -> dict[str, Any]:
    from sqlalchemy import select

    from mes.audit.log import Actor, Event, record
    from mes.db import db
    from mes.integration import endpoints as ops
    from mes.integration.models import OutboxEvent
    from mes.integration.relay import Relay, start_in_background
    from tests.helpers import example_data

    actor = Actor.system("bench")
    sink = Sink()

    def produce(i: int) -> str:
        appended = record(actor, "bench.fact", ("batch", f"B-{i % aggregates}"), after={"i": i},
                          event=Event("mes.material.consumed.v1", "batch", f"B-{i % aggregates}",
                                      example_data("mes.material.consumed.v1", i=i)))
        db.session.commit()
        event_id = db.session.execute(select(OutboxEvent.id).where(OutboxEvent.audit_seq == appended.seq)).scalar()
        db.session.rollback()
        return str(event_id)

    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp))
        with app.app_context():
            ops.add_endpoint(actor, "sink", sink.url)
            ids = [produce(i) for i in range(events)]
            bodies = [bytes(b) for b in db.session.execute(select(OutboxEvent.body).order_by(OutboxEvent.audit_seq))
                      .scalars()]
            db.session.rollback()
            # throughput: the relays drain the backlog
            workers = [Relay(app, name=f"bench-{n}", poll_s=0.25, run=run_length) for n in range(relays)]
            stop = threading.Event()
            started = time.perf_counter()
            threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
            for thread in threads:
                thread.start()
            sink.wait(ids)
            relay_s = time.perf_counter() - started
            stop.set()
            for thread in threads:
                thread.join(60)
            relay = workers[0]
            # commit-to-receipt while the relay runs with its default poll interval
            thread, stop = start_in_background(app, run=run_length)
            latencies = []
            for i in range(events, events + latency_events):
                committed = time.perf_counter()
                event_id = produce(i)
                sink.wait([event_id])
                latencies.append(sink.arrived[event_id] - committed)
            stop.set()
            thread.join(60)
            poll_s = relay.poll_s
            db.session.remove()
            db.engine.dispose()
    # baseline: the same bodies POSTed one after another, no database, no signature
    http = requests.Session()
    bare = []
    started = time.perf_counter()
    for n, body in enumerate(bodies):
        t = time.perf_counter()
        r = http.post(sink.url, data=body, headers={"webhook-id": f"bare-{n}",
                                                      "Content-Type": "application/cloudevents+json"}, timeout=15)
        r.raise_for_status()
        bare.append(time.perf_counter() - t)
    bare_s = time.perf_counter() - started
    sink.server.shutdown()
    relay_rate, bare_rate = events / relay_s, events / bare_s
    lat, bare_p = _p95(latencies), _p95(bare)
    return {
        "benchmark": "integration", "db": backend, "events": events, "aggregates": aggregates, "relays": relays,
        "run": run_length,
        "relay_events_per_s": round(relay_rate, 1), "bare_posts_per_s": round(bare_rate, 1),
        "ratio_relay_to_bare_throughput": ratio(relay_rate, bare_rate),
        "commit_to_receipt": lat, "relay_poll_s": poll_s, "bare_post": bare_p,
        "ratio_commit_to_receipt_p95_to_bare_post_p95": ratio(lat["p95_ms"], bare_p["p95_ms"]),
    }


def _p95(samples: list[float]) -> dict[str, float]:
    out = percentiles(samples)
    ordered = sorted(samples)
    out["p95_ms"] = round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3) if ordered else 0.0
    return out


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--latency-events", type=int, default=200)
    ap.add_argument("--aggregates", type=int, default=20)
    ap.add_argument("--relays", type=int, default=2)
    ap.add_argument("--run", type=int, default=10)
    args = ap.parse_args()
    started = time.perf_counter()
    result = run(args.db, args.events, args.latency_events, args.aggregates, args.relays, args.run)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
