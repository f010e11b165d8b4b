"""The plant's PKCS#11 token (an HSM; SoftHSM2 from Debian in the tests): where the MES's
keys live, instead of files, when ``MES_PKCS11_MODULE`` is set.

Objects in the token named by ``MES_PKCS11_TOKEN``, made there by ``mes init`` when missing,
sensitive and never extractable, so a copy of ``MES_HOME``, of the database or of a backup
carries none of them:

* ``mes-audit-signing``: the Ed25519 key pair (CKM_EDDSA) that signs the audit checkpoints;
* ``mes-audit-tag``: a 256-bit secret. The entry tag key is HMAC-SHA256 of it over a fixed
  label, computed in the token once per process and held in that process's memory only:
  tagging each entry through the token costs ~40 µs, which a full verification of a million
  entries cannot afford, and the derived key is never written anywhere;
* ``mes-ebr-signing``: the RSA-3072 key pair of the eBR document-signing certificate (the
  certificate itself is public and stays a file).

The user PIN is read from ``MES_PKCS11_PIN_FILE`` (mode 0600, like a key file). A process
opens one session per token, logs in once and keeps it; its users take turns under one lock
(checkpoint and document signatures are rare, and a session is not shared between threads).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mes.audit.keys import KeyFileError

AUDIT_SIGNING: Final = "mes-audit-signing"
AUDIT_TAG: Final = "mes-audit-tag"
EBR_SIGNING: Final = "mes-ebr-signing"
#: what the token's tag secret is HMAC-ed over to give the entry tag key (change it and every tag changes)
TAG_KEY_LABEL: Final = b"open-mes audit entry tag key v1"
_ED25519_OID: Final = "1.3.101.112"

_LOCK = threading.RLock()
#: the token's refusals in words (python-pkcs11's exception names)
_WHY: Final = {"PinIncorrect": "the PIN in MES_PKCS11_PIN_FILE is wrong",
               "PinLocked": "the PIN is locked (too many wrong PINs); the security officer must reset it",
               "PinExpired": "the PIN has expired; set a new one", "NoSuchToken": "there is no token with that label",
               "TokenNotPresent": "the token is not present", "DeviceRemoved": "the token was removed"}


class TokenError(KeyFileError, RuntimeError):
    """The token, its PIN or one of the MES's objects in it is missing or unusable."""


@dataclass(frozen=True)
class Token:
    """Which PKCS#11 module, token and PIN file the MES uses."""

    module: str
    label: str
    pin_file: Path

    def describe(self) -> str:
        return f"PKCS#11 token {self.label!r} ({self.module})"


def configured(config: Mapping[str, Any]) -> Token | None:
    """The configured token, or None when the keys are files (``MES_PKCS11_MODULE`` unset)."""
    module = str(config.get("MES_PKCS11_MODULE") or "")
    if not module:
        return None
    return Token(module, str(config.get("MES_PKCS11_TOKEN") or "mes"), Path(str(config.get("MES_PKCS11_PIN_FILE") or "")))


def read_pin(token: Token) -> str:
    """The user PIN from its file; a file that group or others may read is refused."""
    path = token.pin_file
    if not path.is_file():  # unset: Path("") is the working folder, not a file
        raise TokenError(f"the PIN file of {token.describe()} is missing: set MES_PKCS11_PIN_FILE")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise TokenError(f"the PIN file {path} has mode {stat.S_IMODE(path.stat().st_mode):04o}; "
                         f"group and others must have no access (chmod 600 {path})")
    return path.read_text("utf-8").strip()


#: one open, logged-in session per token, kept for the process's life: a log-in costs SoftHSM
#: about 1.5 ms (it derives the token's key from the PIN), more than the signature itself
_OPEN: dict[tuple[str, str], Any] = {}
_PID = os.getpid()  # the process that opened them: a forked child must initialise the module anew


def _open(token: Token, pin: str) -> Any:
    import pkcs11
    from pkcs11.exceptions import NoSuchToken, PKCS11Error

    global _PID
    try:
        lib = pkcs11.lib(token.module)
        if _PID != os.getpid():  # forked: the parent's initialisation and sessions are not ours
            _PID = os.getpid()
            _OPEN.clear()
            lib.reinitialize()
        try:
            found = lib.get_token(token_label=token.label)
        except NoSuchToken:  # initialised after this process loaded the module: look again
            lib.reinitialize()
            _OPEN.clear()  # sessions opened before are gone with the old initialisation
            found = lib.get_token(token_label=token.label)
        return found.open(user_pin=pin, rw=True)
    except (OSError, PKCS11Error) as exc:
        why = _WHY.get(type(exc).__name__, f"{type(exc).__name__} {exc}".rstrip())
        raise TokenError(f"{token.describe()} cannot be opened: {why}") from None


@contextmanager
def session(token: Token) -> Iterator[Any]:
    """The token's read-write user session (opened and logged in on first use, then kept),
    under the module's lock. A token error inside forgets it, so the next use opens afresh
    (a token removed and put back, a restarted HSM)."""
    from pkcs11.exceptions import PKCS11Error

    pin = read_pin(token)
    key = (token.module, token.label)
    with _LOCK:
        opened = _OPEN.get(key) if _PID == os.getpid() else None
        if opened is None:
            opened = _OPEN[key] = _open(token, pin)
        try:
            yield opened
        except PKCS11Error:
            _OPEN.pop(key, None)
            raise


def _one(s: Any, label: str, object_class: Any) -> Any | None:
    from pkcs11 import Attribute

    found = list(s.get_objects({Attribute.LABEL: label, Attribute.CLASS: object_class}))
    if len(found) > 1:
        raise TokenError(f"the token holds {len(found)} objects labelled {label!r}; keep one")
    return found[0] if found else None


def _private(s: Any, label: str) -> Any | None:
    from pkcs11 import ObjectClass

    return _one(s, label, ObjectClass.PRIVATE_KEY)


_KEEP_SECRET: Final = "SENSITIVE and not EXTRACTABLE"


def _secret_template() -> dict[Any, Any]:
    from pkcs11 import Attribute

    return {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TOKEN: True}


class TokenEd25519Key:
    """The checkpoint signing key in the token, used where an ``Ed25519PrivateKey`` is:
    ``sign(data)`` and ``public_key()``."""

    def __init__(self, token: Token, public: bytes) -> None:
        self.token = token
        self._public = public

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self._public)

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.exceptions import PKCS11Error

        for attempt in (1, 2):  # a kept session the token no longer knows: once more on a new one
            try:
                with session(self.token) as s:
                    key = _private(s, AUDIT_SIGNING)
                    if key is None:
                        raise TokenError(f"{self.token.describe()} no longer holds {AUDIT_SIGNING!r}")
                    signature = bytes(key.sign(data, mechanism=Mechanism.EDDSA))
                break
            except PKCS11Error as exc:
                if attempt == 2:
                    raise TokenError(f"{self.token.describe()} did not sign: {type(exc).__name__}") from None
        self.public_key().verify(signature, data)  # the token signed with the key we publish
        return signature


def _ed25519_public(s: Any) -> bytes | None:
    from asn1crypto.core import OctetString
    from pkcs11 import Attribute, ObjectClass

    pub = _one(s, AUDIT_SIGNING, ObjectClass.PUBLIC_KEY)
    if pub is None:
        return None
    return bytes(OctetString.load(bytes(pub[Attribute.EC_POINT])).native)


def _generate_ed25519(s: Any, label: str) -> None:
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    params = s.create_domain_parameters(KeyType.EC_EDWARDS,
                                        {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)}, local=True)
    params.generate_keypair(store=True, label=label, mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                            private_template=_secret_template())


def audit_signing_key(token: Token, *, create: bool) -> TokenEd25519Key:
    """The checkpoint signing key in the token, generated there first if ``create``."""
    with session(token) as s:
        public = _ed25519_public(s)
        if public is None and create:
            _generate_ed25519(s, AUDIT_SIGNING)
            public = _ed25519_public(s)
        if public is None or _private(s, AUDIT_SIGNING) is None:
            raise TokenError(f"{token.describe()} holds no {AUDIT_SIGNING!r} key pair: run `mes init`")
    return TokenEd25519Key(token, public)


def rotate_audit_signing_key(token: Token) -> TokenEd25519Key:
    """A new checkpoint key pair in the token; the old pair is destroyed (its public key must be
    saved as a verifier key first). Generated under a temporary label, then renamed."""
    from pkcs11 import Attribute, ObjectClass

    staged = AUDIT_SIGNING + ".new"
    with session(token) as s:
        _generate_ed25519(s, staged)
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            old = _one(s, AUDIT_SIGNING, cls)
            if old is not None:
                old.destroy()
            new = _one(s, staged, cls)
            assert new is not None
            new[Attribute.LABEL] = AUDIT_SIGNING
    return audit_signing_key(token, create=False)


def has_tag_secret(token: Token) -> bool:
    """Whether the token holds the entry tag secret."""
    from pkcs11 import ObjectClass

    with session(token) as s:
        return _one(s, AUDIT_TAG, ObjectClass.SECRET_KEY) is not None


def tag_key(token: Token, *, create: bool) -> bytes:
    """The entry tag key: HMAC-SHA256 of the token's tag secret over :data:`TAG_KEY_LABEL`
    (the secret generated in the token first if ``create``)."""
    from pkcs11 import KeyType, Mechanism, MechanismFlag, ObjectClass

    with session(token) as s:
        secret = _one(s, AUDIT_TAG, ObjectClass.SECRET_KEY)
        if secret is None and create:
            secret = s.generate_key(KeyType.GENERIC_SECRET, 256, label=AUDIT_TAG, store=True,
                                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                                    template=_secret_template())
        if secret is None:
            raise TokenError(f"{token.describe()} holds no {AUDIT_TAG!r} secret")
        return bytes(secret.sign(TAG_KEY_LABEL, mechanism=Mechanism.SHA256_HMAC))


def ebr_public_key(token: Token, *, create: bool) -> rsa.RSAPublicKey:
    """The public half of the eBR signing key pair in the token (RSA-3072, generated first if
    ``create``)."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    with session(token) as s:
        pub = _one(s, EBR_SIGNING, ObjectClass.PUBLIC_KEY)
        if pub is None and create:
            pub, _ = s.generate_keypair(KeyType.RSA, 3072, store=True, label=EBR_SIGNING,
                                        private_template=_secret_template())
        if pub is None or _private(s, EBR_SIGNING) is None:
            raise TokenError(f"{token.describe()} holds no {EBR_SIGNING!r} key pair")
        n = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def custody_lines(token: Token) -> list[tuple[str, str]]:
    """``mes check`` lines: the PIN file's mode and each MES object in the token, present and
    kept secret (SENSITIVE, not EXTRACTABLE)."""
    from pkcs11 import Attribute, ObjectClass

    try:
        with session(token) as s:
            out = [("ok", f"keys in {token.describe()}; PIN file {token.pin_file} (mode 0600)")]
            for label, cls in ((AUDIT_SIGNING, ObjectClass.PRIVATE_KEY), (AUDIT_TAG, ObjectClass.SECRET_KEY),
                               (EBR_SIGNING, ObjectClass.PRIVATE_KEY)):
                obj = _one(s, label, cls)
                if obj is None:
                    out.append(("FAIL" if label != EBR_SIGNING else "warn",
                                f"{label!r} is not in the token: run `mes init`"))
                elif not obj[Attribute.SENSITIVE] or obj[Attribute.EXTRACTABLE]:
                    out.append(("FAIL", f"{label!r} in the token is not {_KEEP_SECRET}: it can be read out; "
                                        "make a new one in the token"))
                else:
                    out.append(("ok", f"{label!r} in the token ({_KEEP_SECRET})"))
            return out
    except TokenError as exc:
        return [("FAIL", str(exc))]
