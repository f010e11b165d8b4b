"""What the OEE modules share: limits, input checks, the append lock, time and ratio formats."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mes.audit.canonical import format_at
from mes.audit.log import ADVISORY_LOCK_KEY
from mes.db import db
from mes.errors import Conflict, MESError, ValidationFailed
from mes.validation import identifier

MAX_FUTURE = timedelta(seconds=60)  # line clocks may run a little ahead of the server
MAX_RANGE = timedelta(days=93)
MAX_COUNTER = 2**53 - 1  # audit entries carry integers below 2^53
RATIO = Decimal("0.0001")
US = 1_000_000  # microseconds per second
EPSILON = timedelta(microseconds=1)


def line_id_of(line_id: Any) -> str:
    """A line id, checked."""
    return identifier(line_id, "line id", "line")


def aware(value: Any, field_name: str) -> datetime:
    """A time-zone-aware date-time in UTC; a plain sentence otherwise."""
    if not isinstance(value, datetime):
        raise ValidationFailed(f"{field_name} must be a date-time.", field=field_name)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationFailed(f"{field_name} needs a time zone.", field=field_name)
    return value.astimezone(UTC)


def checked_range(start: Any, end: Any) -> tuple[datetime, datetime]:
    """``[start, end)`` as UTC, at most :data:`MAX_RANGE` long."""
    start, end = aware(start, "from"), aware(end, "to")
    if end <= start:
        raise ValidationFailed("to must be after from.", field="to")
    if end - start > MAX_RANGE:
        raise ValidationFailed(f"The range is at most {MAX_RANGE.days} days.", field="to")
    return start, end


@contextmanager
def locked() -> Iterator[None]:
    """Take the audit append lock first on PostgreSQL (the order every audited writer uses),
    so reading the line's last record and appending the next one cannot interleave; a
    refusal inside rolls back, so the lock (and SQLite's write lock) is not kept."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    try:
        yield
    except MESError:
        db.session.rollback()
        raise


def commit(message: str) -> None:
    """Commit; a unique-key race becomes a Conflict with ``message``."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(message) from None


def iso(value: datetime | None) -> str | None:
    return format_at(value) if value is not None else None


def seconds(us: int) -> str:
    """Integer microseconds as a decimal string of seconds: ``"3600"``, ``"0.25"``."""
    whole, rest = divmod(us, US)
    return str(whole) if rest == 0 else str(Decimal(us).scaleb(-6).normalize())


def ratio(value: Decimal | None) -> str | None:
    """A ratio to four decimals (half-even), or None."""
    return None if value is None else str(value.quantize(RATIO, rounding=ROUND_HALF_EVEN))


def micros(delta: timedelta) -> int:
    return int(delta / EPSILON)
