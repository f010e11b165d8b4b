"""The hand-computed scenarios of issue 22, fed through the gateway's service call
(:func:`mes.oee.operations.record_line_sample`): a whole-shift breakdown, a planned break as
a PackML sequence, a weekend outside the line's calendar, a stop spanning a shift change,
an abort across the shift change with a counter reset and duplicated samples, and a DST
night. Every expected figure is worked out by hand in the comments beside it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask

from mes.oee import operations as ops
from tests.test_oee import GATEWAY, L, plant, sample

SUP = GATEWAY  # service-level tests: the actor is not what is tested here


def fig(g: dict[str, Any], *keys: str) -> tuple[Any, ...]:
    return tuple(g[k] for k in keys)


FACTORS = ("planned_production_s", "run_s", "downtime_s", "availability", "performance", "quality", "oee")


def by_shift(start: datetime, end: datetime, line: str = "LINE-1") -> dict[str, dict[str, Any]]:
    return {g["shift"]["name"]: g for g in ops.oee(line, start, end, "shift")["groups"]}


def test_oee_is_zero_when_planned_time_ran_nothing(app: Flask) -> None:
    """Whole-shift breakdown: Held from 06:00 to 14:00, nothing made. It is 0 %, not "–"."""
    plant(app)
    ops.set_ideal_rate(SUP, "LINE-1", "10", effective_from=L(0))
    sample(L(6), "Held", 500, 5, reason="E-STOP")
    sample(L(14), "Execute", 500, 5)
    sample(L(15), None, 1100, 5)
    early = by_shift(L(6), L(15))["early"]
    # planned 480 min, run 0: A = 0, P and Q undefined (nothing ran, nothing made), OEE = 0
    assert fig(early, *FACTORS) == ("28800", "0", "28800", "0.0000", None, None, "0.0000")
    assert fig(early, "stops", "mtbf_s", "mttr_s", "teep", "utilisation") == (1, "0", "28800", "0.0000", "1.0000")
    # the late hour: 60 min run, 600 units at 10/min -> 1.0 everywhere
    late = by_shift(L(6), L(15))["late"]
    assert fig(late, *FACTORS) == ("3600", "3600", "0", "1.0000", "1.0000", "1.0000", "1.0000")
    # the worst shift stays in the average: the range is 60 of 540 min run, 600 units in 60 ideal min
    total = ops.oee("LINE-1", L(6), L(15))["total"]
    assert fig(total, *FACTORS) == ("32400", "3600", "28800", "0.1111", "1.0000", "1.0000", "0.1111")


def test_a_stop_is_one_event_from_leaving_execute_to_returning(app: Flask) -> None:
    """A planned break as PackML runs it: Stopping, Stopped, Resetting, Idle, Starting. Classifying
    one of its states as a break makes all 30 minutes planned."""
    plant(app)
    ops.set_ideal_rate(SUP, "LINE-1", "10", effective_from=L(0))
    sample(L(6), "Execute", 0, 0)
    sample(L(10), "Stopping", 2400, 0)
    sample(L(10, 1), "Stopped")
    sample(L(10, 25), "Resetting")
    sample(L(10, 27), "Idle")
    sample(L(10, 28), "Starting")
    sample(L(10, 30), "Execute")
    sample(L(10, 35), None, 2450, 5)  # 5 rejects within the 10 min startup window
    sample(L(14), None, 4500, 30)
    (stop,) = ops.stops("LINE-1", L(6), L(14))
    assert [s["state"] for s in stop["states"]] == ["Stopping", "Stopped", "Resetting", "Idle", "Starting"]
    assert stop["ended_at"] == "2026-03-02T09:30:00.000000Z"
    ops.assign_downtime_reason(SUP, stop["states"][1]["interval_id"], "break")  # picked on "Stopped"
    early = by_shift(L(6), L(14))["early"]
    # known 480, planned stop 30 -> planned 450 = run 240 + 210: A = 1; 4500 units at 10/min = 450 min: P = 1;
    # Q = 4470 / 4500 = 0.99333…
    assert fig(early, *FACTORS) == ("27000", "27000", "0", "1.0000", "1.0000", "0.9933", "0.9933")
    assert early["planned_stop_s"] == "1800" and early["stops"] == 0
    assert early["downtime_by_reason"] == [
        {"reason": "Planned break", "category": "planned_break", "planned": True, "seconds": "1800", "stops": 1}]
    assert fig(early, "startup_rejects", "production_rejects", "defective_count") == (5, 25, 30)


def test_stops_outside_the_calendar_are_not_losses(app: Flask) -> None:
    """The line works early and late shifts Monday to Friday. It stops on Friday 20:00 and runs
    again on Monday 06:00: two hours of the Friday late shift are lost, the weekend is not."""
    plant(app)
    weekdays = {d: ["early", "late"] for d in ("mon", "tue", "wed", "thu", "fri")}
    ops.set_line_calendar(SUP, "LINE-1", shifts=weekdays | {"sat": [], "sun": []}, effective_from=L(0, day=1),
                          oee_target="0.85")
    ops.set_ideal_rate(SUP, "LINE-1", "10", effective_from=L(0, day=1))
    sample(L(14, day=6), "Execute", 0, 0)  # Friday 2026-03-06
    sample(L(20, day=6), "Stopped", 3600, 0)
    sample(L(6, day=9), "Execute", 3600, 0)  # Monday
    sample(L(8, day=9), None, 4800, 0)
    result = ops.oee("LINE-1", L(14, day=6), L(8, day=9), "shift")
    total = result["total"]
    # known 66 h (Fri 14:00 -> Mon 08:00); not scheduled 56 h (Fri 22:00 -> Mon 06:00); planned 10 h;
    # run 6 h + 2 h = 8 h; lost 2 h: A = 0.8; 4800 units at 10/min = 480 min = run: P = 1; Q = 1
    assert fig(total, *FACTORS) == ("36000", "28800", "7200", "0.8000", "1.0000", "1.0000", "0.8000")
    assert total["not_scheduled_s"] == str(56 * 3600) and total["calendar_s"] == str(66 * 3600)
    # utilisation 10 / 66 h = 0.151515…; TEEP = 0.8 × 10/66 = 0.121212…
    assert fig(total, "utilisation", "teep", "stops", "mttr_s") == ("0.1515", "0.1212", 1, "7200")
    assert result["oee_target"] == "0.85"
    saturday = [g for g in result["groups"] if g["shift"]["date"] == "2026-03-07"]
    assert all(not g["scheduled"] and g["planned_production_s"] == "0" and g["oee"] is None for g in saturday)


def test_a_stop_across_the_shift_change_is_counted_once_in_both_shifts_time(app: Flask) -> None:
    """Held with PLC code E7 from 13:30 to 14:45; E7 maps to a breakdown reason in the tree."""
    plant(app)
    ops.define_reason(SUP, "drive_fault", "Drive fault", "breakdown", plc_codes=["E7"])
    ops.set_ideal_rate(SUP, "LINE-1", "10", effective_from=L(0))
    sample(L(12), "Execute", 0, 0)
    sample(L(13, 30), "Held", 900, 0, reason="E7")
    sample(L(14, 45), "Execute")
    sample(L(16), None, 1650, 15)
    (stop,) = ops.stops("LINE-1", L(12), L(16))
    assert stop["classification"] == {"label": "Drive fault", "category": "breakdown", "planned": False,
                                      "source": "plc"}
    shifts = by_shift(L(12), L(16))
    # early 12:00-14:00: run 90, breakdown 30: A = 0.75, 900 units = 90 ideal min: P = 1, Q = 1
    assert fig(shifts["early"], *FACTORS) == ("7200", "5400", "1800", "0.7500", "1.0000", "1.0000", "0.7500")
    assert fig(shifts["early"], "stops", "mtbf_s", "mttr_s") == (1, "5400", "1800")
    # late 14:00-16:00: breakdown 45 (the same stop, not counted again), run 75, 750 units, 15 bad
    assert fig(shifts["late"], *FACTORS) == ("7200", "4500", "2700", "0.6250", "1.0000", "0.9800", "0.6125")
    assert fig(shifts["late"], "stops", "mtbf_s", "mttr_s") == (0, None, None)
    assert shifts["late"]["losses_s"]["breakdown"] == "2700"


def test_an_abort_across_the_shift_change_with_a_counter_reset(app: Flask) -> None:
    """Aborting at 13:50, then Aborted, Clearing, Stopped, Resetting, Idle, Starting and Execute at
    14:30 with the counters reset to 0; the gateway repeats some samples."""
    plant(app)
    ops.set_ideal_rate(SUP, "LINE-1", "10", effective_from=L(0))
    sample(L(12), "Execute", 5000, 50)  # baseline
    sample(L(13, 50), None, 6100, 61)
    sample(L(13, 50), "Aborting", 6100, 61)  # duplicated: the same counters again add nothing
    for at, state in ((L(13, 52), "Aborted"), (L(14, 10), "Clearing"), (L(14, 15), "Stopped"),
                      (L(14, 20), "Resetting"), (L(14, 25), "Idle"), (L(14, 28), "Starting")):
        sample(at, state)
        sample(at, state)  # a repeated state records nothing
    sample(L(14, 30), "Execute", 0, 0)  # the line restarted: counters from zero
    sample(L(16), None, 900, 9)
    sample(L(16), None, 900, 9)
    (stop,) = ops.stops("LINE-1", L(12), L(16))
    assert len(stop["states"]) == 7 and stop["classification"]["source"] == "unassigned"
    shifts = by_shift(L(12), L(16))
    # early: run 110, stop 10; 1100 units (11 bad) = 110 ideal min: A = 110/120, P = 1, Q = 0.99, OEE = 0.9075
    assert fig(shifts["early"], *FACTORS) == ("7200", "6600", "600", "0.9167", "1.0000", "0.9900", "0.9075")
    # late: stop 30, run 90; the reset sample adds 0, then 900 (9 bad): A = 0.75, P = 1, Q = 0.99
    assert fig(shifts["late"], *FACTORS) == ("7200", "5400", "1800", "0.7500", "1.0000", "0.9900", "0.7425")
    assert shifts["late"]["counter_resets"] == 1 and shifts["late"]["stops"] == 0
    total = ops.oee("LINE-1", L(12), L(16))["total"]
    # planned 240, run 200, 2000 units (20 bad) = 200 ideal min: OEE = 200/240 × 0.99 = 0.825
    assert fig(total, *FACTORS) == ("14400", "12000", "2400", "0.8333", "1.0000", "0.9900", "0.8250")
    assert total["stops"] == 1 and total["mttr_s"] == "2400"


def test_the_dst_night_is_nine_hours(app: Flask) -> None:
    """Fall back (2026-10-25 03:00 CEST -> 02:00 CET): the night shift 22:00-06:00 lasts 9 h."""
    plant(app)
    ops.set_ideal_rate(SUP, "LINE-1", "10", effective_from=L(0, day=24, month=10))
    sample(L(22, day=24, month=10), "Execute", 0, 0)
    sample(L(1, day=25, month=10), "Suspended", reason="starved")
    sample(L(1, 30, day=25, month=10), "Execute")
    sample(L(6, day=25, month=10), None, 4800, 48)
    night = by_shift(L(22, day=24, month=10), L(6, day=25, month=10))["night"]
    # planned 540 min, run 510, starved 30; 4800 units = 480 ideal min: A = 510/540, P = 480/510,
    # Q = 0.99, OEE = 480/540 × 0.99 = 0.88
    assert fig(night, *FACTORS) == ("32400", "30600", "1800", "0.9444", "0.9412", "0.9900", "0.8800")
    assert night["shift"]["length_s"] == "32400"
