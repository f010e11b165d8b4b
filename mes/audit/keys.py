"""The checkpoint signing key in the instance folder, and verifier keys kept across rotation.

* The private key is an unencrypted PKCS#8 PEM file with mode 0600. A key file that group
  or others can read or write is refused (:class:`KeyFileError`): fix the mode, don't
  work around it, because anyone who can read it can sign checkpoints.
* The key name (``<site id>/mes/audit``) is not stored in the key file; it is derived from
  the site id when signing, so the same file yields ``key_id``/``vkey`` per §3.
* Rotation writes the old *public* key to ``verifier_dir/<key id>.vkey`` before replacing
  the private key, so checkpoints signed by the old key still verify
  (:func:`all_verifier_keys`). The old private key is not kept: nothing should sign with
  it again.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from mes.audit.checkpoint import key_id, key_name, parse_vkey, public_key_bytes, vkey_text

KEY_FILE_MODE = 0o600


class KeyFileError(Exception):
    """The signing key file is unsafe, unreadable or not an Ed25519 key."""


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Raw 32-byte public key of a signing key."""
    return public_key_bytes(private_key)


def _pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write_private(directory: Path, data: bytes) -> Path:
    """Write ``data`` to a new 0600 temp file in ``directory`` (fsynced); return its path."""
    fd, name = tempfile.mkstemp(prefix=".signing-key-", dir=directory)  # created 0600
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key; refuse a file that group or others may read or write."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"signing key {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"signing key {path} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(f"signing key {path} has mode {stat.S_IMODE(st.st_mode):04o}; group and others must "
                           f"have no access (chmod 600 {path})")
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"signing key {path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is not an Ed25519 key")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key at ``path``, creating it (mode 0600, parent folder 0700 if new)
    on first use. Creation is atomic and never overwrites: if two processes race, both end
    up with the one key that was linked into place first."""
    path = Path(path)
    if path.exists():
        return load_signing_key(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = _pem(Ed25519PrivateKey.generate())
    tmp = _write_private(path.parent, pem)
    try:
        os.link(tmp, path)  # fails if the key appeared meanwhile: then use that one
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system: exclusive create instead
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)
    return load_signing_key(path)


def save_verifier_key(verifier_dir: Path, name: str, public_key: bytes) -> Path:
    """Write ``verifier_dir/<key id>.vkey`` (one line) unless it exists; return its path.
    A different key under the same key id (a 32-bit collision) is an error."""
    verifier_dir = Path(verifier_dir)
    verifier_dir.mkdir(parents=True, exist_ok=True)
    text = vkey_text(name, public_key) + "\n"
    target = verifier_dir / f"{key_id(name, public_key).hex()}.vkey"
    if target.exists():
        if target.read_text("utf-8") != text:
            raise KeyFileError(f"{target} holds a different key with the same key id")
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, target)
    return target


def rotate_signing_key(path: Path, verifier_dir: Path, site_id: str) -> Ed25519PrivateKey:
    """Replace the signing key with a new one, keeping both public keys in ``verifier_dir``
    so old and new checkpoints verify. Returns the new key. Publish a checkpoint right after
    rotating, so the log is committed under the new key too."""
    path = Path(path)
    name = key_name(site_id)
    old = load_signing_key(path)
    save_verifier_key(verifier_dir, name, public_bytes(old))
    new = Ed25519PrivateKey.generate()
    save_verifier_key(verifier_dir, name, public_bytes(new))
    tmp = _write_private(path.parent, _pem(new))
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return new


def all_verifier_keys(verifier_dir: Path) -> list[str]:
    """Every verifier key text in ``verifier_dir/*.vkey`` (each checked), sorted by file name.
    Write them one per line into an export's ``log.vkey`` to verify across rotations."""
    out = []
    for f in sorted(Path(verifier_dir).glob("*.vkey")):
        text = f.read_text("utf-8")
        parse_vkey(text)
        out.append(text.rstrip("\n"))
    return out


def verifier_key(private_key: Ed25519PrivateKey, site_id: str) -> str:
    """The verifier key text (``log.vkey`` line) of a signing key for a site."""
    return vkey_text(key_name(site_id), public_bytes(private_key))
