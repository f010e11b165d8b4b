"""Canonical entry bytes and the §1 value space."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mes.audit import canonical as c

from .factory import entry_dict


def entry(**changes: Any) -> dict[str, Any]:
    e = entry_dict(1, c.ZERO_HASH, batch="B-1")
    e.update(changes)
    return e


def dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------- constants


def test_constants() -> None:
    assert c.ENTRY_VERSION == "mes.audit.entry/v1"
    assert c.ZERO_HASH == "0" * 64
    assert list(c.ENTRY_MEMBERS) == sorted(c.ENTRY_MEMBERS) and len(c.ENTRY_MEMBERS) == 13
    assert set(entry()) == set(c.ENTRY_MEMBERS)


# ------------------------------------------------------------------ timestamps


def test_format_at() -> None:
    dt = datetime(2026, 11, 23, 10, 4, 5, 123456, tzinfo=UTC)
    assert c.format_at(dt) == "2026-11-23T10:04:05.123456Z"
    assert c.format_at(dt.replace(microsecond=0)) == "2026-11-23T10:04:05.000000Z"
    cet = timezone(timedelta(hours=1))
    assert c.format_at(datetime(2026, 11, 23, 11, 4, 5, 7, tzinfo=cet)) == "2026-11-23T10:04:05.000007Z"
    assert c.format_at(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00.000000Z"
    assert c.parse_at(c.format_at(dt)) == dt


def test_format_at_refuses_naive_datetimes() -> None:
    with pytest.raises(c.AuditValueError, match="naive"):
        c.format_at(datetime(2026, 11, 23, 10, 4, 5))
    with pytest.raises(c.AuditValueError):
        c.format_at("2026-11-23T10:04:05Z")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    "2026-11-23T10:04:05Z", "2026-11-23T10:04:05.123Z", "2026-11-23T10:04:05.123456+00:00",
    "2026-11-23 10:04:05.123456Z", "2026-11-23T10:04:05.123456z", "2026-02-30T10:04:05.123456Z",
    "2026-11-23T24:00:00.000000Z", "2026-11-23T10:04:60.000000Z", "0000-01-01T00:00:00.000000Z",
    "２026-11-23T10:04:05.123456Z",
])
def test_parse_at_is_strict(text: str) -> None:
    with pytest.raises(c.AuditValueError):
        c.parse_at(text)


# ----------------------------------------------------------------- value space


def test_canonical_bytes_is_json_dumps_in_the_value_space() -> None:
    e = entry(after={"b": "12.50", "a": [1, -2, True, None, {"z": "李伟", "y": "\u2028\x7f"}]})
    assert c.canonical_bytes(e) == dumps(e)
    assert c.canonical_bytes(e).startswith(b'{"action":')


@pytest.mark.parametrize(("after", "path", "what"), [
    ({"qty": 12.5}, "after.qty", "float"),
    ({"holds": ["a", {"x": 1.0}]}, "after.holds[1].x", "float"),
    ({"n": 2**53}, "after.n", "integer outside"),
    ({"n": -(2**53)}, "after.n", "integer outside"),
    ({"q": Decimal("1.5")}, "after.q", "Decimal"),
    ({"t": datetime(2026, 1, 1, tzinfo=UTC)}, "after.t", "datetime"),
    ({"s": {1, 2}}, "after.s", "set"),
    ({1: "x"}, "after", "non-string key"),
    ({"ключ": "x"}, "after", "non-ASCII key"),
    ({"x": float("nan")}, "after.x", "float"),
])
def test_values_outside_the_space_are_refused_with_their_path(after: Any, path: str, what: str) -> None:
    with pytest.raises(c.AuditValueError, match=what) as err:
        c.canonical_bytes(entry(after=after))
    assert err.value.path == path
    assert str(err.value).startswith(path)


def test_float_message() -> None:
    with pytest.raises(c.AuditValueError) as err:
        c.canonical_bytes(entry(after={"qty": 12.5}))
    assert str(err.value) == "after.qty is a float; use a decimal string"


def test_integer_limits_and_booleans_are_fine() -> None:
    for n, written in ((2**53 - 1, b"9007199254740991"), (-(2**53 - 1), b"-9007199254740991"), (0, b"0"),
                       (True, b"true"), (False, b"false")):
        line = c.canonical_bytes(entry(after={"n": n}))
        assert b'"after":{"n":' + written + b"}" in line, line
        assert line == dumps(entry(after={"n": n}))
        parsed = c.parse_entry(line)["after"]["n"]
        assert parsed == n and type(parsed) is type(n)


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(c.AuditValueError, match="surrogate"):
        c.canonical_bytes(entry(reason="bad \ud800 text"))


# --------------------------------------------------------------------- members


def test_exact_member_set() -> None:
    e = entry()
    del e["reason"]
    with pytest.raises(c.AuditValueError, match="missing reason"):
        c.canonical_bytes(e)
    with pytest.raises(c.AuditValueError, match="unexpected extra"):
        c.canonical_bytes(entry(extra=1))
    with pytest.raises(c.AuditValueError, match="actor has missing role"):
        c.canonical_bytes(entry(actor={"id": "u", "name": "n"}))


@pytest.mark.parametrize(("changes", "match"), [
    ({"v": "mes.audit.entry/v2"}, "v must be"),
    ({"seq": -1}, "seq must be"),
    ({"seq": True}, "seq must be"),
    ({"seq": "1"}, "seq must be"),
    ({"prev": "0" * 63}, "prev must be"),
    ({"prev": "A" * 64}, "prev must be"),
    ({"at": "2026-11-23T10:04:05Z"}, "at:"),
    ({"terminal": 3}, "terminal must be a string or null"),
    ({"action": "Batch Started"}, "action must be a dotted"),
    ({"action": "started"}, "action must be a dotted"),
    ({"entity": {"type": "lot", "id": ""}}, "entity.id must not be empty"),
    ({"before": []}, "before must be an object or null"),
    ({"batch": 12}, "batch must be"),
])
def test_member_types_and_formats(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(c.AuditValueError, match=match):
        c.canonical_bytes(entry(**changes))


def test_signature_rules_for_writing() -> None:
    sig = {"signer": "u-1", "name": "Jane", "meaning": "approved", "record_hash": "ab" * 32,
           "at": "2026-11-23T10:05:00.000000Z"}
    c.canonical_bytes(entry(action="esig.signed", signature=sig))
    with pytest.raises(c.AuditValueError, match="must carry a signature"):
        c.canonical_bytes(entry(action="esig.signed", signature=None))
    with pytest.raises(c.AuditValueError, match="only esig"):
        c.canonical_bytes(entry(action="batch.released", signature=sig))
    with pytest.raises(c.AuditValueError, match="record_hash"):
        c.canonical_bytes(entry(action="esig.signed", signature={**sig, "record_hash": "xyz"}))
    with pytest.raises(c.AuditValueError, match="signature.at"):
        c.canonical_bytes(entry(action="esig.signed", signature={**sig, "at": "yesterday"}))
    with pytest.raises(c.AuditValueError, match="signature has missing signer"):
        c.canonical_bytes(entry(action="esig.signed", signature={k: v for k, v in sig.items() if k != "signer"}))


def test_reader_is_laxer_than_writer_but_checks_types() -> None:
    # The verifier checks what section 5 needs; writer-only rules do not make old entries invalid.
    e = entry(action="Odd Action")
    line = dumps(e)
    assert c.parse_entry(line)["action"] == "Odd Action"
    with pytest.raises(c.AuditValueError, match="terminal must be"):
        c.parse_entry(dumps(entry(terminal=5)))


def test_build_entry() -> None:
    e = c.build_entry(seq=0, prev=c.ZERO_HASH, at=datetime(2026, 1, 1, tzinfo=UTC),
                      actor={"id": "system:erp", "name": "ERP", "role": "system"}, action="lot.hold.placed",
                      entity={"type": "lot", "id": "L-1"})
    assert c.canonical_bytes(e).endswith(b',"terminal":null,"v":"mes.audit.entry/v1"}')


def test_canonical_json_for_records() -> None:
    assert c.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(c.AuditValueError, match="value is a float"):
        c.canonical_json(1.5)


# --------------------------------------------------------------------- reading


@pytest.mark.parametrize("line", [
    b'{"a":1}', b'[1,"x",true,null]', b'"\\u001f\\n\\"\\\\"', b'{"a":"\xc3\xa9\xe2\x80\xa8"}', b"0", b"-5",
])
def test_is_canonical_accepts(line: bytes) -> None:
    assert c.is_canonical(line)


@pytest.mark.parametrize("line", [
    b'{"a": 1}', b' {"a":1}', b'{"a":1}\n', b'{"b":1,"a":2}', b'{"a":1,"a":1}', b'{"a":1.0}', b'{"a":1e2}',
    b'{"a":-0}', b'{"a":NaN}', b'{"a":Infinity}', b'"\\u00e9"', b'"\\/"', b'"\\u001F"', b'"\\u000a"',
    b'"\\ud800"', b'"\xc3"', b'"\x01"', b'{"\xc3\xa9":1}', b'{"a":9007199254740992}', b"", b"nul",
    b'"\xed\xa0\x80"', b"[" * 100000,
])
def test_is_canonical_rejects(line: bytes) -> None:
    assert not c.is_canonical(line)


def test_parse_canonical_explains() -> None:
    with pytest.raises(c.AuditValueError, match="duplicate object key 'a'"):
        c.parse_canonical(b'{"a":1,"a":2}')
    with pytest.raises(c.AuditValueError, match="a is a float"):
        c.parse_canonical(b'{"a":1.5}')
    with pytest.raises(c.AuditValueError, match="canonical form .* byte 5"):
        c.parse_canonical(b'{"a": 1}')
    with pytest.raises(c.AuditValueError, match="UTF-8"):
        c.parse_canonical(b'"\xff"')
    with pytest.raises(c.AuditValueError, match="not valid JSON"):
        c.parse_canonical(b'{"a":')


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127), max_size=6), inner,
                                            max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_value_space_round_trips(value: Any) -> None:
    data = c.canonical_json(value)
    assert c.is_canonical(data)
    assert json.loads(data) == value
    assert c.canonical_json(json.loads(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127), max_size=6), json_values, max_size=5))
def test_entries_with_any_after_round_trip(after: dict[str, Any]) -> None:
    line = c.canonical_bytes(entry(after=after))
    assert c.parse_entry(line)["after"] == after
