"""Benchmark OEE, each figure beside its baseline measured in the same run:

- line samples recorded per second through ``record_line_sample`` (state interval and
  counter sample rows, reset detection, one audit entry, one commit each) beside bare
  audited appends of an entry of the same shape (``mes.audit.log.record`` + commit);
- the OEE of one line over a day grouped by shift and by product, with a counter sample
  every ``86400 / day-samples`` seconds and a state change every ten minutes, beside the
  floor: reading the same counter samples and intervals from the database.

    python -m tests.bench.oee [--db sqlite|postgresql] [--samples 500] [--day-samples 8640]
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from tests.bench.common import bench_database, make_bench_app, parser, percentiles, ratio

DAY = datetime(2026, 3, 2, tzinfo=UTC)


def measure_recording(n: int) -> dict:
    from mes.audit import log
    from mes.db import db
    from mes.oee import operations as ops

    gateway = log.Actor.system("gateway")
    t0 = DAY - timedelta(days=2)
    samples = []
    for i in range(n):
        state = "Execute" if i % 10 else "Held"
        t = time.perf_counter()
        ops.record_line_sample(gateway, "BENCH-REC", at=t0 + timedelta(seconds=i), state=state, processed=i * 3,
                               defective=i // 50, stop_reason="7" if state == "Held" else None, source="bench")
        samples.append(time.perf_counter() - t)
    after = {"at": "2026-02-28T00:00:00.000000Z", "source": "bench",
             "counters": {"seq": 1, "processed": 3, "defective": 0, "processed_delta": 3, "defective_delta": 0,
                          "processed_reset": False, "defective_reset": False}}
    bare = []
    for _ in range(n):
        t = time.perf_counter()
        log.record(gateway, "oee.line_sample_recorded", ("line", "BENCH-BARE"), after=after)
        db.session.commit()
        bare.append(time.perf_counter() - t)
    per_s, bare_per_s = n / sum(samples), n / sum(bare)
    return {"samples_per_s": round(per_s, 1), "baseline_audited_appends_per_s": round(bare_per_s, 1),
            "ratio": ratio(per_s, bare_per_s), "sample_latency": percentiles(samples)}


def _fill_day(n: int) -> None:
    """A day of LINE-1: a sample every 86400/n s, a state change every 10 min, one reset at noon."""
    from mes.audit import log
    from mes.db import db
    from mes.oee.models import CounterSample, LineStateInterval

    now = datetime.now(UTC)
    step = timedelta(seconds=86400 / n)
    rows: list = []
    for k in range(144):
        state = "Execute" if k % 3 else ("Held" if k % 2 else "Suspended")
        rows.append(LineStateInterval(id=str(uuid.uuid4()), line_id="LINE-1", seq=k + 1, state=state,
                                      started_at=DAY + timedelta(minutes=10 * k), stop_reason=str(k % 5) if k % 3 == 0
                                      else None, source="bench", recorded_at=now, recorded_by="system:bench"))
    processed = 0
    for i in range(n):
        reset = i == n // 2
        processed = 0 if reset else processed + 4
        rows.append(CounterSample(id=str(uuid.uuid4()), line_id="LINE-1", seq=i + 1, at=DAY + step * (i + 1),
                                  processed=processed, defective=processed // 100, processed_delta=0 if i == 0 else
                                  (processed if reset else 4), defective_delta=0, processed_reset=reset,
                                  defective_reset=reset, source="bench", recorded_at=now, recorded_by="system:bench"))
    db.session.add_all(rows)
    log.record(log.Actor.system("bench"), "bench.filled", ("line", "LINE-1"), after={"rows": len(rows)})
    db.session.commit()


def measure_oee(n: int, repeats: int) -> dict:
    from mes.audit.log import Actor
    from mes.db import db
    from mes.oee import operations as ops
    from mes.oee.models import CounterSample, LineStateInterval

    _fill_day(n)
    ops.set_ideal_rate(Actor.system("bench"), "LINE-1", "30", effective_from=DAY - timedelta(days=1))
    start, end = DAY, DAY + timedelta(days=1)
    result = ops.oee("LINE-1", start, end, "shift")
    assert result["total"]["total_count"] > 0 and len(result["groups"]) >= 3

    def figures(group: str) -> None:
        ops.oee("LINE-1", start, end, group)
        db.session.rollback()

    def floor() -> None:
        db.session.execute(select(CounterSample.at, CounterSample.processed_delta, CounterSample.defective_delta)
                           .where(CounterSample.line_id == "LINE-1", CounterSample.at > start,
                                  CounterSample.at <= end)).all()
        db.session.execute(select(LineStateInterval).where(LineStateInterval.line_id == "LINE-1",
                                                           LineStateInterval.started_at < end)).scalars().all()
        db.session.rollback()

    out: dict = {"counter_samples": n, "intervals": 144}
    floor_s = []
    for _ in range(repeats):
        t = time.perf_counter()
        floor()
        floor_s.append(time.perf_counter() - t)
    floor_ms = percentiles(floor_s)["p50_ms"]
    for group in ("shift", "product"):
        spent = []
        for _ in range(repeats):
            t = time.perf_counter()
            figures(group)
            spent.append(time.perf_counter() - t)
        p = percentiles(spent)
        out[f"by_{group}"] = {"p50_ms": p["p50_ms"], "baseline_read_p50_ms": floor_ms,
                              "ratio": ratio(p["p50_ms"], floor_ms)}
    out["oee_total"] = result["total"]["oee"]
    return out


def main() -> None:
    ap = parser("OEE: line samples recorded per second, and the OEE of a day of samples")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--day-samples", type=int, default=8640)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with bench_database(args.db) as url, tempfile.TemporaryDirectory() as home:
        app = make_bench_app(url, Path(home))
        with app.app_context():
            from mes.db import db

            recording = measure_recording(args.samples)
            figures = measure_oee(args.day_samples, args.repeats)
            db.session.remove()
            db.engine.dispose()
    print(json.dumps({"benchmark": "oee", "db": args.db, "recording": recording, "oee_of_a_day": figures}))


if __name__ == "__main__":
    main()
