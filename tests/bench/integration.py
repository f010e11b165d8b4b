"""Benchmark: the outbox relay delivering to a local webhook receiver, beside a bare HTTP POST
loop to the same receiver measured in the same run.

Throughput: ``--events`` events (over ``--aggregates`` aggregates) committed while the endpoint
is disabled, ``--relays`` ``mes relay`` processes started (each taking up to ``--batch``
aggregates a round, runs of ``--run`` events per aggregate, 8 senders), and once every one is
running the endpoint is enabled; events per second from then until the last arrives. The
receiver runs in a process of its own, as a receiver is its own system.
``--in-process``: the relays run as threads of this process instead (as in ``mes demo``).
Commit-to-receipt: ``--latency-events`` events committed one at a time while a relay runs
(default poll interval); the time from each commit to its arrival. Baseline: the same bodies
POSTed one after another, on one keep-alive connection.

    python -m tests.bench.integration [--db sqlite|postgresql] [--events 2000] [--latency-events 200]
        [--relays 2] [--run 25] [--batch 16] [--in-process]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3

from mes.integration.relay import BATCH, RUN
from tests.bench.common import bench_database, make_bench_app, parser, percentiles, ratio


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog of 5 drops SYNs from parallel senders (1 s retries)
    daemon_threads = True


def _serve(ready: Any, arrivals: Any) -> None:
    """The receiver process: answers 204 to every POST and puts (webhook-id, arrival time) on
    ``arrivals`` (``perf_counter`` is the system's monotonic clock, the same in every process)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a web server answers

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            arrivals.put((self.headers.get("webhook-id", ""), time.perf_counter()))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    ready.put(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


class Sink:
    """A receiver on loopback, in a process of its own (a receiver is its own system), that
    notes when each webhook-id first arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        ctx = multiprocessing.get_context("spawn")
        ready, self.arrivals = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(ready, self.arrivals), daemon=True)
        self.process.start()
        self.url = f"http://127.0.0.1:{ready.get(timeout=60)}/hooks"
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        while True:
            webhook_id, at = self.arrivals.get()
            with self.cond:
                self.arrived.setdefault(webhook_id, at)
                self.cond.notify_all()

    def wait(self, ids: list[str], timeout: float = 600.0) -> None:
        waiting = iter(ids)
        missing = [next(waiting, None)]

        def arrived() -> bool:  # each id is looked at until it arrives, never twice after
            while missing[0] is not None and missing[0] in self.arrived:
                missing[0] = next(waiting, None)
            return missing[0] is None

        with self.cond:
            if not self.cond.wait_for(arrived, timeout):
                raise RuntimeError(f"{sum(i in self.arrived for i in ids)} of {len(ids)} events arrived")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(30)


ROOT = Path(__file__).resolve().parents[2]


def start_relays(app: Any, url: str, count: int, run_length: int, batch: int) -> list[subprocess.Popen[str]]:
    """``count`` ``mes relay`` processes on ``url``; returns once each says it is running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update({"MES_DATABASE_URL": url, "MES_HOME": app.config["MES_HOME"], "MES_SECRET_KEY": "bench",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"], "MES_LOG_LEVEL": "WARNING"})
    if app.config.get("MES_AUDIT_TAG_KEY_PATH"):
        env["MES_AUDIT_TAG_KEY_PATH"] = app.config["MES_AUDIT_TAG_KEY_PATH"]
    cmd = [sys.executable, "-c", "from mes.cli import main; main()", "relay", "--run", str(run_length), "--batch", str(batch),
           "--poll", "0.05"]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "relay <name> running (...)", or why it could not start
        if "running" not in line:
            stop_relays(procs)
            raise RuntimeError(f"mes relay did not start: {line}{proc.stdout.read()}")
    return procs


def stop_relays(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def run(backend: str, events: int, latency_events: int, aggregates: int, relays: int = 2,
        run_length: int = RUN, in_process: bool = False, batch: int = BATCH) -> dict[str, Any]:
    from sqlalchemy import select

    from mes.audit.log import Actor, Event, record
    from mes.db import db
    from mes.integration import endpoints as ops
    from mes.integration.models import EndpointState, OutboxEvent
    from mes.integration.relay import Relay, start_in_background
    from tests.helpers import example_data

    actor = Actor.system("bench")
    sink = Sink()

    committed_at: list[float] = [0.0]

    def produce(i: int) -> str:
        appended = record(actor, "bench.fact", ("batch", f"B-{i % aggregates}"), after={"i": i},
                          event=Event("mes.material.consumed.v1", "batch", f"B-{i % aggregates}",
                                      example_data("mes.material.consumed.v1", i=i)))
        db.session.commit()
        committed_at[0] = time.perf_counter()
        event_id = db.session.execute(select(OutboxEvent.id).where(OutboxEvent.audit_seq == appended.seq)).scalar()
        db.session.rollback()
        return str(event_id)

    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp))
        with app.app_context():
            ops.add_endpoint(actor, "sink", sink.url)
            ops.set_state(actor, "sink", EndpointState.DISABLED, "bench: the backlog builds up first")
            ids = [produce(i) for i in range(events)]
            bodies = [bytes(b) for b in db.session.execute(select(OutboxEvent.body).order_by(OutboxEvent.audit_seq))
                      .scalars()]
            db.session.rollback()
            # throughput: the relays drain the backlog once the endpoint is enabled
            stop = threading.Event()
            threads: list[threading.Thread] = []
            procs: list[subprocess.Popen[str]] = []
            if in_process:
                workers = [Relay(app, name=f"bench-{n}", poll_s=0.05, run=run_length, batch=batch) for n in range(relays)]
                threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
                for thread in threads:
                    thread.start()
            else:
                procs = start_relays(app, url, relays, run_length, batch)
            try:
                started = time.perf_counter()
                ops.set_state(actor, "sink", EndpointState.ENABLED, "bench: deliver the backlog")
                sink.wait(ids)
                relay_s = time.perf_counter() - started
            finally:
                stop.set()
                for thread in threads:
                    thread.join(60)
                stop_relays(procs)
            # commit-to-receipt while a relay runs with its default poll interval
            poll_s = Relay(app).poll_s
            thread, stop = start_in_background(app, run=run_length)
            latencies = []
            for i in range(events, events + latency_events):
                event_id = produce(i)
                sink.wait([event_id])
                latencies.append(sink.arrived[event_id] - committed_at[0])  # from the commit, not the write
            stop.set()
            thread.join(60)
            db.session.remove()
            db.engine.dispose()
    # baseline: the same bodies POSTed one after another with the relay's HTTP client (urllib3),
    # no database, no signature
    http = urllib3.PoolManager(retries=False)
    bare = []
    started = time.perf_counter()
    for n, body in enumerate(bodies):
        t = time.perf_counter()
        r = http.request("POST", sink.url, body=body, timeout=15,
                         headers={"webhook-id": f"bare-{n}", "Content-Type": "application/cloudevents+json"})
        if r.status != 204:
            raise RuntimeError(f"the receiver answered {r.status}")
        bare.append(time.perf_counter() - t)
    bare_s = time.perf_counter() - started
    sink.stop()
    relay_rate, bare_rate = events / relay_s, events / bare_s
    lat, bare_p = _p95(latencies), _p95(bare)
    return {
        "benchmark": "integration", "db": backend, "events": events, "aggregates": aggregates, "relays": relays,
        "run": run_length, "batch": batch, "relays_as": "threads of the bench" if in_process else "mes relay processes",
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
    ap.add_argument("--run", type=int, default=RUN, help="events of an aggregate a round (mes relay --run)")
    ap.add_argument("--batch", type=int, default=BATCH, help="aggregates a relay takes a round (mes relay --batch)")
    ap.add_argument("--in-process", action="store_true", help="relays as threads of this process")
    args = ap.parse_args()
    started = time.perf_counter()
    result = run(args.db, args.events, args.latency_events, args.aggregates, args.relays, args.run, args.in_process, args.batch)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
