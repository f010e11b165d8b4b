"""Benchmark lot genealogy traces beside a primary-key read measured in the same run.

Builds a four-level genealogy (raw material and API lots -> intermediates -> bulk ->
finished goods) of ``--lots`` lots and exactly ``--links`` links with Core executemany,
not the service layer. Each produced lot draws its inputs from lots of the level below
made around the same time (a sliding window), as a plant does, so shared inputs make
the graph a DAG, not a tree. Then it times ``trace_backward`` from random finished lots
and ``trace_forward`` from random raw lots (the service functions, Python included)
beside a single primary-key lookup of a lot done the same way, and prints ONE JSON
object. Target: trace p50 <= 50 ms at 100,000 lots and 1,000,000 links.

    python -m tests.bench.trace [--db sqlite|postgresql] [--lots 100000] [--links 1000000]
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text

from tests.bench.common import bench_database, make_bench_app, parser, percentiles, ratio

TARGET_MS = 50.0
LEVELS = (("RAW-API", "api", 0.40), ("INT-BLEND", "intermediate", 0.20), ("BULK-TAB", "intermediate", 0.20),
          ("FG-PACK", "finished_good", 0.20))
CHUNK = 20_000


def _level_sizes(lots: int) -> list[int]:
    sizes = [max(2, int(lots * share)) for _, _, share in LEVELS]
    sizes[0] += lots - sum(sizes)
    return sizes


def build(lots: int, links: int, seed: int = 7) -> dict[str, Any]:
    """Insert the items, lots and links; returns the lot ids per level and timings."""
    from mes.db import db
    from mes.materials.models import GenealogyLink, Item, Lot

    rng = random.Random(seed)
    at = datetime(2026, 11, 23, tzinfo=UTC)
    sizes = _level_sizes(lots)
    levels: list[list[str]] = []
    n = 0
    for size in sizes:
        levels.append([f"L{n + i:07d}" for i in range(size)])
        n += size
    produced = sum(sizes[1:])
    per_child, extra = divmod(links, produced)
    t = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(insert(Item.__table__), [
            {"code": code, "name": f"Bench {kind}", "kind": kind, "base_uom": "kg", "active": True, "created_at": at,
             "created_by": "bench"} for code, kind, _ in LEVELS])
        rows: list[dict[str, Any]] = []
        for (code, _, _), ids in zip(LEVELS, levels, strict=True):
            for lot_id in ids:
                rows.append({"id": lot_id, "item_code": code, "status": "released", "created_at": at,
                             "created_by": "bench"})
                if len(rows) == CHUNK:
                    conn.execute(insert(Lot.__table__), rows)
                    rows = []
        if rows:
            conn.execute(insert(Lot.__table__), rows)
    lots_s = time.perf_counter() - t
    t = time.perf_counter()
    made = 0
    child_index = 0
    table = GenealogyLink.__table__
    for below, level in zip(levels, levels[1:], strict=False):
        rows = []
        for j, child in enumerate(level):
            k = per_child + (1 if child_index < extra else 0)
            child_index += 1
            k = min(k, len(below))
            # inputs made around the same time: a window of the level below centred on this lot
            centre = int(j * len(below) / len(level))
            width = min(len(below), max(3 * k, 8))
            start = min(max(0, centre - width // 2), len(below) - width)
            parents = rng.sample(below[start:start + width], k)
            batch = f"B-{child}"
            for p in parents:
                rows.append({"parent_lot_id": p, "child_lot_id": child, "batch_id": batch,
                             "qty": Decimal(rng.randrange(1, 500_000)) / 1000, "uom": "kg", "created_at": at})
            if len(rows) >= CHUNK:
                with db.engine.begin() as conn:
                    conn.execute(insert(table), rows)
                made += len(rows)
                rows = []
        if rows:
            with db.engine.begin() as conn:
                conn.execute(insert(table), rows)
            made += len(rows)
    links_s = time.perf_counter() - t
    t = time.perf_counter()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE material_lots, material_genealogy, material_items"))
    else:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    analyze_s = time.perf_counter() - t
    return {"levels": levels, "links": made, "lots_seconds": round(lots_s, 1), "links_seconds": round(links_s, 1),
            "analyze_seconds": round(analyze_s, 1)}


def _measure(fn: Any, ids: Sequence[str]) -> dict[str, Any]:
    samples, json_samples, sizes, edges = [], [], [], []
    for lot_id in ids:
        t = time.perf_counter()
        trace = fn(lot_id)
        samples.append(time.perf_counter() - t)
        t = time.perf_counter()
        trace.as_json()
        json_samples.append(time.perf_counter() - t)
        sizes.append(len(trace.lots) - 1)
        edges.append(len(trace.links))
    stats = percentiles(samples)
    stats.update({"lots_reached_mean": round(sum(sizes) / len(sizes), 1), "lots_reached_max": max(sizes),
                  "links_mean": round(sum(edges) / len(edges), 1), "links_max": max(edges),
                  "as_json_p50_ms": percentiles(json_samples)["p50_ms"]})
    return stats


def measure(levels: list[list[str]], samples: int, seed: int = 11) -> dict[str, Any]:
    """Trace timings (the service call: SQL and Python) beside a primary-key read done the
    same way; then again after ``gc.freeze()``, as a server would do once the app is loaded,
    because the p99 of any request in this process is set by full garbage collections
    over the framework's import-time objects, not by the query."""
    from mes.materials import operations as ops
    from mes.materials.models import Lot

    rng = random.Random(seed)
    finished = [rng.choice(levels[-1]) for _ in range(samples)]
    raw = [rng.choice(levels[0]) for _ in range(samples)]
    anything = [rng.choice(rng.choice(levels)) for _ in range(samples)]

    def pk_lookup(lot_id: str) -> Any:
        with ops._reading() as session:
            return session.execute(select(Lot.id, Lot.item_code, Lot.status).where(Lot.id == lot_id)).first()

    # warm up: connection pool, statement caches, database buffers
    for lot_id in finished[:10] + raw[:10]:
        ops.trace_backward(lot_id)
        ops.trace_forward(lot_id)
        pk_lookup(lot_id)
    out: dict[str, Any] = {}
    for label in ("", "_after_gc_freeze"):
        if label:
            gc.collect()
            gc.freeze()
        pk = percentiles(timed_each(pk_lookup, anything))
        out["single_pk_lookup" + label] = pk
        for name, fn, ids in (("backward", ops.trace_backward, finished), ("forward", ops.trace_forward, raw)):
            stats = _measure(fn, ids)
            stats["depth"] = len(levels) - 1
            out[name + label] = stats
            out[f"ratio_{name}_p50_to_pk_p50{label}"] = ratio(stats["p50_ms"], pk["p50_ms"])
    gc.unfreeze()
    out["target_ms"] = TARGET_MS
    out["meets_target_p50"] = out["backward"]["p50_ms"] <= TARGET_MS and out["forward"]["p50_ms"] <= TARGET_MS
    return out


def timed_each(fn: Any, ids: Sequence[str]) -> list[float]:
    out = []
    for lot_id in ids:
        t = time.perf_counter()
        assert fn(lot_id) is not None
        out.append(time.perf_counter() - t)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--lots", type=int, default=100_000)
    ap.add_argument("--links", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args(argv)
    if args.lots < 8 or args.links < args.lots:
        ap.error("need --lots >= 8 and --links >= --lots")
    out: dict[str, Any] = {"benchmark": "trace", "db": args.db, "lots": args.lots}
    with bench_database(args.db) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp) / "home")
        with app.app_context():
            from mes.db import db

            built = build(args.lots, args.links)
            out["links"] = built.pop("links")
            levels = built.pop("levels")
            out["build"] = built
            out.update(measure(levels, args.samples))
            db.session.remove()
            db.engine.dispose()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
