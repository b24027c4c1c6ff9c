"""Time helpers: every stored timestamp is timezone-aware UTC; budget periods start on UTC dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import overload


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; they are UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)


@overload
def unix(dt: datetime) -> int: ...
@overload
def unix(dt: None) -> None: ...
def unix(dt: datetime | None) -> int | None:
    """Unix seconds of a stored timestamp (naive ones are UTC), as the API's `created_at` fields show it;
    None stays None."""
    return None if dt is None else int(dt.replace(tzinfo=dt.tzinfo or UTC).timestamp())


def from_unix(seconds: float) -> datetime:
    """The UTC datetime of unix seconds (an API's `since`, `created_after`...)."""
    return datetime.fromtimestamp(seconds, UTC)


PERIODS = ("daily", "weekly", "monthly")


def period_start(period: str, now: datetime | None = None) -> date:
    d = (now or utcnow()).date()
    if period == "daily":
        return d
    if period == "weekly":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)
