"""Hashing and strength rules for passwords, PINs, terminal keys and API tokens.

Passwords and PINs are low-entropy, so they get argon2id; terminal keys and API token
secrets are 256-bit random values, so a SHA-256 digest compared in constant time is
enough and keeps every API request cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import itertools
import secrets as _random

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app, has_app_context

from mes.config import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST


@functools.cache
def _hasher_with(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


def hasher() -> PasswordHasher:
    """The argon2id hasher at the app's configured cost (``MES_ARGON2_*``); outside an app,
    the production cost. Only new hashes use it: a stored hash carries its own cost."""
    if has_app_context():
        c = current_app.config
        return _hasher_with(c.get("MES_ARGON2_TIME_COST", ARGON2_TIME_COST),
                            c.get("MES_ARGON2_MEMORY_KIB", ARGON2_MEMORY_KIB),
                            c.get("MES_ARGON2_PARALLELISM", ARGON2_PARALLELISM))
    return _hasher_with(ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM)

COMMON_PASSWORDS = frozenset(
    {
        "password", "password1", "password123", "passw0rd", "qwerty", "qwertyuiop", "letmein",
        "welcome", "welcome1", "admin", "administrator", "changeme", "123456789012",
        "iloveyou", "monkey", "dragon", "trustno1", "abc123", "football", "baseball",
    }
)


def hash_secret(value: str) -> str:
    """argon2id hash of a password or PIN."""
    return hasher().hash(value)


_no_account_hash: dict[PasswordHasher, str] = {}  # per cost: it must take as long as a real hash


def verify_secret(stored: str | None, value: str) -> bool:
    """True if ``value`` matches the argon2 hash; False for no hash or a mismatch.

    Without a hash (no such account, no PIN set) a dummy hash is checked all the same, so
    the answer takes as long either way and its timing does not tell a caller which user
    ids or badges exist."""
    h = hasher()
    if not stored:
        if h not in _no_account_hash:
            _no_account_hash[h] = h.hash(_random.token_urlsafe(16))
        with contextlib.suppress(VerificationError):  # a random secret: never a match
            h.verify(_no_account_hash[h], value)
        return False
    try:
        return h.verify(stored, value)
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
    steps = {b - a for a, b in itertools.pairwise(digits)}
    if len(set(digits)) == 1 or steps in ({1}, {-1}):
        return ["must not be one repeated digit or a simple sequence"]
    return []


def new_token_secret() -> str:
    return _random.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def digest_matches(stored_hex: str, value: str) -> bool:
    return hmac.compare_digest(stored_hex, digest(value))
