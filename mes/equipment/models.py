"""The equipment registry: scales, lines, rooms and vessels with their status, and their
cleaning and calibration records.

Equipment is never deleted (database triggers refuse it): it is deactivated, with a
reason. Cleaning and calibration records are immutable: a wrong record is corrected by a
new one, never by changing the old. Scale capacities, minimum weights and readabilities
are exact :class:`~mes.quantities.Quantity` values, each with its own unit.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db, utcnow
from mes.quantities import Quantity


class EquipmentKind(str, enum.Enum):
    SCALE = "scale"
    LINE = "line"
    ROOM = "room"
    VESSEL = "vessel"
    OTHER = "other"


class EquipmentStatus(str, enum.Enum):
    AVAILABLE = "available"
    IN_USE = "in_use"
    DIRTY = "dirty"
    CLEAN = "clean"
    MAINTENANCE = "maintenance"


class AccuracyClass(str, enum.Enum):
    """OIML R 76 / EN 45501 accuracy classes, finest first."""

    I = "I"  # noqa: E741
    II = "II"
    III = "III"
    IIII = "IIII"


class CalibrationResult(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"


def _in(column: str, values: type[enum.Enum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Equipment(db.Model):
    """One piece of equipment; ``id`` is the number on its label."""

    __tablename__ = "equipment"
    __table_args__ = (
        CheckConstraint(_in("kind", EquipmentKind), name="kind"),
        CheckConstraint(_in("status", EquipmentStatus), name="status"),
        CheckConstraint(f"accuracy_class IS NULL OR {_in('accuracy_class', AccuracyClass)}", name="accuracy_class"),
        CheckConstraint("device_id IS NULL OR kind = 'scale'", name="device_only_on_scales"),
        CheckConstraint("capacity IS NULL OR capacity > 0", name="capacity_positive"),
        CheckConstraint("min_weight IS NULL OR min_weight > 0", name="min_weight_positive"),
        CheckConstraint("readability IS NULL OR readability > 0", name="readability_positive"),
        CheckConstraint("clean_hold_s IS NULL OR clean_hold_s > 0", name="clean_hold_positive"),
        Index("ix_equipment_kind_status", "kind", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    equipment_class: Mapped[str] = mapped_column(String(200), index=True)
    description: Mapped[str] = mapped_column(String(200))
    location: Mapped[str | None] = mapped_column(String(64))
    line: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_changed_at: Mapped[datetime | None]
    status_changed_by: Mapped[str | None] = mapped_column(String(100))
    # how long a cleaning stays valid unless the cleaning record says otherwise
    clean_hold_s: Mapped[int | None]
    # scales
    device_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    driver: Mapped[str | None] = mapped_column(String(32))
    capacity: Mapped[Decimal | None] = mapped_column(Quantity())
    capacity_uom: Mapped[str | None] = mapped_column(String(8))
    min_weight: Mapped[Decimal | None] = mapped_column(Quantity())
    min_weight_uom: Mapped[str | None] = mapped_column(String(8))
    readability: Mapped[Decimal | None] = mapped_column(Quantity())
    readability_uom: Mapped[str | None] = mapped_column(String(8))
    accuracy_class: Mapped[str | None] = mapped_column(String(4))
    # life cycle
    active: Mapped[bool] = mapped_column(default=True)
    deactivated_at: Mapped[datetime | None]
    deactivated_by: Mapped[str | None] = mapped_column(String(100))
    deactivation_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))

    @property
    def label(self) -> str:
        """``Blender BL-02``: how an operator recognises it."""
        return f"{self.description} {self.id}"


class CleaningRecord(db.Model):
    """A cleaning of one piece of equipment; valid until ``clean_until``. Immutable."""

    __tablename__ = "equipment_cleanings"
    __table_args__ = (
        CheckConstraint("clean_until > cleaned_at", name="valid_after_cleaning"),
        Index("ix_equipment_cleanings_equipment_at", "equipment_id", "cleaned_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    equipment_id: Mapped[str] = mapped_column(ForeignKey("equipment.id"))
    cleaning_type: Mapped[str] = mapped_column(String(64))
    cleaned_at: Mapped[datetime]
    cleaned_by: Mapped[str] = mapped_column(String(100))
    clean_until: Mapped[datetime]
    comment: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    recorded_by: Mapped[str] = mapped_column(String(100))


class CalibrationRecord(db.Model):
    """A calibration (or calibration check) with its result and next due date. Immutable;
    the equipment's current calibration is its latest passing one."""

    __tablename__ = "equipment_calibrations"
    __table_args__ = (
        CheckConstraint(_in("result", CalibrationResult), name="result"),
        CheckConstraint("result = 'fail' OR due IS NOT NULL", name="pass_has_due_date"),
        Index("ix_equipment_calibrations_equipment_at", "equipment_id", "calibrated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    equipment_id: Mapped[str] = mapped_column(ForeignKey("equipment.id"))
    calibrated_at: Mapped[datetime]
    calibrated_by: Mapped[str] = mapped_column(String(200))
    certificate: Mapped[str] = mapped_column(String(200))
    result: Mapped[str] = mapped_column(String(8))
    due: Mapped[date | None] = mapped_column(Date)
    comment: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    recorded_by: Mapped[str] = mapped_column(String(100))
    # the minimum weight this calibration established for a scale (USP <41>), registered by QA
    min_weight: Mapped[Decimal | None] = mapped_column(Quantity())
    min_weight_uom: Mapped[str | None] = mapped_column(String(8))


IMMUTABLE_TABLES = ("equipment_cleanings", "equipment_calibrations")
UNDELETABLE_TABLES = ("equipment",)
