"""The runbook's tables as data; defaults are the runbook's own numbers, overridable from a YAML or TOML file.

Tables: severity levels and response times, impact → severity, key metrics, alerting rules, escalation chain,
communication matrix, post-incident deadlines, monitoring, runbook review cadence, and the approvers (Slack user
id → person, what they may approve).
"""

from __future__ import annotations

import re
import tomllib
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runbook.errors import ConfigError, InputError
from runbook.models import Alert, ImpactLevel, Incident, Severity


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeverityLevel(_Table):
    """One row of the severity table."""

    label: str
    description: str
    response_minutes: float = Field(..., gt=0)
    examples: list[str]
    keywords: list[str] = Field(default_factory=list, description="Words in a title that suggest this level")

    @property
    def response_time(self) -> timedelta:
        return timedelta(minutes=self.response_minutes)


def _severities() -> dict[Severity, SeverityLevel]:
    kw = {
        Severity.P0: ["completely down", "outage", "site down", "data loss", "unavailable", "down"],
        Severity.P1: ["billing broken", "can't complete", "cannot complete", "broken", "payment", "login", "failing"],
        Severity.P2: ["slow", "non-critical", "degraded", "latency", "timeout"],
        Severity.P3: ["cosmetic", "glitch", "typo", "ui", "non-blocking", "minor"],
    }
    return {
        s: SeverityLevel(
            label=s.label,
            description=s.description,
            response_minutes=s.response_time.total_seconds() / 60,
            examples=list(s.examples),
            keywords=kw[s],
        )
        for s in Severity
    }


class KeyMetrics(_Table):
    """The runbook's key metrics (healthy when below / above these)."""

    response_time_s: float = Field(2.0, gt=0, description="Application response time < 2 s")
    error_rate_pct: float = Field(1.0, ge=0, description="Error rate < 1 %")
    uptime_pct: float = Field(99.9, gt=0, le=100, description="Uptime > 99.9 %")
    pool_utilisation_pct: float = Field(80.0, gt=0, le=100, description="Connection pool utilisation < 80 %")
    query_time_ms: float = Field(500.0, gt=0, description="Query response time < 500 ms")
    active_connections: int = Field(100, gt=0, description="Active connections < 100")


AlertLevel = Literal["critical", "warning", "info"]
Operator = Literal[">", ">=", "<", "<=", "==", "!="]


class AlertRule(_Table):
    """One alerting rule: a metric compared with a threshold, or a named condition."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$")
    level: AlertLevel
    severity: Severity
    description: str
    metric: str | None = Field(None, description="Measurement name; None = a condition raised by a probe")
    operator: Operator = ">"
    threshold: float | None = None
    scenario: str | None = Field(None, description="Runbook scenario the rule points at")

    def breached(self, value: float) -> bool:
        """Return True when value breaches this rule's threshold."""
        if self.threshold is None:
            return bool(value)
        t = self.threshold
        return {
            ">": value > t,
            ">=": value >= t,
            "<": value < t,
            "<=": value <= t,
            "==": value == t,
            "!=": value != t,
        }[self.operator]


def _alert_rules() -> list[AlertRule]:
    return [
        AlertRule(name="application_down", level="critical", severity=Severity.P0,
                  description="Application down", metric="app_up", operator="==", threshold=0,
                  scenario="performance"),
        AlertRule(name="database_unavailable", level="critical", severity=Severity.P0,
                  description="Database unavailable", metric="database_up", operator="==", threshold=0,
                  scenario="database"),
        AlertRule(name="payment_processing_failed", level="critical", severity=Severity.P0,
                  description="Payment processing failed", metric="stripe_failed_deliveries", operator=">",
                  threshold=0, scenario="payment"),
        AlertRule(name="high_error_rate", level="warning", severity=Severity.P1,
                  description="High error rate (>5%)", metric="error_rate_pct", operator=">", threshold=5.0,
                  scenario="performance"),
        AlertRule(name="slow_response_time", level="warning", severity=Severity.P1,
                  description="Slow response time (>5s)", metric="response_time_s", operator=">", threshold=5.0,
                  scenario="performance"),
        AlertRule(name="database_degradation", level="warning", severity=Severity.P1,
                  description="Database performance degradation", metric="query_time_ms", operator=">",
                  threshold=500.0, scenario="database"),
        AlertRule(name="authentication_failing", level="warning", severity=Severity.P1,
                  description="Authentication failing (users can't log in)", metric="auth_up", operator="==",
                  threshold=0, scenario="authentication"),
        AlertRule(name="unusual_traffic", level="info", severity=Severity.P2,
                  description="Unusual traffic patterns", metric="traffic_anomaly", operator=">", threshold=0),
        AlertRule(name="third_party_degraded", level="info", severity=Severity.P2,
                  description="A third party (OpenAI, a vendor) is degraded", metric="third_party_down",
                  operator=">", threshold=0, scenario="performance"),
        AlertRule(name="feature_usage_anomaly", level="info", severity=Severity.P3,
                  description="Feature usage anomalies", metric="feature_anomaly", operator=">", threshold=0),
        AlertRule(name="security_event", level="info", severity=Severity.P2,
                  description="Security events", metric="security_events", operator=">", threshold=0),
    ]


ContactRoute = Literal["pagerduty", "slack", "phone", "email"]


class Contact(_Table):
    """One row of the escalation tables; names and routes come from configuration."""

    role: str
    name: str = Field("", description="Filled from configuration; the runbook leaves it as [Name]")
    route: ContactRoute = "pagerduty"
    address: str = Field("", description="Phone, e-mail, Slack handle or PagerDuty routing hint")
    after_minutes: float = Field(..., ge=0)
    tier: Literal["primary", "secondary"] = "primary"

    @property
    def after(self) -> timedelta:
        return timedelta(minutes=self.after_minutes)


def _escalation() -> list[Contact]:
    return [
        Contact(role="On-Call Engineer", after_minutes=0),
        Contact(role="Engineering Lead", after_minutes=15),
        Contact(role="CTO", after_minutes=30),
        Contact(role="DevOps Engineer", after_minutes=60, tier="secondary"),
        Contact(role="Security Engineer", after_minutes=60, tier="secondary"),
        Contact(role="Legal/Compliance", after_minutes=120, tier="secondary"),
    ]


class Communication(_Table):
    """The runbook's communication matrix."""

    incidents_channel: str = "#incidents"
    engineering_channel: str = "#engineering"
    operations_channel: str = "#operations"
    status_page_for: list[Severity] = Field(default_factory=lambda: list(Severity))
    customer_notice_for: list[Severity] = Field(default_factory=lambda: [Severity.P0, Severity.P1])
    social_media_for: list[Severity] = Field(default_factory=lambda: [Severity.P0])
    executive_summary_for: list[Severity] = Field(default_factory=lambda: [Severity.P0, Severity.P1])
    detailed_report_hours: float = Field(24, gt=0)
    lessons_learned_days: float = Field(7, gt=0)


class PostIncident(_Table):
    """Post-incident deadlines: review within 24 h, follow-up within 1 week."""

    review_after_hours: float = Field(24, gt=0)
    follow_up_after_days: float = Field(7, gt=0)
    review_input_deadline_hours: float = Field(48, gt=0, description="How long the review waits for input")
    action_item_grace_days: float = Field(2, ge=0, description="Overdue this long → escalate to the lead")


class Monitoring(_Table):
    """How the monitor runs."""

    interval_seconds: float = Field(60, gt=0)
    breach_cycles: int = Field(2, ge=1, description="Consecutive breaching cycles before declaring")
    gap_cycles: int = Field(5, ge=1, description="Consecutive cycles a probe source cannot measure before a P2 "
                                                "monitoring_gap incident is declared for it")
    heartbeat_minutes: float = Field(5, gt=0, description="The dead man's switch: no monitor cycle completed for "
                                                         "this long pages on-call (the watchdog automation)")
    probe_timeout_s: float = Field(10, gt=0)
    uptime_window_hours: float = Field(24 * 30, gt=0)
    stripe_window_minutes: float = Field(60, gt=0)
    sentry_window_minutes: float = Field(15, gt=0)
    traffic_window_minutes: float = Field(
        5, gt=0, description="unusual_traffic: window of Sentry's transaction count giving the request rate per minute")
    traffic_baseline_hours: float = Field(
        24, gt=0, description="unusual_traffic, feature_usage_anomaly: history of per-cycle request rates and route "
                              "shares the baselines (medians) are taken from")
    traffic_baseline_min_samples: int = Field(
        30, ge=1, description="unusual_traffic, feature_usage_anomaly: samples a baseline needs before it is judged")
    traffic_anomaly_factor: float = Field(
        3.0, gt=1, description="unusual_traffic: a rate above factor x or below 1/factor of the baseline is anomalous")
    traffic_min_rate_per_minute: float = Field(
        1.0, ge=0, description="unusual_traffic: baselines below this rate are raised to it (a quiet night is no "
                               "baseline for a drop, and a few requests after it are no spike)")
    feature_min_requests: int = Field(
        50, ge=1, description="feature_usage_anomaly: requests in the traffic window before the route mix is judged")
    feature_min_share_pct: float = Field(
        5.0, ge=0, le=100, description="feature_usage_anomaly: routes whose baseline share of requests is below "
                                       "this are too small to judge")
    feature_anomaly_factor: float = Field(
        3.0, gt=1, description="feature_usage_anomaly: a route's share of requests above factor x or below 1/factor "
                               "of its baseline (median share) is anomalous")
    feature_max_routes: int = Field(
        25, ge=1, le=100, description="feature_usage_anomaly: the busiest routes whose share is tracked")
    feature_exclude_routes: list[str] = Field(
        default_factory=lambda: ["/api/health"],
        description="feature_usage_anomaly: routes that are no feature (the monitor's and uptime checks' probes)")
    auth_endpoint: str = Field(
        "/api/auth/profile", description="security_event: the transaction name of the authentication endpoint")
    auth_failure_statuses: list[int] = Field(
        default_factory=lambda: [401, 403], description="security_event: statuses that count as failed logins")
    auth_failure_window_minutes: float = Field(
        1, gt=0, description="security_event: window of failed logins counted per cycle")
    auth_failures_per_minute: float = Field(
        30, ge=0, description="security_event: failed logins per minute above this are a brute-force pattern "
                              "(the monitor's own auth probe adds one per cycle)")


class Guardrails(_Table):
    """Bounds on automation that acts on production (the circuit breaker)."""

    max_remediations_per_hour: int = Field(3, ge=0, description="Applied remediations per environment in any hour; "
                                                               "past it every remediation is refused")
    max_same_action_per_incident: int = Field(1, ge=0, description="Applied runs of the same action on the same "
                                                                  "target per incident")


class Escalation(_Table):
    """Timing of the response: acknowledgement wait, reminder, re-checks."""

    ack_poll_seconds: float = Field(10, gt=0)
    reminder_fraction: float = Field(0.5, gt=0, lt=1, description="P2/P3: remind at this fraction of the SLA")
    stable_checks: int = Field(3, ge=1, description="Consecutive healthy checks before 'stable'")
    stable_interval_seconds: float = Field(30, gt=0)
    reopen_window_minutes: float = Field(
        60, ge=0, description="The same fingerprint breaching again within this long after its incident was "
        "resolved reopens that incident (paged again, 'the problem returned') instead of a new one; 0: never")


class Review(_Table):
    """The runbook's own review cadence."""

    owner: str = "Operations"
    cadence_days: int = Field(30, gt=0, description="Monthly")
    last_reviewed: date = date(2025, 1, 27)
    next_review: date = date(2025, 2, 27)


class Approver(_Table):
    """A person who may decide from Slack: the verified Slack user id maps to them (the `approvers` table)."""

    name: str = Field(..., min_length=1, max_length=100)
    may_approve: list[str] = Field(default_factory=list,
                                   description="Remediations they may approve or reject (e.g. database-rollback); "
                                               "'*' for every one")
    may_acknowledge: bool = Field(True, description="May acknowledge incidents from Slack")

    def allowed(self, action: str) -> bool:
        """Return True when they may decide on this remediation."""
        return "*" in self.may_approve or action in self.may_approve


SLACK_USER_ID = r"^[UW][A-Z0-9]{2,20}$"


class Policy(_Table):
    """Every table of the runbook."""

    severities: dict[Severity, SeverityLevel] = Field(default_factory=_severities)
    impact_matrix: dict[str, Severity] = Field(
        default_factory=lambda: {
            "high/high": Severity.P0,
            "high/medium": Severity.P1,
            "high/low": Severity.P1,
            "medium/high": Severity.P1,
            "low/high": Severity.P1,
            "medium/medium": Severity.P2,
            "medium/low": Severity.P2,
            "low/medium": Severity.P2,
            "low/low": Severity.P3,
        },
        description="'user/business' impact → severity",
    )
    key_metrics: KeyMetrics = Field(default_factory=KeyMetrics)
    alert_rules: list[AlertRule] = Field(default_factory=_alert_rules)
    escalation: list[Contact] = Field(default_factory=_escalation)
    communication: Communication = Field(default_factory=Communication)
    post_incident: PostIncident = Field(default_factory=PostIncident)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    response: Escalation = Field(default_factory=Escalation)
    review: Review = Field(default_factory=Review)
    approvers: dict[str, Approver] = Field(
        default_factory=dict, description="Slack user id (U012ABC) → the person and what they may approve")

    @model_validator(mode="after")
    def _complete(self) -> Policy:
        missing = [s.value for s in Severity if s not in self.severities]
        if missing:
            raise ValueError(f"severities: missing levels {missing}")
        names = [r.name for r in self.alert_rules]
        if len(names) != len(set(names)):
            raise ValueError("alert_rules: duplicate rule names")
        for key in self.impact_matrix:
            parts = key.split("/")
            if len(parts) != 2 or any(p not in {i.value for i in ImpactLevel} for p in parts):
                raise ValueError(f"impact_matrix: key {key!r} must be 'user/business' with high|medium|low")
        bad = [k for k in self.approvers if not re.match(SLACK_USER_ID, k)]
        if bad:
            raise ValueError(f"approvers: {', '.join(map(repr, bad))} are not Slack user ids (U… or W…)")
        return self

    # -- look-ups ---------------------------------------------------------------------------------------------

    def response_time(self, severity: Severity) -> timedelta:
        """Return the response time of a severity."""
        return self.severities[severity].response_time

    def response_due(self, incident: Incident) -> datetime:
        """Return when the incident's response time (this policy's, not the model's default) runs out."""
        return incident.escalation_start + self.response_time(incident.severity)

    def rule(self, name: str) -> AlertRule:
        """Return the alert rule with that name."""
        for r in self.alert_rules:
            if r.name == name:
                return r
        raise InputError(f"unknown alert rule {name!r}; known: {', '.join(x.name for x in self.alert_rules)}")

    def chain(self, tier: str = "primary") -> list[Contact]:
        """Return the escalation chain of a tier, in order of escalation time."""
        return sorted((c for c in self.escalation if c.tier == tier), key=lambda c: c.after_minutes)

    def approver(self, slack_user_id: str) -> Approver | None:
        """Return the person a verified Slack user id maps to, or None."""
        return self.approvers.get(slack_user_id)

    def channels(self) -> dict[str, str]:
        """Return the runbook's Slack channels by purpose."""
        c = self.communication
        return {"incidents": c.incidents_channel, "engineering": c.engineering_channel,
                "operations": c.operations_channel}

    # -- classification ---------------------------------------------------------------------------------------

    def classify_impact(self, user: ImpactLevel | str, business: ImpactLevel | str) -> Severity:
        """Return the severity of a manual impact assessment (user × business)."""
        key = f"{ImpactLevel(user).value}/{ImpactLevel(business).value}"
        try:
            return self.impact_matrix[key]
        except KeyError:
            raise InputError(f"impact {key} has no severity in the policy's impact_matrix") from None

    def classify_text(self, text: str) -> Severity | None:
        """Return the most severe level whose keywords or examples appear in text, or None."""
        lowered = text.lower()
        for sev in sorted(self.severities, key=lambda s: s.rank):
            level = self.severities[sev]
            for phrase in [*level.examples, *level.keywords]:
                if re.search(rf"(?<![a-z]){re.escape(phrase.lower())}(?![a-z])", lowered):
                    return sev
        return None

    def classify_alert(self, alert: Alert) -> tuple[Severity, str]:
        """Return (severity, reason) for an alert: its rule first, then its own severity, then its words."""
        if alert.rule:
            rule = self.rule(alert.rule)
            return rule.severity, f"alert rule {rule.name} ({rule.level}: {rule.description})"
        if alert.severity is not None:
            return alert.severity, f"severity given by {alert.source}"
        by_text = self.classify_text(alert.summary)
        if by_text is not None:
            return by_text, "matched the runbook's severity examples"
        return Severity.P2, "no rule matched; default P2 for an unclassified alert"


def two_person_violation(approver: str, identity: str | None, requested_by: str | None,
                         requester_identity: str | None) -> str | None:
    """Return the two-person rule's refusal when the approver is the requester, else None.

    Verified identities are compared when both sides have one (a Slack user id, …); otherwise the names.
    """
    if identity and requester_identity:
        same = identity == requester_identity
    else:
        same = bool(requested_by) and approver.strip().casefold() == (requested_by or "").strip().casefold()
    if not same:
        return None
    return f"two-person rule: {approver} requested it; another person must approve"


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"policy file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"policy file {path}: use .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid {path.suffix[1:].upper()}: {_where(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"policy file {path}: the top level must be a mapping")
    return data


def _where(exc: Exception) -> str:
    """Say what is wrong with a policy file and where, never quoting its text (a line may hold a value to keep)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return " ".join(p for p in (exc.context, exc.problem) if p) + where
    if isinstance(exc, tomllib.TOMLDecodeError):
        return str(exc)  # tomllib's message is its own words plus "(at line L, column C)", no text of the file
    return type(exc).__name__


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_policy(path: Path | str | None = None) -> Policy:
    """Return the runbook's policy, with a YAML/TOML file's values over the defaults; errors name the field."""
    if path is None:
        return Policy()
    path = Path(path)
    defaults = Policy().model_dump(mode="json")
    merged = _merge(defaults, _read_file(path))
    try:
        return Policy.model_validate(merged)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(f"invalid policy file {path}:\n  " + "\n  ".join(lines)) from None


def get_policy() -> Policy:
    """Return the policy named by the current settings (defaults when none)."""
    from runbook.settings import get_settings

    return load_policy(get_settings().policy_file)
