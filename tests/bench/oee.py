"""Benchmark OEE, each figure beside its baseline measured in the same run:

- line samples recorded per second through ``record_line_sample`` (state interval and
  counter sample rows, reset detection, one audit entry, one commit each) beside bare
  audited appends of an entry of the same shape (``mes.audit.log.record`` + commit);
- the OEE of one line over a day grouped by shift and by product, with a counter sample
  every ``86400 / day-samples`` seconds and a state change every ten minutes, beside the
  floor: reading the same counter samples and intervals from the database;
- the plant: OEE of ``--lines`` lines (30) over ``--days`` days (93) grouped by shift, with
  a production calendar (weekends off), a PLC code mapped to a reason, stops of several
  PackML states, a state change every ``--state-minutes`` and a counter sample every
  ``--sample-minutes``, beside reading the same rows (intervals, counter samples, reasons)
  of every line (target: at most 2 × the read).

    python -m tests.bench.oee [--db sqlite|postgresql] [--samples 500] [--day-samples 8640]
                              [--lines 30] [--days 93] [--state-minutes 20] [--sample-minutes 10]
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


PLANT_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
CYCLE = ("Execute", "Execute", "Stopping", "Stopped", "Starting", "Execute", "Held", "Execute", "Execute", "Suspended")


def _fill_plant(lines: int, days: int, state_minutes: int, sample_minutes: int) -> int:
    """Intervals and counter samples for every line and day, inserted in bulk (Core)."""
    from sqlalchemy import insert

    from mes.audit import log
    from mes.db import db
    from mes.oee.models import CounterSample, LineStateInterval

    now = datetime.now(UTC)
    total = 0
    states = days * 24 * 60 // state_minutes
    samples = days * 24 * 60 // sample_minutes
    for n in range(lines):
        line = f"PL-{n + 1:02d}"
        rows = [{"id": str(uuid.uuid4()), "line_id": line, "seq": k + 1, "state": CYCLE[(k + n) % len(CYCLE)],
                 "started_at": PLANT_START + timedelta(minutes=state_minutes * k),
                 "stop_reason": "E7" if CYCLE[(k + n) % len(CYCLE)] == "Held" else None, "source": "bench",
                 "recorded_at": now, "recorded_by": "system:bench"} for k in range(states)]
        for chunk in range(0, len(rows), 5000):
            db.session.execute(insert(LineStateInterval), rows[chunk:chunk + 5000])
        total += len(rows)
        rows = []
        processed = 0
        for i in range(samples):
            reset = i % 1000 == 999
            delta = 0 if i == 0 else (7 if reset else 100)
            processed = 7 if reset else processed + delta
            rows.append({"id": str(uuid.uuid4()), "line_id": line, "seq": i + 1,
                         "at": PLANT_START + timedelta(minutes=sample_minutes * (i + 1)), "processed": processed,
                         "defective": None, "processed_delta": delta, "defective_delta": 0,
                         "processed_reset": reset, "defective_reset": False, "source": "bench",
                         "recorded_at": now, "recorded_by": "system:bench"})
        for chunk in range(0, len(rows), 5000):
            db.session.execute(insert(CounterSample), rows[chunk:chunk + 5000])
        total += len(rows)
        db.session.commit()
    log.record(log.Actor.system("bench"), "bench.filled", ("line", "PL"), after={"rows": total})
    db.session.commit()
    return total


def measure_plant(lines: int, days: int, state_minutes: int, sample_minutes: int, repeats: int) -> dict:
    from mes.audit.log import Actor
    from mes.db import db
    from mes.oee import operations as ops
    from mes.oee.models import CounterSample, DowntimeReason, LineStateInterval

    rows = _fill_plant(lines, days, state_minutes, sample_minutes)
    bench = Actor.system("bench")
    ops.define_reason(bench, "drive_fault", "Drive fault", "breakdown", plc_codes=["E7"])
    for n in range(lines):
        line = f"PL-{n + 1:02d}"
        ops.set_ideal_rate(bench, line, "12", effective_from=PLANT_START)
        ops.set_line_calendar(bench, line, shifts={d: [name for name, _ in ops_shifts()] for d in
                                                   ("mon", "tue", "wed", "thu", "fri")},
                              oee_target="0.8", effective_from=PLANT_START)
    start, end = PLANT_START, PLANT_START + timedelta(days=days)
    names = [f"PL-{n + 1:02d}" for n in range(lines)]
    first = ops.oee(names[0], start, end, "shift")
    assert first["total"]["total_count"] > 0 and first["total"]["oee"] is not None

    def figures() -> None:
        for line in names:
            ops.oee(line, start, end, "shift")
        db.session.rollback()

    def floor() -> None:
        for line in names:
            ids = db.session.execute(select(LineStateInterval).where(
                LineStateInterval.line_id == line, LineStateInterval.started_at < end)).scalars().all()
            db.session.execute(select(CounterSample.at, CounterSample.processed_delta, CounterSample.defective_delta,
                                      CounterSample.processed_reset, CounterSample.defective_reset,
                                      CounterSample.reworked_delta)
                               .where(CounterSample.line_id == line, CounterSample.at > start,
                                      CounterSample.at <= end)).all()
            db.session.execute(select(DowntimeReason).where(DowntimeReason.line_id == line)).scalars().all()
            assert ids
        db.session.rollback()

    floor_s, spent = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        floor()
        floor_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        figures()
        spent.append(time.perf_counter() - t)
    f, p = percentiles(floor_s)["p50_ms"], percentiles(spent)["p50_ms"]
    return {"lines": lines, "days": days, "rows": rows, "by_shift_all_lines_p50_ms": p, "baseline_read_p50_ms": f,
            "ratio": ratio(p, f), "first_line_oee": first["total"]["oee"], "shifts_per_line": len(first["groups"])}


def ops_shifts() -> tuple:
    from mes.plant_time import shift_pattern

    return shift_pattern()


def main() -> None:
    ap = parser("OEE: line samples recorded per second, and the OEE of a day of samples")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--day-samples", type=int, default=8640)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lines", type=int, default=30)
    ap.add_argument("--days", type=int, default=93)
    ap.add_argument("--state-minutes", type=int, default=20)
    ap.add_argument("--sample-minutes", type=int, default=10)
    args = ap.parse_args()
    with bench_database(args.db) as url, tempfile.TemporaryDirectory() as home:
        app = make_bench_app(url, Path(home))
        with app.app_context():
            from mes.db import db

            recording = measure_recording(args.samples)
            figures = measure_oee(args.day_samples, args.repeats)
            plant = measure_plant(args.lines, args.days, args.state_minutes, args.sample_minutes,
                                  max(1, min(args.repeats, 3)))
            db.session.remove()
            db.engine.dispose()
    print(json.dumps({"benchmark": "oee", "db": args.db, "recording": recording, "oee_of_a_day": figures,
                      "oee_of_the_plant": plant}))


if __name__ == "__main__":
    main()
