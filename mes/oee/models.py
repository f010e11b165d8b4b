"""OEE records: line state intervals, counter samples, downtime reasons and ideal rates.

Every table here is append-only (database triggers refuse UPDATE and DELETE):

- a state interval starts when the line reports a new PackML state and runs until the
  next interval of the same line starts; its end is never written, so nothing is updated;
- a counter sample keeps the cumulative counters exactly as the line reported them, and
  the units made since the previous sample (``*_delta``), computed once on arrival, with
  a counter reset (line restart) recognised and flagged;
- a downtime reason is assigned to a stop afterwards by an operator or supervisor; it is
  stored on the stop's first interval and classifies every state of the stop (see
  :mod:`mes.oee.stops`); a later assignment supersedes an earlier one (both stay), the
  interval itself is never touched;
- a reason definition is one node of the plant's downtime reason tree (a reason under one
  of the loss categories, with the PLC stop codes that mean it); a later row for the same
  code supersedes the earlier one;
- a line calendar says which shifts the line works on which weekdays, its holidays and
  planned maintenance windows, its OEE target and its minor-stop threshold, from
  ``effective_from`` until a later calendar of the line takes over;
- a shift closure records that a line's shift figures were sent (``mes.oee.shift_closed.v1``);
- an ideal rate (units per minute) per line, and optionally per product, applies from
  ``effective_from`` until a later rate for the same line and product takes over.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from mes.db import db
from mes.quantities import Quantity

#: PackML states (ISA-TR88.00.02) by their PackTags ``StateCurrent`` number.
PACKML_STATES: tuple[str, ...] = (
    "Undefined", "Clearing", "Stopped", "Starting", "Idle", "Suspended", "Execute", "Stopping", "Aborting",
    "Aborted", "Holding", "Held", "Unholding", "Suspending", "Unsuspending", "Resetting", "Completing", "Complete",
)
#: The one state in which the line runs (produces at its rate); every other known state is a stop.
RUNNING_STATE = "Execute"
#: The state that says the line does not know its state: counted as time without data.
UNKNOWN_STATE = "Undefined"


class LossCategory(str, enum.Enum):
    """The six big losses (ISO 22400-2 anchored) and the planned stops that are no loss."""

    BREAKDOWN = "breakdown"
    SETUP = "setup"  # setup and changeover
    MINOR_STOP = "minor_stop"
    SPEED_LOSS = "speed_loss"
    STARTUP_REJECTS = "startup_rejects"
    PRODUCTION_REJECTS = "production_rejects"
    PLANNED_BREAK = "planned_break"
    PLANNED_MAINTENANCE = "planned_maintenance"
    NO_ORDER = "no_order"
    UNCLASSIFIED = "unclassified"

    @property
    def planned(self) -> bool:
        """Planned stops leave planned production time; they are not losses."""
        return self in PLANNED_CATEGORIES


PLANNED_CATEGORIES = frozenset({LossCategory.PLANNED_BREAK, LossCategory.PLANNED_MAINTENANCE, LossCategory.NO_ORDER})
#: The categories a stop may be given (speed loss and rejects come from the counters).
STOP_CATEGORIES = (LossCategory.BREAKDOWN, LossCategory.SETUP, LossCategory.MINOR_STOP,
                   LossCategory.PLANNED_BREAK, LossCategory.PLANNED_MAINTENANCE, LossCategory.NO_ORDER)


def _states_check() -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in PACKML_STATES) + ")"


class LineStateInterval(db.Model):
    """The line entered ``state`` at ``started_at``; the interval ends where the line's next one starts."""

    __tablename__ = "oee_state_intervals"
    __table_args__ = (
        UniqueConstraint("line_id", "seq", name="uq_oee_state_intervals_line_id_seq"),
        CheckConstraint(_states_check(), name="state"),
        CheckConstraint("seq > 0", name="seq_positive"),
        Index("ix_oee_state_intervals_line_started", "line_id", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    stop_reason: Mapped[str | None] = mapped_column(String(64))  # the line's own reason code, as reported
    source: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class CounterSample(db.Model):
    """The line's cumulative counters at ``at`` and the units made since its previous sample."""

    __tablename__ = "oee_counter_samples"
    __table_args__ = (
        UniqueConstraint("line_id", "seq", name="uq_oee_counter_samples_line_id_seq"),
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint("processed IS NULL OR processed >= 0", name="processed_not_negative"),
        CheckConstraint("defective IS NULL OR defective >= 0", name="defective_not_negative"),
        CheckConstraint("processed_delta >= 0 AND defective_delta >= 0", name="deltas_not_negative"),
        CheckConstraint("processed IS NOT NULL OR defective IS NOT NULL", name="has_a_counter"),
        Index("ix_oee_counter_samples_line_at", "line_id", "at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime]
    processed: Mapped[int | None] = mapped_column(BigInteger)  # cumulative, as reported
    defective: Mapped[int | None] = mapped_column(BigInteger)
    processed_delta: Mapped[int] = mapped_column(BigInteger)  # units since the previous sample
    defective_delta: Mapped[int] = mapped_column(BigInteger)
    processed_reset: Mapped[bool] = mapped_column(default=False)  # the counter went down: the line restarted
    defective_reset: Mapped[bool] = mapped_column(default=False)
    reworked: Mapped[int | None] = mapped_column(BigInteger)  # cumulative units sent to rework (not scrap)
    reworked_delta: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    source: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class DowntimeReason(db.Model):
    """A supervisor's reason for one stop interval; the latest assignment counts."""

    __tablename__ = "oee_downtime_reasons"
    __table_args__ = (Index("ix_oee_downtime_reasons_interval_at", "interval_id", "assigned_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    interval_id: Mapped[str] = mapped_column(ForeignKey("oee_state_intervals.id"))
    line_id: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(100))
    planned: Mapped[bool]  # a planned stop (break, planned maintenance, no order) is not planned production time
    comment: Mapped[str | None] = mapped_column(Text)
    assigned_at: Mapped[datetime]
    assigned_by: Mapped[str] = mapped_column(String(100))


class IdealRate(db.Model):
    """The line's ideal rate in units per minute, for one product or (``product`` NULL) any product."""

    __tablename__ = "oee_ideal_rates"
    __table_args__ = (
        CheckConstraint("units_per_minute > 0", name="rate_positive"),
        Index("ix_oee_ideal_rates_line_product_from", "line_id", "product", "effective_from"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(64))
    product: Mapped[str | None] = mapped_column(String(64))
    units_per_minute: Mapped[Decimal] = mapped_column(Quantity())
    effective_from: Mapped[datetime]
    comment: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class ReasonDefinition(db.Model):
    """One reason of the downtime reason tree: ``code`` under ``category``; the latest row per code counts."""

    __tablename__ = "oee_reasons"
    __table_args__ = (
        CheckConstraint("category IN (" + ", ".join(f"'{c.value}'" for c in STOP_CATEGORIES) + ")", name="category"),
        Index("ix_oee_reasons_code_recorded", "code", "recorded_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(32))
    plc_codes: Mapped[list[str]] = mapped_column(JSON)  # the lines' stop codes that mean this reason
    active: Mapped[bool]
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class LineCalendar(db.Model):
    """What the line is planned to work from ``effective_from``: shifts per weekday, holidays,
    planned maintenance windows; with its OEE target and loss thresholds."""

    __tablename__ = "oee_line_calendars"
    __table_args__ = (
        CheckConstraint("minor_stop_s >= 0 AND startup_s >= 0", name="thresholds_not_negative"),
        Index("ix_oee_line_calendars_line_from", "line_id", "effective_from"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(64))
    effective_from: Mapped[datetime]
    shifts: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"mon": ["early", "late"], ..., "sun": []}
    holidays: Mapped[list[str]] = mapped_column(JSON)  # plant dates, ISO 8601
    maintenance: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{"from": …, "to": …, "note": …}]
    oee_target: Mapped[Decimal | None] = mapped_column(Quantity())  # a ratio, 0.85 = 85 %
    minor_stop_s: Mapped[int] = mapped_column(Integer)  # an unclassified stop shorter than this is a minor stop
    startup_s: Mapped[int] = mapped_column(Integer)  # rejects this long after a restart are startup rejects
    comment: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(100))


class ShiftClosure(db.Model):
    """The figures of one line's shift were closed and sent to ERP/MES reporting (once)."""

    __tablename__ = "oee_shift_closures"
    __table_args__ = (UniqueConstraint("line_id", "shift_start", name="uq_oee_shift_closures_line_id_shift_start"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(64))
    shift_name: Mapped[str] = mapped_column(String(64))
    shift_start: Mapped[datetime]
    shift_end: Mapped[datetime]
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    closed_at: Mapped[datetime]
    closed_by: Mapped[str] = mapped_column(String(100))


IMMUTABLE_TABLES = ("oee_state_intervals", "oee_counter_samples", "oee_downtime_reasons", "oee_ideal_rates",
                    "oee_reasons", "oee_line_calendars", "oee_shift_closures")
