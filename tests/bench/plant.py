"""Benchmark: a plant for a set time. N simulated operators run batches at once, each on a
kiosk of its own (a process with an address of its own and a Socket.IO connection watching
its line), against ``--instances`` ``mes run`` behind the shipped nginx site
(:mod:`tests.bench.execution` builds that topology) on PostgreSQL with Redis as the
Socket.IO message queue and shared limit store, with the relay delivering the outbox to a
loopback webhook receiver and the audit log witnessed by ``mes witness``.

While they work, a publisher in another process sends a live event through Redis every
``--live-every-ms`` (as ``mes gateway`` sends the simulated scales' readings); each kiosk
measures its delivery latency. Reported: completions/s, p50/p99 step-completion latency,
errors, live delivery latency to every kiosk (and the share each received), then whether
``mes audit verify`` passes, the outbox drained and the witness holds the latest
checkpoint; beside a bare request (``/healthz`` through nginx) and a bare commit measured
in the same run. Each completion's time in the app and, of that, its wait for the audit log's
append lock come from its Server-Timing header, and ``slowest_1pct`` says where the slowest
1 % spent theirs.

Before the measured window each kiosk starts its first batch and completes a random share
of its steps (``warm_up_s``), as on a floor that runs around the clock, where kiosks are at
every point of their batches; ``--no-warm-up`` starts every batch in the window's first
second instead (30 batch starts at once, and again when those batches end together).
``--soak`` (hours, not in CI) adds windows of latency and server memory, and their drift
from the first window to the last.

    python -m tests.bench.plant [--db postgresql|sqlite] [--operators 30] [--seconds 120]
                                [--instances 2] [--think-ms 1000] [--steps 40] [--soak --window 300]

Each instance holds a thread per kiosk's WebSocket and serves at most MES_LIVE_CONNECTIONS of
them (default: the threads less a fifth, 40 of the default 50); a kiosk refused a live connection
works on without it and asks again every 10 s, as the kiosk does (``kiosks_refused_live``). To
give every one of 100 kiosks on 2 instances a live connection, give them more threads
(``MES_THREADS=200 python -m tests.bench.plant --operators 100``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.bench.common import BARE_TABLE, bench_database, create_bare_table, make_bench_app, parser, percentiles, ratio, timed
from tests.bench.execution import (
    DEPLOY_CONFIG,
    KioskHttp,
    _free_port,
    _seed,
    _start_nginx,
    _stop,
    _wait_healthy,
    kiosk_address,
    server_threads,
)

ROOT = Path(__file__).resolve().parents[2]
LINE_ROOM = "line:LINE-1"
#: log-in cost only: the PINs and passwords the bench seeds are hashed at argon2's lowest cost
#: (the servers' own settings are the deployed ones; the bench measures step completion)
LOW_ARGON2 = {"MES_ARGON2_TIME_COST": "1", "MES_ARGON2_MEMORY_KIB": "8", "MES_ARGON2_PARALLELISM": "1"}


def _env(url: str, home: Path, redis_url: str, witnesses: str) -> dict[str, str]:
    # MES_THREADS passes through: each instance holds one thread per kiosk's WebSocket
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MES_") or k in ("MES_AUDIT_TAG_KEY_PATH", "MES_THREADS")}
    env.update({"MES_HOME": str(home), "MES_DATABASE_URL": url, "MES_SECRET_KEY": "bench-secret-key-0123456789",
                "MES_SESSION_COOKIE_SECURE": "false", "MES_LOG_LEVEL": "ERROR", "MES_REDIS_URL": redis_url,
                "MES_AUDIT_KEY_PATH": str(home / "audit-signing.key"), "MES_AUDIT_WITNESSES": witnesses,
                "MES_PROXY_HOPS": "1", "MES_LOGIN_RATE_PER_MINUTE": "100000"})
    return env


def _mes(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", "from mes.cli import main; main()", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def _start_redis(home: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server of the bench's own (the shared one is left alone)."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def _start_witness(home: Path, vkey: str) -> tuple[subprocess.Popen, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "log.vkey").write_text(vkey + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "mes.witness.server", "--home", str(home), "--name",
                             "witness.bench.example/w1", "--log-vkey", str(home / "log.vkey"), "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, cwd=ROOT)
    first, second = proc.stdout.readline(), proc.stdout.readline()  # type: ignore[union-attr]
    url = first.split(" listening on ")[1].strip()
    return proc, f"{url}={second.strip().split('witness verifier key ')[1]}"


# ------------------------------------------------------------------------------ kiosks


def _operator(base: str, kiosk: str, badge: str, work_orders: list[str], think_s: float, warm_up: bool,
              ready: Any, go: Any, window: Any, source: str, out: Any) -> None:
    """One kiosk (its own process): log in, watch the line over Socket.IO (WebSocket through nginx,
    as the kiosk does), then run batch after batch until the end of the measured ``window``
    (wall clock, set by the bench once every kiosk is ``ready``), one step at a time with the
    think time between.

    ``warm_up``: before the window, start the first batch and complete a random number of
    its steps, unmeasured: a plant that runs around the clock has its kiosks at every point
    of their batches, not all starting a batch in the same second (without it, the 30 batch
    starts at the first second and again when the batches end together are the run's p99).
    Sends back ``(completions [(t, s)], errors, live latencies, live received, in-app times,
    times a live connection was refused, [(total, in app, audit-lock wait)], completions before
    the window)``."""
    import socketio

    from mes.execution.sim_operator import Login, login
    from mes.realtime import LIVE_RETRY_AFTER_S

    samples: list[tuple[float, float]] = []
    in_app: list[float] = []
    errors: list[str] = []
    live: list[float] = []
    refused: list[float] = []  # when an instance refused this kiosk a live connection (no room: 503)
    split: list[tuple[float, float, float]] = []  # per completion: total, in the app, of which audit-lock wait
    try:
        client = login(base, kiosk, Login(badge=badge, pin="2468"))
    except Exception as exc:  # noqa: BLE001
        ready.release()
        out.put(([], [f"set-up {kiosk}: {exc}"], [], 0, [], [], [], 0))
        return
    cookie = "; ".join(f"{k}={v}" for k, v in client.http.cookies.items())
    nginx = urllib.parse.urlsplit(base)
    sock: Any = None

    def watch() -> bool:
        """Open the live connection from the kiosk's own address (nginx's sticky hash spreads
        the kiosks by it) and watch the line; False when refused (as the kiosk, the operator
        works on without it and it is asked for again later)."""
        nonlocal sock
        raw = socket.create_connection((nginx.hostname, nginx.port), timeout=30, source_address=(source, 0))
        sock = socketio.Client(reconnection=False, websocket_extra_options={"socket": raw})
        sock.on("batch_changed", lambda data: live.append(time.time() - float(data["sent"]))
                if "sent" in data else None, namespace="/live")
        try:
            sock.connect(base, headers={"Cookie": cookie, "X-MES-Terminal": kiosk}, namespaces=["/live"],
                         transports=["websocket"], wait_timeout=30)
        except socketio.exceptions.ConnectionError:
            refused.append(time.time())
            raw.close()
            return False
        sock.call("watch_line", {"line": "LINE-1"}, namespace="/live", timeout=30)
        return True

    def watch_later() -> None:
        while True:
            time.sleep(LIVE_RETRY_AFTER_S)  # the Retry-After the refusal gives (one home: mes.realtime)
            if time.time() >= until - LIVE_RETRY_AFTER_S or watch():
                return

    until = time.time() + 3600  # until the window is set
    pace = random.Random(kiosk)
    timed_http = KioskHttp(base, client, source)
    first: dict[str, Any] | None = None
    done = 0  # steps of the first batch completed before the window
    try:
        if not watch():
            threading.Thread(target=watch_later, daemon=True).start()
        if warm_up:
            first = client.post(f"/api/v1/work-orders/{work_orders[0]}/batches", {})
            usable = [s for s in first["steps"] if s["kind"] in ("instruction", "numeric")]
            for s in usable[:pace.randrange(len(usable)) if usable else 0]:
                timed_http.complete_step(first["id"], s["id"], s["version"], _payload(s))
                done += 1
    except Exception as exc:  # noqa: BLE001
        ready.release()
        out.put(([], [f"set-up {kiosk}: {exc}"], [], 0, [], [], [], done))
        return
    ready.release()
    go.wait(900)
    start_at, until = window[0], window[1]
    time.sleep(max(0.0, start_at - time.time()) + pace.uniform(0, think_s))  # not all on the same second
    try:
        for wo in work_orders:
            if time.time() >= until:
                break
            if first is not None and wo == work_orders[0]:
                batch, skip = first, done
            else:
                skip = 0
                try:
                    batch = client.post(f"/api/v1/work-orders/{wo}/batches", {})
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"start {wo}: {exc}")
                    continue
            for s in [s for s in batch["steps"] if s["kind"] in ("instruction", "numeric")][skip:]:
                if time.time() >= until:
                    break
                t = time.perf_counter()
                try:
                    answer = timed_http.complete_step(batch["id"], s["id"], s["version"], _payload(s))
                    if answer.get("state") != "completed":
                        raise RuntimeError(f"state {answer.get('state')}")
                except (RuntimeError, OSError, http.client.HTTPException) as exc:
                    errors.append(f"{wo}/{s['id']}: {str(exc)[:300]}")
                    timed_http.close()
                    timed_http = KioskHttp(base, client, source)
                    break
                took = time.perf_counter() - t
                samples.append((time.time(), took))
                if timed_http.last_app_s is not None:
                    in_app.append(timed_http.last_app_s)
                    split.append((took, timed_http.last_app_s, timed_http.last_lock_s or 0.0))
                time.sleep(pace.uniform(0.5 * think_s, 1.5 * think_s))
    finally:
        timed_http.close()
        time.sleep(1.0)  # the last live events in flight
        with contextlib.suppress(Exception):
            if sock is not None:
                sock.disconnect()
        out.put((samples, errors, live, len(live), in_app, refused, split, done))


def _slowest(splits: list[tuple[float, float, float]]) -> dict[str, Any]:
    """The slowest 1 % of completions: their mean total, time in the app and audit-lock wait (ms)."""
    worst = sorted(splits, reverse=True)[:max(1, len(splits) // 100)] if splits else []
    mean = (lambda i: round(sum(w[i] for w in worst) / len(worst) * 1000, 1)) if worst else (lambda i: None)
    return {"n": len(worst), "mean_ms": mean(0), "in_app_mean_ms": mean(1), "audit_lock_wait_mean_ms": mean(2)}


def _payload(step: dict[str, Any]) -> dict[str, Any]:
    return {"confirm": True} if step["kind"] == "instruction" else {"value": "1.5"}


def _publish_live(redis_url: str, every_s: float, stop: threading.Event, sent: list[float]) -> None:
    """A live event to the line's room through Redis only (write-only emitter, as the gateway)."""
    import flask_socketio

    from mes.realtime import CHANNEL, NAMESPACE

    emitter = flask_socketio.SocketIO(message_queue=redis_url, channel=CHANNEL)
    while not stop.wait(every_s):
        now = time.time()
        emitter.emit("batch_changed", {"batch_id": "LIVE", "line": "LINE-1", "step_id": None, "sent": now},
                     namespace=NAMESPACE, to=LINE_ROOM)
        sent.append(now)


def _rss_mb(pids: list[int]) -> float:
    """Resident memory of the processes and their children (gunicorn workers), in MB."""
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return round(total / 1024, 1)


def _windows(samples: list[tuple[float, float]], memory: list[tuple[float, float]], start: float,
             window_s: float) -> list[dict[str, Any]]:
    out = []
    t = start
    end = max([s[0] for s in samples] + [start])
    while t < end:
        inside = [s for at, s in samples if t <= at < t + window_s]
        mem = [m for at, m in memory if t <= at < t + window_s]
        out.append({"from_s": round(t - start), **percentiles(inside),
                    "server_rss_mb": mem[-1] if mem else None})
        t += window_s
    return out


# ------------------------------------------------------------------------------- run


def run(backend: str, operators: int, seconds: float, instances: int, think_ms: int, steps: int,
        live_every_ms: int, soak: bool = False, window_s: float = 300.0, warm_up: bool = True) -> dict[str, Any]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.update(LOW_ARGON2)
    from mes.audit import log as audit_log
    from mes.db import db

    think_s = think_ms / 1000
    per_operator = int(seconds / max(0.05, steps * think_s)) + 2
    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = make_bench_app(url, home)
        t0 = time.perf_counter()
        with app.app_context():
            seeded = _seed(steps, operators * per_operator, operators)
            vkey = audit_log.audit_log().vkey()
            db.session.remove()
            with db.engine.begin() as conn:
                create_bare_table(conn, backend)
            db.session.remove()
            db.engine.dispose()
        seed_s = time.perf_counter() - t0
        procs: list[subprocess.Popen] = []
        try:
            redis_proc, redis_url = _start_redis(home)
            procs.append(redis_proc)
            witness_proc, witnesses = _start_witness(home / "witness", vkey)
            procs.append(witness_proc)
            env = _env(url, home, redis_url, witnesses)
            bases, servers = [], []
            for n in range(instances):
                port = _free_port()
                server = _mes(["run", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--config",
                               str(DEPLOY_CONFIG)], env, home / f"web{n}.log")
                procs.append(server)
                servers.append(server)
                _wait_healthy(server, f"http://127.0.0.1:{port}", home / f"web{n}.log")
                bases.append(f"http://127.0.0.1:{port}")
            proxy, base = _start_nginx(home, [int(b.rsplit(":", 1)[1]) for b in bases])
            procs.append(proxy)
            from tests.integration.receiver import Receiver

            receiver = Receiver().start()
            with app.app_context():
                from mes.audit.log import Actor
                from mes.integration import endpoints

                _, secret = endpoints.add_endpoint(Actor.system("bench"), "erp", receiver.url)
                db.session.commit()
                db.session.remove()
            receiver.secrets.append(secret)
            procs.append(_mes(["relay", "--poll", "0.1"], env, home / "relay.log"))

            # the floor: a bare request through nginx and a bare commit, in this run
            http = KioskHttp(base, source=kiosk_address(0))
            floor = percentiles(timed(lambda: http.request("GET", "/healthz"), 200))
            http.close()
            with app.app_context():
                seq = iter(range(10**9))

                def bare_commit() -> None:
                    with db.engine.begin() as conn:
                        conn.execute(text(f"INSERT INTO {BARE_TABLE} (seq, at, action, actor_id, entity_type, entity_id, "
                                          "entry_bytes, leaf_hash) VALUES (:s, 'x', 'a', 'u', 't', 'e', :b, :h)"),
                                     {"s": next(seq), "b": b"x" * 400, "h": b"h" * 32})

                bare = percentiles(timed(bare_commit, 200))
                db.engine.dispose()

            ctx = multiprocessing.get_context("fork")
            out = ctx.Queue()
            ready, go, window = ctx.Semaphore(0), ctx.Event(), ctx.Array("d", 2)
            kiosks = [ctx.Process(target=_operator, args=(
                base, seeded["kiosks"][n], f"B{n}", seeded["work_orders"][n * per_operator:(n + 1) * per_operator],
                think_s, warm_up, ready, go, window, kiosk_address(n), out)) for n in range(operators)]
            warm_t0 = time.perf_counter()
            for k in kiosks:
                k.start()
            for _ in kiosks:  # every kiosk logged in, watching, and (warm_up) part way through a batch
                if not ready.acquire(timeout=900):
                    raise RuntimeError("the kiosks did not get ready within 15 minutes")
            warm_s = time.perf_counter() - warm_t0
            start_at = time.time() + 1
            until = start_at + seconds
            window[0], window[1] = start_at, until
            go.set()
            stop = threading.Event()
            sent: list[float] = []
            memory: list[tuple[float, float]] = []
            server_pids = [s.pid for s in servers]
            while time.time() < start_at:
                time.sleep(0.1)
            memory.append((time.time(), _rss_mb(server_pids)))
            publisher = threading.Thread(target=_publish_live, args=(redis_url, live_every_ms / 1000, stop, sent),
                                         daemon=True)
            publisher.start()
            while time.time() < until:
                time.sleep(min(5.0, max(0.1, until - time.time())))
                memory.append((time.time(), _rss_mb(server_pids)))
            stop.set()
            samples: list[tuple[float, float]] = []
            errors: list[str] = []
            live: list[float] = []
            received: list[int] = []  # by the kiosks that had their live connection throughout
            refusals: list[int] = []
            in_app: list[float] = []
            splits: list[tuple[float, float, float]] = []
            warmed = 0  # completions in the warm-up, before the window (recorded, not timed)
            for _ in kiosks:
                got, failed, lat, n_live, app_s, refused, parts, before = out.get(timeout=600)
                warmed += before
                splits += parts
                samples += got
                in_app += app_s
                errors += failed
                live += lat
                refusals.append(len(refused))
                if not refused:
                    received.append(n_live)
            for k in kiosks:
                k.join(60)
            elapsed = max(s[0] for s in samples) - start_at if samples else seconds

            # afterwards: audit verify, the outbox drained, the witness holds the latest checkpoint
            verify = subprocess.run([sys.executable, "-c", "from mes.cli import main; main()", "audit", "verify"],
                                    env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
            outbox = _outbox_drained(app, receiver)
            with app.app_context():  # every completion a kiosk saw answered is recorded, once
                recorded = int(db.session.execute(text("SELECT COUNT(*) FROM audit_entries WHERE "
                                                       "action = 'batch.step.completed'")).scalar() or 0)
                db.session.remove()
                db.engine.dispose()
            witnessed = _witness_latest(app, witnesses)
            receiver.stop()
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            _stop([p for p in procs if p.poll() is None])
    lat = [s for _, s in samples]
    steps_pct = percentiles(lat)
    live_pct = percentiles(live)
    result: dict[str, Any] = {
        "benchmark": "plant", "db": backend, "operators": operators, "seconds": seconds, "think_ms": think_ms,
        "server": f"{instances} x mes run (deploy/gunicorn.conf.py, 1 worker, {server_threads()} threads) behind nginx "
                  "(deploy/nginx/mes.conf in plain HTTP), Redis message queue, relay, witness",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "seed_s": round(seed_s, 1),
        # unmeasured, before the window: each kiosk part way through its first batch (see _operator)
        "warm_up": warm_up, "warm_up_s": round(warm_s, 1),
        "completions": len(lat), "completions_per_s": round(len(lat) / max(elapsed, 1e-9), 1),
        "errors": len(errors), "first_errors": errors[:3],
        "step_completion": steps_pct,
        # the server's own time per completion (Server-Timing app;dur): the rest is queueing for
        # the CPUs, nginx and the client (on this machine the kiosks share the server's cores)
        "step_completion_in_app": percentiles(in_app),
        # of the time in the app, the wait for the audit log's append lock (Server-Timing audit-lock),
        # and where the slowest 1 % of completions spent their time
        "step_completion_audit_lock_wait": percentiles([lock for _, _, lock in splits]),
        "slowest_1pct": _slowest(splits),
        "live_delivery": {**live_pct, "published": len(sent), "kiosks": operators,
                          # kiosks an instance refused a live connection (no room for it: 503,
                          # mes.realtime.LiveBudget); they worked on without it, asking again every 10 s
                          "kiosks_refused_live": sum(1 for n in refusals if n), "live_refusals": sum(refusals),
                          "min_received_share": round(min(received) / len(sent), 3) if sent and received else None},
        "http_floor_healthz": floor, "bare_commit": bare,
        "ratio_p50_to_http_floor_p50": ratio(steps_pct["p50_ms"], floor["p50_ms"]),
        "ratio_p50_to_bare_commit_p50": ratio(steps_pct["p50_ms"], bare["p50_ms"]),
        "ratio_p99_to_bare_commit_p99": ratio(steps_pct["p99_ms"], bare["p99_ms"]),
        "audit_verify_ok": verify.returncode == 0,
        **({} if verify.returncode == 0 else {"audit_verify_said": (verify.stdout + verify.stderr)[-1500:]}),
        "outbox": outbox, "witness": witnessed,
        "completions_recorded": recorded, "completions_before_the_window": warmed,
        "records_match_answers": recorded == len(lat) + warmed,
        "server_rss_mb": {"start": memory[0][1] if memory else None, "end": memory[-1][1] if memory else None},
        "target": {"errors": 0, "p99_ms": 50.0,
                   "met": not errors and steps_pct["p99_ms"] <= 50.0 and verify.returncode == 0
                   and outbox["drained"]},
    }
    if soak:
        windows = _windows(samples, memory, start_at, window_s)
        result["soak"] = {"window_s": window_s, "windows": windows,
                          "p99_drift": ratio(windows[-1]["p99_ms"], windows[0]["p99_ms"]) if windows else None,
                          "rss_drift_mb": round(memory[-1][1] - memory[0][1], 1) if memory else None}
    return result


def _outbox_drained(app: Any, receiver: Any) -> dict[str, Any]:
    """Every outbox event delivered to the receiver (waits up to 60 s for the relay)."""
    from mes.db import db

    with app.app_context():
        deadline = time.monotonic() + 60
        while True:
            pending = int(db.session.execute(text("SELECT COUNT(*) FROM integration_deliveries "
                                                  "WHERE status <> 'delivered'")).scalar() or 0)
            events = int(db.session.execute(text("SELECT COUNT(*) FROM outbox_events")).scalar() or 0)
            # the events meant for the receiver's endpoint (those before it was added have no delivery)
            due = int(db.session.execute(text("SELECT COUNT(*) FROM integration_deliveries")).scalar() or 0)
            db.session.rollback()
            got = len({r.webhook_id for r in receiver.accepted()})
            if (pending == 0 and got >= due) or time.monotonic() > deadline:
                db.session.remove()
                db.engine.dispose()
                return {"events": events, "for_the_endpoint": due, "received": got, "undelivered": pending,
                        "drained": pending == 0 and got >= due}
            time.sleep(0.2)


def _witness_latest(app: Any, witnesses: str) -> dict[str, Any]:
    """Publish a checkpoint, have the witness cosign it; does it hold the latest?"""
    from mes.audit import checkpoint as notes
    from mes.audit import log as audit_log
    from mes.db import db
    from mes.witness import client

    app.config["MES_AUDIT_WITNESSES"] = witnesses
    with app.app_context():
        audit_log.publish_checkpoint()
        db.session.commit()
        client.sync_witnesses()
        latest = audit_log.latest_checkpoint()
        kept = [notes.parse_checkpoint(note).size for _, note in client.witnessed_checkpoints(audit_log.audit_log())]
        db.session.remove()
        db.engine.dispose()
    return {"latest_checkpoint_size": latest.size if latest else None, "witness_holds": kept,
            "holds_latest": bool(latest) and latest.size in kept}


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.set_defaults(db="postgresql")
    ap.add_argument("--operators", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=120.0, help="how long the operators work")
    ap.add_argument("--instances", type=int, default=2, help="mes run instances behind nginx")
    ap.add_argument("--think-ms", type=int, default=1000, help="mean pause between an answer and the next tap")
    ap.add_argument("--steps", type=int, default=40, help="steps per batch")
    ap.add_argument("--live-every-ms", type=int, default=500, help="a live event to every kiosk this often")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="every kiosk starts its first batch in the window's first second (a cold, synchronised start)")
    ap.add_argument("--soak", action="store_true", help="report latency and memory per window and their drift")
    ap.add_argument("--window", type=float, default=300.0, help="soak window in seconds")
    args = ap.parse_args()
    if args.operators < 1 or args.instances < 1 or args.seconds <= 0:
        ap.error("--operators and --instances are 1 or more, --seconds above 0")
    started = time.perf_counter()
    result = run(args.db, args.operators, args.seconds, args.instances, args.think_ms, args.steps,
                 args.live_every_ms, args.soak, args.window, warm_up=not args.no_warm_up)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
