"""``mes audit verify`` reads the rows once (mes.audit.entry_rows): blocks checked in worker
processes, with a fast path that skips ``json.loads`` where the entry pattern's captures
decide. Whatever the path, what it finds must be what checking every row with
:func:`mes.audit.entry_tags.check_row` in seq order finds: the same first problem, and the
same records folded (dict order included). On SQLite and PostgreSQL."""

from __future__ import annotations

import ast
import inspect
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from mes.audit import entry_rows, entry_tags, log, reconcile_rules
from mes.audit.reconcile import snapshot
from mes.audit.reconcile_rules import RULES, Expected, fold, may_set_records
from mes.db import db
from tests.audit.test_reconcile import plant  # noqa: F401 - the fixture
from tests.test_audit_log import _drop_triggers


def _reference(conn: Any, key: bytes) -> tuple[tuple[int, str] | None, Expected]:
    """The tag pass as it was before the one read: every row through check_row, in order."""
    expected = Expected()
    seq = -1
    found = None
    for seq, row in enumerate(entry_tags.iter_rows(conn)):
        problem, entry = entry_tags.check_row(key, row, seq)
        if entry is not None and entry["entity"]["type"] in RULES:
            try:
                fold(expected, seq, entry)
            except (KeyError, TypeError, AttributeError, ValueError):
                pass
        if problem is not None:
            found = (seq, problem)
            break
    expected.size = seq + 1
    return found, expected


def _records(ex: Expected) -> list[Any]:
    """Records and creations, with the order of every dict."""
    return [[(t, [(k, list(cols.items())) for k, cols in rows.items()]) for t, rows in ex.records.items()
             if rows], sorted(ex.created.items())]


def _same_as_reference(workers: int) -> tuple[int, str] | None:
    key = log.audit_log().tag_key()
    db.session.rollback()
    with snapshot() as conn:
        want_problem, want = _reference(conn, key)
        got = entry_rows.verify_rows(conn, key, workers=workers)
    assert got.problem == want_problem
    assert _records(got.expected) == _records(want)
    assert got.expected.size == want.size
    return got.problem


def _exec(sql: str, params: dict[str, Any]) -> None:
    db.session.rollback()
    with db.engine.begin() as conn:
        conn.execute(text(sql), params)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_one_read_finds_what_check_row_finds_row_by_row(plant: dict, backend: str, workers: int,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry_rows, "STREAM_BLOCK_LINES", 7)  # many blocks: workers, joins and merges
    assert _same_as_reference(workers) is None
    _drop_triggers(backend)
    size = db.session.execute(text("SELECT count(*) FROM audit_entries")).scalar_one()
    last = size - 3
    _exec("UPDATE audit_entries SET batch_id = 'B-OTHER' WHERE seq = :s", {"s": last})
    assert _same_as_reference(workers) == (last, f"index column batch_id is 'B-OTHER', the entry bytes say "
                                                 f"{json.loads(_entry_bytes(last))['batch']!r}")
    _exec("UPDATE audit_entries SET at = at + interval '1 second' WHERE seq = :s" if backend == "postgresql" else
          "UPDATE audit_entries SET at = datetime(at, '+1 second') WHERE seq = :s", {"s": last - 9})
    assert _same_as_reference(workers)[0] == last - 9
    _exec("UPDATE audit_entries SET tag = :t WHERE seq = :s", {"t": b"\x00" * 32, "s": last - 20})
    assert _same_as_reference(workers)[0] == last - 20
    _exec("UPDATE audit_entries SET tag = NULL WHERE seq = :s", {"s": 3})
    assert _same_as_reference(workers)[0] == 3


@pytest.mark.parametrize("key_bytes", [32, 64, 65, 100])
def test_the_tags_a_block_is_checked_against_are_the_entry_tags(key_bytes: int) -> None:
    key = bytes(range(key_bytes))
    lines = [b"", b"{}", b'{"seq":1}' * 40]
    assert entry_rows._tags(key, lines) == b"".join(entry_tags.entry_tag(key, line) for line in lines)


def _entry_bytes(seq: int) -> bytes:
    db.session.rollback()
    return bytes(db.session.execute(text("SELECT entry_bytes FROM audit_entries WHERE seq = :s"), {"s": seq}).scalar_one())


# ------------------------------------------------------------ skipping the parse


def _literals() -> list[str]:
    """Every string the rules' module holds: the actions and after keys a rule may read."""
    tree = ast.parse(inspect.getsource(reconcile_rules))
    return sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                   and len(n.value) < 40})


LITERALS = _literals()
values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["", "x", "1.5"])),
                      lambda inner: st.one_of(st.lists(inner, max_size=3),
                                              st.dictionaries(st.sampled_from(["id", *LITERALS]), inner, max_size=3)),
                      max_leaves=6)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(etype=st.sampled_from(sorted(RULES)), action=st.one_of(st.sampled_from(LITERALS), st.text(max_size=5)),
       after=st.one_of(st.none(), st.lists(values, max_size=2),
                       st.dictionaries(st.one_of(st.sampled_from(LITERALS), st.text(max_size=4)), values, max_size=5)),
       batch=st.one_of(st.none(), st.just("B-1")))
def test_an_entry_the_verifier_does_not_parse_sets_no_record(etype: str, action: str, after: Any,
                                                             batch: str | None) -> None:
    keys = [k.encode() for k in after] if isinstance(after, dict) else []
    if may_set_records(etype, action, keys):
        return
    ex = Expected()
    try:
        fold(ex, 7, {"entity": {"type": etype, "id": "E-1"}, "action": action, "after": after, "batch": batch})
    except (KeyError, TypeError, AttributeError, ValueError):
        pass
    assert ex.records == {} and ex.created == {}


def test_every_rule_says_which_actions_always_write() -> None:
    assert set(reconcile_rules._WRITE_ALWAYS) == set(RULES) == set(reconcile_rules._READ_KEYS)


def test_merging_folds_of_consecutive_entries_is_folding_them_in_order() -> None:
    entries = [{"entity": {"type": "work_order", "id": f"W-{i % 3}"}, "action": "work_order.created" if i < 3
                else "work_order.updated", "after": {"status": f"s{i}", **({"line": "L"} if i % 2 else {})}}
               for i in range(9)]
    whole = Expected()
    for i, e in enumerate(entries):
        fold(whole, i, e)
    merged = Expected()
    for lo, hi in ((0, 2), (2, 5), (5, 9)):
        part = Expected()
        for i in range(lo, hi):
            fold(part, i, entries[i])
        merged.merge(part)
    assert _records(merged) == _records(whole) and merged.entities == whole.entities
