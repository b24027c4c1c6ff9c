"""Time helpers: every stored timestamp is timezone-aware UTC; budget periods start on UTC dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; they are UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)


PERIODS = ("daily", "weekly", "monthly")


def period_start(period: str, now: datetime | None = None) -> date:
    d = (now or utcnow()).date()
    if period == "daily":
        return d
    if period == "weekly":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)
