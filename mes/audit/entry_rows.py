"""The one read of ``audit_entries`` that ``mes audit verify`` makes: each block of rows is
checked in a worker process for checks 1–3 of §5 (:mod:`mes.audit.entry_blocks`), every
entry's tag and index columns (:mod:`mes.audit.entry_tags`), and the entries are folded into
the records they describe (:mod:`mes.audit.reconcile_rules`); the parent joins the blocks in
order (:class:`~mes.audit.entry_stream._Joiner`, :meth:`Expected.merge`).

Performance: the entry pattern that proves a line canonical also captures its index
members (action, actor, terminal, entity, batch, ``at``) and its ``after`` keys. A row whose
columns equal those captures needs no ``json.loads`` for its column check, and an entry
whose rule provably sets nothing (:func:`~mes.audit.reconcile_rules.may_set_records`) is
not parsed for the fold either. Every row the fast path does not clear goes to
:func:`~mes.audit.entry_tags.check_row`, which decides and words the problem, so results
and messages are those of checking every row with it in seq order.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import multiprocessing.util
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection

from mes.audit.entry_blocks import MAX_ERRORS, _Block, check_scanned, gc_paused
from mes.audit.entry_pattern import (
    _AFTER_KEYS,
    _I_AT,
    _NOT_PLAIN,
    I_ACTION,
    I_ACTOR_ID,
    I_BATCH,
    I_ENTITY_ID,
    I_ENTITY_TYPE,
    I_TERMINAL,
    Fields,
    _scan,
)
from mes.audit.entry_stream import STREAM_BLOCK_LINES, StreamResult, _Joiner, default_workers, run_blocks
from mes.audit.entry_tags import ROW_COLUMNS, TAG_DOMAIN, _same_at, check_row
from mes.audit.reconcile_rules import RULES, Expected, fold, may_set_records

PAGE_BLOCKS = 1
"""Blocks read per keyset query: one, so that PostgreSQL plans it as a scan of the primary
key (a larger LIMIT on a table without statistics, e.g. right after a restore, has been
planned as a parallel scan of the whole table and a sort, for every page)."""

# (stream block, stored leaf hashes joined, first (seq, problem) of tags or columns, records folded)
_RowBlock = tuple[_Block, bytes, "tuple[int, str] | None", Expected]


@dataclass
class RowsResult:
    """Outcome of :func:`verify_rows`."""

    stream: StreamResult
    #: the stored ``leaf_hash`` column of every row, in seq order
    stored_leaves: bytes
    #: the first row whose tag or index columns do not match its bytes: (seq, problem)
    problem: tuple[int, str] | None
    #: the records the entries describe, folded up to the first problem (its entry included)
    expected: Expected = field(default_factory=Expected)
    #: False when read without the tag key: then no tag, column or record was looked at
    tags_checked: bool = True


def _cursor(conn: Any, postgresql: bool) -> Any:
    """A driver cursor (binary on PostgreSQL: bytea and timestamps without a text round trip)."""
    return conn.cursor(binary=True) if postgresql else conn.cursor()


def _dbapi(conn: Connection) -> Any:
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    return dbapi


def _pages(conn: Connection, columns: str, block_rows: int) -> Iterator[list[tuple[Any, ...]]]:
    """``columns`` of every row in seq order, in blocks of ``block_rows`` (keyset pages of
    :data:`PAGE_BLOCKS` blocks, through the driver: no Row objects)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"SELECT {columns} FROM audit_entries WHERE seq > {mark} ORDER BY seq LIMIT {int(block_rows * PAGE_BLOCKS)}"
    cursor = _cursor(_dbapi(conn), conn.dialect.name == "postgresql")
    try:
        last = -1
        while True:
            cursor.execute(sql, (last,))
            rows = cursor.fetchall()
            if not rows:
                return
            for i in range(0, len(rows), block_rows):
                yield rows[i:i + block_rows]
            last = rows[-1][0]
    finally:
        cursor.close()


def verify_rows(conn: Connection, key: bytes | None, *, workers: int | None = None,
                max_errors: int = MAX_ERRORS) -> RowsResult:
    """Checks 1–3 of §5 over every stored entry, and (given the tag ``key``) every row's
    tag and index columns, the entries folded into the records they describe. One read of
    the table: on PostgreSQL with worker processes, each worker reads its blocks itself in
    this transaction's snapshot (the parent reads only the seqs that delimit them);
    otherwise the parent reads the rows and hands them out."""
    joiner = _Joiner(max_errors)
    leaves: list[bytes] = []
    outcome = RowsResult(StreamResult(0, joiner.tree, None, []), b"", None, tags_checked=key is not None)

    def take(res: _RowBlock) -> None:
        block, stored, problem, expected = res
        joiner.add(block)
        leaves.append(stored)
        if outcome.problem is None:
            outcome.expected.merge(expected)
            outcome.problem = problem
            outcome.expected.size = block[0] + block[1] if problem is None else problem[0] + 1

    workers = default_workers() if workers is None else workers
    if conn.dialect.name == "postgresql" and workers > 1:
        snapshot_id = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
        url = conn.engine.url.render_as_string(hide_password=False)
        with key_scans(conn):
            here = _cursor(_dbapi(conn), True)
            try:
                seq_blocks = ([seq for (seq,) in block] for block in _pages(conn, "seq", STREAM_BLOCK_LINES))
                run_blocks(seq_blocks, check_seq_block, (max_errors, key), workers, take,
                           local=lambda seqs, *args: check_row_block(_read_block(here, seqs), *args),
                           init=(_open_snapshot, (url, snapshot_id)))
            finally:
                here.close()
    else:
        run_blocks(_pages(conn, ROW_COLUMNS, STREAM_BLOCK_LINES), check_row_block, (max_errors, key), workers, take)
    outcome.stream = joiner.result()
    outcome.stored_leaves = b"".join(leaves)
    return outcome


#: planner settings turned off for the keyset reads: whatever the statistics say (none, on a
#: table just filled or restored, or with autovacuum off), each read is planned as a scan of
#: the primary key, never as a scan of the whole table and a sort (measured: 20 ms instead of
#: 3 ms for one block's seqs at 100k rows, 65 ms instead of 4 ms for its rows)
_SCAN_ONLY = ("enable_seqscan", "enable_bitmapscan", "enable_sort")


def _plan_key_scans(conn: Connection, values: list[str]) -> None:
    """Set :data:`_SCAN_ONLY` to ``values`` for the rest of this transaction."""
    conn.exec_driver_sql("SELECT " + ", ".join(f"set_config('{n}', %s, true)" for n in _SCAN_ONLY), tuple(values))


@contextlib.contextmanager
def key_scans(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, the block's reads of ``audit_entries`` by seq are planned as scans of the
    primary key (:data:`_SCAN_ONLY` off), and the settings are put back after; elsewhere nothing.
    (After a failure the transaction ends with them off.)"""
    if conn.dialect.name != "postgresql":
        yield
        return
    kept = conn.exec_driver_sql(f"SELECT {', '.join(f'current_setting({n!r})' for n in _SCAN_ONLY)}").one()
    _plan_key_scans(conn, ["off"] * len(_SCAN_ONLY))
    yield
    _plan_key_scans(conn, list(kept))


# ------------------------------------------------------------- worker processes

_snapshot: Any = None
"""A worker's own connection, reading the parent's snapshot (PostgreSQL)."""


def _open_snapshot(url: str, snapshot_id: str) -> None:
    """Worker initializer: a connection of its own in the parent's exported snapshot, so
    that every block is read as the parent's transaction sees the table."""
    global _snapshot
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if not re.fullmatch(r"[0-9A-F-]+", snapshot_id):
        raise ValueError(f"unexpected snapshot id {snapshot_id!r}")
    proxied = create_engine(url, poolclass=NullPool).raw_connection()
    dbapi = proxied.dbapi_connection
    dbapi.rollback()  # whatever the engine asked on connect: the snapshot must come first
    dbapi.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    dbapi.read_only = True
    dbapi.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
    for name in _SCAN_ONLY:  # its own connection: for the rest of its session
        dbapi.execute(f"SET {name} = off")
    _snapshot = (proxied, dbapi.cursor(binary=True))
    multiprocessing.util.Finalize(None, proxied.close, exitpriority=10)


def _read_block(cursor: Any, seqs: list[int]) -> list[tuple[Any, ...]]:
    """The rows of a block of seqs (read before in the same snapshot)."""
    cursor.execute(f"SELECT {ROW_COLUMNS} FROM audit_entries WHERE seq >= %s ORDER BY seq LIMIT %s",
                   (seqs[0], len(seqs)))  # (a LIMIT, not a range: planned as a scan of the primary key)
    rows = cursor.fetchall()
    if [r[0] for r in rows] != seqs:
        raise RuntimeError("audit_entries changed within one snapshot")
    return rows


def check_seq_block(seqs: list[int], start: int, max_errors: int, key: bytes | None) -> _RowBlock:
    """Worker side of :func:`verify_rows` on PostgreSQL: read one block, then check it."""
    return check_row_block(_read_block(_snapshot[1], seqs), start, max_errors, key)


def check_row_block(rows: Sequence[tuple[Any, ...]], start: int, max_errors: int, key: bytes | None) -> _RowBlock:
    """Worker side of :func:`verify_rows`: one block of consecutive rows from ``start``."""
    with gc_paused():
        lines, leaves, stored = _bytes_of(rows)
        joined = b"".join(lines)
        plain = len(joined.translate(None, _NOT_PLAIN)) == len(joined)
        fields = _scan(lines, plain)
        block = check_scanned(lines, fields, start, max_errors)
        if key is None:
            return block, stored, None, Expected()
        leaves_ok = stored == block[2] and _all_32_bytes(leaves)
        problem, expected = _check_tags(rows, lines, fields, plain, leaves_ok, start, key)
        return block, stored, problem, expected


_ENTRY_BYTES, _LEAF_HASH = itemgetter(1), itemgetter(2)


def _bytes_of(rows: Sequence[tuple[Any, ...]]) -> tuple[list[bytes], list[Any], bytes]:
    """The entry bytes of a block's rows, their stored leaf hashes, and those joined."""
    lines, leaves = list(map(_ENTRY_BYTES, rows)), list(map(_LEAF_HASH, rows))
    if set(map(type, lines)) <= {bytes} and set(map(type, leaves)) <= {bytes}:
        return lines, leaves, b"".join(leaves)
    stored = bytearray()
    lines = []
    for row in rows:  # in the order the stream read them before (a NULL fails alike)
        stored += row[2]
        data = row[1]
        lines.append(data if type(data) is bytes else bytes(data))
    return lines, leaves, bytes(stored)


def _all_32_bytes(values: list[Any]) -> bool:
    """Every value is 32 bytes (so two joins of them are equal only item by item)."""
    return not values or (set(map(type, values)) == {bytes} and set(map(len, values)) == {32})


def _check_tags(rows: Sequence[tuple[Any, ...]], lines: list[bytes], fields: list[Fields | None], plain: bool,
                leaves_ok: bool, start: int, key: bytes) -> tuple[tuple[int, str] | None, Expected]:
    """The first row (from ``start``) whose tag or index columns do not match, and the fold
    of the entries up to it. ``leaves_ok``: every stored leaf hash is the entry's."""
    tags = [r[3] for r in rows]
    fast = leaves_ok and _all_32_bytes(tags) and hmac.compare_digest(b"".join(tags), _tags(key, lines))
    if fast and plain and _block_columns_ok(rows, fields, start):
        return None, _fold_cleared(lines, fields, start)  # type: ignore[arg-type]
    expected = Expected()
    for i, row in enumerate(rows):
        seq = start + i
        found = fields[i]
        if fast and found is not None and (plain or b"\\" not in lines[i]) and _columns_ok(row, found, seq):
            _fold_cleared([lines[i]], [found], seq, expected)
            continue
        problem, entry = check_row(key, row, seq)
        if entry is not None and entry["entity"]["type"] in RULES:
            _fold(expected, seq, entry)
        if problem is not None:
            return (seq, problem), expected
    return None, expected


def _tags(key: bytes, lines: list[bytes]) -> bytes:
    """The tags the entries must carry (:func:`~mes.audit.entry_tags.entry_tag`), joined:
    HMAC-SHA256 (RFC 2104) spelled out over copies of the keyed inner and outer hash
    states, which costs a third less than :mod:`hmac`'s copies of its own objects."""
    pad = (hashlib.sha256(key).digest() if len(key) > _SHA256_BLOCK else key).ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in pad) + TAG_DOMAIN)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in pad))
    out = []
    for line in lines:
        h = inner.copy()
        h.update(line)
        o = outer.copy()
        o.update(h.digest())
        out.append(o.digest())
    return b"".join(out)


_SHA256_BLOCK = 64
_INDEX_COLUMNS = itemgetter(slice(5, None))  # of a ROW_COLUMNS row: action ... batch_id
_INDEX_MEMBERS = itemgetter(I_ACTION, I_ACTOR_ID, I_TERMINAL, I_ENTITY_TYPE, I_ENTITY_ID, I_BATCH)
_AT_MEMBER = itemgetter(_I_AT)
_FOLD_KEY = itemgetter(I_ENTITY_TYPE, I_ACTION, _AFTER_KEYS)
_may_set: dict[tuple[Any, ...], bool] = {}


def _block_columns_ok(rows: Sequence[tuple[Any, ...]], fields: list[Fields | None], start: int) -> bool:
    """Whether every row's seq and index columns are its entry's, for a block of lines that
    the pattern proved valid and that hold no escapes (so each captured member is written as
    ``json.dumps`` writes the value it stands for). Compared as one JSON text per side: equal
    texts are equal values, item by item. False also means "check row by row"."""
    n = len(rows)
    if None in fields:
        return False
    groups = [f[3] for f in fields]  # type: ignore[index]
    seqs = list(range(start, start + n))
    if [r[0] for r in rows] != seqs or [f[0] for f in fields] != seqs:  # type: ignore[index]
        return False
    try:
        columns = json.dumps(list(map(_INDEX_COLUMNS, rows)), ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, UnicodeEncodeError):
        return False
    if n and columns != b"[[" + b"],[".join(map(b",".join, map(_INDEX_MEMBERS, groups))) + b"]]":
        return False
    ats = list(map(bytes.decode, map(_AT_MEMBER, groups)))
    stored = [r[4] for r in rows]
    if stored and type(stored[0]) is str:  # SQLite's text, as entry_tags._same_at reads it
        return [f"{at[:10]} {at[11:26]}" for at in ats] == stored
    try:  # the same instants as the exact "YYYY-MM-DDTHH:MM:SS.ffffffZ": the columns format as those
        return list(map(datetime.fromisoformat, ats)) == stored
    except ValueError:
        return False


def _fold_cleared(lines: list[bytes], fields: list[Fields], start: int, expected: Expected | None = None) -> Expected:
    """Fold entries whose lines the pattern proved valid and whose rows checked out: only
    those whose rule may set something (:func:`may_set_records`) are parsed."""
    expected = Expected() if expected is None else expected
    may_set = _may_set
    for i, found in enumerate(fields):
        key = _FOLD_KEY(found[3])
        flag = may_set.get(key)
        if flag is None:
            if len(may_set) > 4096:
                may_set.clear()
            etype, action, after_keys = key
            flag = may_set[key] = may_set_records(etype[1:-1].decode(), action[1:-1].decode(), after_keys)
        if flag:
            _fold(expected, start + i, json.loads(lines[i]))
    return expected


def _text(member: bytes) -> str | None:
    return None if member == b"null" else member[1:-1].decode()


def _columns_ok(row: tuple[Any, ...], found: Fields, seq: int) -> bool:
    """:func:`_block_columns_ok` for one row (of a block that has escapes somewhere)."""
    g = found[3]
    if row[0] != seq or found[0] != seq or \
            row[5:] != (_text(g[I_ACTION]), _text(g[I_ACTOR_ID]), _text(g[I_TERMINAL]), _text(g[I_ENTITY_TYPE]),
                        _text(g[I_ENTITY_ID]), _text(g[I_BATCH])):
        return False
    at, column = g[_I_AT].decode("ascii"), row[4]
    if isinstance(column, datetime) and column.tzinfo is not None:
        try:
            return column == datetime.fromisoformat(at)
        except ValueError:
            return False
    return isinstance(column, str) and _same_at(column, at)


def _fold(expected: Expected, seq: int, entry: dict[str, Any]) -> None:
    try:
        fold(expected, seq, entry)
    except (KeyError, TypeError, AttributeError, ValueError):
        pass  # a malformed entry: the verifier names it
