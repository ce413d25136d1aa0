"""The cycle's table (the `monitor-cycle` artifact): every measurement with its thresholds, targets and state."""

from __future__ import annotations

from collections.abc import Sequence

from runbook.monitoring.probes import Measurement
from runbook.monitoring.rules import Finding
from runbook.policy import Policy

_KEY_TARGETS: dict[str, tuple[str, str]] = {
    # metric → (KeyMetrics field, healthy when the value is "<" or ">" the target)
    "response_time_s": ("response_time_s", "<"),
    "error_rate_pct": ("error_rate_pct", "<"),
    "pool_utilisation_pct": ("pool_utilisation_pct", "<"),
    "query_time_ms": ("query_time_ms", "<"),
    "active_connections": ("active_connections", "<"),
}


def key_target(policy: Policy, metric: str) -> tuple[str, float] | None:
    """Return (operator, value) of the runbook's key-metric target for a metric, if it has one."""
    entry = _KEY_TARGETS.get(metric)
    if entry is None:
        return None
    return entry[1], float(getattr(policy.key_metrics, entry[0]))


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def cycle_rows(policy: Policy, measurements: Sequence[Measurement], findings: Sequence[Finding],
               uptime: float | None, samples: int) -> list[dict[str, str]]:
    """Return the cycle's table: one row per measurement (metric, target, value, threshold, state, detail)."""
    by_key: dict[str, list[Finding]] = {}
    for f in findings:
        by_key.setdefault(f"{f.metric}:{f.target}", []).append(f)
    rows = []
    for m in measurements:
        related = by_key.get(m.key, [])
        limits = [f"{f.rule} {f.operator} {_fmt(f.threshold)}" for f in related]
        target = key_target(policy, m.metric)
        if target is not None:
            limits.append(f"target {target[0]} {_fmt(target[1])}")
        if m.state != "measured":
            state = {"gap": "gap", "masked": "masked", "unknown": "n/a"}[m.state]
        elif any(f.state == "breach" for f in related):
            state = "breach"
        elif any(f.state == "masked" for f in related):
            state = "masked"
        elif target is not None and m.value is not None and not _healthy(m.value, *target):
            state = "off-target"
        else:
            state = "ok"
        rows.append({"metric": m.metric, "target": m.target, "value": _fmt(m.value),
                     "threshold": "; ".join(limits) or "–", "state": state, "detail": m.detail[:200]})
    goal = policy.key_metrics.uptime_pct
    rows.append({"metric": "uptime_pct", "target": "app", "value": _fmt(uptime),
                 "threshold": f"target > {_fmt(goal)}",
                 "state": "n/a" if uptime is None else ("ok" if uptime > goal else "off-target"),
                 "detail": f"{samples} cycle(s) in the last {policy.monitoring.uptime_window_hours:g} h"})
    return rows


def _healthy(value: float, op: str, target: float) -> bool:
    return value < target if op == "<" else value > target
