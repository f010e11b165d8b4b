"""Plant time (mes.plant_time): the zone comes from MES_TIMEZONE or is passed in, never
guessed; expiry, retest and calibration due dates end at the plant's midnight; shifts are
wall-clock times at the plant."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from flask import Flask

from mes.audit.log import Actor
from mes.config import ConfigError, load_config
from mes.equipment import operations as equipment
from mes.materials import operations as materials
from mes.plant_time import PlantTimeError, plant_date, plant_zone, shift_pattern, shifts_between
from tests.helpers import release_lot_as_qa

SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
QA = Actor("qa1", "QA One", "qa", "QA-WS-01")
LATE_UTC = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)  # already the 23rd in Zurich (UTC+1) and Shanghai


def test_plant_date_never_silently_falls_back_to_utc() -> None:
    with pytest.raises(PlantTimeError, match="never falls back to UTC"):
        plant_date(LATE_UTC)
    with pytest.raises(PlantTimeError):
        plant_zone()
    with pytest.raises(PlantTimeError):
        shifts_between(LATE_UTC, LATE_UTC + timedelta(hours=8))


def test_an_app_without_mes_timezone_does_not_guess_either() -> None:
    bare = Flask(__name__)
    with bare.app_context(), pytest.raises(PlantTimeError, match="MES_TIMEZONE is not set"):
        plant_date(LATE_UTC)


def test_plant_date_uses_the_zone_passed_in() -> None:
    assert plant_date(LATE_UTC, "Europe/Zurich") == date(2026, 11, 23)
    assert plant_date(LATE_UTC, "UTC") == date(2026, 11, 22)
    assert plant_date(LATE_UTC, plant_zone("America/New_York")) == date(2026, 11, 22)


def test_plant_date_reads_mes_timezone_from_the_app_config() -> None:
    plant = Flask(__name__)
    plant.config["MES_TIMEZONE"] = "Asia/Shanghai"
    with plant.app_context():
        assert plant_date(LATE_UTC) == date(2026, 11, 23)
        assert plant_date(LATE_UTC, "UTC") == date(2026, 11, 22)  # an explicit zone wins


def test_plant_date_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        plant_date(datetime(2026, 11, 22, 23, 30), "UTC")


def test_mes_timezone_must_be_a_real_zone(tmp_path) -> None:
    env = {"MES_HOME": str(tmp_path), "MES_SECRET_KEY": "k"}
    assert load_config({**env, "MES_TIMEZONE": "Europe/Zurich"})["MES_TIMEZONE"] == "Europe/Zurich"
    with pytest.raises(ConfigError, match="MES_TIMEZONE"):
        load_config({**env, "MES_TIMEZONE": "Mars/Olympus_Mons"})


def test_shifts_are_wall_clock_times_at_the_plant() -> None:
    start = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)  # 06:00 in Zurich
    shifts = shifts_between(start, start + timedelta(days=1), zone="Europe/Zurich", pattern="early=06:00,late=14:00,night=22:00")
    assert [(s.name, s.start.hour) for s in shifts[:3]] == [("early", 5), ("late", 13), ("night", 21)]
    assert shift_pattern("06:00,18:00") == (("Shift 1", 360), ("Shift 2", 1080))


def test_a_lot_expires_at_the_plants_midnight(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    app.config["MES_TIMEZONE"] = "Europe/Zurich"  # UTC+1 in November
    # received and released before it expired (an expired lot is neither received nor released)
    monkeypatch.setattr("mes.materials.lots.utcnow", lambda: datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
    materials.create_item(SUP, "API-X", "Active X", "kg", "api")
    materials.receive_lot(SUP, "API-X", [materials.ContainerIn("5", "kg", "L-X-C1")], lot_id="L-X",
                          expiry_date=date(2026, 11, 22))
    release_lot_as_qa("L-X", "CoA reviewed")
    last_minute = datetime(2026, 11, 22, 22, 59, 59, tzinfo=UTC)  # 23:59:59 on the 22nd at the plant
    assert materials.check_usable("L-X", "API-X", last_minute).ok
    midnight = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)  # 00:00 on the 23rd at the plant, still the 22nd in UTC
    assert materials.check_usable("L-X", "API-X", midnight).code == "expired"


def test_a_calibration_runs_out_at_the_plants_midnight(app: Flask) -> None:
    app.config["MES_TIMEZONE"] = "Asia/Shanghai"  # UTC+8
    equipment.register_equipment(SUP, "BAL-9", "scale", "Bench balance", "Bench balance", device_id="DEV-BAL-9",
                                 driver="mtsics", capacity=("6.1", "kg"), min_weight=("0.5", "g"),
                                 readability=("0.01", "g"))
    equipment.record_calibration(QA, "BAL-9", "pass", "CAL-9", due=date(2026, 11, 22),
                                 calibrated_at=datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
    last_minute = datetime(2026, 11, 22, 15, 59, 59, tzinfo=UTC)  # 23:59:59 on the 22nd in Shanghai
    assert equipment.check_equipment("BAL-9", ["calibrated"], last_minute).ok
    midnight = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)
    check = equipment.check_equipment("BAL-9", ["calibrated"], midnight)
    assert check.code == "calibration_expired" and "due on 2026-11-22" in check.reason
    assert equipment.check_scale_for_weighing("DEV-BAL-9", Decimal("250"), "g", at=midnight).code == "calibration_expired"
