"""Per-device health as the gateway reports it: connected, last reading age, last error.

The gateway writes a :class:`DeviceState` for each device whenever something changes and at
least every :data:`HEARTBEAT_S` seconds; the web app reads it for ``GET /api/v1/devices``
and for new Socket.IO watchers. Like the reading store there are two backends: memory when
the gateway runs inside the server, Redis (keys expire after :data:`STALE_AFTER_S`, so a
gateway that died shows its devices as not reported) when it is its own process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mes.gateway.store import CapturedReading, reading_store

__all__ = ["DeviceState", "HealthBoard", "MemoryHealthBoard", "RedisHealthBoard", "device_state", "device_states",
           "health_board"]

HEARTBEAT_S = 1.0
STALE_AFTER_S = 10


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class DeviceState:
    """What the gateway knows about one device now (``reading`` is filled in from the store)."""

    device_id: str
    driver: str
    kind: str = "scale"
    line: str | None = None
    connected: bool = False
    message: str = "Connecting."
    last_error: str | None = None
    last_error_at: datetime | None = None
    connected_since: datetime | None = None
    reconnects: int = 0
    identity: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    updated_at: datetime = field(default_factory=_now)
    reading: CapturedReading | None = None

    def age_ms(self, now: datetime | None = None) -> int | None:
        """Milliseconds since the last reading, or None when there is none."""
        if self.reading is None:
            return None
        return max(0, self.reading.age_ms(now or _now()))

    def status_json(self, now: datetime | None = None) -> dict[str, Any]:
        """The ``device_status`` Socket.IO event."""
        return {"device_id": self.device_id, "connected": self.connected, "age_ms": self.age_ms(now),
                "message": self.message}

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        """The device as ``GET /api/v1/devices/<id>`` shows it."""
        return {**self.status_json(now), "reading": None if self.reading is None else self.reading.to_json(),
                "driver": self.driver, "kind": self.kind, "line": self.line, "last_error": self.last_error,
                "last_error_at": _iso(self.last_error_at), "connected_since": _iso(self.connected_since),
                "reconnects": self.reconnects, "identity": dict(self.identity),
                "capabilities": list(self.capabilities), "updated_at": _iso(self.updated_at)}

    def dumps(self) -> str:
        """JSON for the Redis board (without the reading, which lives in the reading store)."""
        data = asdict(self)
        data.pop("reading")
        for key in ("last_error_at", "connected_since", "updated_at"):
            data[key] = _iso(data[key])
        return json.dumps(data)

    @classmethod
    def loads(cls, text: str | bytes) -> DeviceState:
        data = json.loads(text)
        for key in ("last_error_at", "connected_since", "updated_at"):
            data[key] = datetime.fromisoformat(data[key]) if data.get(key) else None
        data["updated_at"] = data["updated_at"] or _now()
        return cls(**data)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


class HealthBoard(Protocol):
    """Where the gateway leaves the state of each device."""

    def put(self, state: DeviceState) -> None:
        """Keep ``state`` as the device's current state."""

    def get(self, device_id: str) -> DeviceState | None:
        """The device's state, or None when the gateway has not reported it (recently)."""

    def all(self) -> list[DeviceState]:
        """Every reported device, by id."""


class MemoryHealthBoard:
    """In-process board: the gateway runs inside the server (``mes demo``, tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, DeviceState] = {}

    def put(self, state: DeviceState) -> None:
        with self._lock:
            self._states[state.device_id] = DeviceState(**{**state.__dict__, "reading": None})

    def get(self, device_id: str) -> DeviceState | None:
        with self._lock:
            state = self._states.get(device_id)
            return None if state is None else DeviceState(**state.__dict__)

    def all(self) -> list[DeviceState]:
        with self._lock:
            return [DeviceState(**self._states[k].__dict__) for k in sorted(self._states)]


class RedisHealthBoard:
    """Redis board for a separate gateway process; a state not refreshed in time expires."""

    PREFIX = "mes:device:"

    def __init__(self, url: str, *, ttl_seconds: int = STALE_AFTER_S) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._ttl = ttl_seconds

    def put(self, state: DeviceState) -> None:
        self._redis.set(self.PREFIX + state.device_id, state.dumps(), ex=self._ttl)

    def get(self, device_id: str) -> DeviceState | None:
        raw = self._redis.get(self.PREFIX + device_id)
        return None if raw is None else DeviceState.loads(raw)

    def all(self) -> list[DeviceState]:
        keys = sorted(self._redis.scan_iter(self.PREFIX + "*"))
        values = self._redis.mget(keys) if keys else []
        return [DeviceState.loads(v) for v in values if v is not None]


def health_board(app: Any) -> HealthBoard:
    """The app's health board, made on first use from ``MES_REDIS_URL`` (memory when unset)."""
    board = app.extensions.get("mes.device_health")
    if board is None:
        url = app.config.get("MES_REDIS_URL") or ""
        board = RedisHealthBoard(url) if url else MemoryHealthBoard()
        app.extensions["mes.device_health"] = board
    return board


def device_state(app: Any, device_id: str) -> DeviceState | None:
    """The device's state with its latest reading, or None when the gateway has not reported it."""
    state = health_board(app).get(device_id)
    if state is not None:
        state.reading = reading_store(app).latest(device_id)
    return state


def device_states(app: Any) -> list[DeviceState]:
    """Every reported device with its latest reading."""
    store = reading_store(app)
    states = health_board(app).all()
    for state in states:
        state.reading = store.latest(state.device_id)
    return states
