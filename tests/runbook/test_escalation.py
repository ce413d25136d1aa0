"""The escalation schedule follows the runbook's contact table and the severity's response time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runbook.escalation import escalation_schedule, wait_limit
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
