"""Attempt limits for log-ins, password changes and signatures (Part 11 §11.300(d)).

Keys name what is limited: ``terminal:<id>`` or ``address:<ip>`` (where an attempt comes
from) and ``account:<id>`` (whose credentials are tried), so kiosks behind one reverse proxy
do not share one bucket and guessing one account's PIN from many places is still bounded.
With ``MES_REDIS_URL`` the counts live in Redis and every web worker sees the same ones;
without it each worker counts alone (one worker: the shipped single-process setup).

(The ``limits`` library would do this, but its releases pin ``packaging<26`` and
``redis<6``, below this project's pins.)
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from threading import Lock

from flask import current_app

from mes.errors import RateLimited

WINDOW_SECONDS = 60


class AttemptLimiter(ABC):
    """Counts attempts per key in a one-minute window."""

    @abstractmethod
    def hit(self, key: str, per_minute: int, *, count: bool = True) -> int | None:
        """Count one attempt for ``key`` (``count=False``: only look); the seconds to wait if
        ``key`` is at ``per_minute`` already, else None."""


class MemoryAttemptLimiter(AttemptLimiter):
    """Sliding one-minute window in this process."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = Lock()

    def hit(self, key: str, per_minute: int, *, count: bool = True) -> int | None:
        now = time.monotonic()
        with self._lock:
            window = self._hits[key]
            while window and now - window[0] > WINDOW_SECONDS:
                window.popleft()
            if len(window) >= per_minute:
                return int(WINDOW_SECONDS - (now - window[0])) + 1
            if count:
                window.append(now)
            return None


class RedisAttemptLimiter(AttemptLimiter):
    """A one-minute window per key in Redis, shared by every worker and server."""

    def __init__(self, url: str, prefix: str = "mes:attempts:") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix

    def hit(self, key: str, per_minute: int, *, count: bool = True) -> int | None:
        name = self._prefix + key
        if not count:
            seen, ttl = self._redis.pipeline().get(name).ttl(name).execute()
            return max(int(ttl), 1) if seen is not None and int(seen) >= per_minute else None
        pipe = self._redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, WINDOW_SECONDS, nx=True)
        pipe.ttl(name)
        count, _, ttl = pipe.execute()
        if int(count) > per_minute:
            return max(int(ttl), 1)
        return None


def limiter_for(redis_url: str | None) -> AttemptLimiter:
    """The Redis limiter when Redis is configured, else the in-process one."""
    return RedisAttemptLimiter(redis_url) if redis_url else MemoryAttemptLimiter()


def count_attempt(key: str, per_minute: int, what: str = "attempts", *, count: bool = True) -> None:
    """Count one attempt for ``key`` in the app's limiter; RateLimited (429) past ``per_minute``
    (``count=False``: only refuse while ``key`` is over it)."""
    limiter: AttemptLimiter = current_app.extensions["mes_login_limiter"]
    retry = limiter.hit(key, per_minute, count=count)
    if retry is not None:
        raise RateLimited(f"Too many {what}; wait {retry} s.", retry_after=retry)


def _account_key(user_id: str) -> str:
    return f"account:{str(user_id).strip().lower()}"


def _account_rate() -> int:
    return int(current_app.config.get("MES_ACCOUNT_RATE_PER_MINUTE", 10))


def refuse_if_account_limited(user_id: str) -> None:
    """RateLimited (429) while account ``user_id`` had too many failed credential attempts this
    minute (log-in, password change, signature); checked before the secret is."""
    limiter: AttemptLimiter = current_app.extensions["mes_login_limiter"]
    retry = limiter.hit(_account_key(user_id), _account_rate(), count=False)
    if retry is not None:
        raise RateLimited(f"Too many failed attempts for this account; wait {retry} s.", retry_after=retry)


def count_account_failure(user_id: str) -> None:
    """Count one failed credential attempt against account ``user_id``."""
    limiter: AttemptLimiter = current_app.extensions["mes_login_limiter"]
    limiter.hit(_account_key(user_id), _account_rate())
