"""How the report and its picture write durations and times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def fmt_duration(value: timedelta | None) -> str:
    """Return a duration as `1h 04m 12s` (or `n/a`)."""
    if value is None:
        return "n/a"
    seconds = int(round(value.total_seconds()))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{sign}{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{sign}{h}h {m:02d}m {s:02d}s"
    if m:
        return f"{sign}{m}m {s:02d}s"
    return f"{sign}{s}s"


def fmt_time(value: datetime | None) -> str:
    """Return a timestamp as `2026-11-26 10:04:12 UTC`."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "n/a"
