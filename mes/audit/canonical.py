"""Audit entries and their canonical bytes (``shared/specs/audit-log.md`` §1–2).

``entry_bytes`` are RFC 8785 (JCS) canonical JSON. Inside the §1 value space (no floats,
integers with ``|x| < 2**53``, ASCII object keys) JCS equals Python's
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, so the work
here is mostly to *refuse* anything outside that space, with a message that names the
offending member, before it can be hashed into the log forever.

Two strictness levels for entries:

* writing (:func:`canonical_bytes`, :func:`validate_entry`) also enforces the formats the
  MES promises: dotted lowercase ``action``, ``esig.*`` entries and only they carry a
  ``signature`` whose ``record_hash`` is 64 hex digits and ``at`` is an entry timestamp;
* reading (:func:`parse_entry`, used by the verifier) checks what §5 needs: canonical
  bytes, the exact members, and the type of each member. Everything the writer produces
  is accepted by the reader.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Any, Final

ENTRY_VERSION: Final = "mes.audit.entry/v1"
"""The ``v`` member: the domain tag of every entry."""

ZERO_HASH: Final = "0" * 64
"""``prev`` of entry 0."""

ENTRY_MEMBERS: Final[tuple[str, ...]] = (
    "action", "actor", "after", "at", "batch", "before", "entity",
    "prev", "reason", "seq", "signature", "terminal", "v",
)
"""The exact member set of an entry, in canonical (sorted) order."""

ACTOR_MEMBERS: Final[tuple[str, ...]] = ("id", "name", "role")
ENTITY_MEMBERS: Final[tuple[str, ...]] = ("id", "type")
SIGNATURE_MEMBERS: Final[tuple[str, ...]] = ("at", "meaning", "name", "record_hash", "signer")

INT_LIMIT: Final = 2**53
"""Integers must satisfy ``-INT_LIMIT < x < INT_LIMIT`` (exact in IEEE doubles, so JCS-safe)."""

_ENTRY_SET = frozenset(ENTRY_MEMBERS)
_ACTOR_SET = frozenset(ACTOR_MEMBERS)
_ENTITY_SET = frozenset(ENTITY_MEMBERS)
_SIGNATURE_SET = frozenset(SIGNATURE_MEMBERS)

AT_PATTERN: Final = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
_AT_RE = re.compile(AT_PATTERN)
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_ACTION_RE = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)+")


class AuditValueError(ValueError):
    """A value cannot be (or is not) part of an audit entry; ``path`` names where."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# ------------------------------------------------------------------------ timestamps


def format_at(dt: datetime) -> str:
    """``dt`` as an entry timestamp: RFC 3339 UTC with microseconds, e.g.
    ``2026-11-23T10:04:05.123456Z``. Naive datetimes are refused (their zone is a guess)."""
    if not isinstance(dt, datetime):
        raise AuditValueError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise AuditValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    u = dt.astimezone(UTC)
    return (f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:"
            f"{u.second:02d}.{u.microsecond:06d}Z")


def parse_at(text: str) -> datetime:
    """The aware UTC datetime of an entry timestamp; strict inverse of :func:`format_at`."""
    if not isinstance(text, str) or _AT_RE.fullmatch(text) is None:
        raise AuditValueError(f"{text!r} is not an RFC 3339 UTC timestamp with microseconds "
                              "like 2026-11-23T10:04:05.123456Z")
    try:
        return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                        int(text[14:16]), int(text[17:19]), int(text[20:26]), tzinfo=UTC)
    except ValueError as exc:
        raise AuditValueError(f"{text!r} is not a valid date and time: {exc}") from None


def is_valid_date(text: str) -> bool:
    """Whether ``YYYY-MM-DD`` (ASCII digits, already shape-checked) is a real calendar date."""
    try:
        date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------- value space


def _where(path: str) -> str:
    return path or "the value"


def validate_value(value: Any, path: str = "") -> None:
    """Refuse anything outside the §1 value space; the error names the member path
    (``after.qty``, ``after.holds[2]``). Lists and tuples are both JSON arrays."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        v, p = stack.pop()
        if v is None or v is True or v is False:
            continue
        if isinstance(v, float):
            raise AuditValueError(f"{_where(p)} is a float; use a decimal string", p)
        if isinstance(v, _JsonConstant):
            raise AuditValueError(f"{_where(p)} is {str(v)}, which JSON does not allow", p)
        if isinstance(v, str):
            continue
        if isinstance(v, int):
            if not -INT_LIMIT < v < INT_LIMIT:
                raise AuditValueError(f"{_where(p)} is an integer outside ±(2**53 - 1); use a decimal string", p)
            continue
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise AuditValueError(f"{_where(p)} has a non-string key {k!r}", p)
                if not k.isascii():
                    raise AuditValueError(f"{_where(p)} has a non-ASCII key {k!r}; object keys must be ASCII", p)
                stack.append((item, f"{p}.{k}" if p else k))
            continue
        if isinstance(v, (list, tuple)):
            stack.extend((item, f"{p}[{i}]") for i, item in enumerate(v))
            continue
        t = type(v)
        raise AuditValueError(f"{_where(p)} is a {t.__name__}, which is not a JSON value of the audit log "
                              "(use str, int, bool, None, list or dict; decimals as strings)", p)


class _JsonFloat(float):
    """A number with a fraction or exponent, kept so the error can name its path."""


class _JsonConstant(str):
    """NaN / Infinity / -Infinity, which Python's decoder accepts and JSON does not."""


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _encode(value: Any) -> bytes:
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AuditValueError(f"a string contains a lone surrogate ({exc.object[exc.start:exc.end]!r}), "
                              "which is not valid Unicode") from None


def canonical_json(value: Any) -> bytes:
    """Canonical (JCS) UTF-8 bytes of any value in the §1 value space, e.g. for hashing the
    record an e-signature signs."""
    validate_value(value)
    return _encode(value)


# --------------------------------------------------------------------------- entries


def _check_object(value: Any, members: frozenset[str], path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AuditValueError(f"{path} must be an object with members {', '.join(sorted(members))}", path)
    if value.keys() != members:
        _member_error(value, members, path)
    return value


def _member_error(value: dict[str, Any], members: frozenset[str], path: str) -> None:
    missing = sorted(members - value.keys())
    extra = sorted(set(value) - members)
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("unexpected " + ", ".join(map(str, extra)))
    where = f"{path} has" if path else "entry has"
    raise AuditValueError(f"{where} {'; '.join(parts)} (members are {', '.join(sorted(members))})", path or None)


def _check_str(value: Any, path: str, *, nullable: bool = False) -> None:
    if isinstance(value, str) or (nullable and value is None):
        return
    want = "a string or null" if nullable else "a string"
    raise AuditValueError(f"{path} must be {want}, not {_json_type(value)}", path)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", str: "a string", dict: "an object", list: "an array",
            tuple: "an array"}.get(type(value), f"a {type(value).__name__}")


def check_entry_members(entry: Any, *, strict: bool) -> None:
    """Member set and member types of an entry (§1). ``strict`` adds the writer's format
    rules (see the module docstring); the verifier uses ``strict=False``."""
    if not isinstance(entry, dict):
        raise AuditValueError(f"an entry must be a JSON object, not {_json_type(entry)}")
    if entry.keys() != _ENTRY_SET:
        _member_error(entry, _ENTRY_SET, "")
    if entry["v"] != ENTRY_VERSION:
        raise AuditValueError(f"v must be {ENTRY_VERSION!r}, not {entry['v']!r}", "v")
    seq = entry["seq"]
    if type(seq) is not int or not 0 <= seq < INT_LIMIT:
        raise AuditValueError(f"seq must be an integer in [0, 2**53), not {seq!r}", "seq")
    prev = entry["prev"]
    if not isinstance(prev, str) or _HEX64_RE.fullmatch(prev) is None:
        raise AuditValueError(f"prev must be 64 lowercase hex digits, not {prev!r}", "prev")
    try:
        parse_at(entry["at"])
    except AuditValueError as exc:
        raise AuditValueError(f"at: {exc}", "at") from None
    actor = _check_object(entry["actor"], _ACTOR_SET, "actor")
    for k in ACTOR_MEMBERS:
        _check_str(actor[k], f"actor.{k}")
    _check_str(entry["terminal"], "terminal", nullable=True)
    _check_str(entry["action"], "action")
    entity = _check_object(entry["entity"], _ENTITY_SET, "entity")
    for k in ENTITY_MEMBERS:
        _check_str(entity[k], f"entity.{k}")
    _check_str(entry["batch"], "batch", nullable=True)
    for k in ("before", "after"):
        if entry[k] is not None and not isinstance(entry[k], dict):
            raise AuditValueError(f"{k} must be an object or null, not {_json_type(entry[k])}", k)
    _check_str(entry["reason"], "reason", nullable=True)
    sig = entry["signature"]
    if sig is not None:
        _check_object(sig, _SIGNATURE_SET, "signature")
        for k in SIGNATURE_MEMBERS:
            _check_str(sig[k], f"signature.{k}")
    if not strict:
        return
    action = entry["action"]
    if _ACTION_RE.fullmatch(action) is None:
        raise AuditValueError(f"action must be a dotted lowercase verb like 'batch.step.completed', not {action!r}",
                              "action")
    if not actor["id"]:
        raise AuditValueError("actor.id must not be empty", "actor.id")
    for k in ENTITY_MEMBERS:
        if not entity[k]:
            raise AuditValueError(f"entity.{k} must not be empty", f"entity.{k}")
    if action.startswith("esig.") and sig is None:
        raise AuditValueError(f"{action} entries must carry a signature object", "signature")
    if sig is not None:
        if not action.startswith("esig."):
            raise AuditValueError(f"only esig.* entries carry a signature, not {action}", "signature")
        if _HEX64_RE.fullmatch(sig["record_hash"]) is None:
            raise AuditValueError("signature.record_hash must be 64 lowercase hex digits (SHA-256)",
                                  "signature.record_hash")
        try:
            parse_at(sig["at"])
        except AuditValueError as exc:
            raise AuditValueError(f"signature.at: {exc}", "signature.at") from None


def validate_entry(entry: dict[str, Any]) -> None:
    """Everything :func:`canonical_bytes` checks, without serialising."""
    check_entry_members(entry, strict=True)
    validate_value(entry)


def canonical_bytes(entry: dict[str, Any]) -> bytes:
    """The ``entry_bytes`` of a new entry (§2), after refusing anything outside §1.

    Raises :class:`AuditValueError` naming the bad member, e.g.
    ``after.qty is a float; use a decimal string``.
    """
    validate_entry(entry)
    return _encode(entry)


def build_entry(
    *,
    seq: int,
    prev: str,
    at: datetime,
    actor: dict[str, str],
    action: str,
    entity: dict[str, str],
    terminal: str | None = None,
    batch: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
    signature: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An entry dict with every member (``at`` formatted from an aware datetime)."""
    return {
        "v": ENTRY_VERSION, "seq": seq, "prev": prev, "at": format_at(at), "actor": actor,
        "terminal": terminal, "action": action, "entity": entity, "batch": batch,
        "before": before, "after": after, "reason": reason, "signature": signature,
    }


# --------------------------------------------------------------------------- reading


def _reject_constant(name: str) -> _JsonConstant:
    return _JsonConstant(name)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise AuditValueError(f"duplicate object key {k!r}")
            seen.add(k)
    return out


_DECODER = json.JSONDecoder(parse_float=_JsonFloat, parse_constant=_reject_constant, object_pairs_hook=_pairs)


def parse_canonical(line: bytes) -> Any:
    """Parse one JSON value that must already be canonical and inside the value space.

    Raises :class:`AuditValueError` saying what is wrong (invalid UTF-8, not JSON, a float,
    a duplicate key, or which byte differs from the canonical form)."""
    line = bytes(line)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuditValueError(f"not valid UTF-8 at byte {exc.start}") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise AuditValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise AuditValueError("not acceptable JSON: nested too deeply") from None
    try:
        validate_value(value)
    except RecursionError:  # pragma: no cover - validate_value is iterative
        raise AuditValueError("nested too deeply") from None
    expected = _encode(value)
    if expected != line:
        i = next((i for i, (a, b) in enumerate(zip(expected, line, strict=False)) if a != b), min(len(expected), len(line)))
        raise AuditValueError(f"not in canonical form (re-serialising changes the bytes from byte {i} on: "
                              f"expected {expected[i:i + 20]!r}, found {line[i:i + 20]!r})")
    return value


def is_canonical(line: bytes) -> bool:
    """True if ``line`` is the canonical bytes of some value in the §1 value space (not
    necessarily an entry: see :func:`parse_entry`)."""
    try:
        parse_canonical(line)
    except AuditValueError:
        return False
    return True


def parse_entry(line: bytes) -> dict[str, Any]:
    """Parse stored ``entry_bytes`` as the verifier does (§5 check 1): canonical, in the
    value space, with exactly the entry members of the right types."""
    entry = parse_canonical(line)
    check_entry_members(entry, strict=False)
    return entry
