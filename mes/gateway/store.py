"""The latest reading of every device, shared by the gateway and the web workers.

The gateway writes each reading here; the engine's capture rules read the latest one when an
operator captures a weight, so the value, the raw device reply and the device identity in the
batch record come from the instrument and never from the browser (ALCOA "original").

Two backends with one contract: :class:`MemoryReadingStore` when the gateway runs inside the
server (``mes demo``, tests) and :class:`RedisReadingStore` when ``MES_REDIS_URL`` is set and
the gateway is its own process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

__all__ = ["CapturedReading", "MemoryReadingStore", "ReadingStore", "RedisReadingStore", "reading_store"]


@dataclass(frozen=True)
class CapturedReading:
    """One device reading as the MES keeps it: JSON-safe, Decimal value, UTC time.

    ``raw`` is the device's reply exactly as received; ``identity`` is what the device said
    about itself (make, model, serial number, firmware) when the gateway connected.
    """

    device_id: str
    sequence: int
    status: str
    value: Decimal | None
    unit: str
    stable: bool
    raw: bytes
    at: datetime
    identity: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.at.utcoffset() is None:
            raise ValueError("CapturedReading.at must be timezone-aware")
        if self.value is not None and not isinstance(self.value, Decimal):
            raise TypeError("CapturedReading.value must be a Decimal")

    @classmethod
    def from_reading(cls, reading: Any, identity: dict[str, str] | None = None) -> CapturedReading:
        """Wrap a :class:`devices.reading.Reading` (duck-typed: devices/ stays independent)."""
        return cls(device_id=reading.device_id, sequence=reading.sequence, status=reading.status.value,
                   value=reading.value, unit=reading.unit, stable=reading.stable, raw=reading.raw,
                   at=reading.timestamp.astimezone(UTC), identity=dict(identity or {}))

    def age_ms(self, now: datetime) -> int:
        """Milliseconds between the reading and ``now`` (negative if the clocks disagree)."""
        delta = now - self.at
        return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000

    def to_json(self) -> dict[str, Any]:
        """The reading as the kiosk, the store and the batch record see it (value as a string)."""
        return {"device_id": self.device_id, "sequence": self.sequence, "status": self.status,
                "value": None if self.value is None else str(self.value), "unit": self.unit,
                "stable": self.stable, "raw": self.raw.decode("latin-1"),
                "raw_hex": self.raw.hex(), "at": self.at.astimezone(UTC).isoformat(),
                "identity": dict(self.identity)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CapturedReading:
        """Inverse of :meth:`to_json`; the raw bytes come back from ``raw_hex``."""
        return cls(device_id=str(data["device_id"]), sequence=int(data["sequence"]), status=str(data["status"]),
                   value=None if data.get("value") is None else Decimal(str(data["value"])),
                   unit=str(data.get("unit") or ""), stable=bool(data["stable"]),
                   raw=bytes.fromhex(str(data.get("raw_hex", ""))),
                   at=datetime.fromisoformat(str(data["at"])), identity=dict(data.get("identity") or {}))


class ReadingStore(Protocol):
    """Where the latest reading of each device lives."""

    def put(self, reading: CapturedReading) -> None:
        """Keep ``reading`` as the latest of its device (an older sequence never replaces a newer one)."""

    def latest(self, device_id: str) -> CapturedReading | None:
        """The latest reading of ``device_id``, or ``None`` if the gateway has sent none."""

    def devices(self) -> list[str]:
        """Every device that has sent a reading."""


class MemoryReadingStore:
    """In-process store: for a gateway running inside the server and for tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, CapturedReading] = {}

    def put(self, reading: CapturedReading) -> None:
        with self._lock:
            old = self._latest.get(reading.device_id)
            if old is None or reading.sequence > old.sequence or reading.at > old.at:
                self._latest[reading.device_id] = reading

    def latest(self, device_id: str) -> CapturedReading | None:
        with self._lock:
            return self._latest.get(device_id)

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)


class RedisReadingStore:
    """Redis store for a gateway in its own process; keys expire so a dead gateway shows as silent."""

    PREFIX = "mes:reading:"

    def __init__(self, url: str, *, ttl_seconds: int = 3600) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._ttl = ttl_seconds

    def put(self, reading: CapturedReading) -> None:
        self._redis.set(self.PREFIX + reading.device_id, json.dumps(reading.to_json()), ex=self._ttl)

    def latest(self, device_id: str) -> CapturedReading | None:
        raw = self._redis.get(self.PREFIX + device_id)
        return None if raw is None else CapturedReading.from_json(json.loads(raw))

    def devices(self) -> list[str]:
        return sorted(k.decode()[len(self.PREFIX):] for k in self._redis.scan_iter(self.PREFIX + "*"))


def reading_store(app: Any) -> ReadingStore:
    """The app's reading store, made on first use from ``MES_REDIS_URL`` (memory when unset)."""
    store = app.extensions.get("mes.readings")
    if store is None:
        url = app.config.get("MES_REDIS_URL") or ""
        store = RedisReadingStore(url) if url else MemoryReadingStore()
        app.extensions["mes.readings"] = store
    return store
