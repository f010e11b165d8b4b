"""C2SP tlog-cosignature (``cosignature/v1``, Ed25519) and witness verifier keys.

A cosignature is a note signature line ``— <witness name> base64(key id || timestamp ||
signature)`` where

* key id = SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4],
* timestamp = the witness's time, u64 big-endian POSIX seconds,
* signature = Ed25519 over ``cosignature/v1\\ntime <timestamp>\\n`` || the checkpoint body.

Witness verifier keys have the ``log.vkey`` text form with type byte 0x04:
``<name>+<key id hex>+<base64(0x04 || public key)>``. Parsing is strict: canonical base64,
exact names, one line.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mes.audit.checkpoint import (
    SIGNATURE_PREFIX,
    CheckpointError,
    _b64,
    _check_name,
    _unb64,
    public_key_bytes,
)

COSIGNATURE_ALG: Final = b"\x04"
HEADER: Final = "cosignature/v1\n"
_MAX_TIME: Final = 2**63 - 1


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    """Key id of an Ed25519 cosigner: SHA-256(name || 0x0A || 0x04 || key)[:4]."""
    _check_name(name)
    if len(public_key) != 32:
        raise CheckpointError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + COSIGNATURE_ALG + bytes(public_key)).digest()[:4]


@dataclass(frozen=True)
class WitnessKey:
    """A witness's verifier key."""

    name: str
    key_id: bytes
    public_key: bytes

    @property
    def text(self) -> str:
        return witness_vkey_text(self.name, self.public_key)


def witness_vkey_text(name: str, public_key: bytes) -> str:
    """``<name>+<key id>+<base64(0x04 || key)>`` (no newline)."""
    return f"{name}+{cosigner_key_id(name, public_key).hex()}+{_b64(COSIGNATURE_ALG + bytes(public_key))}"


def parse_witness_vkey(text: str) -> WitnessKey:
    """Parse one witness verifier key (no newline inside; none at the end either)."""
    if not isinstance(text, str) or "\n" in text or "\r" in text:
        raise CheckpointError("a witness verifier key is one line of text")
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise CheckpointError("a witness verifier key has the form <name>+<key id>+<base64 key>")
    name, kid_hex, key_b64 = parts
    _check_name(name)
    raw = _unb64(key_b64, "witness verifier key")
    if len(raw) != 33 or raw[:1] != COSIGNATURE_ALG:
        raise CheckpointError("witness verifier key is not a cosignature/v1 Ed25519 key (0x04 and 32 bytes)")
    if cosigner_key_id(name, raw[1:]).hex() != kid_hex:
        raise CheckpointError(f"witness verifier key id {kid_hex} does not match its name and key")
    return WitnessKey(name, bytes.fromhex(kid_hex), raw[1:])


def parse_witness_vkeys(text: str) -> list[WitnessKey]:
    """The export's ``witnesses`` file: one key per line, each line ending in exactly one ``\\n``."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise CheckpointError("witnesses: every line must end with a newline")
    return [parse_witness_vkey(line) for line in text[:-1].split("\n")]


def signed_message(body: str, timestamp: int) -> bytes:
    return f"{HEADER}time {timestamp}\n{body}".encode()


def cosign(body: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """The cosignature line (ending in ``\\n``) of a checkpoint body."""
    if type(timestamp) is not int or not 0 <= timestamp <= _MAX_TIME:
        raise CheckpointError("cosignature timestamp out of range")
    sig = key.sign(signed_message(body, timestamp))
    kid = cosigner_key_id(name, public_key_bytes(key))
    return f"{SIGNATURE_PREFIX}{name} {_b64(kid + struct.pack('>Q', timestamp) + sig)}\n"


def verify_cosignature(line: str, body: str, key: WitnessKey) -> int:
    """Verify one cosignature line (with or without its ``\\n``) by ``key``; return its
    timestamp. CheckpointError if it is not ``key``'s valid cosignature on ``body``."""
    text = line[:-1] if line.endswith("\n") else line
    if not text.startswith(SIGNATURE_PREFIX) or "\n" in text:
        raise CheckpointError("a cosignature line starts with an em dash and a space")
    fields = text[len(SIGNATURE_PREFIX):].split(" ")
    if len(fields) != 2 or fields[0] != key.name:
        raise CheckpointError(f"not a cosignature by {key.name}")
    blob = _unb64(fields[1], "cosignature")
    if len(blob) != 4 + 8 + 64 or blob[:4] != key.key_id:
        raise CheckpointError(f"not a cosignature/v1 by {key.name} (key id or length)")
    (timestamp,) = struct.unpack(">Q", blob[4:12])
    if timestamp > _MAX_TIME:
        raise CheckpointError("cosignature timestamp out of range")
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(blob[12:], signed_message(body, timestamp))
    except InvalidSignature:
        raise CheckpointError(f"bad cosignature by {key.name}") from None
    return timestamp


def cosigned_by(note: str, body: str, keys: list[WitnessKey]) -> dict[str, int]:
    """``{witness name: timestamp}`` for every valid cosignature line in ``note`` by ``keys``."""
    out: dict[str, int] = {}
    for line in note.split("\n"):
        for key in keys:
            if line.startswith(f"{SIGNATURE_PREFIX}{key.name} "):
                try:
                    out[key.name] = verify_cosignature(line, body, key)
                except CheckpointError:
                    continue
    return out
