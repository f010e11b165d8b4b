"""Benchmark the device layer, each figure beside its baseline measured in the same run:

- MT-SICS readings per second from a simulator paced at 9600 baud over a real pty, beside
  the line-rate limit for that reply length (target >= 90 %);
- 100 Modbus tags polled per cycle (block reads), beside one single-register round trip;
- reading -> browser latency through the gateway and Socket.IO (target p95 <= 100 ms): the
  simulated MT-SICS balance (9600 baud, in the gateway's loop) gets a new load and the time is
  stamped; a Socket.IO client of a logged-in kiosk, served by the real app on loopback, stamps
  when the ``reading`` with that value arrives. Beside it, in the same run, the baseline: a
  bare server -> client Socket.IO emit (``publish``) on the same connection;
- a pulled cable (issue 16): from the balance going silent to device health "disconnected" and
  to the ``device_status`` event on which the kiosk clears the number, beside the configured
  ``timeout_s`` (target <= timeout_s + 100 ms); once in the gateway alone (several pulls,
  ``silent_device``) and once through the web app and Socket.IO to a logged-in kiosk client
  (``silent_to_kiosk_socketio_ms``, the simulated bench balance with its default timeout_s).

    python -m tests.bench.devices [--seconds 5] [--baud 9600] [--tags 100] [--cycles 50] [--latency-samples N]
                                  [--silence-runs N] [--silence-timeout 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.bench.devices_modbus import measure_modbus_cycle
from tests.bench.devices_scale import measure_mtsics_rate
from tests.bench.devices_silence import measure_silence


def _p(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    return {"p50_ms": _p(ordered, 0.5), "p95_ms": _p(ordered, 0.95), "max_ms": round(ordered[-1] * 1000, 2),
            "n": len(ordered)}


def measure_gateway_latency(samples: int) -> dict[str, Any]:
    """Reading -> Socket.IO client latency through the in-process gateway, beside a bare emit."""
    import socketio
    from werkzeug.serving import make_server

    from mes import realtime
    from mes.db import db
    from mes.gateway.service import start_embedded, stop_embedded
    from mes.gateway.simulation import SIMULATED_SCALES, Simulation
    from tests.bench.common import make_bench_app
    from tests.helpers import PASSWORD, seed

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = make_bench_app(f"sqlite:///{home / 'bench.sqlite3'}", home / "home")
        with app.app_context():
            seeded = seed(("operator",))
            db.session.remove()
        bench_scale = SIMULATED_SCALES[1]  # the bench balance, g, 0.1 g
        gateway = start_embedded(app, [], simulation=Simulation(scales=(bench_scale,), line=False),
                                 forward_lines=False)
        balance = gateway.gateway.simulation.scales[bench_scale.device_id].balance
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        import requests

        http = requests.Session()
        http.headers["X-MES-Terminal"] = f"{seeded.kiosk[0]}:{seeded.kiosk[1]}"
        csrf = http.get(f"{base}/api/v1/auth/csrf", timeout=10).json()["csrf_token"]
        http.post(f"{base}/api/v1/auth/login", json={"user_id": seeded.users["operator"], "password": PASSWORD},
                  headers={"X-CSRF-Token": csrf}, timeout=10).raise_for_status()
        arrived: dict[str, float] = {}
        wanted = threading.Event()
        expect: list[str] = [""]
        client = socketio.Client(reconnection=False)

        def on_reading(data: dict[str, Any]) -> None:
            if data.get("value") == expect[0] and expect[0] not in arrived:
                arrived[expect[0]] = time.perf_counter()
                wanted.set()

        def on_ping(data: dict[str, Any]) -> None:
            arrived[data["id"]] = time.perf_counter()
            wanted.set()

        cleared: list[float] = []

        def on_status(data: dict[str, Any]) -> None:
            if data.get("device_id") == bench_scale.device_id and not data.get("connected") and expect[0] == "silent":
                cleared.append(time.perf_counter())
                wanted.set()

        client.on("reading", on_reading, namespace="/live")
        client.on("bench_ping", on_ping, namespace="/live")
        client.on("device_status", on_status, namespace="/live")
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        client.connect(base, headers={"Cookie": cookie, **http.headers}, namespaces=["/live"], transports=["polling"])
        transport = client.eio.transport()
        client.call("watch", {"devices": [bench_scale.device_id]}, namespace="/live", timeout=10)
        room = realtime.device_room(bench_scale.device_id)
        gateway_s: list[float] = []
        emit_s: list[float] = []
        missed = 0
        try:
            time.sleep(0.5)
            for i in range(samples):
                # the gateway path: a new load on the pan -> driver -> gateway -> Socket.IO -> client
                value = f"{100 + i}.{i % 10}"
                wanted.clear()
                expect[0] = value
                started = time.perf_counter()
                balance.set_weight(Decimal(value))
                if wanted.wait(2.0):
                    gateway_s.append(arrived[value] - started)
                else:
                    missed += 1
                # the baseline: a bare emit on the same connection
                wanted.clear()
                ping = f"ping-{i}"
                started = time.perf_counter()
                realtime.publish("bench_ping", {"id": ping}, room, app=app)
                if wanted.wait(2.0):
                    emit_s.append(arrived[ping] - started)
                time.sleep(0.03 + (i % 7) * 0.011)  # not in step with the balance's output
            # the cable pulled: silence -> gateway -> Socket.IO device_status -> the kiosk clears
            sim = gateway.gateway.simulation.scales[bench_scale.device_id]
            timeout_s = gateway.gateway.devices[bench_scale.device_id].driver.timeout_s
            wanted.clear()
            expect[0] = "silent"
            silent_at = time.perf_counter()
            sim.silent = True
            wanted.wait(timeout_s * 5 + 5)
        finally:
            client.disconnect()
            server.shutdown()
            stop_embedded(app)
            with app.app_context():
                db.engine.dispose()
    gateway_summary, emit_summary = _summary(gateway_s), _summary(emit_s)
    clear_ms = round((cleared[0] - silent_at) * 1000, 1) if cleared else None
    line_ms = round(len(b"S S      100.0 g\r\n") * 10 / 9600 * 1000, 2)
    return {
        "reading_to_client": gateway_summary,
        "baseline_socketio_emit": emit_summary,
        "ratio_p50": round(gateway_summary["p50_ms"] / emit_summary["p50_ms"], 2) if gateway_s and emit_s
        and emit_summary["p50_ms"] else None,
        "target_p95_ms": 100,
        "meets_target": bool(gateway_s) and gateway_summary["p95_ms"] <= 100,
        "missed": missed,
        "transport": transport,
        "one_reply_on_the_line_ms": line_ms,
        "silent_to_kiosk_socketio_ms": clear_ms,
        "silent_configured_timeout_ms": round(timeout_s * 1000),
        "silent_ratio_to_timeout": round(clear_ms / (timeout_s * 1000), 3) if clear_ms is not None else None,
        "path": "BalanceModel -> MT-SICS simulator (9600 baud, TCP loopback) -> mtsics driver (SIR stream) -> "
                "gateway -> reading store + Socket.IO /live -> python-socketio client",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="none", help="unused: the device layer touches no database")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--tags", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--latency-samples", type=int, default=None,
                    help="gateway latency samples (default 40 per --seconds)")
    ap.add_argument("--silence-runs", type=int, default=None, help="cable pulls (default 2 per --seconds)")
    ap.add_argument("--silence-timeout", type=float, default=1.0, help="the balance driver's timeout_s")
    args = ap.parse_args()
    samples = args.latency_samples or max(10, int(args.seconds * 40))
    pulls = args.silence_runs or max(1, int(args.seconds * 2))
    print(json.dumps({
        "benchmark": "devices", "db": args.db,
        "mtsics": measure_mtsics_rate(args.seconds, args.baud),
        "modbus": measure_modbus_cycle(args.tags, args.cycles),
        "gateway_to_browser_latency": measure_gateway_latency(samples),
        "silent_device": measure_silence(pulls, args.silence_timeout, args.baud),
    }, default=str))


if __name__ == "__main__":
    main()
