"""Reconnect delays shared by the drivers that keep a connection open (Modbus, OPC UA)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Reconnect delays: initial, doubling, capped, with ±10 % jitter."""

    initial_s: float
    max_s: float
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.max_s, self.initial_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return min(self.max_s, base * self.rng.uniform(0.9, 1.1))

    def reset(self) -> None:
        self.attempts = 0
