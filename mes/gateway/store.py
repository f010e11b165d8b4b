"""The latest reading of every device, shared by the gateway and the web workers.

The gateway writes each reading here; the engine's capture rules read the latest one when an
operator captures a weight, so the value, the raw device reply and the device identity in the
batch record come from the instrument and never from the browser (ALCOA "original").

Beside each device's latest reading the store keeps the device's *link* (:class:`LinkState`):
the gateway marks it lost the moment the device falls silent, and the capture rule
(:func:`mes.gateway.capture.device_link_refusal`) refuses a reading from a device that is
not connected, whatever the reading's age. Every reading carries the *epoch* of the gateway
run that took it (:func:`new_epoch`, ordered by start time), so after a gateway restart the
new run's reading 1 is newer than the old run's reading 5000: the order is (epoch, sequence).

Two backends with one contract: :class:`MemoryReadingStore` when the gateway runs inside the
server (``mes demo``, tests) and :class:`RedisReadingStore` when ``MES_REDIS_URL`` is set and
the gateway is its own process.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

__all__ = ["CapturedReading", "LinkState", "MemoryReadingStore", "ReadingStore", "RedisReadingStore", "new_epoch",
           "reading_store"]


#: ``since`` of a link known only from readings put (no gateway has reported it): unknown.
HEARD_SINCE = datetime.min.replace(tzinfo=UTC)


def new_epoch(now: datetime | None = None) -> str:
    """A gateway run id: its start time (UTC, microseconds) and a random tail, so that a later
    run sorts after an earlier one and two runs started in the same microsecond still differ."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LinkState:
    """Whether the gateway hears the device now: set when it connects and when it falls silent.

    ``since`` is when the link came up (or went down); ``epoch`` the gateway run that says so.
    """

    device_id: str
    connected: bool
    since: datetime
    epoch: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form (for Redis)."""
        return {"device_id": self.device_id, "connected": self.connected,
                "since": self.since.astimezone(UTC).isoformat(), "epoch": self.epoch, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkState:
        """Inverse of :meth:`to_json`."""
        return cls(device_id=str(data["device_id"]), connected=bool(data["connected"]),
                   since=datetime.fromisoformat(str(data["since"])), epoch=str(data.get("epoch") or ""),
                   reason=str(data.get("reason") or ""))


@dataclass(frozen=True)
class CapturedReading:
    """One device reading as the MES keeps it: JSON-safe, Decimal value, UTC time.

    ``raw`` is the device's reply exactly as received; ``identity`` is what the device said
    about itself (make, model, serial number, firmware) when the gateway connected; ``epoch``
    is the gateway run that took it (readings order by ``(epoch, sequence)``).
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
    epoch: str = ""

    def __post_init__(self) -> None:
        if self.at.utcoffset() is None:
            raise ValueError("CapturedReading.at must be timezone-aware")
        if self.value is not None and not isinstance(self.value, Decimal):
            raise TypeError("CapturedReading.value must be a Decimal")

    @classmethod
    def from_reading(cls, reading: Any, identity: dict[str, str] | None = None, epoch: str = "") -> CapturedReading:
        """Wrap a :class:`devices.reading.Reading` (duck-typed: devices/ stays independent)."""
        return cls(device_id=reading.device_id, sequence=reading.sequence, status=reading.status.value,
                   value=reading.value, unit=reading.unit, stable=reading.stable, raw=reading.raw,
                   at=reading.timestamp.astimezone(UTC), identity=dict(identity or {}), epoch=epoch)

    @property
    def order(self) -> tuple[str, int]:
        """Position among the device's readings: a later gateway run first, then the sequence."""
        return (self.epoch, self.sequence)

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
                "identity": dict(self.identity), "epoch": self.epoch}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CapturedReading:
        """Inverse of :meth:`to_json`; the raw bytes come back from ``raw_hex``."""
        return cls(device_id=str(data["device_id"]), sequence=int(data["sequence"]), status=str(data["status"]),
                   value=None if data.get("value") is None else Decimal(str(data["value"])),
                   unit=str(data.get("unit") or ""), stable=bool(data["stable"]),
                   raw=bytes.fromhex(str(data.get("raw_hex", ""))),
                   at=datetime.fromisoformat(str(data["at"])), identity=dict(data.get("identity") or {}),
                   epoch=str(data.get("epoch") or ""))


class ReadingStore(Protocol):
    """Where the latest reading of each device lives."""

    def put(self, reading: CapturedReading) -> None:
        """Keep ``reading`` as the latest of its device (an older ``(epoch, sequence)`` never
        replaces a newer one). A reading put is a reading heard: the link counts as connected
        unless the gateway has said otherwise for this run."""

    def latest(self, device_id: str) -> CapturedReading | None:
        """The latest reading of ``device_id``, or ``None`` if the gateway has sent none."""

    def devices(self) -> list[str]:
        """Every device that has sent a reading."""

    def set_link(self, link: LinkState) -> None:
        """Record whether the gateway hears the device now."""

    def link(self, device_id: str) -> LinkState | None:
        """The device's link as the gateway last reported it (None: never reported)."""


class MemoryReadingStore:
    """In-process store: for a gateway running inside the server and for tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, CapturedReading] = {}
        self._links: dict[str, LinkState] = {}

    def put(self, reading: CapturedReading) -> None:
        with self._lock:
            old = self._latest.get(reading.device_id)
            if old is None or reading.order > old.order:
                self._latest[reading.device_id] = reading
            if reading.device_id not in self._links:
                self._links[reading.device_id] = LinkState(reading.device_id, True, HEARD_SINCE, reading.epoch)

    def set_link(self, link: LinkState) -> None:
        with self._lock:
            self._links[link.device_id] = link

    def link(self, device_id: str) -> LinkState | None:
        with self._lock:
            return self._links.get(device_id)

    def latest(self, device_id: str) -> CapturedReading | None:
        with self._lock:
            return self._latest.get(device_id)

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)


class RedisReadingStore:
    """Redis store for a gateway in its own process; keys expire so a dead gateway shows as silent."""

    PREFIX = "mes:reading:"
    LINK_PREFIX = "mes:link:"
    #: Keep the reading only when its (epoch, sequence) is above the stored one's; mark the link
    #: heard when no link has been reported (the gateway reports it on connect and on loss), and
    #: keep a reported link as long as the readings (it changes only on connect and on loss).
    _PUT = """
local old = redis.call('GET', KEYS[1])
if old then
  local o = cjson.decode(old)
  local epoch = o['epoch'] or ''
  if type(epoch) ~= 'string' then epoch = '' end
  if epoch > ARGV[2] or (epoch == ARGV[2] and tonumber(o['sequence']) >= tonumber(ARGV[3])) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
if not redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4], 'NX') then
  redis.call('EXPIRE', KEYS[2], ARGV[4])  -- a device heard keeps its link as long as its reading
end
return 1
"""

    def __init__(self, url: str, *, ttl_seconds: int = 3600) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._ttl = ttl_seconds
        self._put = self._redis.register_script(self._PUT)

    def put(self, reading: CapturedReading) -> None:
        heard = LinkState(reading.device_id, True, HEARD_SINCE, reading.epoch)
        self._put(keys=[self.PREFIX + reading.device_id, self.LINK_PREFIX + reading.device_id],
                  args=[json.dumps(reading.to_json()), reading.epoch, reading.sequence, self._ttl,
                        json.dumps(heard.to_json())])

    def set_link(self, link: LinkState) -> None:
        self._redis.set(self.LINK_PREFIX + link.device_id, json.dumps(link.to_json()), ex=self._ttl)

    def link(self, device_id: str) -> LinkState | None:
        raw = self._redis.get(self.LINK_PREFIX + device_id)
        return None if raw is None else LinkState.from_json(json.loads(raw))

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
