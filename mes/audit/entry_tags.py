"""Entry authentication tags: HMAC-SHA256 over each entry's exact bytes, keyed outside the database.

A DBA with full database access can rewrite entries and re-chain them, and can INSERT a
correctly chained entry; hashes alone do not stop that. Every entry therefore carries a
tag in the ``audit_entries.tag`` column::

    tag = HMAC-SHA256(tag key, b"mes.audit.tag/v1\\n" || entry_bytes)

The tag is stored beside the entry, outside its hashed bytes, so the entry bytes, the
chain, the Merkle tree and the spec's test vectors are unchanged. The 32-byte tag key is a
file that lives with the checkpoint signing key (default ``MES_HOME/audit-tag.key``, or
``MES_AUDIT_TAG_KEY_PATH``), mode 0600, never in the database. Without it nobody can make
a valid tag, so a forged or rewritten entry fails :func:`check_rows`.

The unhashed index columns (``at``, ``action``, ``actor_id``, ``terminal_id``,
``entity_type``, ``entity_id``, ``batch_id``) and ``leaf_hash`` are checked against the
entry bytes by the same pass: they serve look-ups, so an edited column would send a
signature or a batch's history to the wrong record.

Entries written before tags existed are tagged by ``mes db upgrade`` (migration 0007),
with the key, after it has checked their chain against the latest signed checkpoint; if
that check fails they stay untagged, and every untagged entry is a verification failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from mes.audit import keys
from mes.audit.canonical import format_at
from mes.db import as_utc

TAG_DOMAIN: Final = b"mes.audit.tag/v1\n"
TAG_KEY_BYTES: Final = 32
TAG_KEY_FILE: Final = "audit-tag.key"

ROW_COLUMNS: Final = ("seq, entry_bytes, leaf_hash, tag, at, action, actor_id, terminal_id, entity_type, "
                      "entity_id, batch_id")


def entry_tag(key: bytes, entry_bytes: bytes) -> bytes:
    """The authentication tag of one entry's exact stored bytes."""
    return hmac.digest(key, TAG_DOMAIN + entry_bytes, "sha256")


def tag_ok(key: bytes, entry_bytes: bytes, tag: bytes | None) -> bool:
    """Whether ``tag`` is the entry's tag (constant-time comparison)."""
    return tag is not None and hmac.compare_digest(entry_tag(key, entry_bytes), bytes(tag))


def load_tag_key(path: Path) -> bytes:
    """Read the tag key; refuse a file that group or others may access (like the signing key)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise keys.KeyFileError(f"audit tag key {path} does not exist") from None
    if os.name == "posix" and st.st_mode & 0o077:
        raise keys.KeyFileError(f"audit tag key {path} is readable by group or others (chmod 600 {path})")
    data = path.read_bytes().strip()
    try:
        key = bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise keys.KeyFileError(f"audit tag key {path} is not {TAG_KEY_BYTES} bytes in hex") from None
    if len(key) != TAG_KEY_BYTES:
        raise keys.KeyFileError(f"audit tag key {path} is not {TAG_KEY_BYTES} bytes in hex")
    return key


def load_or_create_tag_key(path: Path) -> bytes:
    """Load the tag key, creating it (mode 0600) on first use; two racing processes end up
    with the one file that was created first."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # written whole under a temporary name, then linked into place: a process racing this
        # one never reads a key file that exists but is still empty
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, keys.KEY_FILE_MODE)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_bytes(TAG_KEY_BYTES).hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process put its key in place first: that one is the key
        except OSError:  # no hard links here: rename never overwrites what is there only if absent
            if not path.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return load_tag_key(path)


@dataclass(frozen=True)
class RowProblem:
    """The first entry whose tag or index columns do not match its bytes."""

    seq: int
    message: str


def _same_at(column: datetime | str | None, at: str) -> bool:
    if isinstance(column, str):  # SQLite's stored text: "YYYY-MM-DD HH:MM:SS.ffffff" (naive UTC)
        return len(at) == 27 and column == f"{at[:10]} {at[11:26]}"
    value = as_utc(column)
    return value is not None and format_at(value) == at


def row_problem(key: bytes, row: tuple[Any, ...], expected_seq: int | None = None) -> str | None:
    """What is wrong with one ``ROW_COLUMNS`` row, or None. The tag is checked first: a
    forged entry is named a forgery even when its columns happen to agree."""
    return check_row(key, row, expected_seq)[0]


def check_row(key: bytes, row: tuple[Any, ...], expected_seq: int | None = None
              ) -> tuple[str | None, dict[str, Any] | None]:
    """:func:`row_problem` and the parsed entry (None when it does not parse)."""
    seq, data, leaf, tag, at, action, actor_id, terminal_id, entity_type, entity_id, batch_id = row
    data = bytes(data)
    if expected_seq is not None and seq != expected_seq:
        return f"seq {expected_seq} is missing (next stored seq is {seq})", None
    if tag is None:
        return "the entry has no authentication tag (not written by the MES, or not tagged at upgrade)", None
    if not tag_ok(key, data, tag):
        return "authentication tag does not match the entry bytes: the entry was not written by the MES", None
    if bytes(leaf) != hashlib.sha256(b"\x00" + data).digest():
        return "stored leaf hash differs from the hash of the entry bytes", None
    try:
        entry = json.loads(data)
        want = {
            "seq": entry["seq"], "action": entry["action"], "actor_id": entry["actor"]["id"],
            "terminal_id": entry["terminal"], "entity_type": entry["entity"]["type"],
            "entity_id": entry["entity"]["id"], "batch_id": entry["batch"],
        }
        want_at = entry["at"]
    except (ValueError, KeyError, TypeError):
        return "the entry bytes are not an audit entry", None
    got = {"seq": seq, "action": action, "actor_id": actor_id, "terminal_id": terminal_id,
           "entity_type": entity_type, "entity_id": entity_id, "batch_id": batch_id}
    for name, value in got.items():
        if value != want[name]:
            return f"index column {name} is {value!r}, the entry bytes say {want[name]!r}", entry
    if not isinstance(want_at, str) or not _same_at(at, want_at):
        return f"index column at is {at!s}, the entry bytes say {want_at}", entry
    return None, entry


def iter_rows(conn: Any, first_seq: int = 0, end_seq: int | None = None,
              batch_size: int = 20_000) -> Iterator[tuple[Any, ...]]:
    """``ROW_COLUMNS`` rows with ``first_seq <= seq < end_seq`` in seq order (keyset pages)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    bound = "" if end_seq is None else f" AND seq < {int(end_seq)}"
    sql = (f"SELECT {ROW_COLUMNS} FROM audit_entries WHERE seq >= {mark}{bound} "
           f"ORDER BY seq LIMIT {int(batch_size)}")
    start = first_seq
    while True:
        rows = conn.exec_driver_sql(sql, (start,)).fetchall()
        if not rows:
            return
        yield from rows
        start = rows[-1][0] + 1


def check_rows(key: bytes, rows: Iterable[tuple[Any, ...]], first_seq: int = 0) -> tuple[RowProblem | None, int]:
    """Check tags and index columns of consecutive rows from ``first_seq``; return the first
    problem (or None) and how many rows were read."""
    count = 0
    for count, row in enumerate(rows, start=1):
        problem = row_problem(key, row, first_seq + count - 1)
        if problem is not None:
            return RowProblem(first_seq + count - 1, problem), count
    return None, count


def tag_legacy_entries(conn: Any, key: bytes, vkeys: list[Any]) -> str:
    """Tag the entries written before tags existed (run by migration 0007 with the key).

    Only a log that checks out is tagged: every untagged entry's bytes must hash to its
    stored leaf, chain onto the one before, and the latest signed checkpoint (verified with
    ``vkeys``) must be the MTH of the first ``size`` leaves. Otherwise nothing is tagged and
    ``mes audit verify`` flags the untagged entries. Returns a sentence saying what was done."""
    from mes.audit import merkle
    from mes.audit.canonical import ZERO_HASH
    from mes.audit.checkpoint import CheckpointError, verify_checkpoint

    rows = conn.exec_driver_sql("SELECT seq, entry_bytes, leaf_hash FROM audit_entries WHERE tag IS NULL "
                                "ORDER BY seq").fetchall()
    if not rows:
        return "no untagged audit entries"
    leaves = [bytes(leaf) for _, _, leaf in conn.exec_driver_sql(
        "SELECT seq, entry_bytes, leaf_hash FROM audit_entries ORDER BY seq").fetchall()]
    prev = ZERO_HASH if rows[0][0] == 0 else leaves[rows[0][0] - 1].hex()
    for seq, data, leaf in rows:
        data = bytes(data)
        if seq >= len(leaves) or merkle.leaf_hash(data) != bytes(leaf) or json.loads(data).get("prev") != prev:
            return f"audit entries left untagged: seq {seq} does not chain (run mes audit verify)"
        prev = bytes(leaf).hex()
    note = conn.exec_driver_sql("SELECT note FROM audit_checkpoints ORDER BY id DESC LIMIT 1").scalar()
    if note is not None:
        try:
            cp = verify_checkpoint(note, vkeys)
        except CheckpointError as exc:
            return f"audit entries left untagged: the latest checkpoint does not verify ({exc})"
        if cp.size > len(leaves) or merkle.mth(leaves[:cp.size]) != cp.root:
            return "audit entries left untagged: the log is not consistent with its latest checkpoint"
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    conn.exec_driver_sql(f"UPDATE audit_entries SET tag = {mark} WHERE seq = {mark}",
                         [(entry_tag(key, bytes(data)), seq) for seq, data, _ in rows])
    return f"{len(rows)} audit entries tagged"
