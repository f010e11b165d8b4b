"""``mes witness``: a C2SP tlog-witness for the MES audit log, as its own process.

It holds its own Ed25519 key (``witness.key`` in its folder, mode 0600) and its own
append-only store (``witness.sqlite3`` in its folder, never the MES database: the
database refuses UPDATE and DELETE on it). It trusts the log verifier keys given to it
(``--log-vkey``), and answers ``POST /add-checkpoint`` exactly as tlog-witness says:

* unknown origin 404; no valid log signature 403; ``old`` above the size 400;
* ``old`` not the size it last cosigned: 409 with that size (``text/x.tlog.size``);
* same size with another root: 409; consistency proof that does not verify: 422 (the
  request is kept as evidence);
* otherwise the checkpoint is stored (atomically with the check) and the answer is one
  cosignature line (c2sp.org/tlog-cosignature, ``cosignature/v1``).

``GET /healthz`` answers 200 once it serves (tests and the demo wait for it);
``GET /checkpoint/<origin>`` returns the newest cosigned checkpoint with its cosignature
(what ``mes audit verify`` may compare the log with).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import re
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mes.audit import checkpoint as notes
from mes.audit import keys
from mes.audit.merkle import verify_consistency
from mes.witness.cosignature import cosign, witness_vkey_text

logger = logging.getLogger("mes.witness")

_OLD_RE = re.compile(r"old (0|[1-9][0-9]{0,18})")
MAX_BODY = 64 * 1024
MAX_PROOF_LINES = 63

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
  id INTEGER PRIMARY KEY,
  origin TEXT NOT NULL,
  size INTEGER NOT NULL,
  root BLOB NOT NULL,
  note TEXT NOT NULL,
  cosignature TEXT NOT NULL,
  cosigned_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_checkpoints_origin ON checkpoints (origin, id);
CREATE TABLE IF NOT EXISTS refused (
  id INTEGER PRIMARY KEY,
  origin TEXT NOT NULL,
  status INTEGER NOT NULL,
  request TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'witness records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'witness records are append-only'); END;
"""


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


@dataclass
class Witness:
    """The witness's state: name, key, trusted log keys and its own store."""

    name: str
    key: Ed25519PrivateKey
    log_keys: list[notes.VerifierKey]
    store: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        with self._db() as con:
            con.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.store, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        return con

    @property
    def vkey(self) -> str:
        return witness_vkey_text(self.name, keys.public_bytes(self.key))

    def latest(self, origin: str) -> tuple[int, bytes, str, str] | None:
        with self._db() as con:
            row = con.execute("SELECT size, root, note, cosignature FROM checkpoints WHERE origin = ? "
                              "ORDER BY id DESC LIMIT 1", (origin,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]), row[2], row[3])

    def add_checkpoint(self, body: bytes) -> Answer:
        """The tlog-witness add-checkpoint call."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Answer(400, "the request is not UTF-8\n")
        head, sep, note = text.partition("\n\n")
        if not sep:
            return Answer(400, "the request needs an old size line, proof lines, an empty line and a checkpoint\n")
        head_lines = head.split("\n")
        m = _OLD_RE.fullmatch(head_lines[0])
        if m is None:
            return Answer(400, "the first line must be 'old <size>'\n")
        old = int(m.group(1))
        if len(head_lines) - 1 > MAX_PROOF_LINES:
            return Answer(400, "too many consistency proof lines\n")
        proof = []
        for line in head_lines[1:]:
            try:
                h = base64.b64decode(line.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                return Answer(400, "a consistency proof line is not base64\n")
            if len(h) != 32 or base64.b64encode(h).decode() != line:
                return Answer(400, "a consistency proof line is not one canonical base64 hash\n")
            proof.append(h)
        try:
            cp = notes.parse_checkpoint(note)
        except notes.CheckpointError as exc:
            return Answer(400, f"the checkpoint is malformed: {exc}\n")
        trusted = [k for k in self.log_keys if k.name == cp.origin]
        if not trusted:
            return Answer(404, f"unknown log {cp.origin}\n")
        log_note = _log_signed_part(note, cp)
        try:
            notes.verify_checkpoint(log_note, trusted)
        except notes.CheckpointError:
            return Answer(403, "no signature on the checkpoint verifies with a key this witness trusts\n")
        if old > cp.size:
            return Answer(400, "old size is larger than the checkpoint size\n")
        with self.lock, self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT size, root FROM checkpoints WHERE origin = ? ORDER BY id DESC LIMIT 1",
                                  (cp.origin,)).fetchone()
                known_size, known_root = (0, None) if row is None else (row[0], bytes(row[1]))
                if old != known_size:
                    con.execute("ROLLBACK")
                    return Answer(409, f"{known_size}\n", "text/x.tlog.size")
                if old == cp.size and known_root is not None and known_root != cp.root:
                    self._refuse(con, cp.origin, 409, text)
                    return Answer(409, f"{known_size}\n", "text/x.tlog.size")
                if old > 0 and old < cp.size and not verify_consistency(old, cp.size, known_root, cp.root, proof):
                    self._refuse(con, cp.origin, 422, text)
                    return Answer(422, "the consistency proof does not verify: the log was rewritten\n")
                if (old == 0 and proof) or (old == cp.size and proof):
                    con.execute("ROLLBACK")
                    return Answer(422, "the consistency proof must be empty here\n")
                now = int(time.time())
                line = cosign(cp.body, self.name, self.key, now)
                con.execute("INSERT INTO checkpoints (origin, size, root, note, cosignature, cosigned_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (cp.origin, cp.size, cp.root, log_note, line, now))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return Answer(200, line)

    def _refuse(self, con: sqlite3.Connection, origin: str, status: int, request: str) -> None:
        """Keep a refused request as evidence of log misbehaviour (the stored size stays)."""
        con.execute("INSERT INTO refused (origin, status, request, at) VALUES (?, ?, ?, ?)",
                    (origin, status, request, int(time.time())))
        con.execute("COMMIT")
        logger.error("refused a checkpoint of %s (%s)", origin, status)


def _log_signed_part(note: str, cp: notes.Checkpoint) -> str:
    """The note with only its first signature line (the log's): what the witness stores."""
    lines = note.split("\n")
    return "\n".join(lines[:6]) + "\n"


class _Handler(BaseHTTPRequestHandler):
    witness: Witness
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:  # quiet: one line per request at DEBUG
        logger.debug(fmt, *args)

    def _send(self, answer: Answer) -> None:
        data = answer.body.encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/healthz":
            self._send(Answer(200, "ok\n"))
        elif self.path.startswith("/checkpoint/"):
            latest = self.witness.latest(unquote(self.path[len("/checkpoint/"):]))
            if latest is None:
                self._send(Answer(404, "no checkpoint of that log\n"))
            else:
                self._send(Answer(200, latest[2] + latest[3]))
        else:
            self._send(Answer(404, "not found\n"))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/add-checkpoint":
            self._send(Answer(404, "not found\n"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Answer(413, "request too large\n"))
            return
        self._send(self.witness.add_checkpoint(self.rfile.read(length)))


def make_server(witness: Witness, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("WitnessHandler", (_Handler,), {"witness": witness})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def open_witness(home: Path, name: str, log_vkeys: list[str]) -> Witness:
    """The witness in ``home``: key created on first use (mode 0600), store beside it."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = keys.load_or_create_signing_key(home / "witness.key")
    log_keys = [k for text in log_vkeys for k in notes.parse_vkeys(text)]
    w = Witness(name, key, log_keys, home / "witness.sqlite3")
    (home / "witness.vkey").write_text(w.vkey + "\n", encoding="utf-8")
    return w


def main(argv: list[str] | None = None) -> int:
    """``python -m mes.witness.server --home DIR --name NAME --log-vkey FILE [--listen HOST:PORT]``."""
    ap = argparse.ArgumentParser(prog="mes witness", description="Serve a C2SP tlog-witness for the MES audit log.")
    ap.add_argument("--home", type=Path, required=True, help="the witness's folder (key and store)")
    ap.add_argument("--name", required=True, help="witness key name, e.g. witness.plant-01.example/w1")
    ap.add_argument("--log-vkey", type=Path, action="append", required=True,
                    help="verifier key file of a log to witness (log.vkey); repeatable")
    ap.add_argument("--listen", default="127.0.0.1:7380", help="host:port (port 0: any free port)")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        witness = open_witness(args.home, args.name, [p.read_text("utf-8") for p in args.log_vkey])
        server = make_server(witness, host or "127.0.0.1", int(port))
    except (OSError, ValueError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h, p = server.server_address[:2]
    print(f"witness {witness.name} listening on http://{h}:{p}", flush=True)
    print(f"witness verifier key {witness.vkey}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
