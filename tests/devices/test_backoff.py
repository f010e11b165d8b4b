"""Reconnect delays shared by the Modbus and OPC UA drivers."""

from __future__ import annotations

from devices.backoff import Backoff


def test_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(0.5, 30.0)
    delays = [backoff.next_delay() for _ in range(8)]
    for delay, base in zip(delays, [0.5, 1, 2, 4, 8, 16, 30, 30], strict=True):
        assert base * 0.9 <= delay <= min(30.0, base * 1.1)


def test_a_small_cap_holds_and_reset_starts_over() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next_delay() for _ in range(7)]
    for delay, base in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0], strict=True):
        assert base * 0.9 <= delay <= min(4.0, base * 1.1)
    backoff.reset()
    assert backoff.next_delay() <= 0.55
