"""Signed checkpoints: C2SP signed notes over the log's tree head (spec §3).

A checkpoint note looks like this (every line ends in ``\\n``; the signature line starts
with U+2014 EM DASH and a space)::

    plant-01.example/mes/audit
    7
    l/eVxTK1Xs++6PpyjD/Xv+J+bIgcvW6xGzyIR+E+C2w=
    time 2026-11-23T10:07:00Z

    — plant-01.example/mes/audit jqHD7XmhTE/3JYO/...

The signed message is the body (the first four lines). Parsing is strict on purpose:
exactly that line structure, the log's signature first (witness cosignature lines may
follow it, spec §6), canonical base64, no leading zeros, no extension lines. Anything
else is refused, so that no byte of a checkpoint can change without the verifier noticing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_NAME_SUFFIX: Final = "/mes/audit"
ED25519_ALG: Final = b"\x01"
"""Signature type byte of Ed25519 in C2SP signed-note verifier keys and key ids."""
SIGNATURE_PREFIX: Final = "\u2014 "
"""Start of a signature line: EM DASH, space."""

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_TIME_RE = re.compile(r"time ([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
_MAX_SIZE: Final = 2**63 - 1


class CheckpointError(ValueError):
    """A checkpoint or verifier key is malformed, or does not verify."""


# ------------------------------------------------------------------------ base64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """Strict standard base64: padded, no whitespace, and the canonical encoding of its
    bytes (unused low bits zero), so one encoded value has exactly one spelling."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CheckpointError(f"{what} is not valid base64") from None
    if _b64(data) != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return data


# --------------------------------------------------------------------------- keys


def key_name(site_id: str) -> str:
    """Key name and checkpoint origin of a site: ``<site id>/mes/audit``."""
    if not isinstance(site_id, str) or not site_id or not site_id.isascii() or not site_id.isprintable() \
            or any(c in site_id for c in " +"):
        raise CheckpointError(f"site id {site_id!r} must be non-empty printable ASCII without spaces or '+'")
    return site_id + KEY_NAME_SUFFIX


_NAME_RE = re.compile(r"[^\s+]+")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isprintable() or _NAME_RE.fullmatch(name) is None:
        raise CheckpointError(f"key name {name!r} must be non-empty, printable, without spaces or '+'")


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key of a public key, or of a private key (a file's or
    one in the PKCS#11 token)."""
    pub = key if isinstance(key, Ed25519PublicKey) else key.public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: bytes) -> bytes:
    """C2SP key id: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)."""
    _check_name(name)
    if len(public_key) != 32:
        raise CheckpointError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_ALG + bytes(public_key)).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    """A parsed verifier key (``log.vkey``)."""

    name: str
    key_id: bytes
    public_key: bytes

    @property
    def text(self) -> str:
        return vkey_text(self.name, self.public_key)


def vkey_text(name: str, public_key: bytes) -> str:
    """Verifier key text: ``<name>+<key id, 8 hex>+<base64(0x01 || public key)>`` (no newline)."""
    return f"{name}+{key_id(name, public_key).hex()}+{_b64(ED25519_ALG + bytes(public_key))}"


def parse_vkey(text: str) -> VerifierKey:
    """Parse one verifier key; one trailing newline is tolerated (files end in one).
    The key id must match the name and key, and the key must be Ed25519."""
    if not isinstance(text, str):
        raise CheckpointError("a verifier key is text")
    line = text[:-1] if text.endswith("\n") else text
    parts = line.split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3:
        raise CheckpointError("a verifier key has the form <name>+<key id>+<base64 key>")
    name, kid_hex, key_b64 = parts
    _check_name(name)
    if _KEY_ID_RE.fullmatch(kid_hex) is None:
        raise CheckpointError("verifier key id must be 8 lowercase hex digits")
    raw = _unb64(key_b64, "verifier key")
    if len(raw) != 33 or raw[:1] != ED25519_ALG:
        raise CheckpointError("verifier key is not an Ed25519 key (0x01 followed by 32 bytes)")
    pub = raw[1:]
    if key_id(name, pub).hex() != kid_hex:
        raise CheckpointError(f"verifier key id {kid_hex} does not match its name and key")
    try:
        Ed25519PublicKey.from_public_bytes(pub)
    except ValueError:
        raise CheckpointError("verifier key is not a valid Ed25519 public key") from None
    return VerifierKey(name, bytes.fromhex(kid_hex), pub)


def parse_vkeys(text: str) -> list[VerifierKey]:
    """Several verifier keys, one per line (e.g. the current key and rotated-out ones)."""
    if not isinstance(text, str):
        raise CheckpointError("verifier keys are text")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise CheckpointError("no verifier key")
    return [parse_vkey(line) for line in lines]


# ------------------------------------------------------------------------ notes


def format_time(time: datetime) -> str:
    """Checkpoint time: RFC 3339 UTC to the second (microseconds are dropped)."""
    if not isinstance(time, datetime) or time.tzinfo is None or time.utcoffset() is None:
        raise CheckpointError("checkpoint time must be a timezone-aware datetime")
    u = time.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def checkpoint_body(origin: str, size: int, root: bytes, time: datetime) -> str:
    """The signed body: origin, size, base64 root, ``time <RFC 3339 seconds>``, each + ``\\n``."""
    _check_name(origin)
    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        raise CheckpointError(f"tree size must be an integer in [0, 2**63), not {size!r}")
    if not isinstance(root, (bytes, bytearray)) or len(root) != 32:
        raise CheckpointError("root must be 32 bytes")
    return f"{origin}\n{size}\n{_b64(bytes(root))}\ntime {format_time(time)}\n"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id, 64-byte Ed25519 signature."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint note (not necessarily verified: see :func:`verify_checkpoint`)."""

    origin: str
    size: int
    root: bytes
    time: datetime
    signatures: tuple[NoteSignature, ...]
    body: str
    text: str


def parse_checkpoint(note_text: str) -> Checkpoint:
    """Parse a checkpoint note strictly (see the module docstring); CheckpointError says
    which part is wrong."""
    if not isinstance(note_text, str):
        raise CheckpointError("a checkpoint note is text")
    if not note_text.endswith("\n"):
        raise CheckpointError("checkpoint does not end with a newline")
    lines = note_text[:-1].split("\n")
    if len(lines) < 6 or lines[4] != "":
        raise CheckpointError("checkpoint must be exactly: origin, size, root, time, blank line, signature lines")
    origin, size_s, root_s, time_s = lines[:4]
    sig_lines = lines[5:]
    if "" in sig_lines:
        raise CheckpointError("checkpoint must be exactly: origin, size, root, time, blank line, signature lines "
                              "(no empty line after them)")
    try:
        _check_name(origin)
    except CheckpointError:
        raise CheckpointError(f"checkpoint origin {origin!r} is not a valid key name") from None
    if _SIZE_RE.fullmatch(size_s) is None or int(size_s) > _MAX_SIZE:
        raise CheckpointError(f"checkpoint tree size {size_s!r} is not a decimal integer without leading zeros")
    root = _unb64(root_s, "checkpoint root")
    if len(root) != 32:
        raise CheckpointError("checkpoint root is not 32 bytes")
    m = _TIME_RE.fullmatch(time_s)
    if m is None:
        raise CheckpointError(f"checkpoint time line {time_s!r} is not 'time YYYY-MM-DDTHH:MM:SSZ'")
    try:
        time = datetime(*(int(g) for g in m.groups()), tzinfo=UTC)
    except ValueError:
        raise CheckpointError(f"checkpoint time {time_s[5:]!r} is not a valid date and time") from None
    signatures = []
    for n, sig_line in enumerate(sig_lines):
        if not sig_line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError("signature line does not start with an em dash and a space")
        fields = sig_line[len(SIGNATURE_PREFIX):].split(" ")
        if len(fields) != 2:
            raise CheckpointError("signature line must be '\u2014 <key name> <base64 signature>'")
        sig_name, sig_b64 = fields
        _check_name(sig_name)
        blob = _unb64(sig_b64, "signature")
        if n == 0 and len(blob) != 4 + 64:
            raise CheckpointError("signature is not a 4-byte key id followed by a 64-byte Ed25519 signature")
        if len(blob) < 5:
            raise CheckpointError("a signature line holds a 4-byte key id and a signature")
        signatures.append(NoteSignature(sig_name, blob[:4], blob[4:]))
    body = "\n".join(lines[:4]) + "\n"
    return Checkpoint(origin, int(size_s), root, time, tuple(signatures), body, note_text)


def sign_checkpoint(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The note text: ``body``, a blank line and ``— <name> <base64(key id || signature)>``."""
    _check_name(name)
    sig = private_key.sign(body.encode("utf-8"))
    kid = key_id(name, public_key_bytes(private_key))
    text = f"{body}\n{SIGNATURE_PREFIX}{name} {_b64(kid + sig)}\n"
    cp = parse_checkpoint(text)  # refuse to emit anything the verifier would refuse
    if cp.body != body:
        raise CheckpointError("body is not a checkpoint body")
    return text


VerifierKeys = str | VerifierKey | Iterable[str | VerifierKey]
"""One verifier key (text or parsed) or several (current and rotated-out keys)."""


def _as_keys(vkeys: VerifierKeys) -> list[VerifierKey]:
    if isinstance(vkeys, VerifierKey):
        return [vkeys]
    if isinstance(vkeys, str):
        return parse_vkeys(vkeys)
    out: list[VerifierKey] = []
    for k in vkeys:
        out.extend(_as_keys(k))
    return out


def verify_checkpoint(note_text: str, vkey_text: VerifierKeys) -> Checkpoint:
    """Parse and verify a checkpoint against a verifier key (or a list of them: the key
    with the signature's name and key id is used). The origin must equal the key name.
    Raises CheckpointError: malformed, wrong key name, unknown key id, bad signature."""
    cp = parse_checkpoint(note_text)
    keys = _as_keys(vkey_text)
    sig = cp.signatures[0]
    if sig.name != cp.origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} differs from its signature's key name {sig.name!r}")
    named = [k for k in keys if k.name == sig.name]
    if not named:
        known = ", ".join(sorted({k.name for k in keys}))
        raise CheckpointError(f"checkpoint is signed by key name {sig.name!r}, the verifier key is for {known}")
    key = next((k for k in named if k.key_id == sig.key_id), None)
    if key is None:
        known = ", ".join(k.key_id.hex() for k in named)
        raise CheckpointError(f"checkpoint is signed by key id {sig.key_id.hex()}, not by the verifier key "
                              f"({known})")
    if not _signature_ok(key.public_key, sig.signature, cp.body.encode("utf-8")):
        raise CheckpointError(f"bad signature on checkpoint of size {cp.size}")
    return cp


@lru_cache(maxsize=256)
def _signature_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification (pure, so re-verifying the same note, as verifiers of several
    copies of one export do, is answered from a small cache)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True
