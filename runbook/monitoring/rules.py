"""The alerting rules against the measurements (findings), attribution of symptoms to their causes, and the
consecutive-breach state per rule and target that says what to do (declare, nothing yet, note a recovery).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from runbook.monitoring.probes import Measurement
from runbook.policy import AlertRule

FindingState = Literal["ok", "breach", "gap", "masked", "unknown"]

Action = Literal["none", "breaching", "declare", "continuing", "recovered", "held"]


# -- rule evaluation -----------------------------------------------------------------------------------------------


class Finding(BaseModel):
    """A rule compared with one target's measurement in one cycle."""

    rule: str
    level: str
    severity: str
    description: str
    target: str
    metric: str
    operator: str
    threshold: float | None
    value: float | None
    state: FindingState
    scenario: str | None = None
    detail: str = ""

    @property
    def key(self) -> str:
        """Return `rule:target` (the breach state's key; the fingerprint is `monitor:<key>`)."""
        return f"{self.rule}:{self.target}"

    @property
    def breached(self) -> bool:
        """Return True when the rule is breached this cycle."""
        return self.state == "breach"


def evaluate(rules: Iterable[AlertRule], measurements: Iterable[Measurement]) -> list[Finding]:
    """Compare every measurement with the rules on its metric; symptoms of a breached cause are masked."""
    by_metric: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_metric.setdefault(m.metric, []).append(m)
    findings: list[Finding] = []
    for rule in rules:
        if rule.metric is None:
            continue
        for m in by_metric.get(rule.metric, []):
            if m.state == "measured" and m.value is not None:
                state: FindingState = "breach" if rule.breached(m.value) else "ok"
            else:
                state = {"gap": "gap", "masked": "masked"}.get(m.state, "unknown")  # type: ignore[assignment]
            findings.append(Finding(
                rule=rule.name, level=rule.level, severity=rule.severity.value, description=rule.description,
                target=m.target, metric=m.metric, operator=rule.operator, threshold=rule.threshold, value=m.value,
                state=state, scenario=m.scenario or rule.scenario, detail=m.detail,
            ))
    _attribute(findings)
    return findings


ERROR_RATE_RULE = "high_error_rate"

# The rules whose cause also raises the error rate: while one breaches, or its monitor incident is open, an
# error-rate breach is that cause's symptom.
ERROR_RATE_CAUSES = ("application_down", "database_unavailable", "authentication_failing",
                     "payment_processing_failed", "database_degradation")

# Symptoms of those causes too: an outage changes the traffic and fails logins (users retrying, sessions lost).
TRAFFIC_RULES = ("unusual_traffic", "security_event", "feature_usage_anomaly")

SYMPTOM_RULES = (ERROR_RATE_RULE, *TRAFFIC_RULES)

FEATURE_RULE = "feature_usage_anomaly"

# Symptoms of these as well: a flood on one route, failed logins, users retrying a failing feature shift the mix.
FEATURE_CAUSES = ("unusual_traffic", "security_event", ERROR_RATE_RULE)


def _causes_of(rule: str, active: Iterable[str]) -> list[str]:
    """Return the active rules (breached or with an open incident) a symptom rule is attributed to, in order."""
    causes = ERROR_RATE_CAUSES + (FEATURE_CAUSES if rule == FEATURE_RULE else ())
    present = set(active)
    return [c for c in causes if c in present] if rule in SYMPTOM_RULES else []


def _attribute(findings: list[Finding]) -> None:
    """Mask symptoms of a breached cause: one cause, one incident.

    Slow responses while the database is degraded belong to database_degradation; a high error rate, unusual
    traffic, a security event or a feature-usage anomaly while any of `ERROR_RATE_CAUSES` breaches belongs to that
    cause, and a feature-usage anomaly while one of `FEATURE_CAUSES` breaches to that one.
    """
    breached = {f.rule for f in findings if f.breached}
    for f in findings:
        if f.breached and f.rule == "slow_response_time" and "database_degradation" in breached:
            f.state = "masked"
            f.detail += " (attributed to database degradation)"
        elif f.breached and (causes := _causes_of(f.rule, breached)):
            f.state = "masked"
            f.detail += f" (attributed to {causes[0]})"


def attribute_to_open(findings: Iterable[Finding], open_fingerprints: Iterable[str]) -> None:
    """Mask a symptom breach while a monitor incident of one of its causes is open (its errors are in the window).

    `open_fingerprints` are the fingerprints of the open incidents (`monitor:<rule>:<target>`).
    """
    open_rules = {fp.split(":")[1] for fp in open_fingerprints if fp.startswith("monitor:") and fp.count(":") >= 2}
    for f in findings:
        if f.breached and (causes := _causes_of(f.rule, open_rules)):
            f.state = "masked"
            f.detail += f" (attributed to the open {causes[0]} incident)"


# -- consecutive breaches ------------------------------------------------------------------------------------------


class BreachState(BaseModel):
    """The breach state of one rule on one target, kept between monitor runs."""

    rule: str
    target: str
    consecutive: int = Field(default=0, description="Consecutive breaching cycles (gap/masked cycles hold it)")
    gap_cycles: int = Field(default=0, description="monitoring_gap states: consecutive cycles a probe failed")
    first_breach_at: datetime | None = None
    last_breach_at: datetime | None = None
    last_value: float | None = None
    incident_id: str | None = Field(default=None, description="The incident this breach episode declared")

    @property
    def key(self) -> str:
        """Return `rule:target`."""
        return f"{self.rule}:{self.target}"

    @property
    def idle(self) -> bool:
        """Return True when there is nothing worth keeping."""
        return not (self.consecutive or self.gap_cycles or self.incident_id)


class Step(BaseModel):
    """What one cycle did to one rule/target: the new state and the action it calls for."""

    finding: Finding
    state: BreachState
    action: Action
    previous_incident_id: str | None = None


def advance(previous: BreachState | None, finding: Finding, breach_cycles: int, now: datetime) -> Step:
    """Move one rule/target's state by one cycle and say what to do (pure; the flow acts on the action).

    breach: count it; at `breach_cycles` → declare; later → continuing (the flow re-declares only when the
    incident is no longer open); ok after a declared breach → recovered (once), else reset; gap/masked → held.
    """
    state = (previous or BreachState(rule=finding.rule, target=finding.target)).model_copy()
    if finding.state == "breach":
        state.consecutive += 1
        state.first_breach_at = state.first_breach_at or now
        state.last_breach_at = now
        state.last_value = finding.value
        if state.consecutive < breach_cycles:
            action: Action = "breaching"
        elif state.incident_id is None:
            action = "declare"
        else:
            action = "continuing"
        return Step(finding=finding, state=state, action=action)
    if finding.state == "ok":
        incident = state.incident_id
        action = "recovered" if incident else "none"
        fresh = BreachState(rule=finding.rule, target=finding.target)
        return Step(finding=finding, state=fresh, action=action, previous_incident_id=incident)
    return Step(finding=finding, state=state, action="held")


def advance_all(states: dict[str, BreachState], findings: Iterable[Finding], breach_cycles: int,
                now: datetime) -> list[Step]:
    """Advance every finding's state; return the steps in finding order."""
    return [advance(states.get(f.key), f, breach_cycles, now) for f in findings]


GAP_RULE = "monitoring_gap"


def gap_sources(measurements: Iterable[Measurement]) -> dict[str, str]:
    """Return probe source → reason for every measurement the monitor could not take."""
    out: dict[str, str] = {}
    for m in measurements:
        if m.state == "gap":
            out.setdefault(m.source if m.source != "third-party" else f"status:{m.target}", m.detail)
    return out


def advance_gaps(states: dict[str, BreachState], gaps: dict[str, str]) -> list[BreachState]:
    """Count consecutive gapped cycles per probe source; a source that measured again goes back to 0."""
    known = {s.target for s in states.values() if s.rule == GAP_RULE}
    out = []
    for source in sorted(known | set(gaps)):
        prev = states.get(f"{GAP_RULE}:{source}") or BreachState(rule=GAP_RULE, target=source)
        out.append(prev.model_copy(update={"gap_cycles": prev.gap_cycles + 1 if source in gaps else 0}))
    return out
