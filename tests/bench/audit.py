"""Benchmark the audit log, each figure beside its baseline measured in the same run:

- audited appends per second (entry + Merkle nodes, one commit each, and 100 per commit)
  beside bare inserts of the same rows into a table with the same indexes, in the same
  durability mode (SQLite synchronous=FULL, WAL);
- full verification of N entries in the database (``mes audit verify``) beside the floor:
  reading every entry's bytes and hashing them once;
- an inclusion proof at N entries from the stored subtree hashes beside one primary-key read.

    python -m tests.bench.audit [--db sqlite|postgresql] [--appends 2000] [--entries 1000000]
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select, text

from tests.bench.common import BARE_TABLE, bench_database, create_bare_table, make_bench_app, parser, percentiles, ratio


def _entry(seq: int, prev: str, at: datetime) -> dict:
    from mes.audit import canonical

    return {"v": canonical.ENTRY_VERSION, "seq": seq, "prev": prev, "at": canonical.format_at(at),
            "actor": {"id": "u-0007", "name": "Jane Doe", "role": "operator"}, "terminal": "KIOSK-03",
            "action": "batch.step.completed", "entity": {"type": "batch_step", "id": f"B-{seq // 50:06d}/{seq % 50}"},
            "batch": f"B-{seq // 50:06d}", "before": None,
            "after": {"device": "SCALE-01", "lot": "L-API-0042", "raw": "S S      12.50 kg", "unit": "kg",
                      "value": f"{seq % 1000}.50"},
            "reason": None, "signature": None}


def measure_appends(n: int) -> dict:
    from mes.audit import log
    from mes.db import db

    actor = log.Actor("u-0007", "Jane Doe", "operator", "KIOSK-03")
    after = {"device": "SCALE-01", "lot": "L-API-0042", "raw": "S S      12.50 kg", "unit": "kg", "value": "12.50"}
    # audited, one transaction per append
    t = time.perf_counter()
    for i in range(n):
        log.record(actor, "batch.step.completed", ("batch_step", f"B-1/{i}"), batch="B-1", after=after)
        db.session.commit()
    audited_1 = n / (time.perf_counter() - t)
    entries = list(db.session.execute(select(text("seq"), text("at"), text("entry_bytes"), text("leaf_hash"))
                                      .select_from(text("audit_entries")).order_by(text("seq"))).all())
    db.session.commit()
    with db.engine.begin() as conn:
        create_bare_table(conn, db.engine.dialect.name, indexed=True)
    rows = [{"seq": r[0], "at": str(r[1]), "action": "batch.step.completed", "actor_id": "u-0007",
             "entity_type": "batch_step", "entity_id": f"B-1/{r[0]}", "batch_id": "B-1", "entry_bytes": bytes(r[2]),
             "leaf_hash": bytes(r[3])} for r in entries]
    stmt = text(f"INSERT INTO {BARE_TABLE} (seq, at, action, actor_id, entity_type, entity_id, batch_id, entry_bytes, "
                "leaf_hash) VALUES (:seq, :at, :action, :actor_id, :entity_type, :entity_id, :batch_id, :entry_bytes, :leaf_hash)")
    t = time.perf_counter()
    for row in rows:
        with db.engine.begin() as conn:
            conn.execute(stmt, row)
    bare_1 = n / (time.perf_counter() - t)
    # 100 per transaction (a step that records several values, a bulk import)
    t = time.perf_counter()
    for i in range(n):
        log.record(actor, "batch.step.completed", ("batch_step", f"B-2/{i}"), batch="B-2", after=after)
        if i % 100 == 99:
            db.session.commit()
    db.session.commit()
    audited_100 = n / (time.perf_counter() - t)
    with db.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {BARE_TABLE}"))
    t = time.perf_counter()
    for start in range(0, n, 100):
        with db.engine.begin() as conn:
            for row in rows[start:start + 100]:
                conn.execute(stmt, row)
    bare_100 = n / (time.perf_counter() - t)
    return {
        "n": n,
        "audited_appends_per_s_1_per_commit": round(audited_1), "bare_inserts_per_s_1_per_commit": round(bare_1),
        "ratio_1_per_commit": ratio(audited_1, bare_1),
        "audited_appends_per_s_100_per_commit": round(audited_100), "bare_inserts_per_s_100_per_commit": round(bare_100),
        "ratio_100_per_commit": ratio(audited_100, bare_100),
    }


def fill_log(n: int) -> None:
    """Write ``n`` valid entries, their Merkle nodes and checkpoints straight into the tables
    (the append path is measured above; here we need a big log quickly)."""
    from mes.audit import canonical, log, merkle
    from mes.audit.models import AuditEntry, AuditTreeNode
    from mes.db import db

    db.session.commit()
    start_at = datetime(2026, 11, 23, tzinfo=UTC)
    prev = canonical.ZERO_HASH
    tree = merkle.MerkleTree()
    chunk: list[dict] = []
    for seq in range(n):
        at = start_at + timedelta(microseconds=seq * 1000)
        data = canonical.canonical_bytes(_entry(seq, prev, at))
        leaf = merkle.leaf_hash(data)
        prev = leaf.hex()
        tree.append(leaf)
        chunk.append({"seq": seq, "at": at, "action": "batch.step.completed", "actor_id": "u-0007",
                      "terminal_id": "KIOSK-03", "entity_type": "batch_step", "entity_id": f"{seq}",
                      "batch_id": f"B-{seq // 50:06d}", "entry_bytes": data, "leaf_hash": leaf})
        if len(chunk) == 20_000:
            db.session.execute(insert(AuditEntry), chunk)
            chunk = []
    if chunk:
        db.session.execute(insert(AuditEntry), chunk)
    rows = [{"level": lv, "index": i, "hash": h} for lv, i, h in tree.node_rows()]
    for i in range(0, len(rows), 50_000):
        db.session.execute(insert(AuditTreeNode), rows[i:i + 50_000])
    log.install_guard()
    db.session.info["audit_appended"] = True
    log.publish_checkpoint()
    db.session.commit()


def measure_verification(n: int) -> dict:
    from mes.audit import log
    from mes.audit.database_check import verify_database
    from mes.db import db

    t = time.perf_counter()
    fill_log(n)
    fill_s = time.perf_counter() - t
    # floor: read every entry's bytes from the database and hash each once
    t = time.perf_counter()
    count = 0
    for data in log.iter_entry_bytes():
        hashlib.sha256(b"\x00" + data).digest()
        count += 1
    db.session.commit()
    floor_s = time.perf_counter() - t
    t = time.perf_counter()
    result = verify_database()
    verify_s = time.perf_counter() - t
    assert result.ok, result.summary()
    # inclusion proofs from stored subtrees vs one primary-key read
    rng = random.Random(7)
    size = log.tree_size()
    proof_samples, read_samples = [], []
    for _ in range(200):
        i = rng.randrange(size)
        t = time.perf_counter()
        log.inclusion_proof(i, size)
        proof_samples.append(time.perf_counter() - t)
        t = time.perf_counter()
        db.session.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = :s"), {"s": i}).scalar_one()
        read_samples.append(time.perf_counter() - t)
    db.session.commit()
    proof, read = percentiles(proof_samples), percentiles(read_samples)
    return {
        "entries": n, "fill_seconds": round(fill_s, 1),
        "verify_seconds": round(verify_s, 2), "verify_entries_per_s": round(n / verify_s),
        "floor_read_and_hash_seconds": round(floor_s, 2), "ratio_verify_to_floor": ratio(verify_s, floor_s),
        "inclusion_proof": proof, "single_row_read": read,
        "ratio_proof_p50_to_row_read_p50": ratio(proof["p50_ms"], read["p50_ms"]),
    }


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    out: dict = {"benchmark": "audit", "db": args.db}
    with bench_database(args.db) as url, tempfile.TemporaryDirectory() as tmp:
        app = make_bench_app(url, Path(tmp) / "a")
        with app.app_context():
            out["appends"] = measure_appends(args.appends)
        with bench_database(args.db) as url2:
            app2 = make_bench_app(url2, Path(tmp) / "b")
            with app2.app_context():
                out["verification"] = measure_verification(args.entries)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
