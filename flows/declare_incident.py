"""Declare an incident: validate, classify through the policy, dedupe by fingerprint, record, emit, respond.

Called by the monitor, the alert intake, a person in the Prefect UI, or other automation. A duplicate alert is
attached to the open incident with its fingerprint (nothing lost, nothing opened twice); the fingerprint's incident
resolved less than `response.reopen_window_minutes` ago is reopened instead of a new one (paged again, "the problem
returned" on the status page and in #incidents, its procedure run once more). A raw alert that fails
validation is kept in the store with the reason, and the run fails with that reason before anything else happens.
"""


from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from runbook.errors import InputError
from runbook.models import Alert, Impact, ImpactLevel, Incident, Severity
from runbook.policy import get_policy
from runbook.settings import get_settings
from tasks.common import flow_run_id, run_parameter
from tasks.incident import admit_record, store_invalid_alert

ScenarioHint = Literal["database", "authentication", "payment", "performance", "configuration"]
# Closed sets with an explicit "not given" choice, not `X | None`: the Prefect UI renders a union as type tabs
# (`Severity | None`) that must be clicked before the dropdown can be used; a plain enum is one dropdown.
SeverityChoice = Literal["auto", "P0", "P1", "P2", "P3"]
ImpactChoice = Literal["unknown", "high", "medium", "low"]
ScenarioChoice = Literal["auto", ScenarioHint]
RESPONSE_DEPLOYMENTS = {
    Severity.P0: "respond-p0/respond-p0",
    Severity.P1: "respond-p1/respond-p1",
    Severity.P2: "respond-p2-p3/respond-p2-p3",
    Severity.P3: "respond-p2-p3/respond-p2-p3",
}


# Impact assumed from the severity until a person assesses it (the runbook's impact descriptions per level).
DEFAULT_IMPACT = {
    Severity.P0: (ImpactLevel.HIGH, ImpactLevel.HIGH),
    Severity.P1: (ImpactLevel.HIGH, ImpactLevel.MEDIUM),
    Severity.P2: (ImpactLevel.MEDIUM, ImpactLevel.LOW),
    Severity.P3: (ImpactLevel.LOW, ImpactLevel.LOW),
}


class DeclareParams(BaseModel):
    """Declare an incident from an alert or by hand (a form in the Prefect UI)."""

    title: str | None = Field(None, max_length=200, description="What is wrong (manual declaration)")
    severity: SeverityChoice = Field("auto", title="Severity",
                                     description="auto: classify from the impact, the alert's rule or the words")
    user_impact: ImpactChoice = Field("unknown", title="User impact",
                                      description="High: users cannot access core functionality")
    business_impact: ImpactChoice = Field("unknown", title="Business impact",
                                          description="High: revenue loss, compliance violations")
    scenario: ScenarioChoice = Field("auto", title="Scenario",
                                     description="Runbook scenario, if known; auto: from the alert or the diagnosis")
    summary: str = Field("", max_length=2000, description="Details for responders")
    declared_by: str = Field("runbook", min_length=1, max_length=100, description="Who declares")
    alert: Alert | None = Field(None, title="Alert (automation)",
                                description="A validated alert (monitor, other automation); leave empty by hand")
    raw_alert: dict[str, Any] | None = Field(None, title="Raw alert (automation)",
                                             description="An alert as received; validated inside the run")
    respond: Literal["deployment", "inline", "none"] = Field(
        "deployment", description="Start the severity's procedure as its own deployment run, in this run, or not")
    drill: bool | None = Field(None, description="Mark as a drill (default: the settings' drill flag)")

    @field_validator("severity", "scenario", mode="before")
    @classmethod
    def _none_is_auto(cls, value: Any) -> Any:  # other automation may still send null for "not given"
        return "auto" if value is None else value

    @field_validator("user_impact", "business_impact", mode="before")
    @classmethod
    def _none_is_unknown(cls, value: Any) -> Any:
        return "unknown" if value is None else value

    @model_validator(mode="after")
    def _something_to_declare(self) -> "DeclareParams":
        given = [x for x in (self.title, self.alert, self.raw_alert) if x]
        if not given:
            raise ValueError("give a title (manual declaration), an alert or a raw_alert")
        if self.title is not None and not self.title.strip():
            raise ValueError("title must not be blank")
        return self


class Declared(BaseModel):
    """The outcome of a declaration."""

    incident_id: str
    created: bool
    reopened: bool = Field(False, description="The fingerprint's incident resolved within the reopen window was "
                           "reopened (not a new incident)")
    severity: Severity
    reason: str
    response_run_id: str | None = None


def parse_alert(raw: dict[str, Any]) -> Alert:
    """Validate a raw alert; InputError names every problem."""
    try:
        return Alert.model_validate({**raw, "raw": raw.get("raw") or raw})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        raise InputError(f"malformed alert: {problems}") from None


def build_incident(params: DeclareParams, alert: Alert | None) -> tuple[Incident, str]:
    """Return the incident to record and the reason for its severity."""
    policy = get_policy()
    settings = get_settings()
    user_impact = None if params.user_impact == "unknown" else ImpactLevel(params.user_impact)
    business_impact = None if params.business_impact == "unknown" else ImpactLevel(params.business_impact)
    if params.severity != "auto":
        severity, reason = Severity(params.severity), f"severity set by {params.declared_by}"
    elif user_impact and business_impact:
        severity = policy.classify_impact(user_impact, business_impact)
        reason = f"impact user {user_impact} × business {business_impact}"
    elif alert is not None:
        severity, reason = policy.classify_alert(alert)
    else:
        by_text = policy.classify_text(f"{params.title} {params.summary}")
        severity, reason = (by_text, "matched the runbook's severity examples") if by_text else (
            Severity.P2, "no severity given; default P2 until assessed")
    default_user, default_business = DEFAULT_IMPACT[severity]
    impact = Impact(user=user_impact or default_user, business=business_impact or default_business)
    scenario = (None if params.scenario == "auto" else params.scenario) or (alert.scenario if alert else None)
    if scenario is None and alert and alert.rule:
        scenario = policy.rule(alert.rule).scenario
    incident = Incident(
        title=(params.title or (alert.summary if alert else "")).strip(),
        severity=severity,
        impact=impact,
        scenario=scenario,
        fingerprint=alert.fingerprint if alert else None,
        source=alert.source if alert else "manual",
        summary=params.summary,
        environment=settings.environment,
        drill=settings.drill if params.drill is None else params.drill,
        labels={**(alert.labels if alert else {}), **({"rule": alert.rule} if alert and alert.rule else {})},
    )
    return incident, reason


async def start_response(incident: Incident, mode: str) -> str | None:
    """Start the severity's procedure (its page and first announcement, made already, are not repeated); return its
    flow-run id when started as a deployment run."""
    if mode == "none":
        return None
    if mode == "deployment":
        from prefect.deployments.flow_runs import arun_deployment
        from prefect.exceptions import ObjectNotFound

        name = RESPONSE_DEPLOYMENTS[incident.severity]
        try:
            run = await arun_deployment(name, parameters={"params": {"incident_id": incident.id}}, timeout=0,
                                       flow_run_name=f"{name.split('/')[0]} {incident.id}",
                                       tags=["incident", incident.severity.value.lower()])
            return str(run.id)
        except ObjectNotFound:
            get_run_logger().warning("deployment %s not found; responding inline in this run", name)
    from flows.respond import respond_inline

    await respond_inline(incident)
    return None


def _run_name() -> str:
    alert = run_parameter("alert") or run_parameter("raw_alert") or {}
    summary = alert.get("summary") if isinstance(alert, dict) else getattr(alert, "summary", None)
    return f"declare {str(run_parameter('title') or summary or 'alert')[:60]}"


@flow(name="declare-incident", flow_run_name=_run_name)
async def declare_incident(params: DeclareParams) -> Declared:
    """Validate, classify, dedupe, record, emit an event and start the response."""
    alert = params.alert
    if alert is None and params.raw_alert is not None:
        try:
            alert = parse_alert(params.raw_alert)
        except InputError as exc:
            await store_invalid_alert(params.raw_alert, str(exc))
            raise
    incident, reason = build_incident(params, alert)
    admitted = await admit_record(incident, alert, params.declared_by)
    recorded, outcome = admitted.incident, admitted.outcome
    created, reopened = outcome == "created", outcome == "reopened"
    emit_event(
        event={"created": "runbook.incident.declared", "reopened": "runbook.incident.reopened"}.get(
            outcome, "runbook.incident.duplicate-alert"),
        resource={"prefect.resource.id": f"runbook.incident.{recorded.id}",
                  "prefect.resource.name": recorded.title},
        payload={"severity": recorded.severity.value, "fingerprint": recorded.fingerprint, "reason": reason,
                 "flow_run_id": flow_run_id()},
    )
    response_run = None
    if (created or reopened) and params.respond != "none":
        from flows._response import first_response, reopen_response  # here: the form's imports stay light

        if created:
            await first_response(recorded)  # the page, the status page and #incidents first, in this (warm) run
        else:  # the fault returned: page again, "the problem returned", the severity's procedure once more
            await reopen_response(recorded, admitted.event)
        response_run = await start_response(recorded, params.respond)
    if reopened:
        get_run_logger().warning("%s reopened: %s", recorded.id, admitted.event.summary if admitted.event else "")
    return Declared(incident_id=recorded.id, created=created, reopened=reopened, severity=recorded.severity,
                    reason=reason, response_run_id=response_run)


def _task_name() -> str:
    from prefect.runtime import task_run

    params = task_run.parameters.get("params")
    alert = getattr(params, "alert", None)
    return f"declare {alert.fingerprint if alert is not None else 'alert'}"[:100]


@task(name="declare-alert", retries=0, cache_policy=NO_CACHE, task_run_name=_task_name)
async def declare_alert(params: DeclareParams) -> Declared:
    """Declare an alert as a Prefect background task (`declare_alert.delay(params)`, run by the long-running task
    worker of `runbook up`: deployments/warm_start.py): a warm process, no poll and no process start before the
    page. The declaration runs in this task run itself (declare-incident's body, not a flow run of it: creating a
    nested flow run and its states through the API came before the page, 0.1-0.3 s and more on a loaded server);
    its steps (admit, the page, the status page, Slack) are task runs under it in the UI, and a page it leaves
    pending names this task run as its sender (tasks/pagerduty.py: the sweep's dead-sender check reads it)."""
    return await declare_incident.fn(params)
