"""The clock that time-driven procedures read (escalation steps, response-time deadlines), injectable for tests.

Production and drills use the system clock. A test that needs "15 minutes later" installs a `ManualClock` with
`use_clock()` and advances it: the procedure then acts because its clock says the time has come, never because the
machine happened to be fast or slow. Only the deciding "is it time yet?" reads this clock; timestamps written to the
record stay real (the incident store's `utcnow`).

Waiting code still wakes up on a real poll interval (it has to notice a store write anyway) and re-reads `now()`
each time, so an advanced manual clock is seen within one poll.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Protocol

from runbook.models import utcnow


class Clock(Protocol):
    """Something that tells the time (timezone-aware UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return utcnow()


class ManualClock:
    """A clock that stands still until advanced (thread-safe: flows may read it from worker threads)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by `delta` (never backward); return the new time."""
        if delta < timedelta(0):
            raise ValueError("a clock does not go backward")
        with self._lock:
            self._now += delta
            return self._now

    def advance_to(self, when: datetime) -> datetime:
        """Move the clock forward to `when` (a time already passed leaves it where it is)."""
        with self._lock:
            self._now = max(self._now, when)
            return self._now


_current: Clock = SystemClock()


def clock() -> Clock:
    """Return the clock in force."""
    return _current


def now() -> datetime:
    """Return the time of the clock in force."""
    return _current.now()


@contextmanager
def use_clock(replacement: Clock) -> Iterator[Clock]:
    """Install `replacement` as the clock for the duration of the block (process-wide), then restore the old one."""
    global _current
    previous, _current = _current, replacement
    try:
        yield replacement
    finally:
        _current = previous
