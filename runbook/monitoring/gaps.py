"""Blind monitoring (issue 19): a probe source that stays unmeasurable becomes a P2 `monitoring_gap` incident.

`advance_gaps` (rules.py) counts consecutive gapped cycles per source in the breach state (`monitoring_gap:<source>`,
kept between runs in `monitor_breaches`). Once a source has been a gap for the policy's `monitoring.gap_cycles`
cycles, `gap_steps` says `declare` (fingerprint `monitor:monitoring_gap:<source>`, deduplicated like any rule),
`continuing` while it holds, and `recovered` once the source measures again (the incident resolves by itself).
`gap_reason` names the cause in words a person acts on ("the monitor cannot measure Sentry: 401 Unauthorized — the
auth token was refused …"); `blind_rules` names the alert rules that cannot be judged meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from runbook.monitoring.probes import Measurement
from runbook.monitoring.rules import GAP_RULE, BreachState
from runbook.policy import AlertRule

GapAction = Literal["none", "declare", "continuing", "recovered"]

SOURCE_NAMES = {"sentry": "Sentry", "stripe": "Stripe", "app": "the app (/api/health)", "database": "the database",
                "rest": "Supabase REST", "auth": "the auth endpoint", "openai": "OpenAI", "vendors": "the vendors' "
                "status pages"}

_SENTRY_STATUS = {
    401: "401 Unauthorized — Sentry refused the auth token (revoked, expired or wrong: RUNBOOK_SENTRY_TOKEN)",
    403: "403 Forbidden — the auth token lacks a scope the queries need (org:read, project:read, event:read) or "
         "has no access to the project",
    429: "429 rate limited — Sentry throttles the organisation's API queries; the monitor gives up a read rather "
         "than wait",
    400: "400 a rejected query — Sentry refused the Discover query (for transactions: is performance monitoring "
         "on for the project?)",
    404: "404 — the organisation or project in RUNBOOK_SENTRY_ORG / RUNBOOK_SENTRY_PROJECT does not exist",
}


def gap_fingerprint(source: str) -> str:
    """Return the fingerprint of a source's monitoring_gap incident."""
    return f"monitor:{GAP_RULE}:{source}"


def source_name(source: str) -> str:
    """Return a source as people name it ('status:openai' → "OpenAI's status page")."""
    if source.startswith("status:"):
        return f"{source.split(':', 1)[1]}'s status page"
    return SOURCE_NAMES.get(source, source)


def _status(detail: str) -> int | None:
    found = re.search(r"\bHTTP (\d{3})\b", detail) or re.search(r"\((\d{3})\b", detail)
    return int(found[1]) if found else None


def gap_reason(source: str, detail: str) -> str:
    """Return why the monitor cannot measure a source, in words: a Sentry gap names its status specifically."""
    status = _status(detail)
    lowered = detail.lower()
    if source == "sentry" and status in _SENTRY_STATUS:
        why = _SENTRY_STATUS[status]
    elif source == "sentry" and ("rate limit" in lowered or "throttl" in lowered):
        why = _SENTRY_STATUS[429]
    elif "not configured" in lowered:
        why = "not configured"
    elif "timed out" in lowered or "timeout" in lowered:
        why = "no answer within the probe timeout"
    elif status is not None and status >= 500:
        why = f"{status} server error"
    elif status is not None:
        why = f"HTTP {status}"
    else:
        why = "unreachable"
    return f"the monitor cannot measure {source_name(source)}: {why}" + (f" ({detail[:160]})" if detail else "")


def _gap_source(m: Measurement) -> str:
    return m.source if m.source != "third-party" else f"status:{m.target}"


def blind_rules(source: str, measurements: Iterable[Measurement], rules: Iterable[AlertRule]) -> list[str]:
    """Return the alert rules that cannot be judged while `source` is a gap (their metric is that source's gap)."""
    metrics = {m.metric for m in measurements if m.state == "gap" and _gap_source(m) == source}
    return [r.name for r in rules if r.metric in metrics]


class GapStep(BaseModel):
    """What one cycle means for a source's monitoring_gap incident."""

    state: BreachState
    action: GapAction


def gap_steps(states: Iterable[BreachState], gaps: dict[str, str], gap_cycles: int) -> list[GapStep]:
    """Say per gap state what to do: declare at `gap_cycles`, continuing after, recovered once it measures again."""
    out = []
    for state in states:
        if state.target in gaps and state.gap_cycles >= gap_cycles:
            action: GapAction = "continuing" if state.incident_id else "declare"
        elif state.target not in gaps and state.incident_id:
            action = "recovered"
        else:
            action = "none"
        out.append(GapStep(state=state, action=action))
    return out
