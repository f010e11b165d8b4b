"""Benchmark the audit log, each figure beside its baseline measured in the same run:

- audited appends per second (entry + Merkle nodes + authentication tag, one commit each, and
  100 per commit) beside the same appends without the tag (the append path before issue 17)
  and bare inserts of the same rows into a table with the same indexes, in the same
  durability mode (SQLite synchronous=FULL, WAL); and with one witness (``mes witness`` in
  its own process) cosigning every checkpoint, a checkpoint after each append (as after an
  e-signature) beside the same without the witness;
- the incremental verification the MES runs before signing a checkpoint, per checkpoint of
  1000 new entries, beside reading and hashing those entries once;
- full verification of N entries in the database (``mes audit verify``: one read of the
  table, whose blocks worker processes check for chain, tags and index columns and fold into
  the GMP records the log describes; then checkpoints, nodes, and the records reconciled)
  beside the floor: reading every entry's bytes in this process and hashing them once; and
  ``mes audit reconcile`` on its own beside the same floor. (The floor reads pages of 50,000
  rows, which PostgreSQL plans as a scan of the whole table per page while the fresh table
  has no statistics: at 1M entries it grows faster than N; the verify reads one block per
  query, see ``mes.audit.entry_rows.PAGE_BLOCKS``);
- an inclusion proof at N entries from the stored subtree hashes beside one primary-key read;
- a checkpoint signature with the key in a PKCS#11 token (SoftHSM2) beside the key file.

    python -m tests.bench.audit [--db sqlite|postgresql] [--appends 2000] [--entries 1000000]
                                [--checkpoints 5] [--witnessed 200] [--signatures 200]
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


def _untagged_appends(n: int, batch: str) -> float:
    """Appends per second through the same path without the tag (the append before issue 17)."""
    from mes.audit import entry_tags, log
    from mes.db import db

    actor = log.Actor("u-0007", "Jane Doe", "operator", "KIOSK-03")
    after = {"device": "SCALE-01", "lot": "L-API-0042", "raw": "S S      12.50 kg", "unit": "kg", "value": "12.50"}
    real = entry_tags.entry_tag
    entry_tags.entry_tag = lambda key, data: None  # type: ignore[assignment]
    # untagged entries cannot be checkpointed any more: this baseline skips checkpoints (the
    # tagged run pays for its checkpoint and the verification before it, so the ratio is conservative)
    every_entries, every = log.CHECKPOINT_EVERY_ENTRIES, log.CHECKPOINT_EVERY
    log.CHECKPOINT_EVERY_ENTRIES, log.CHECKPOINT_EVERY = 10**12, timedelta(days=3650)
    try:
        t = time.perf_counter()
        for i in range(n):
            log.record(actor, "batch.step.completed", ("batch_step", f"{batch}/{i}"), batch=batch, after=after)
            db.session.commit()
        return n / (time.perf_counter() - t)
    finally:
        entry_tags.entry_tag = real
        log.CHECKPOINT_EVERY_ENTRIES, log.CHECKPOINT_EVERY = every_entries, every


def measure_appends(n: int) -> dict:
    from mes.audit import log
    from mes.db import db

    actor = log.Actor("u-0007", "Jane Doe", "operator", "KIOSK-03")
    after = {"device": "SCALE-01", "lot": "L-API-0042", "raw": "S S      12.50 kg", "unit": "kg", "value": "12.50"}
    for i in range(min(50, n)):  # warm-up (connections, caches), discarded with the baseline's log below
        log.record(actor, "batch.step.completed", ("batch_step", f"B-W/{i}"), batch="B-W", after=after)
        db.session.commit()
    untagged_1 = _untagged_appends(n, "B-0")
    with db.engine.begin() as conn:  # the untagged rows would fail the pre-signing check: start a new log
        for table in ("audit_entries", "audit_tree_nodes", "audit_checkpoints"):
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
                conn.execute(text(f"DELETE FROM {table}"))
                conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
            else:
                names = conn.execute(text(f"SELECT name, sql FROM sqlite_master WHERE type='trigger' AND "
                                          f"tbl_name='{table}' AND name LIKE '%delete'")).all()
                for name, _ in names:
                    conn.execute(text(f"DROP TRIGGER {name}"))
                conn.execute(text(f"DELETE FROM {table}"))
                for _, sql in names:
                    conn.execute(text(sql))
    log.audit_log().state_path.unlink(missing_ok=True)
    log.audit_log().last_checkpoint = None
    log._FRONTIERS.clear()
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
        "untagged_appends_per_s_1_per_commit": round(untagged_1),
        "ratio_tagged_to_untagged_1_per_commit": ratio(audited_1, untagged_1),
        "audited_appends_per_s_100_per_commit": round(audited_100), "bare_inserts_per_s_100_per_commit": round(bare_100),
        "ratio_100_per_commit": ratio(audited_100, bare_100),
    }


def fill_log(n: int) -> None:
    """Write ``n`` valid entries, their Merkle nodes and checkpoints straight into the tables
    (the append path is measured above; here we need a big log quickly)."""
    from mes.audit import canonical, entry_tags, log, merkle
    from mes.audit.models import AuditEntry, AuditTreeNode
    from mes.db import db

    db.session.commit()
    key = log.audit_log().tag_key()
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
                      "terminal_id": "KIOSK-03", "entity_type": "batch_step",
                      "entity_id": f"B-{seq // 50:06d}/{seq % 50}",
                      "batch_id": f"B-{seq // 50:06d}", "entry_bytes": data, "leaf_hash": leaf,
                      "tag": entry_tags.entry_tag(key, data)})
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
    result = verify_database()  # one read: chain, tags, index columns; checkpoints, nodes, records reconciled
    verify_s = time.perf_counter() - t
    assert result.ok, result.summary()
    from mes.audit.reconcile import reconcile

    t = time.perf_counter()
    reconciled = reconcile()  # `mes audit reconcile` on its own: replay every entry, compare the tables
    reconcile_s = time.perf_counter() - t
    assert reconciled.ok, reconciled.summary()
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
        "reconcile_seconds": round(reconcile_s, 2), "ratio_reconcile_to_floor": ratio(reconcile_s, floor_s),
        "inclusion_proof": proof, "single_row_read": read,
        "ratio_proof_p50_to_row_read_p50": ratio(proof["p50_ms"], read["p50_ms"]),
    }


def measure_incremental(checkpoints: int, per_checkpoint: int = 1000) -> dict:
    """The pre-signing verification over ``per_checkpoint`` new entries, on top of the big
    log ``measure_verification`` wrote, beside reading and hashing those entries once."""
    from mes.audit import checkpoint_guard, log
    from mes.db import db

    actor = log.Actor("u-0007", "Jane Doe", "operator", "KIOSK-03")
    after = {"unit": "kg", "value": "12.50"}
    guard_s, floor_s = [], []
    for c in range(checkpoints):
        for i in range(per_checkpoint - 1):  # stays below the 1000-entry automatic checkpoint
            log.record(actor, "batch.step.completed", ("batch_step", f"B-I/{c}/{i}"), batch="B-I", after=after)
        db.session.commit()
        ref = checkpoint_guard.reference(db.session)
        size = log.tree_size()
        t = time.perf_counter()
        checkpoint_guard.verify_since(db.session, ref, size)
        guard_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        conn = db.session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        for (data,) in conn.exec_driver_sql(f"SELECT entry_bytes FROM audit_entries WHERE seq >= {mark} ORDER BY seq",
                                            (ref.size,)):
            hashlib.sha256(b"\x00" + bytes(data)).digest()
        floor_s.append(time.perf_counter() - t)
        log.publish_checkpoint()
        db.session.commit()
    g, f = percentiles(guard_s), percentiles(floor_s)
    return {"new_entries_per_checkpoint": per_checkpoint - 1, "log_size": log.tree_size(),
            "pre_signing_verification": g, "read_and_hash_new_entries": f,
            "ratio_p50": ratio(g["p50_ms"], f["p50_ms"])}


def measure_witnessed(n: int, home: Path) -> dict:
    """Appends that each publish a checkpoint (as an e-signature does) with one witness
    process cosigning in the background, beside the same without the witness."""
    import subprocess
    import sys

    from mes.audit import log
    from mes.db import db
    from mes.witness import client

    actor = log.Actor("u-0007", "Jane Doe", "operator", "KIOSK-03")

    def run(tag: str) -> float:
        t = time.perf_counter()
        for i in range(n):
            log.record(actor, "batch.released", ("batch", f"{tag}-{i}"), batch=f"{tag}-{i}", after={"ok": True})
            db.session.commit()
        return n / (time.perf_counter() - t)

    plain = run("W0")
    home.mkdir(parents=True, exist_ok=True)
    (home / "log.vkey").write_text(log.audit_log().vkey() + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "mes.witness.server", "--home", str(home), "--name",
                             "witness.bench/w1", "--log-vkey", str(home / "log.vkey"), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().split(" listening on ")[-1]
        vkey = proc.stdout.readline().strip().split("witness verifier key ")[-1]
        from flask import current_app

        current_app.config["MES_AUDIT_WITNESSES"] = f"{url}={vkey}"
        witnessed = run("W1")
        t = time.perf_counter()
        client.sync_witnesses()  # the background thread catches up: the cosignature of the last checkpoint
        catch_up = time.perf_counter() - t
        cosigned = dict(client.witnessed_checkpoints(log.audit_log()))
        client.stop_background(current_app._get_current_object())
        current_app.config["MES_AUDIT_WITNESSES"] = ""
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"n": n, "checkpointed_appends_per_s": round(plain), "witnessed_appends_per_s": round(witnessed),
            "ratio_witnessed_to_plain": ratio(witnessed, plain), "catch_up_ms": round(catch_up * 1000, 1),
            "latest_cosigned": bool(cosigned)}


def measure_token_signing(n: int, folder: Path) -> dict:
    """Checkpoint signatures with the key in a PKCS#11 token (SoftHSM2) beside the same with the
    key file: what custody in a token costs each checkpoint (published at least every 1000
    entries or 60 s, and after each e-signature)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mes.system import token as hsm
    from tests.softhsm import new_token, token_folder

    token_folder(folder)
    token = hsm.configured(new_token(folder))
    assert token is not None
    in_token, in_file = hsm.audit_signing_key(token, create=True), Ed25519PrivateKey.generate()
    body = b"plant-01.example/mes/audit\n1000\n" + b"A" * 44 + b"\n"
    timings = {}
    for name, key in (("file", in_file), ("token", in_token)):
        key.sign(body)  # warm-up (the module's first session)
        t = time.perf_counter()
        for _ in range(n):
            key.sign(body)
        timings[name] = (time.perf_counter() - t) / n * 1000
    derive = time.perf_counter()
    hsm.tag_key(token, create=True)
    return {"signatures": n, "token_ms_per_signature": round(timings["token"], 3),
            "file_ms_per_signature": round(timings["file"], 3),
            "ratio": ratio(timings["token"], timings["file"]),
            "tag_key_derivation_ms": round((time.perf_counter() - derive) * 1000, 2)}


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--checkpoints", type=int, default=5, help="incremental verifications measured")
    ap.add_argument("--witnessed", type=int, default=200, help="checkpointed appends with and without a witness")
    ap.add_argument("--signatures", type=int, default=200, help="checkpoint signatures, key in a token and in a file")
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
                out["incremental_verification"] = measure_incremental(args.checkpoints)
                out["witnessing"] = measure_witnessed(args.witnessed, Path(tmp) / "witness")
        out["token_signing"] = measure_token_signing(args.signatures, Path(tmp) / "softhsm")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

