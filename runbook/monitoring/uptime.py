"""Uptime: whether users could use the app in a cycle, and the availability over the policy's window."""

from __future__ import annotations

from runbook.monitoring.probes import NOT_MEASURED, CycleProbes, ProbeFailure


def uptime_pct(up: int, total: int) -> float | None:
    """Return the availability in percent from counts of available and measured cycles (None without samples)."""
    if total <= 0:
        return None
    return round(100.0 * up / total, 3)


def available(probes: CycleProbes) -> bool | None:
    """Return whether users could use the app this cycle (/api/health answered 2xx, healthy); None when unknown."""
    health = probes.health
    if isinstance(health, ProbeFailure):
        return None if health.kind in NOT_MEASURED else False
    if health.status_code >= 500 and (health.body or {}).get("maintenance"):
        return False
    return health.status_code < 500
