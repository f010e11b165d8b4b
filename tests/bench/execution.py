"""Benchmark: batch step completion through the HTTP API with 1, 10 and 30 batches running
at once, p50/p99 per level, beside a bare database commit and an empty request through the
same servers and client (``/healthz``: the HTTP floor, back to back and at the operators'
pace) measured in the same run.

The servers are deployed as ``deploy/`` says (real database, loopback): by default two
``mes run`` instances (gunicorn, one threaded worker each, ``deploy/gunicorn.conf.py``)
behind nginx with the site of ``deploy/nginx/mes.conf`` (plain HTTP here, see
:func:`nginx_config`); ``--instances 0`` talks to one instance directly. One operator and
kiosk per batch, each kiosk a client process of its own with an address of its own, as each
is a machine of its own on the floor, with one keep-alive connection as a browser keeps (see
:class:`KioskHttp`). Each answer's Server-Timing gives the app's share (``in_app``). The
recipe has only instruction and numeric steps, so the measurement is the completion path
itself (authenticate, lock batch and step, check order and version, record, audit, refresh
states, commit).

Two ways of driving the batches, both reported:

* ``paced`` (the target): each operator completes a step, then takes ``--think-ms`` (drawn
  uniformly between half and one and a half times it, so the batches do not march in
  step) before the next tap: what 30 batches running on a shop floor send. A gloved
  operator reading an instruction and tapping Confirm needs well over a second per step;
  the default 1000 ms is faster than any real operator.
* ``saturated``: no pause at all, every operator taps again the moment the answer comes:
  the server's throughput (completions/s), where the latency is mostly queueing.

    python -m tests.bench.execution [--db sqlite|postgresql] [--batches 1,10,30] [--steps 40]
                                    [--think-ms 1000] [--instances 2] [--workers 1]
                                    [--kiosks processes|threads]
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import text

from tests.bench.common import (
    BARE_TABLE,
    bench_database,
    create_bare_table,
    make_bench_app,
    parser,
    percentiles,
    ratio,
    timed,
)

PASSWORD = "Bench-Passw0rd-1"
DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"
NGINX_SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "mes.conf"


def recipe_yaml(steps: int) -> str:
    """A synthetic recipe: ``steps`` steps alternating instruction and numeric, in one operation
    (the measured part), then the identify and produce_output steps the format requires."""
    lines = []
    for i in range(steps):
        if i % 2 == 0:
            lines.append(f"          - {{id: s{i}, kind: instruction, title: Step {i}, instruction: Do step {i}.}}")
        else:
            lines.append(f"          - {{id: s{i}, kind: numeric, title: Step {i}, instruction: Enter the value., "
                         f"unit: kg, precision: 1, low: \"1.0\", high: \"2.0\"}}")
    return f"""\
format: mes.master-recipe/v1
id: MR-BENCH-{steps}
version: 1
product: {{code: FG-BENCH, name: Bench product}}
batch_size: {{quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}}
bill_of_materials:
  - {{item: RM-BENCH, name: Raw, role: ingredient, quantity: "10.000", unit: kg, tolerance: {{percent: "1.0"}}}}
procedure:
  - id: up1
    title: Bench
    operations:
      - id: op1
        title: Steps
        steps:
""" + "\n".join(lines) + """
  - id: up2
    title: Not measured (the format needs an identify step per BOM item and one produce_output)
    operations:
      - id: op2
        title: Finish
        steps:
          - {id: x1, kind: identify, title: X1, instruction: Scan., item: RM-BENCH}
          - {id: out, kind: produce_output, title: Out, instruction: Weigh., item: FG-BENCH, quantity: "10.000", unit: kg,
             yield_low: "90.0", yield_high: "101.0"}
"""


def _seed(steps: int, work_orders: int, operators: int) -> dict[str, Any]:
    """Users, kiosks (one per operator), an effective recipe and dispatched work orders."""
    from mes.audit.log import Actor
    from mes.db import db
    from mes.execution import operations as ex
    from mes.execution import recipes_store as store
    from mes.signatures.operations import Credentials
    from mes.users import operations as ops
    from mes.users.models import Terminal

    seed = Actor.system("bench")
    ops.create_user(seed, "sup", "Bench Supervisor", {"supervisor"}, password=PASSWORD)
    ops.create_user(seed, "qa", "Bench QA", {"qa"}, password=PASSWORD)
    ops.register_terminal(seed, "QA-WS", "workstation", "QA")
    kiosks = []
    for n in range(operators):
        ops.create_user(seed, f"op{n}", f"Operator {n}", {"operator"}, password=PASSWORD, badge_id=f"B{n}", pin="2468")
        _, key = ops.register_terminal(seed, f"KIOSK-{n}", "kiosk", f"Kiosk {n}", line="LINE-1")
        kiosks.append(f"KIOSK-{n}:{key}")
    author = ops.actor_for(ops.get_user("sup"), "supervisor", "QA-WS")
    rv = store.import_recipe(author, recipe_yaml(steps), "bench.yaml")
    store.submit_for_review(author, rv.id)
    ops.acknowledge_esig_accountability("qa", "QA-WS")
    qa_session, _ = ops.login_with_password("qa", PASSWORD, db.session.get(Terminal, "QA-WS"))
    store.approve(qa_session, Credentials(PASSWORD, user_id="qa"), rv.id, terminal="QA-WS")
    store.make_effective(author, rv.id)
    wos = []
    for _ in range(work_orders):
        wo = ex.create_work_order(author, "FG-BENCH", "10.000", "kg", rv.id, line="LINE-1")
        ex.release_work_order(author, wo.id)
        ex.dispatch_work_order(author, wo.id, "LINE-1")
        wos.append(wo.id)
    return {"kiosks": kiosks, "work_orders": wos}


class KioskHttp:
    """The timed side of a kiosk: one keep-alive HTTP/1.1 connection (``http.client``) that
    sends what the kiosk's browser sends (session cookie, CSRF token, terminal header,
    Idempotency-Key, JSON body) and keeps the cookie the server sets.

    The log-in and the batch start go through ``sim_operator`` (``requests``). The timed
    requests do not: ``requests`` spends about 2 ms of client Python per call (prepared
    request, cookie jar, urllib3 pool), which would be counted as the server's latency and
    which a kiosk's browser does not spend. Measured on one kiosk, paced: p50 12.4 ms
    through ``requests`` against 10.5 ms through this client, for the same completions."""

    def __init__(self, base: str, client: Any = None, source: str | None = None) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30,
                                               source_address=(source, 0) if source else None)
        self.client = client
        self.headers: dict[str, str] = {}
        self.cookies: dict[str, str] = {}
        self.last_app_s: float | None = None  # the server's Server-Timing "app" of the last answer
        self.last_lock_s: float | None = None  # of which, waiting for the audit append lock ("audit-lock")
        if client is not None:
            self.headers = {"X-MES-Terminal": client.http.headers["X-MES-Terminal"], "X-CSRF-Token": client.csrf or "",
                            "Content-Type": "application/json"}
            self.cookies = dict(client.http.cookies.items())

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        h = {**self.headers, **(headers or {})}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.conn.request(method, path, json.dumps(body) if body is not None else None, h)
        response = self.conn.getresponse()
        data = response.read()
        self.last_app_s = self.last_lock_s = None
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, val = value.split(";", 1)[0].partition("=")
                self.cookies[key.strip()] = val
            elif name.lower() == "server-timing":
                for metric in value.split(","):
                    metric_name, _, params = metric.strip().partition(";")
                    if metric_name == "app" and params.startswith("dur="):
                        self.last_app_s = float(params.split(";")[0].removeprefix("dur=")) / 1000
                    elif metric_name == "audit-lock" and params.startswith("dur="):
                        self.last_lock_s = float(params.split(";")[0].removeprefix("dur=")) / 1000
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else {}

    def complete_step(self, batch_id: str, step_id: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/batches/{batch_id}/steps/{step_id}/complete",
                            {"expected_version": version, "payload": payload},
                            {"Idempotency-Key": self.client.key()})

    def close(self) -> None:
        self.conn.close()


def _drive(base: str, kiosk: str, badge: str, work_order: str, samples: list[float], errors: list[str],
           barrier: threading.Barrier, think_s: float = 0.0, in_app: list[float] | None = None,
           source: str | None = None) -> None:
    """Log in, start the batch, wait for the others, then complete every step in order
    (with ``think_s`` on average between an answer and the next tap). ``in_app`` gets the
    server's own time for each completion (its Server-Timing header)."""
    from mes.execution.sim_operator import Login, login

    try:
        client = login(base, kiosk, Login(badge=badge, pin="2468"))
        batch = client.post(f"/api/v1/work-orders/{work_order}/batches", {})
        steps = [(s["id"], s["kind"], s["version"]) for s in batch["steps"] if s["kind"] in ("instruction", "numeric")]
        timed_http = KioskHttp(base, client, source)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"set-up: {exc}")
        barrier.abort()
        return
    try:
        barrier.wait(60)
    except threading.BrokenBarrierError:
        return
    pace = random.Random(work_order)
    try:
        if think_s:
            time.sleep(pace.uniform(0, think_s))  # operators do not all start on the same second
        for step_id, kind, version in steps:
            payload = {"confirm": True} if kind == "instruction" else {"value": "1.5"}
            t = time.perf_counter()
            out = timed_http.complete_step(batch["id"], step_id, version, payload)
            samples.append(time.perf_counter() - t)
            if in_app is not None and timed_http.last_app_s is not None:
                in_app.append(timed_http.last_app_s)
            assert out["state"] == "completed", out
            if think_s:
                time.sleep(pace.uniform(0.5 * think_s, 1.5 * think_s))
    except (AssertionError, RuntimeError, OSError, http.client.HTTPException) as exc:
        errors.append(f"{work_order}: {exc}")
    finally:
        timed_http.close()


def _kiosk_process(base: str, kiosk: str, badge: str, work_order: str, barrier: Any, think_s: float,
                   out: Any, source: str | None = None) -> None:
    """One kiosk in its own process: drive one batch, send back its samples and errors."""
    samples: list[float] = []
    in_app: list[float] = []
    errors: list[str] = []
    try:
        _drive(base, kiosk, badge, work_order, samples, errors, barrier, think_s, in_app, source)
    finally:
        out.put((samples, in_app, errors))


def kiosk_address(n: int) -> str:
    """Kiosk ``n``'s own loopback address (127.0.1.n+1): on the floor each kiosk is a machine
    with its own address, which is what nginx's sticky ``hash $remote_addr`` spreads."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def _level(base: str, seeded: dict[str, Any], wos: Any, level: int, think_s: float,
           kiosks_as: str = "processes", own_addresses: bool = False) -> dict[str, Any]:
    """``level`` batches at once; their completions' percentiles and the rate achieved.

    Each batch's kiosk runs in its own process by default, as on the floor, where every
    kiosk is a machine of its own: in one process, 30 client threads would queue for the
    client's interpreter lock whenever requests coincide, and that queue would be counted
    as the server's latency. ``kiosks_as="threads"`` keeps them in this process."""
    samples: list[float] = []
    in_app: list[float] = []
    errors: list[str] = []
    if kiosks_as == "threads":
        barrier: Any = threading.Barrier(level)
        workers: list[Any] = [threading.Thread(target=_drive, args=(base, seeded["kiosks"][n], f"B{n}", next(wos),
                                                                    samples, errors, barrier, think_s, in_app,
                                                                    kiosk_address(n) if own_addresses else None))
                              for n in range(level)]
    else:
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(level)
        out = ctx.Queue()
        workers = [ctx.Process(target=_kiosk_process, args=(base, seeded["kiosks"][n], f"B{n}", next(wos), barrier,
                                                            think_s, out, kiosk_address(n) if own_addresses else None))
                   for n in range(level)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    if kiosks_as != "threads":
        for _ in workers:
            got, got_in_app, failed = out.get(timeout=600)
            samples.extend(got)
            in_app.extend(got_in_app)
            errors.extend(failed)
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"{len(errors)} batch(es) failed at {level} batches: {errors[0]}")
    if len(in_app) != len(samples):
        raise RuntimeError(f"{len(samples) - len(in_app)} completion answers had no Server-Timing app;dur")
    elapsed = time.perf_counter() - started
    return {**percentiles(samples), "completions_per_s": round(len(samples) / elapsed, 1),
            "in_app": percentiles(in_app)}


def _paced_floor(http: KioskHttp, n: int, think_s: float) -> dict[str, float]:
    """``/healthz`` with the paced operators' pause before each request."""
    pace = random.Random(n)
    samples = []
    for _ in range(n):
        time.sleep(pace.uniform(0.5 * think_s, 1.5 * think_s))
        t = time.perf_counter()
        http.request("GET", "/healthz")
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(home: Path, instance_ports: list[int], port: int) -> str:
    """The deployed nginx site (``deploy/nginx/mes.conf``) as a complete nginx.conf for the
    bench: its upstream (sticky ``hash $remote_addr consistent``, upstream keep-alive) lists
    the bench's instances, its HTTPS server listens on loopback ``port`` in plain HTTP (no
    certificate here; TLS costs a handshake per kiosk connection and little per request),
    logs go to ``home``; the HTTP-to-HTTPS redirect servers are left out. Every proxy setting
    (headers, buffering, time-outs, access log) is the deployed one."""
    site = NGINX_SITE.read_text()
    blocks: list[str] = []
    depth, current = 0, []
    for line in site.splitlines():
        code = line.split("#", 1)[0]
        current.append(line)
        depth += code.count("{") - code.count("}")
        if depth == 0 and code.strip().endswith(("}", ";")) or depth == 0 and not code.strip():
            blocks.append("\n".join(current))
            current = []
    kept, served = [], False
    for block in blocks:
        code = "\n".join(line.split("#", 1)[0] for line in block.splitlines())
        if re.search(r"^\s*server\s*\{", code, re.M):
            if not re.search(r"^\s*listen\s+443\s+ssl\b(?![^;]*default_server)", code, re.M):
                continue  # the redirect and default servers
            served = True
            lines = []
            for line in block.splitlines():
                stripped = line.strip()
                if re.match(r"listen\s+443\b", stripped):
                    lines.append(f"    listen 127.0.0.1:{port};")
                elif stripped.startswith(("listen [::]", "ssl_", "http2 ")):
                    continue
                elif stripped.split(None, 1)[:1] == ["access_log"] and "off" not in stripped:
                    lines.append(f"    access_log {home}/nginx-access.log mes_json;")
                elif stripped.split(None, 1)[:1] == ["error_log"]:
                    lines.append(f"    error_log {home}/nginx-error.log warn;")
                else:
                    lines.append(line)
            block = "\n".join(lines)
        elif "upstream mes_web" in block:
            lines = [line for line in block.splitlines() if not line.strip().startswith("server ")]
            at = next(i for i, line in enumerate(lines) if "hash $remote_addr" in line) + 1
            lines[at:at] = [f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in instance_ports]
            block = "\n".join(lines)
        kept.append(block)
    if not served:
        raise RuntimeError(f"{NGINX_SITE} has no 'listen 443 ssl' server for the MES: the bench cannot follow it")
    temp = home / "nginx-temp"
    temp.mkdir(exist_ok=True)
    user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return (f"{user}worker_processes auto;\ndaemon off;\npid {home}/nginx.pid;\nerror_log {home}/nginx-error.log warn;\n"
            "events { worker_connections 4096; }\nhttp {\n"
            + "".join(f"    {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                           "scgi"))
            + "\n".join(kept) + "\n}\n")


def _start_nginx(home: Path, instance_ports: list[int]) -> tuple[subprocess.Popen, str]:
    """nginx (Debian's) in front of the instances, configured as deployed: see :func:`nginx_config`."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        raise RuntimeError("the deployed topology needs nginx (apt-get install nginx, or --instances 0)")
    port = _free_port()
    conf = home / "nginx.conf"
    conf.write_text(nginx_config(home, instance_ports, port))
    check = subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-p", str(home)], capture_output=True, text=True)
    if check.returncode:
        raise RuntimeError(f"nginx refused the bench configuration: {check.stderr.strip()}")
    with open(home / "nginx-stderr.log", "ab") as stderr:
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(home)], stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(proc, base, home / "nginx-stderr.log")
    return proc, base


def _wait_healthy(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{base} exited:\n" + log.read_text(errors="replace")[-3000:])
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    _stop([proc])
    raise RuntimeError(f"{base} did not answer /healthz within 60 s")


def _upstream_spread(access_log: Path) -> dict[str, int]:
    """Step completions nginx sent to each instance (its JSON access log), over every level:
    how the sticky hash spread the kiosks."""
    counts: dict[str, int] = {}
    for line in access_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("method") == "POST" and entry.get("uri", "").endswith("/complete"):
            counts[entry.get("upstream", "")] = counts.get(entry.get("upstream", ""), 0) + 1
    return dict(sorted(counts.items()))


def _stop(processes: list[subprocess.Popen]) -> None:
    """Stop each process and its children (gunicorn's and nginx's workers: each was started in
    a session of its own), the whole group killed if it does not stop in 20 s."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def server_threads() -> str:
    """Threads per instance: ``MES_THREADS`` as given to the bench, else ``mes run``'s default."""
    from mes.config import threads_of

    return str(threads_of(os.environ))


def _start_server(url: str, home: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """``mes run`` on a free loopback port, configured from ``MES_*`` variables as deployed."""
    port = _free_port()
    # MES_THREADS passes through: at 100 kiosks each instance holds one thread per WebSocket
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MES_") or k in ("MES_AUDIT_TAG_KEY_PATH", "MES_THREADS")}
    env.update({"MES_HOME": str(home), "MES_DATABASE_URL": url, "MES_SECRET_KEY": "bench-secret-key-0123456789",
                "MES_SESSION_COOKIE_SECURE": "false", "MES_LOG_LEVEL": "ERROR",
                "MES_AUDIT_KEY_PATH": str(home / "audit-signing.key"),
                # every operator of the bench logs in from 127.0.0.1 within a second
                "MES_LOGIN_RATE_PER_MINUTE": "100000"})
    log = open(home / "server.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-c", "from mes.cli import main; main()", "run", "--bind",
                             f"127.0.0.1:{port}", "--workers", str(workers), "--config", str(DEPLOY_CONFIG)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(proc, base, home / "server.log")
    return proc, base


def run(backend: str, levels: list[int], steps: int, think_ms: int = 1000, workers: int = 1,
        kiosks_as: str = "processes", instances: int = 2) -> dict:
    """``instances`` = 0: the kiosks talk to one ``mes run`` directly. ``instances`` >= 1:
    the deployed topology, that many ``mes run`` instances behind nginx (see
    :func:`nginx_config`), each kiosk from an address of its own."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from mes.db import db

    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp))
        with app.app_context():
            seeded = _seed(steps, 2 * sum(levels) + 1, max(levels))
            db.session.remove()  # SQLite: an open session transaction holds the write lock
            with db.engine.begin() as conn:
                create_bare_table(conn, backend)
            db.session.remove()
            db.engine.dispose()
        processes: list[subprocess.Popen] = []
        try:
            bases = []
            for _ in range(max(1, instances)):
                server, base = _start_server(url, Path(tmp), workers)
                processes.append(server)
                bases.append(base)
            if instances:
                proxy, base = _start_nginx(Path(tmp), [int(b.rsplit(":", 1)[1]) for b in bases])
                processes.append(proxy)
        except BaseException:
            _stop(processes)
            raise
        own = bool(instances)
        wos = iter(seeded["work_orders"])
        paced: dict[str, Any] = {}
        saturated: dict[str, Any] = {}
        try:
            # warm-up: one batch, not measured
            _drive(base, seeded["kiosks"][0], "B0", next(wos), [], warm_errors := [], threading.Barrier(1))
            if warm_errors:
                raise RuntimeError(warm_errors[0])
            # the floor of any request through this server and client: an empty GET, back to
            # back, and at the operators' pace (after a pause the server, the database and the
            # CPUs start from idle: the paced completions pay that too)
            http = KioskHttp(base, source=kiosk_address(0) if own else None)  # the client of the timed completions
            floor = percentiles(timed(lambda: http.request("GET", "/healthz"),
                                      max(50, steps * 5)))
            floor_paced = _paced_floor(http, max(10, min(steps, 30)), think_ms / 1000)
            http.close()
            for level in levels:
                paced[str(level)] = _level(base, seeded, wos, level, think_ms / 1000, kiosks_as, own)
            for level in levels:
                saturated[str(level)] = _level(base, seeded, wos, level, 0.0, kiosks_as, own)
            with app.app_context():
                engine = db.engine
                seq = iter(range(10**9))

                def bare_commit() -> None:
                    with engine.begin() as conn:
                        conn.execute(text(f"INSERT INTO {BARE_TABLE} (seq, at, action, actor_id, entity_type, entity_id, "
                                          "entry_bytes, leaf_hash) VALUES (:s, 'x', 'a', 'u', 't', 'e', :b, :h)"),
                                     {"s": next(seq), "b": b"x" * 400, "h": b"h" * 32})

                bare = percentiles(timed(bare_commit, max(50, steps * 5)))
                engine.dispose()
            spread = _upstream_spread(Path(tmp) / "nginx-access.log") if instances else {}
        finally:
            _stop(processes)
    top = paced[str(max(levels))]
    return {
        "benchmark": "execution", "db": backend, "steps_per_batch": steps, "batches": levels,
        "think_ms": think_ms,
        "server": (f"{instances} x mes run (deploy/gunicorn.conf.py, {workers} worker(s), {server_threads()} threads) behind nginx "
                   "(deploy/nginx/mes.conf in plain HTTP, kiosks from addresses of their own)" if instances else
                   f"mes run (deploy/gunicorn.conf.py), {workers} worker(s), {server_threads()} threads, no proxy"),
        "kiosks": "one process per batch" if kiosks_as == "processes" else "one thread per batch, one process",
        "client": "http.client, one keep-alive connection per kiosk (log-in and batch start through requests)",
        "step_completion": paced, "step_completion_saturated": saturated,
        **({"completions_per_instance": spread} if instances else {}),
        "bare_commit": bare, "http_floor_healthz": floor, "http_floor_healthz_paced": floor_paced,
        "ratio_p50_to_http_floor_p50": {k: ratio(v["p50_ms"], floor["p50_ms"]) for k, v in paced.items()},
        "ratio_p50_to_paced_http_floor_p50": {k: ratio(v["p50_ms"], floor_paced["p50_ms"])
                                              for k, v in paced.items()},
        "ratio_p50_to_bare_commit_p50": {k: ratio(v["p50_ms"], bare["p50_ms"]) for k, v in paced.items()},
        "ratio_p99_to_bare_commit_p99": {k: ratio(v["p99_ms"], bare["p99_ms"]) for k, v in paced.items()},
        "target": {"p99_ms_at_max_batches": 20.0, "met": top["p99_ms"] <= 20.0},
    }


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,10,30", help="concurrency levels, comma-separated")
    ap.add_argument("--steps", type=int, default=40, help="steps per batch")
    ap.add_argument("--workers", type=int, default=1, help="worker processes per instance (mes run --workers)")
    ap.add_argument("--think-ms", type=int, default=1000,
                    help="paced mode: mean pause of an operator between an answer and the next tap")
    ap.add_argument("--instances", type=int, default=2,
                    help="mes run instances behind nginx, as deployed (0: the kiosks talk to one instance directly)")
    ap.add_argument("--kiosks", choices=["processes", "threads"], default="processes",
                    help="one client process per batch (as on the floor), or threads in one process")
    args = ap.parse_args()
    if args.instances < 0 or args.workers < 1:
        ap.error("--instances is 0 or more and --workers 1 or more")
    levels = [int(x) for x in args.batches.split(",") if x.strip()]
    started = time.perf_counter()
    result = run(args.db, levels, args.steps, args.think_ms, args.workers, args.kiosks, args.instances)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
