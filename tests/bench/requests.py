"""Benchmark: an authenticated API GET and a small audited write through the full HTTP
stack (real server on loopback, real database), beside a bare database commit measured
in the same run.

    python -m tests.bench.requests [--db sqlite|postgresql] [--n 500]
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import requests
from sqlalchemy import text
from werkzeug.serving import make_server

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


def run(backend: str, n: int) -> dict:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from mes.audit.log import Actor
    from mes.db import db
    from mes.users import operations as ops

    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp))
        with app.app_context():
            seed = Actor.system("bench")
            ops.create_user(seed, "admin", "Bench Admin", {"admin"}, password="Bench-Passw0rd-1")
            _, token = ops.issue_token(seed, "admin", ["users.admin", "terminals.admin"], "bench")
            with db.engine.begin() as conn:
                create_bare_table(conn, backend)
            db.session.remove()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        port = server.server_port
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        try:
            assert http.get(f"{base}/api/v1/users").status_code == 200
            warm = max(3, n // 10)
            for _ in range(warm):
                http.get(f"{base}/api/v1/users/admin")
            get_samples = timed(lambda: _ok(http.get(f"{base}/api/v1/users/admin")), n)
            counter = iter(range(10**9))
            write_samples = timed(
                lambda: _ok(http.post(f"{base}/api/v1/terminals", json={"id": f"T-{next(counter)}", "kind": "kiosk"})), n)
            with app.app_context():
                engine = db.engine
                seq = iter(range(10**9))

                def bare_commit() -> None:
                    with engine.begin() as conn:
                        conn.execute(text(f"INSERT INTO {BARE_TABLE} (seq, at, action, actor_id, entity_type, entity_id, "
                                          "entry_bytes, leaf_hash) VALUES (:s, 'x', 'a', 'u', 't', 'e', :b, :h)"),
                                     {"s": next(seq), "b": b"x" * 400, "h": b"h" * 32})

                bare_samples = timed(bare_commit, n)
                engine.dispose()
        finally:
            server.shutdown()
    get_p, write_p, bare_p = percentiles(get_samples), percentiles(write_samples), percentiles(bare_samples)
    return {
        "benchmark": "requests", "db": backend, "n": n,
        "api_get": get_p, "audited_write": write_p, "bare_commit": bare_p,
        "ratio_get_p50_to_bare_commit_p50": ratio(get_p["p50_ms"], bare_p["p50_ms"]),
        "ratio_get_p99_to_bare_commit_p99": ratio(get_p["p99_ms"], bare_p["p99_ms"]),
        "ratio_write_p50_to_bare_commit_p50": ratio(write_p["p50_ms"], bare_p["p50_ms"]),
        "ratio_write_p99_to_bare_commit_p99": ratio(write_p["p99_ms"], bare_p["p99_ms"]),
    }


def _ok(response: requests.Response) -> None:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.status_code}: {response.text[:200]}")


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    started = time.perf_counter()
    result = run(args.db, args.n)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
