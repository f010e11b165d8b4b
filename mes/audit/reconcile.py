"""``mes audit reconcile``: the GMP records in the tables must be what the log says.

The log is replayed (:mod:`mes.audit.reconcile_rules` folds every entry into the values
each record must hold) and the tables are read and compared. A DBA who edits a recorded
weight, sets a held lot to released or a batch to released, inserts a record without an
entry or deletes one (after dropping its refusal trigger) is named: the first difference,
by the seq of the entry that says otherwise, with its table, record and column.

Three uses:

* :func:`reconcile` (full): ``mes audit reconcile``, ``mes audit verify``, the scheduled
  full verification and a restore;
* :func:`reconcile_since` (incremental, before each checkpoint): only the records and
  columns the entries since the last checkpoint describe, cost proportional to them;
* :class:`Watch` (each poll of the background thread): the expected records are kept in
  memory and extended with the new entries only, then every table is compared, so a direct
  edit of a record nobody touches turns ``/readyz`` red within one checkpoint interval.

Entries and tables are read in one snapshot (REPEATABLE READ on PostgreSQL, one read
transaction on SQLite) so that a change committing meanwhile is never half seen. Entries
are selected by their ``entity_type`` column, which the verifier checks against the entry
bytes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, select, text
from sqlalchemy.pool import NullPool

from mes.audit.entry_rows import key_scans
from mes.audit.reconcile_rules import (
    NOT_STARTED,
    OWNED_TABLES,
    RULES,
    Expected,
    fold,
    may_change_records,
    number,
    step_state_class,
)
from mes.db import db

BATCH = 20_000
#: rows compared per hold of the watch's lock
CHUNK = 200


@dataclass(frozen=True)
class Difference:
    """One record that is not what the log says."""

    seq: int | None
    table: str
    key: str
    message: str

    def line(self) -> str:
        where = f"seq {self.seq}: " if self.seq is not None else ""
        return f"{where}{self.table} {self.key}: {self.message}"


@dataclass
class ReconcileResult:
    entries: int
    records: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def first(self) -> Difference | None:
        known = [d for d in self.differences if d.seq is not None]
        if known:
            return min(known, key=lambda d: d.seq)  # type: ignore[arg-type, return-value]
        return self.differences[0] if self.differences else None

    @property
    def first_bad_seq(self) -> int | None:
        first = self.first
        return None if first is None else first.seq

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.records} records reconciled with {self.entries} entries"
        more = f" (+{len(self.differences) - 1} more)" if len(self.differences) > 1 else ""
        first = self.first
        assert first is not None
        return f"FAILED: record differs from the audit log: {first.line()}{more}"


# ------------------------------------------------------------------------ the tables


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _remaining(row: Any) -> Any:
    from mes import quantities as q

    try:
        return q.convert(row.remaining_qty, row.storage_uom, row.uom)
    except Exception:  # noqa: BLE001 - an impossible unit is a difference, shown as stored
        return row.remaining_qty


@dataclass(frozen=True)
class Table:
    """How to read one table as the values the rules produce."""

    name: str
    key: str
    columns: str
    read: Any  # row -> {column: value}
    created_by_entries: bool = True


def _plain(*names: str) -> Any:
    return lambda r: {n: _iso(getattr(r, n)) for n in names}


TABLES: tuple[Table, ...] = (
    Table("material_lots", "id", "id, item_code, status, supplier, supplier_lot, manufactured_date, expiry_date, "
          "retest_date", _plain("item_code", "status", "supplier", "supplier_lot", "manufactured_date", "expiry_date",
                               "retest_date")),
    Table("material_containers", "id", "id, lot_id, remaining_qty, storage_uom, uom",
          lambda r: {"lot_id": r.lot_id, "remaining": _remaining(r)}),
    Table("material_holds", "id", "id, lot_id, scope, reason, ncr_id, released_at, disposition, conditions, "
          "conditions_met_at",
          lambda r: {"lot_id": r.lot_id, "scope": r.scope, "reason": r.reason, "ncr_id": r.ncr_id,
                     "released": r.released_at is not None, "disposition": r.disposition,
                     "conditions": r.conditions, "conditions_met": r.conditions_met_at is not None}),
    Table("material_consumptions", "id", "id, lot_id, item_code, container_id, qty, uom, batch_id, step_id, "
          "work_order_id, conditional, conditional_hold_id",
          _plain("lot_id", "item_code", "container_id", "qty", "uom", "batch_id", "step_id", "work_order_id",
                 "conditional", "conditional_hold_id")),
    Table("material_consumption_reversals", "consumption_id", "consumption_id", lambda r: {}),
    Table("batches", "id", "id, work_order_id, recipe_version_id, recipe_hash, batch_size, unit, status",
          _plain("work_order_id", "recipe_version_id", "recipe_hash", "batch_size", "unit", "status")),
    Table("batch_steps", "id", "id, state, attempt",
          lambda r: {"state": step_state_class(r.state), "attempt": r.attempt}, created_by_entries=False),
    Table("step_records", "id", "id, batch_step_id, kind, attempt, value, unit, corrects, superseded_by",
          _plain("batch_step_id", "kind", "attempt", "value", "unit", "corrects", "superseded_by")),
    Table("deviations", "id", "id, batch_id, severity, category, description, automatic, status, disposition, "
          "qms_ref", _plain("batch_id", "severity", "category", "description", "automatic", "status", "disposition",
                            "qms_ref")),
    Table("work_orders", "id", "id, item, quantity, unit, recipe_version_id, line, status",
          _plain("item", "quantity", "unit", "recipe_version_id", "line", "status")),
    Table("equipment", "id", "id, kind, status, active", _plain("kind", "status", "active")),
)
TABLES_BY_NAME = {t.name: t for t in TABLES}
ENTITY_TYPES = tuple(RULES)


def _same(expected: Any, actual: Any) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return bool(expected) == bool(actual) and isinstance(actual, bool | int)
    if isinstance(expected, type(number("0"))):
        actual_n = number(actual)
        return actual_n is not None and actual_n == expected
    return str(expected) == str(actual)


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value if not hasattr(value, "as_tuple") else str(value))


def _rows(conn: Connection, table: Table, keys: list[str] | None) -> Iterator[Any]:
    """The table's rows through its mapped column types (quantities come back as Decimals)."""
    import mes.models  # noqa: F401 - every table in the metadata

    tbl = db.metadata.tables[table.name]
    query = select(*[tbl.c[c.strip()] for c in table.columns.split(",")])
    if keys is None:
        yield from conn.execute(query)
        return
    for i in range(0, len(keys), 500):
        yield from conn.execute(query.where(tbl.c[table.key].in_(keys[i:i + 500])))


def _chunks(rows: Iterator[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def compare(conn: Connection, ex: Expected, *, since: int = 0, full: bool = True,
            tables: Iterable[str] | None = None, every_column: bool = False, upto: int | None = None,
            lock: AbstractContextManager[Any] | None = None) -> tuple[int, list[Difference]]:
    """Compare the tables with ``ex``. ``full``: every row of every table (a row no entry
    created is a difference); otherwise only the records in ``ex`` with columns set at
    ``since`` or later (``since=0``: every record in ``ex``, all its columns), and of those
    only the columns set at ``since`` or later unless ``every_column``. ``tables``: only
    these. Returns (records compared, differences).

    ``upto`` and ``lock`` let another thread extend ``ex`` meanwhile (:class:`Watch`): the
    conn's snapshot holds the entries before ``upto``, so what later entries set is left to
    the next comparison, and ``ex`` is read only under ``lock``, a chunk of rows at a time."""
    diffs: list[Difference] = []
    count = 0
    only = None if tables is None else set(tables)
    guard = lock if lock is not None else nullcontext()
    for table in TABLES:
        if only is not None and table.name not in only:
            continue
        with guard:
            wanted = ex.records.setdefault(table.name, {})
            if full:
                keys = None
            else:
                keys = ex.touched_since(since, table.name)
                if keys is None:
                    keys = sorted(k for k, cols in wanted.items() if any(seq >= since for _, seq in cols.values()))
        if keys is not None and not keys:
            continue
        seen: set[str] = set()
        for chunk in _chunks(_rows(conn, table, keys)):
            actuals = [(str(getattr(row, table.key)), table.read(row)) for row in chunk]
            count += len(chunk)
            with guard:
                for key, actual in actuals:
                    seen.add(key)
                    cols = wanted.get(key)
                    if cols is None:
                        if table.created_by_entries:
                            diffs.append(Difference(None, table.name, key, "the record has no audit entry "
                                                    "(written outside the MES)"))
                        elif table.name == "batch_steps" and actual["state"] != NOT_STARTED:
                            diffs.append(Difference(None, table.name, key, f"state is {actual['state']!r} but no "
                                                    "audit entry started or recorded the step"))
                        continue
                    for column, (value, seq) in cols.items():
                        if (seq < since and not every_column) or (upto is not None and seq >= upto) \
                                or column not in actual:
                            continue
                        if not _same(value, actual[column]):
                            diffs.append(Difference(seq, table.name, key, f"{column} is {_show(actual[column])} "
                                                    f"in the table but the audit log says {_show(value)}"))
        with guard:
            expected_keys = list(wanted) if keys is None else keys
        for key_chunk in _chunks(iter(expected_keys)):
            with guard:
                for key in key_chunk:
                    seq = ex.created.get((table.name, key))
                    if seq is not None and since <= seq and (upto is None or seq < upto) and key not in seen:
                        diffs.append(Difference(seq, table.name, key, "the record the audit log created is missing"))
    return count, diffs


# ------------------------------------------------------------------------ the log


def fold_entries(conn: Connection, ex: Expected, start: int, end: int | None = None) -> int:
    """Fold the entries ``start ≤ seq < end`` (all from ``start`` if None) into ``ex``;
    returns the seq after the last one read."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    types = ", ".join(f"'{t}'" for t in ENTITY_TYPES)
    upper = f" AND seq < {int(end)}" if end is not None else ""
    sql = (f"SELECT seq, entry_bytes, entity_type FROM audit_entries WHERE seq >= {mark}{upper} "
           f"AND entity_type IN ({types}) ORDER BY seq LIMIT {BATCH}")
    cursor = conn.connection.cursor()
    last = start - 1
    try:
        with key_scans(conn):  # by the primary key, not a whole-table scan and sort per page
            while True:
                cursor.execute(sql, (last + 1,))
                rows = cursor.fetchall()
                if not rows:
                    break
                for seq, data, etype in rows:
                    data = bytes(data)
                    if not may_change_records(etype, data):
                        continue
                    try:
                        fold(ex, seq, json.loads(data))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue  # not an entry: the verifier names it
                last = rows[-1][0]
    finally:
        cursor.close()
    size_sql = "SELECT max(seq) FROM audit_entries" + (f" WHERE seq < {int(end)}" if end is not None else "")
    top = conn.exec_driver_sql(size_sql).scalar()
    ex.size = max(ex.size, end if end is not None else (0 if top is None else top + 1))
    return ex.size


def _snapshot_engine() -> Engine:
    """An engine of its own without a pool: the check before a checkpoint reads while its
    caller holds the audit append lock, and every pooled connection may belong to a request
    waiting for that lock (a wait for the pool would hold the floor until its timeout). The
    few reads that need one pay for a fresh connection. (An in-memory SQLite database has
    no second connection: there the app's engine serves.)"""
    from flask import current_app

    from mes.db import engine_options, tune_sqlite_engine

    engine = db.engine
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        return engine
    own = current_app.extensions.get("mes_snapshot_engine")
    if own is None or own.url != engine.url:
        options = {k: v for k, v in engine_options(str(engine.url)).items() if k == "connect_args"}
        own = create_engine(engine.url, poolclass=NullPool, **options)
        tune_sqlite_engine(own)
        current_app.extensions["mes_snapshot_engine"] = own
    return own


@contextmanager
def snapshot() -> Iterator[Connection]:
    """One consistent read of the log and the tables, never taking SQLite's write lock."""
    with _snapshot_engine().connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        else:
            conn = conn.execution_options(mes_read_only=True)
        with conn.begin():
            yield conn


def reconcile(conn: Connection | None = None) -> ReconcileResult:
    """Replay the whole log and compare every GMP record with it."""
    if conn is None:
        db.session.rollback()
        with snapshot() as snap:
            return reconcile(snap)
    ex = Expected()
    fold_entries(conn, ex, 0)
    count, diffs = compare(conn, ex)
    return ReconcileResult(ex.size, count, diffs)


def fold_entities(conn: Connection, ex: Expected, entities: Iterable[tuple[str, str]], end: int) -> None:
    """Fold every entry before ``end`` of the given entities (through the entity index)."""
    by_type: dict[str, list[str]] = {}
    for etype, eid in entities:
        by_type.setdefault(etype, []).append(eid)
    rows: list[tuple[int, bytes]] = []
    for etype, ids in by_type.items():
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            params = {"t": etype, "end": end, **{f"k{j}": k for j, k in enumerate(chunk)}}
            marks = ", ".join(f":k{j}" for j in range(len(chunk)))
            rows.extend(conn.execute(text(f"SELECT seq, entry_bytes FROM audit_entries WHERE entity_type = :t AND "
                                          f"entity_id IN ({marks}) AND seq < :end"), params).all())
    for seq, data in sorted(rows, key=lambda r: r[0]):
        try:
            fold(ex, seq, json.loads(bytes(data)))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue


def reconcile_since(conn: Connection, start: int, end: int) -> ReconcileResult:
    """The records the entries ``start ≤ seq < end`` touch (before a checkpoint): a record
    an entity owns is replayed from that entity's whole history and compared in full; the
    others (containers, step records) in the columns the new entries set."""
    new = Expected()
    if end > start:
        fold_entries(conn, new, start, end)
    # an entity's history is replayed only when the new entries set something of its record
    owned = [(t, i) for t, i in new.entities
             if t in OWNED_TABLES and (t == "lot" or i in new.records.get(OWNED_TABLES[t][0], {}))]
    history = Expected()
    fold_entities(conn, history, owned, end)
    owned_tables = {name for t, _ in owned for name in OWNED_TABLES[t]}
    count, diffs = compare(conn, history, full=False, tables=owned_tables)
    others = [t.name for t in TABLES if t.name not in owned_tables]
    more, diffs2 = compare(conn, new, since=start, full=False, tables=others)
    return ReconcileResult(end - start, count + more, diffs + diffs2)


class Watch:
    """The expected records kept in memory by the background thread: each poll folds only
    the new entries, then compares every table. Before a checkpoint the same state serves
    :meth:`since` (no entity's history replayed again).

    ``clean_upto``: every record the entries before it touch was found as the log says, at
    a snapshot that held those entries. :meth:`since` compares only the records touched
    from there on (a record compared clean and edited after is the next poll's to find)."""

    def __init__(self) -> None:
        self.expected = Expected(touched=[])
        self.lock = threading.Lock()
        self.clean_upto = 0

    def poll(self) -> ReconcileResult:
        """Fold the new entries, then compare every table. The lock is held a chunk of rows
        at a time, so a checkpoint's :meth:`since` never waits for the whole comparison."""
        db.session.rollback()
        with snapshot() as conn:
            with self.lock:
                end = fold_entries(conn, self.expected, self.expected.size)
            count, diffs = compare(conn, self.expected, upto=end, lock=self.lock)
        with self.lock:
            self.clean_upto = 0 if diffs else max(self.clean_upto, end)
            self.expected.forget_touched_before(self.clean_upto)
        return ReconcileResult(end, count, diffs)

    def since(self, start: int) -> ReconcileResult | None:
        """The records the committed entries from ``start`` on touch, compared in every
        column with what the whole log says: cost proportional to the entries not yet
        compared clean. None while this process has not yet read the log (its first poll):
        the caller replays."""
        with self.lock:
            if self.expected.size == 0 or self.expected.size < start:
                return None
            with snapshot() as conn:  # taken under the lock: never older than what was folded
                end = fold_entries(conn, self.expected, self.expected.size)
                count, diffs = compare(conn, self.expected, since=max(start, self.clean_upto), full=False,
                                       every_column=True)
            if diffs:
                self.clean_upto = 0
            elif self.clean_upto >= start:
                self.clean_upto = end
                self.expected.forget_touched_before(end)
            return ReconcileResult(end - start, count, diffs)


def watch_state() -> Watch:
    from flask import current_app

    return current_app.extensions.setdefault("mes_reconcile_watch", Watch())
