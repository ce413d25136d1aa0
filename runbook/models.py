"""The incident domain: severities, impact, the status-page lifecycle, incidents, alerts and their timeline."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Severity(StrEnum):
    """The runbook's severity levels."""

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"

    @property
    def label(self) -> str:
        return _SEVERITY_TABLE[self][0]

    @property
    def description(self) -> str:
        return _SEVERITY_TABLE[self][1]

    @property
    def response_time(self) -> timedelta:
        """Return the runbook's default response time (the policy may override it)."""
        return _SEVERITY_TABLE[self][2]

    @property
    def examples(self) -> tuple[str, ...]:
        return _SEVERITY_TABLE[self][3]

    @property
    def rank(self) -> int:
        """Return 0 for the most severe (P0)."""
        return int(self.value[1])


_SEVERITY_TABLE: dict[Severity, tuple[str, str, timedelta, tuple[str, ...]]] = {
    Severity.P0: ("Critical", "Complete service outage", timedelta(minutes=15), ("Site completely down", "data loss")),
    Severity.P1: (
        "High",
        "Major functionality broken",
        timedelta(minutes=30),
        ("Users can't complete courses", "billing broken"),
    ),
    Severity.P2: (
        "Medium",
        "Minor functionality affected",
        timedelta(hours=2),
        ("Slow performance", "non-critical features down"),
    ),
    Severity.P3: ("Low", "Cosmetic issues, minor bugs", timedelta(hours=24), ("UI glitches", "non-blocking issues")),
}


class ImpactLevel(StrEnum):
    """High / medium / low, for user and business impact alike."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


USER_IMPACT = {
    ImpactLevel.HIGH: "Users cannot access core functionality",
    ImpactLevel.MEDIUM: "Users experience degraded service",
    ImpactLevel.LOW: "Minor inconvenience or cosmetic issues",
}
BUSINESS_IMPACT = {
    ImpactLevel.HIGH: "Revenue loss, compliance violations",
    ImpactLevel.MEDIUM: "Operational inefficiency",
    ImpactLevel.LOW: "Minor operational impact",
}


class Impact(BaseModel):
    """The runbook's impact assessment."""

    model_config = ConfigDict(frozen=True)

    user: ImpactLevel = Field(ImpactLevel.MEDIUM, description="High: core functionality unusable; low: cosmetic")
    business: ImpactLevel = Field(ImpactLevel.MEDIUM, description="High: revenue loss or compliance; low: minor")


class Status(StrEnum):
    """The status-page lifecycle: investigating → identified → monitoring → resolved."""

    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"

    @property
    def meaning(self) -> str:
        return _STATUS_MEANING[self]

    @property
    def is_open(self) -> bool:
        return self is not Status.RESOLVED


_STATUS_MEANING = {
    Status.INVESTIGATING: "Issue identified, working on resolution",
    Status.IDENTIFIED: "Root cause found, implementing fix",
    Status.MONITORING: "Fix deployed, monitoring for resolution",
    Status.RESOLVED: "Issue resolved, normal operations restored",
}

# Forward moves may skip a step (a fix can be verified before a root cause is written up); backward moves are a
# regression seen while monitoring, or a reopen after resolution.
ALLOWED_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.INVESTIGATING: frozenset({Status.IDENTIFIED, Status.MONITORING, Status.RESOLVED}),
    Status.IDENTIFIED: frozenset({Status.INVESTIGATING, Status.MONITORING, Status.RESOLVED}),
    Status.MONITORING: frozenset({Status.INVESTIGATING, Status.IDENTIFIED, Status.RESOLVED}),
    Status.RESOLVED: frozenset({Status.INVESTIGATING}),
}


INCIDENT_ID_PATTERN = r"^inc-[0-9]{8}-[0-9a-f]{6}$"  # what new_incident_id makes; flow parameters validate it
# Every id is exactly this long. Flow parameters carry it as maxLength too: Prefect checks parameters against the
# JSON schema with Python's `re.search`, where `$` also matches before a trailing newline, so "inc-…\n" passed
# Prefect's check and then failed the model's (pydantic's regex is strict) once the run had started.
INCIDENT_ID_LENGTH = 19
IncidentId = Annotated[str, StringConstraints(pattern=INCIDENT_ID_PATTERN, max_length=INCIDENT_ID_LENGTH)]
# For an anchored pattern of variable length (a deployment id, a migration version) the length cannot say it, so the
# schema says it: a flow parameter with `ONE_LINE` refuses a newline in Prefect's check as the model does.
ONE_LINE = Field(json_schema_extra={"not": {"pattern": "\n"}})


def new_incident_id(at: datetime | None = None) -> str:
    """Return a new incident id like `inc-20261126-1a2b3c` (lowercase: usable as a Prefect artifact key)."""
    at = at or utcnow()
    return f"inc-{at:%Y%m%d}-{secrets.token_hex(3)}"


class Alert(BaseModel):
    """An alert from the monitor, the intake endpoint, the UI or other automation; the raw payload is kept."""

    source: str = Field(..., min_length=1, max_length=100, description="Who raised it: monitor, sentry, vercel, …")
    fingerprint: str = Field(
        ..., min_length=1, max_length=200, description="Stable per rule and target; duplicates attach to one incident"
    )
    summary: str = Field(..., min_length=1, max_length=500, description="One line: what is wrong")
    rule: str | None = Field(None, description="The policy alert rule that fired, e.g. application_down")
    severity: Severity | None = Field(None, description="Severity if the source already knows it")
    scenario: str | None = Field(None, description="Runbook scenario hint: database, authentication, payment, …")
    labels: dict[str, str] = Field(default_factory=dict)
    values: dict[str, float] = Field(default_factory=dict, description="Measured values, e.g. latency_s: 6.2")
    raw: dict[str, Any] = Field(default_factory=dict, description="The payload as received")
    received_at: datetime = Field(default_factory=utcnow)

    @field_validator("fingerprint", "source", "summary")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class Incident(BaseModel):
    """The incident record; it is also the incident ticket."""

    id: str = Field(default_factory=new_incident_id)
    title: str = Field(..., min_length=1, max_length=200)
    severity: Severity
    status: Status = Status.INVESTIGATING
    impact: Impact = Field(default_factory=Impact)
    scenario: str | None = None
    fingerprint: str | None = None
    source: str = "manual"
    summary: str = ""
    environment: str = "production"
    drill: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_via: str | None = Field(None, description="Where the first acknowledgement came from (Channel)")
    identified_at: datetime | None = None
    mitigated_at: datetime | None = None
    resolved_at: datetime | None = None
    statuspage_incident_id: str | None = None
    root_cause: str | None = None
    lessons_learned: str | None = None
    preventive_measures: str | None = None
    financial_impact: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    severity_set_at: datetime | None = Field(None, description="When a person last changed the severity (the "
                                             "new severity's escalation counts from then)")
    links: list[str] = Field(default_factory=list, description="Related incidents (runbook link)")
    merged_into: str | None = Field(None, description="The incident this duplicate was merged into (closed)")
    reopened_at: datetime | None = Field(None, description="When its fault last returned after a resolution "
                                         "(reopened by an alert): a new response cycle, escalated from then")

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @property
    def declared_by_person(self) -> bool:
        """Return True when a person declared it (the UI, the CLI): only a person may then resolve it."""
        return self.source == "manual"

    @property
    def escalation_start(self) -> datetime:
        """Return when the current escalation clock started: the declaration, the last severity change or the
        last reopen (the problem returned), whichever is latest."""
        return max(t for t in (self.created_at, self.severity_set_at, self.reopened_at) if t is not None)

    @property
    def dedup_key(self) -> str:
        """Return the PagerDuty dedup key: the incident id, so a re-sent page is idempotent."""
        return self.id

    @property
    def response_due(self) -> datetime:
        """Return when the severity's default response time runs out (counted from the last severity change)."""
        return self.escalation_start + self.severity.response_time

    @property
    def mtta(self) -> timedelta | None:
        return self.acknowledged_at - self.created_at if self.acknowledged_at else None

    @property
    def mttr(self) -> timedelta | None:
        return self.resolved_at - self.created_at if self.resolved_at else None


class EventKind(StrEnum):
    """The timeline's vocabulary; the report and the MTTA/MTTR figures are computed from these kinds."""

    DECLARED = "declared"                      # incident detected (details.alert keeps the alert)
    DUPLICATE_ALERT = "duplicate_alert"        # a later alert attached to the open incident
    CHECK = "check"                            # an acknowledge/verification check ran (details.ok)
    PAGED = "paged"                            # PagerDuty trigger sent (details.role, dedup_key)
    ESCALATED = "escalated"                    # next contact of the chain paged
    ACKNOWLEDGED = "acknowledged"              # a human took the incident (MTTA ends)
    SLA_MISSED = "sla_missed"                  # response time passed without acknowledgement
    ASSESSMENT = "assessment"                  # initial assessment evidence
    STATUS_PAGE = "status_page"                # status page incident created/updated
    SLACK = "slack"                            # message posted to a channel
    NOTIFIED = "notified"                      # stakeholder / customer / executive notice sent
    STATUS_CHANGED = "status_changed"          # lifecycle move (details.from, details.to)
    DIAGNOSIS = "diagnosis"                    # a scenario diagnostic finished (details.found → root cause identified)
    APPROVAL_REQUESTED = "approval_requested"  # a plan waits for a human (details.plan_hash)
    APPROVAL = "approval"                      # approve / reject / timeout
    REMEDIATION_STARTED = "remediation_started"
    REMEDIATION_APPLIED = "remediation_applied"  # resolution implemented
    REMEDIATION_ABORTED = "remediation_aborted"  # refused, rejected, plan changed, failed
    VERIFICATION = "verification"              # details.passed → service restored when True
    RECOVERY_OBSERVED = "recovery_observed"    # the monitor saw the breach clear
    FOLLOW_UP_SCHEDULED = "follow_up_scheduled"
    REVIEW_RECORDED = "review_recorded"
    REMINDER = "reminder"
    REPORT_WRITTEN = "report_written"
    NOTE = "note"
    SEVERITY_CHANGED = "severity_changed"      # a person changed the severity (details.from, details.to)
    LINKED = "linked"                          # related to another incident (details.other)
    MERGED = "merged"                          # a duplicate merged in (details.merged_from) / away (merged_into)
    CONFIRMATION_REQUESTED = "confirmation_requested"  # verification passed; a person must confirm resolution
    DRIFT_REPAIRED = "drift_repaired"          # reconcile repaired a tool that disagreed with the record
    REOPENED = "reopened"                      # the resolved incident's fault returned (details.alert); reopened


def last_reopen(events: list[TimelineEvent]) -> datetime | None:
    """Return when the incident was last reopened (a status change from resolved back to open), if ever.

    Steps done once per incident (the page, each status page post, the resolve of the pages) count from then.
    """
    reopens = [e.at for e in events if e.kind == EventKind.STATUS_CHANGED and e.details.get("from") == "resolved"
               and e.details.get("to") != "resolved"]
    return max(reopens) if reopens else None


class TimelineEvent(BaseModel):
    """One side effect or observation on an incident: who/what, when, what happened, which flow run."""

    at: datetime = Field(default_factory=utcnow)
    kind: str = Field(..., min_length=1, description="declared, acknowledged, paged, status_changed, approval …")
    actor: str = Field("runbook", description="A person, or the system component that acted")
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    flow_run_id: str | None = None
    id: int | None = None
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="What wrote it: code version (+ git commit), Prefect deployment id/version, flow run id")


Channel = Literal["prefect-ui", "slack", "pagerduty", "cli", "api", "drill", "runbook"]
"""Where a person's acknowledgement or decision came from (recorded as `via` on the timeline and approvals)."""


class Approval(BaseModel):
    """A human decision on a remediation plan."""

    decision: Literal["approve", "reject", "timeout"]
    approver: str
    reason: str = ""
    plan_hash: str
    action: str = Field("", description="Which remediation: code-rollback, database-rollback, …")
    requested_by: str | None = None
    requested_at: datetime | None = None
    at: datetime = Field(default_factory=utcnow)
    via: Channel = Field("api", description="Where the decision was made")
    identity: str | None = Field(None, description="The verified identity of the approver (e.g. a Slack user id)")

    @property
    def time_to_decide(self) -> timedelta | None:
        return self.at - self.requested_at if self.requested_at else None


ApprovalStatus = Literal["pending", "claimed", "decided", "superseded", "closed"]
"""pending: waiting; claimed: a verified channel (Slack) took the decision and is resuming the run; decided: the
flow recorded its decision; superseded: a newer plan of the same run replaced it; closed: the run stopped waiting."""


class ApprovalRequest(BaseModel):
    """A plan waiting for a decision, as the store keeps it: one decision per (flow run, plan hash)."""

    flow_run_id: str
    action: str
    plan_hash: str
    incident_id: str | None = None
    summary: str = ""
    requested_by: str | None = None
    requester_identity: str | None = Field(None, description="Verified identity of the requester, when known")
    two_person: bool = False
    requested_at: datetime = Field(default_factory=utcnow)
    status: ApprovalStatus = "pending"
    claim: Approval | None = Field(None, description="The decision taken (claimed or recorded)")
    message: dict[str, str] = Field(default_factory=dict, description="Where the request was posted (channel, ts)")


class ActionItem(BaseModel):
    """A follow-up action from the post-incident review."""

    title: str = Field(..., min_length=1, max_length=300)
    owner: str = Field(..., min_length=1, max_length=100)
    due: date
    done: bool = False
    id: int | None = None
    reminded_at: datetime | None = None
    escalated_at: datetime | None = None


class FollowUpKind(StrEnum):
    """The runbook's two post-incident deadlines."""

    REVIEW_24H = "review-24h"
    FOLLOW_UP_1W = "follow-up-1w"


class FollowUp(BaseModel):
    """A scheduled post-incident run."""

    kind: FollowUpKind
    due: datetime
    done: bool = False
    flow_run_id: str | None = None
    id: int | None = None


class Evidence(BaseModel):
    """One observation behind a diagnosis."""

    check: str
    ok: bool
    value: str = ""
    detail: str = ""


class Suggestion(BaseModel):
    """A remediation the evidence points at: which flow, with which parameters."""

    flow: str = Field(..., description="Deployment/flow name, e.g. database-rollback; 'none' when nothing to run")
    parameters: dict[str, Any] = Field(default_factory=dict)
    why: str = ""


class Diagnosis(BaseModel):
    """What a scenario diagnostic found: finding, evidence, suggested remediation."""

    scenario: str
    found: bool = Field(..., description="True when a cause was identified")
    finding: str
    evidence: list[Evidence] = Field(default_factory=list)
    suggestions: list[Suggestion] = Field(default_factory=list)

    @property
    def suggestion(self) -> Suggestion | None:
        return self.suggestions[0] if self.suggestions else None
