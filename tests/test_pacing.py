"""Background work leaves the request threads their speed (issue 21, ``mes.pacing``): the
watch's table comparison and the verification before a checkpoint pause between chunks so
they compute for at most a quarter of the time; a request, a CLI command and whatever holds
the audit append lock never pause."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from mes import pacing
from mes.audit.log import Actor, publish_checkpoint, record
from mes.db import db


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every pause the pacer takes (time.sleep as mes.pacing calls it), without sleeping."""
    taken: list[float] = []
    monkeypatch.setattr(pacing.time, "sleep", taken.append)
    return taken


def _work(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_paced_work_pauses_three_times_as_long_as_it_computed(pauses: list[float]) -> None:
    with pacing.paced() as pacer:
        for _ in range(3):
            _work(0.01)
            pacing.breathe()
    assert len(pauses) == 3
    for pause in pauses:  # duty 0.25: 3 x the chunk's 10 ms, never above the cap
        assert 0.03 <= pause <= pacing.MAX_PAUSE_S
    assert pacer.paused_s == pytest.approx(sum(pauses))


def test_a_long_chunk_pauses_at_most_the_cap(pauses: list[float]) -> None:
    with pacing.paced():
        _work(0.05)
        pacing.breathe()
    assert pauses == [pacing.MAX_PAUSE_S]


def test_work_outside_paced_or_inside_unpaced_never_pauses(pauses: list[float]) -> None:
    _work(0.01)
    pacing.breathe()  # a request or a CLI command
    with pacing.paced(), pacing.unpaced():
        _work(0.01)
        pacing.breathe()
    assert pauses == []


def test_the_watch_breathes_between_chunks_but_never_under_the_append_lock(app: Flask, pauses: list[float],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch (every table against the log) pauses between its chunks; a checkpoint,
    published under the append lock, never pauses, also when the background thread publishes."""
    from mes.audit import checkpoint_guard, reconcile

    monkeypatch.setattr(reconcile, "CHUNK", 2)
    monkeypatch.setattr(checkpoint_guard, "PACE_ROWS", 2)
    from mes.equipment import operations as equipment

    actor = Actor.system("pacing")
    with app.app_context():
        for n in range(6):  # records the watch compares with the log, a few chunks of them
            equipment.register_equipment(actor, f"PACE-{n}", "vessel", "blender", f"Blender {n}")
        seen: list[Any] = []
        real_breathe = reconcile.breathe

        def counted() -> None:
            seen.append(1)
            real_breathe()

        monkeypatch.setattr(reconcile, "breathe", counted)
        with pacing.paced():
            assert checkpoint_guard.watch_log() is None
        assert seen and len(pauses) >= len(seen), "the watch did not pause between chunks"
        pauses.clear()
        record(actor, "test.fact", ("batch", "PACE"), after={})
        db.session.commit()
        with pacing.paced():
            assert publish_checkpoint() is not None
            db.session.commit()
        assert pauses == [], "a checkpoint paused while holding the append lock"
