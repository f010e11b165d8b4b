"""Benchmark: the kiosk in headless Chromium against the real server (gunicorn, simulated
scales, real database). Two figures, each beside a baseline measured in the same run:

* scale → screen: from setting a load on the simulated scale (``POST
  /api/v1/simulation/devices/<id>``) to the number changing on the weigh screen (a
  MutationObserver stamps the moment), p50/p95; baseline: a Socket.IO round trip from the
  same page on the same connection stack (emit with acknowledgement), with no device;
* server time per kiosk page (GET with the kiosk's session, loopback), p50/p95, per screen;
  baseline: a bare ``GET /healthz``.

    python -m tests.bench.kiosk [--db sqlite|postgresql] [--n 40] [--pages 100]
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

from tests.bench.common import bench_database, make_bench_app, parser, ratio


def pct(samples_s: list[float]) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds."""
    ordered = sorted(samples_s)
    if not ordered:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0, "n": 0}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5) * 1000, 2), "p95_ms": round(pick(0.95) * 1000, 2),
            "mean_ms": round(sum(ordered) / len(ordered) * 1000, 2), "n": len(ordered)}


STAMP_JS = """() => { window.__benchSeen = {}; const el = document.querySelector('#live-weight [data-field=value]');
  new MutationObserver(() => { const v = el.textContent.trim(); if (!(v in window.__benchSeen)) window.__benchSeen[v] = Date.now(); })
    .observe(el, {childList: true, characterData: true, subtree: true}); }"""

SOCKET_RTT_JS = """(n) => new Promise((resolve, reject) => {
  const s = window.io('/live', {transports: ['websocket'], forceNew: true});
  const out = [];
  const once = () => { const t = performance.now();
    s.emit('watch_line', {line: 'LINE-1'}, () => { out.push(performance.now() - t);
      if (out.length >= n) { s.close(); resolve(out); } else once(); }); };
  s.on('connect', once);
  s.on('connect_error', (e) => reject(String(e)));
})"""


def run(backend: str, n: int, pages: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.kiosk import flows
    from tests.kiosk.checks import until
    from tests.kiosk.driver import Driver
    from tests.kiosk.harness import CHROMIUM, KIOSK_TERMINAL, VIEWPORTS, Kiosk, KioskServer, enrol, seed_like_demo

    logging.getLogger("alembic").setLevel(logging.WARNING)
    with bench_database(backend) as url, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        make_bench_app(url, home / "migrate")
        seed_like_demo(url, home)
        server = KioskServer(url, home)
        server.start(timeout=120)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                context = browser.new_context(viewport=VIEWPORTS["1920x1080"], device_scale_factor=1)
                enrol(context, server.url, KIOSK_TERMINAL)
                k = Kiosk(server, context, context.new_page(), "1920x1080")
                assert flows.to_step(k, flows.DEMO_WO) == "step"
                batch = flows.batch_of(server, flows.work_order_id(server))
                assert batch
                drv = Driver(k, server, batch)
                step = drv.run_until(lambda s: s["kind"] == "weigh")
                drv.ensure_on_step(step)
                device = k.page.locator("#weigh").get_attribute("data-device")
                unit = "kg"
                http = server.api()
                # scale -> screen
                flows.set_load(http, server.url, device, "1.00", unit)
                until(k.page, "() => document.querySelector('#live-weight [data-field=value]').innerText.trim() === '1.00'")
                k.page.evaluate(STAMP_JS)
                latencies = []
                for i in range(n):
                    shown = f"{Decimal('2.00') + Decimal(i) / 100:.2f}"
                    t0 = time.time()
                    flows.set_load(http, server.url, device, shown, unit)
                    seen = until(k.page, "v => window.__benchSeen[v]", arg=shown, timeout=10_000, interval_ms=5)
                    latencies.append(seen / 1000 - t0)
                rtt_ms = k.page.evaluate(SOCKET_RTT_JS, max(n, 5))
                # server time per page, with the kiosk's session
                cookies = {c["name"]: c["value"] for c in context.cookies()}
                web = requests.Session()
                web.cookies.update(cookies)
                step_url = f"/kiosk/batches/{batch}/steps/{step['id']}"
                targets = {"lines": "/kiosk/lines", "batches": "/kiosk/lines/LINE-1", "weigh_step": step_url,
                           "board": "/kiosk/board/LINE-1", "healthz": "/healthz"}
                for path in targets.values():  # warm up
                    _get(web, server.url + path)
                timing = {name: _timed(lambda p=path: _get(web, server.url + p), pages)
                          for name, path in targets.items()}
                browser.close()
        finally:
            server.close()
    scale = pct(latencies)
    socket_rtt = pct([ms / 1000 for ms in rtt_ms])
    page_times = {name: pct(samples) for name, samples in timing.items()}
    health = page_times.pop("healthz")
    return {
        "benchmark": "kiosk", "db": backend, "n": n, "pages_n": pages,
        "scale_to_screen": scale, "socket_roundtrip": socket_rtt,
        "ratio_scale_p50_to_socket_p50": ratio(scale["p50_ms"], socket_rtt["p50_ms"]),
        "ratio_scale_p95_to_socket_p95": ratio(scale["p95_ms"], socket_rtt["p95_ms"]),
        "pages": page_times, "healthz": health,
        "ratio_page_p50_to_healthz_p50": {k: ratio(v["p50_ms"], health["p50_ms"]) for k, v in page_times.items()},
        "ratio_page_p95_to_healthz_p95": {k: ratio(v["p95_ms"], health["p95_ms"]) for k, v in page_times.items()},
    }


def _get(web: requests.Session, url: str) -> None:
    r = web.get(url, allow_redirects=False, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"GET {url} -> {r.status_code}: {r.text[:200]}")


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="loads set on the simulated scale")
    ap.add_argument("--pages", type=int, default=100, help="GETs per kiosk page")
    args = ap.parse_args()
    started = time.perf_counter()
    result = run(args.db, args.n, args.pages)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
