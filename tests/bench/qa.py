"""Benchmark: QA takes a completed batch with 10 exceptions from opening it to release through
the QA workstation pages (real HTTP server on loopback, real database): the batch list, the
batch page, the full record, and by a second QA person (the first signed the QA gate:
segregation of duties) each exception marked reviewed (and the page again), the signed
audit-trail review, the signed batch review and the signed release;
the time of each page (round trip on loopback: the server's time) beside a bare request
(``/healthz``) measured in the same run.

    python -m tests.bench.qa [--db sqlite|postgresql] [--batches 5] [--exceptions 10] [--n 50]
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from tests.bench.common import bench_database, make_bench_app, parser, percentiles, ratio, timed

QA_WS = "QA-WS-01:test-qa-ws-01-enrolment-key"


def prepare(batches: int, exceptions: int) -> list[str]:
    """Completed packing batches, each with ``exceptions`` exceptions (an out-of-limit value,
    its deviation, and further minor deviations, all dispositioned), and a second QA person."""
    import pytest

    from mes.db import db
    from mes.execution import operations as ex
    from tests.execution_helpers import make_world, second_qa
    from tests.test_qa_release import _batch

    mp = pytest.MonkeyPatch()
    world = make_world(mp)
    second_qa(world)
    out = []
    for _ in range(batches):
        batch_id = _batch(world, hardness="130")  # 2 exceptions: the value and its deviation
        for i in range(max(0, exceptions - len(ex.exceptions(batch_id)))):
            dev = ex.raise_deviation(world.actor("operator"), batch_id, "minor", "other", f"finding {i + 1}")
            ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev.id, "use_as_is", "assessed",
                                     terminal="QA-WS-01")
        assert len(ex.exceptions(batch_id)) == exceptions
        out.append(batch_id)
        world.clock.advance(60)
    mp.undo()
    db.session.remove()
    return out


def login(base: str, user: str) -> tuple[requests.Session, str]:
    from tests.helpers import PASSWORD

    http = requests.Session()
    http.headers["X-MES-Terminal"] = QA_WS
    http.headers["X-CSRF-Token"] = http.get(f"{base}/api/v1/auth/csrf").json()["csrf_token"]
    r = http.post(f"{base}/api/v1/auth/login", json={"user_id": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    csrf = r.json()["csrf_token"]
    http.headers["X-CSRF-Token"] = csrf
    return http, csrf


def run(backend: str, batches: int, exceptions: int, n: int) -> dict[str, Any]:
    import logging

    from mes.db import db
    from tests.helpers import PASSWORD

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    pages: dict[str, list[float]] = defaultdict(list)
    flows: list[float] = []
    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp))
        with app.app_context():
            ids = prepare(batches, exceptions)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            qa1, _ = login(base, "qa1")
            qa2, csrf2 = login(base, "qa2")

            def page(http: requests.Session, name: str, path: str, form: dict[str, str] | None = None) -> str:
                t = time.perf_counter()
                r = (http.post(base + path, data=form, allow_redirects=False) if form is not None
                     else http.get(base + path))
                pages[name].append(time.perf_counter() - t)
                if r.status_code >= 400:
                    raise RuntimeError(f"{name} {path}: {r.status_code} {r.text[:300]}")
                return r.text

            for _ in range(3):
                qa1.get(f"{base}/healthz")
            for batch_id in ids:
                started = time.perf_counter()
                page(qa1, "batch_list", "/qa/batches?status=completed")
                html = page(qa1, "batch_page", f"/qa/batches/{batch_id}")
                # qa1 signed the batch's QA gate: qa2, who took no part, reviews and releases it
                for key in re.findall(r'<input type="hidden" name="key" value="([^"]+)">', html):
                    page(qa2, "mark_reviewed", f"/qa/batches/{batch_id}/exceptions/reviewed",
                         {"csrf_token": csrf2, "key": key, "note": "assessed"})
                    page(qa2, "batch_page", f"/qa/batches/{batch_id}")
                page(qa1, "full_record", f"/qa/batches/{batch_id}/record")
                page(qa2, "trail_review", f"/qa/batches/{batch_id}/trail-review",
                     {"csrf_token": csrf2, "password": PASSWORD})
                page(qa2, "batch_review", f"/qa/batches/{batch_id}/review", {"csrf_token": csrf2, "password": PASSWORD})
                page(qa2, "release", f"/qa/batches/{batch_id}/release",
                     {"csrf_token": csrf2, "decision": "released", "password": PASSWORD})
                flows.append(time.perf_counter() - started)
            with app.app_context():
                from mes.execution import operations as ex

                assert all(ex.get_batch(b).status == "released" for b in ids), "a batch was not released"
                db.session.remove()
            bare = timed(lambda: qa1.get(f"{base}/healthz").raise_for_status(), n)
        finally:
            server.shutdown()
        with app.app_context():
            db.engine.dispose()
    bare_p = percentiles(bare)
    per_page = {name: percentiles(samples) for name, samples in pages.items()}
    flow_p = percentiles(flows)
    return {
        "benchmark": "qa", "db": backend, "batches": batches, "exceptions": exceptions,
        "open_to_release": flow_p, "pages": per_page, "bare_request": bare_p,
        "ratio_page_p50_to_bare_p50": {name: ratio(p["p50_ms"], bare_p["p50_ms"]) for name, p in per_page.items()},
        "ratio_open_to_release_p50_to_bare_p50": ratio(flow_p["p50_ms"], bare_p["p50_ms"]),
        "requests_per_release": sum(len(s) for s in pages.values()) // max(1, batches),
    }


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--exceptions", type=int, default=10)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    started = time.perf_counter()
    result = run(args.db, args.batches, args.exceptions, args.n)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
