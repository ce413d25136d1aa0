"""The escalation schedule follows the runbook's contact table and the severity's response time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runbook.escalation import escalation_schedule, pending_steps, plan_of, step_key, wait_limit
from runbook.models import Incident, Severity
from runbook.policy import Policy

T0 = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def _incident(sev: Severity) -> Incident:
    return Incident(title="x", severity=sev, created_at=T0)


def test_p0_pages_oncall_then_lead_at_15_then_cto_at_30() -> None:
    """P0: on-call at once, engineering lead at 15 min, CTO at 30 min, SLA at 15 min."""
    steps = escalation_schedule(_incident(Severity.P0), Policy())
    pages = [(s.at - T0, s.contact.role) for s in steps if s.action == "page" and s.contact]
    assert pages == [(timedelta(0), "On-Call Engineer"), (timedelta(minutes=15), "Engineering Lead"),
                     (timedelta(minutes=30), "CTO")]
    assert [s.at - T0 for s in steps if s.action == "sla"] == [timedelta(minutes=15)]


def test_p1_chain_is_stretched_to_its_response_time() -> None:
    """P1 (30 min response): lead at 30 min, CTO at 60 min."""
    steps = escalation_schedule(_incident(Severity.P1), Policy())
    assert [s.at - T0 for s in steps if s.action == "page"] == [timedelta(0), timedelta(minutes=30),
                                                                 timedelta(minutes=60)]


def test_p2_reminds_then_pages_at_the_sla() -> None:
    """P2 (2 h): a reminder at half the SLA, then on-call paged when it runs out; nobody paged at once."""
    steps = escalation_schedule(_incident(Severity.P2), Policy())
    assert [(s.action, s.at - T0) for s in steps] == [("remind", timedelta(hours=1)), ("page", timedelta(hours=2)),
                                                      ("sla", timedelta(hours=2))]


def test_wait_limit_covers_the_whole_chain() -> None:
    """The acknowledgement wait outlasts the last escalation step."""
    assert wait_limit(_incident(Severity.P0), Policy()) == timedelta(minutes=45)


def _changed(incident: Incident, severity: Severity, after: timedelta) -> Incident:
    """Return the incident as a person's set-severity leaves it `after` its declaration."""
    return incident.model_copy(update={"severity": severity, "severity_set_at": T0 + after})


def test_a_p0_lowered_to_p2_after_its_first_page_keeps_only_p2s_reminder_and_sla() -> None:
    """Lowered to P2 at 5 min, on-call already paged: P2's reminder at 1 h and SLA at 2 h from the change remain;
    no lead, no CTO, on-call not paged again."""
    p0 = _incident(Severity.P0)
    policy = Policy()
    done = {step_key(s, p0) for s in escalation_schedule(p0, policy)[:1]}  # the first page
    p2 = _changed(p0, Severity.P2, timedelta(minutes=5))
    assert plan_of(p2) != plan_of(p0)
    left = pending_steps(p2, policy, done)
    assert [(s.action, s.at - T0) for s in left] == [("remind", timedelta(minutes=65)),
                                                     ("sla", timedelta(minutes=125))]


def test_a_p2_raised_to_p0_follows_p0s_chain_from_the_change() -> None:
    """Raised to P0 at 10 min after P2's nothing-yet: the whole P0 chain and its SLA, counted from the change."""
    p2 = _incident(Severity.P2)
    p0 = _changed(p2, Severity.P0, timedelta(minutes=10))
    left = pending_steps(p0, Policy(), set())
    assert [(s.action, s.contact.role if s.contact else None, s.at - T0) for s in left] == [
        ("page", "On-Call Engineer", timedelta(minutes=10)), ("page", "Engineering Lead", timedelta(minutes=25)),
        ("sla", None, timedelta(minutes=25)), ("page", "CTO", timedelta(minutes=40))]


def test_a_missed_sla_counts_once_per_plan() -> None:
    """An SLA recorded under one plan is not the next plan's: after a change the new response time can be missed."""
    p1 = _incident(Severity.P1)
    policy = Policy()
    done = {step_key(s, p1) for s in escalation_schedule(p1, policy)}  # everything of P1 taken
    assert pending_steps(p1, policy, done) == []
    p0 = _changed(p1, Severity.P0, timedelta(minutes=70))
    assert [s.action for s in pending_steps(p0, policy, done)] == ["sla"]  # every contact was paged already
