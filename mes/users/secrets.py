"""Hashing and strength rules for passwords, PINs, terminal keys and API tokens.

Passwords and PINs are low-entropy, so they get argon2id; terminal keys and API token
secrets are 256-bit random values, so a SHA-256 digest compared in constant time is
enough and keeps every API request cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets as _random

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

COMMON_PASSWORDS = frozenset(
    {
        "password", "password1", "password123", "passw0rd", "qwerty", "qwertyuiop", "letmein",
        "welcome", "welcome1", "admin", "administrator", "changeme", "123456789012",
        "iloveyou", "monkey", "dragon", "trustno1", "abc123", "football", "baseball",
    }
)


def hash_secret(value: str) -> str:
    """argon2id hash of a password or PIN."""
    return _hasher.hash(value)


_no_account_hash: list[str] = []


def verify_secret(stored: str | None, value: str) -> bool:
    """True if ``value`` matches the argon2 hash; False for no hash or a mismatch.

    Without a hash (no such account, no PIN set) a dummy hash is checked all the same, so
    the answer takes as long either way and its timing does not tell a caller which user
    ids or badges exist."""
    if not stored:
        if not _no_account_hash:
            _no_account_hash.append(_hasher.hash(_random.token_urlsafe(16)))
        with contextlib.suppress(VerificationError):  # a random secret: never a match
            _hasher.verify(_no_account_hash[0], value)
        return False
    try:
        return _hasher.verify(stored, value)
    except (VerificationError, InvalidHashError):
        return False


def password_problems(password: str, user_id: str, min_length: int) -> list[str]:
    """Plain-language reasons why ``password`` is too weak (empty list: acceptable)."""
    problems = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters long")
    classes = sum(
        [
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ]
    )
    if classes < 3:
        problems.append("must mix at least three of: lower case, upper case, digits, symbols")
    lowered = password.lower()
    if user_id and user_id.lower() in lowered:
        problems.append("must not contain the user id")
    if lowered in COMMON_PASSWORDS or lowered.rstrip("0123456789!") in COMMON_PASSWORDS:
        problems.append("is a commonly used password")
    if any(password[i] == password[i + 1] == password[i + 2] == password[i + 3] for i in range(len(password) - 3)):
        problems.append("must not repeat one character four times in a row")
    return problems


def pin_problems(pin: str) -> list[str]:
    """Reasons why a kiosk PIN is unacceptable."""
    if not pin.isdigit() or not 4 <= len(pin) <= 8:
        return ["must be 4 to 8 digits"]
    digits = [int(c) for c in pin]
    steps = {b - a for a, b in zip(digits, digits[1:])}
    if len(set(digits)) == 1 or steps in ({1}, {-1}):
        return ["must not be one repeated digit or a simple sequence"]
    return []


def new_token_secret() -> str:
    return _random.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def digest_matches(stored_hex: str, value: str) -> bool:
    return hmac.compare_digest(stored_hex, digest(value))
