"""The coordinator's clock: where every time a rule compares comes from.

A `Database` carries one clock (the system clock unless told otherwise) in its sessions'
`info`; the services read the current time through `now(db)`, so a deadline, an acceptance
deadline, a start or an end, and an audit event's time are all taken from the clock of the
session that writes them. Routes never see it. Tests give the database a `FakeClock` and move
time by hand instead of sleeping.

Column defaults (`api.models.utcnow`) stay on the system clock: they stamp rows whose time no
rule reads (when an organisation was created, when a row was last updated).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy.orm import Session

INFO_KEY = "clock"  # the key of the clock in `Session.info`


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM = SystemClock()


class FakeClock:
    """A clock that stands still until moved (`advance`, `set`); for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _aware(start or datetime(2030, 1, 1, 9, 0, tzinfo=UTC))

    def now(self) -> datetime:
        return self._now

    def advance(self, by: timedelta | float) -> datetime:
        """Move forward by a timedelta or a number of seconds; returns the new time."""
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if step < timedelta(0):
            raise ValueError("a clock does not go back; use set()")
        self._now += step
        return self._now

    def set(self, at: datetime) -> datetime:
        self._now = _aware(at)
        return self._now


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime: the clock keeps timezone-aware UTC")
    return at.astimezone(UTC)


def clock_of(db: Session) -> Clock:
    """The clock the session's database carries (the system clock if none)."""
    clock: Clock = db.info.get(INFO_KEY, SYSTEM)
    return clock


def now(db: Session) -> datetime:
    """The current time by the session's clock."""
    return clock_of(db).now()
