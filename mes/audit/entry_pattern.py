"""The fast path of check 1 of §5 ("already canonical"): a compiled regular expression of
the canonical entry layout that proves most entry lines valid without parsing them, so
that verifying millions of entries stays fast. Part of the export verifier
(:mod:`mes.audit.verify`); how it fits in is described in :mod:`mes.audit.entry_stream`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mes.audit.canonical import is_valid_date

# ------------------------------------------------------------------ fast path pattern

# Canonical JSON strings: raw characters except '"', '\\' and controls; escapes exactly as
# JCS / json.dumps write them. _PLAIN is the same for lines without any '\\' or control
# byte (checked with one bytes.translate per block), which the regex engine scans much
# faster. Keys of after/before are captured; that they are ASCII, sorted and unique is
# checked in Python (cached per key tuple). prev is matched as 64 non-quote bytes; it is
# proven hex either by equalling the hex of the previous leaf hash (the chain check) or by
# an explicit check (see _prev_ok).
_ESCAPED = rb'"[^"\\\x00-\x1f]*+(?:\\(?:["\\bfnrt]|u00(?:0[0-7bef]|1[0-9a-f]))[^"\\\x00-\x1f]*+)*+"'
_PLAIN = rb'"[^"]*+"'  # possessive (Python 3.11+): nothing to backtrack into, a little faster
_INT = rb"(?:0|-?[1-9][0-9]{0,14})"  # at most 15 digits: always |x| < 2**53
_AT = (rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
       rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z")
FLAT_MAX_MEMBERS = 8
"""``after``/``before`` objects with more members (or nested values) take the reference path."""


def _entry_pattern(s: bytes, key: bytes) -> re.Pattern[bytes]:
    sn = rb"(?:" + s + rb"|null)"
    scalar = rb"(?:" + s + rb"|" + _INT + rb"|true|false|null)"
    value = rb"(?:" + scalar + rb"|\[(?:" + scalar + rb"(?:," + scalar + rb")*)?\])"

    def members(k: int) -> bytes:  # k members at most, each key captured
        rest = rb"(?:," + members(k - 1) + rb")?" if k > 1 else b""
        return key + b":" + value + rest

    def named(name: bytes, value: bytes = s) -> bytes:  # a member's value captured as written
        return rb"(?P<" + name + rb">" + value + rb")"

    flat = rb"(?:\{(?:" + members(FLAT_MAX_MEMBERS) + rb")?\}|null)"
    return re.compile(
        rb'\{"action":' + named(b"action")
        + rb',"actor":\{"id":' + named(b"actor_id") + rb',"name":' + s + rb',"role":' + s + rb"\}"
        + rb',"after":' + flat
        + rb',"at":"(?P<at>' + _AT + rb')"'
        + rb',"batch":' + named(b"batch", sn)
        + rb',"before":' + flat
        + rb',"entity":\{"id":' + named(b"entity_id") + rb',"type":' + named(b"entity_type") + rb"\}"
        + rb',"prev":"(?P<prev>[^"]{64})"'
        + rb',"reason":' + sn
        + rb',"seq":(?P<seq>0|[1-9][0-9]{0,15})'
        + rb',"signature":(?:null|\{"at":' + s + rb',"meaning":' + s + rb',"name":' + s
        + rb',"record_hash":' + s + rb',"signer":' + s + rb"\})"
        + rb',"terminal":' + named(b"terminal", sn)
        + rb',"v":"mes\.audit\.entry/v1"\}'
    )


_PLAIN_RE = _entry_pattern(_PLAIN, rb'"([^"]*+)"')
_ENTRY_PLAIN = _PLAIN_RE.fullmatch
_ESCAPED_RE = _entry_pattern(_ESCAPED, rb'"([\x20\x21\x23-\x5b\x5d-\x7e]*+)"')
_ENTRY_ESCAPED = _ESCAPED_RE.fullmatch
_NOT_PLAIN = bytes(range(0x20)) + b"\\"
_NOT_PLAIN_BUT_NEWLINE = _NOT_PLAIN.replace(b"\n", b"")
_HEX_DIGITS = b"0123456789abcdef"
_GROUPS = _PLAIN_RE.groupindex
assert _GROUPS == _ESCAPED_RE.groupindex
# indexes into match.groups(): the captured keys of after and before, the named members (as
# written: a string with its quotes, or null)
_AFTER_KEYS = slice(_GROUPS["actor_id"], _GROUPS["at"] - 1)
_BEFORE_KEYS = slice(_GROUPS["batch"], _GROUPS["entity_id"] - 1)
assert _AFTER_KEYS.stop - _AFTER_KEYS.start == _BEFORE_KEYS.stop - _BEFORE_KEYS.start == FLAT_MAX_MEMBERS
_I_AT, _I_PREV, _I_SEQ = _GROUPS["at"] - 1, _GROUPS["prev"] - 1, _GROUPS["seq"] - 1
I_ACTION, I_ACTOR_ID, I_TERMINAL = _GROUPS["action"] - 1, _GROUPS["actor_id"] - 1, _GROUPS["terminal"] - 1
I_ENTITY_TYPE, I_ENTITY_ID, I_BATCH = _GROUPS["entity_type"] - 1, _GROUPS["entity_id"] - 1, _GROUPS["batch"] - 1
_SEQ_LIMIT = 2**53
_date_ok: dict[bytes, bool] = {}
_keys_ok: dict[tuple[bytes | None, ...], bool] = {}


def _keys_in_order(keys: tuple[bytes | None, ...]) -> bool:
    """Captured keys of a flat object: ASCII, strictly increasing (so sorted and unique)."""
    ks = [k for k in keys if k is not None]
    ok = all(k.isascii() for k in ks) and all(a < b for a, b in zip(ks, ks[1:], strict=False))
    if len(_keys_ok) > 4096:
        _keys_ok.clear()
    _keys_ok[keys] = ok
    return ok


def _day_ok(day: bytes) -> bool:
    ok = _date_ok[day] = is_valid_date(day.decode("ascii"))
    return ok


Fields = tuple[int, bytes, bytes, tuple[bytes | None, ...]]
"""``(seq, prev, at, groups)`` of a line the pattern proves valid; ``groups`` are the match's
(see ``I_ACTION`` and the other indexes) for checks beyond §5 (the index columns)."""


def _scan(lines: Sequence[bytes], plain: bool) -> list[Fields | None]:
    """:func:`fast_entry_fields` for many lines (with the match's groups), except that
    ``prev`` is not yet proven hex. ``plain``: no line holds a '\\' or a control byte. (One
    loop, no call per line: this is the hottest code of the verifier.)"""
    out: list[tuple[int, bytes, bytes] | None] = []
    add = out.append
    plain_match, escaped_match, not_plain = _ENTRY_PLAIN, _ENTRY_ESCAPED, _NOT_PLAIN
    keys_ok, date_ok, seq_limit = _keys_ok, _date_ok, _SEQ_LIMIT
    a_keys, b_keys, i_at, i_prev, i_seq = _AFTER_KEYS, _BEFORE_KEYS, _I_AT, _I_PREV, _I_SEQ
    i_b = b_keys.start
    for line in lines:
        if plain or len(line.translate(None, not_plain)) == len(line):
            m = plain_match(line)
        else:
            m = escaped_match(line)
        if m is None:
            add(None)
            continue
        g = m.groups()
        if g[0] is not None:
            keys = g[a_keys]
            if not keys_ok.get(keys) and not _keys_in_order(keys):
                add(None)
                continue
        if g[i_b] is not None:
            keys = g[b_keys]
            if not keys_ok.get(keys) and not _keys_in_order(keys):
                add(None)
                continue
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                add(None)
                continue
        at = g[i_at]
        if not date_ok.get(at[:10]) and not _day_ok(at[:10]):
            add(None)
            continue
        seq = int(g[i_seq])
        add((seq, g[i_prev], at, g) if seq < seq_limit else None)
    return out


def _prev_ok(prev: bytes) -> bool:
    return not prev.translate(None, _HEX_DIGITS)


def fast_entry_fields(line: bytes) -> tuple[int, bytes, bytes] | None:
    """``(seq, prev, at)`` (prev and at as ASCII bytes) if the fast pattern proves ``line``
    is a valid canonical entry; None means "ask :func:`mes.audit.canonical.parse_entry`",
    not "invalid"."""
    found = _scan([line], False)[0]
    return found[:3] if found is not None and _prev_ok(found[1]) else None
