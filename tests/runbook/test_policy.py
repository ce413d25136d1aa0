"""The runbook's tables as data: its numbers are the defaults, and a policy file overrides them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from runbook.errors import ConfigError
from runbook.models import Alert, ImpactLevel, Severity
from runbook.policy import Policy, load_policy


@pytest.fixture
def policy() -> Policy:
    """Return the default policy."""
    return Policy()


def test_response_times_are_the_runbooks(policy: Policy) -> None:
    """P0 15 min, P1 30 min, P2 2 h, P3 24 h."""
    assert [policy.response_time(s) for s in Severity] == [
        timedelta(minutes=15), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=24)]


def test_key_metrics_are_the_runbooks(policy: Policy) -> None:
    """Response < 2 s, errors < 1 %, uptime > 99.9 %, pool < 80 %, queries < 500 ms, connections < 100."""
    m = policy.key_metrics
    assert (m.response_time_s, m.error_rate_pct, m.uptime_pct) == (2.0, 1.0, 99.9)
    assert (m.pool_utilisation_pct, m.query_time_ms, m.active_connections) == (80.0, 500.0, 100)


def test_alert_rules_map_levels_to_severities(policy: Policy) -> None:
    """Critical alerts are P0, warnings P1, info P2/P3, with the runbook's thresholds."""
    critical = {r.name for r in policy.alert_rules if r.level == "critical"}
    assert critical == {"application_down", "database_unavailable", "payment_processing_failed"}
    assert all(r.severity is Severity.P0 for r in policy.alert_rules if r.level == "critical")
    assert all(r.severity is Severity.P1 for r in policy.alert_rules if r.level == "warning")
    assert all(r.severity in {Severity.P2, Severity.P3} for r in policy.alert_rules if r.level == "info")
    assert policy.rule("high_error_rate").threshold == 5.0
    assert policy.rule("slow_response_time").threshold == 5.0


def test_rule_threshold_comparison(policy: Policy) -> None:
    """5.1 s breaches the 5 s rule; 5.0 s does not."""
    rule = policy.rule("slow_response_time")
    assert rule.breached(5.1) and not rule.breached(5.0)


def test_escalation_chain_order_and_times(policy: Policy) -> None:
    """On-call immediately, lead at 15 min, CTO at 30; secondary DevOps/security 1 h, legal 2 h."""
    assert [(c.role, c.after_minutes) for c in policy.chain()] == [
        ("On-Call Engineer", 0), ("Engineering Lead", 15), ("CTO", 30)]
    assert [(c.role, c.after_minutes) for c in policy.chain("secondary")] == [
        ("DevOps Engineer", 60), ("Security Engineer", 60), ("Legal/Compliance", 120)]


def test_communication_matrix(policy: Policy) -> None:
    """Three Slack channels; customer notice and executive summary for P0/P1; report in 24 h, lessons in 1 week."""
    c = policy.communication
    assert policy.channels() == {"incidents": "#incidents", "engineering": "#engineering",
                                 "operations": "#operations"}
    assert c.customer_notice_for == [Severity.P0, Severity.P1] == c.executive_summary_for
    assert c.status_page_for == list(Severity)
    assert (c.detailed_report_hours, c.lessons_learned_days) == (24, 7)


def test_review_cadence_is_monthly(policy: Policy) -> None:
    """The runbook is reviewed monthly, next after 2025-02-27."""
    assert policy.review.cadence_days == 30 and str(policy.review.next_review) == "2025-02-27"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Site completely down", Severity.P0), ("Billing broken for new students", Severity.P1),
     ("Slow performance on the dashboard", Severity.P2), ("UI glitches in the course list", Severity.P3)],
)
def test_classify_the_runbooks_examples(policy: Policy, text: str, expected: Severity) -> None:
    """The runbook's own examples land in their severity."""
    assert policy.classify_text(text) is expected


@pytest.mark.parametrize(
    ("user", "business", "expected"),
    [("high", "high", Severity.P0), ("high", "low", Severity.P1), ("medium", "medium", Severity.P2),
     ("low", "low", Severity.P3)],
)
def test_classify_impact(policy: Policy, user: str, business: str, expected: Severity) -> None:
    """User × business impact gives a severity."""
    assert policy.classify_impact(ImpactLevel(user), ImpactLevel(business)) is expected


def test_alert_rule_wins_over_words(policy: Policy) -> None:
    """An alert that names a rule takes that rule's severity whatever its summary says."""
    alert = Alert(source="monitor", fingerprint="x", summary="UI glitch", rule="database_unavailable")
    assert policy.classify_alert(alert)[0] is Severity.P0


def test_policy_file_overrides_yaml(tmp_path: Path) -> None:
    """A YAML file overrides one number and keeps every other default."""
    f = tmp_path / "policy.yaml"
    f.write_text("severities:\n  P0:\n    response_minutes: 5\nmonitoring:\n  breach_cycles: 3\n")
    p = load_policy(f)
    assert p.response_time(Severity.P0) == timedelta(minutes=5)
    assert p.response_time(Severity.P1) == timedelta(minutes=30)
    assert p.monitoring.breach_cycles == 3


def test_policy_file_toml_with_contacts(tmp_path: Path) -> None:
    """A TOML file can fill the escalation contacts the runbook leaves as [Name]."""
    f = tmp_path / "policy.toml"
    f.write_text('[[escalation]]\nrole = "On-Call Engineer"\nname = "Ana"\nroute = "pagerduty"\n'
                 'after_minutes = 0\n[[escalation]]\nrole = "CTO"\nname = "Chen"\nroute = "phone"\n'
                 'address = "+1 555 0100"\nafter_minutes = 30\n')
    assert [c.name for c in load_policy(f).chain()] == ["Ana", "Chen"]


def test_invalid_policy_file_names_the_field(tmp_path: Path) -> None:
    """A bad value fails with a message naming its field."""
    f = tmp_path / "policy.yaml"
    f.write_text("key_metrics:\n  uptime_pct: 140\n")
    with pytest.raises(ConfigError, match=r"key_metrics\.uptime_pct"):
        load_policy(f)


def test_unknown_policy_key_is_refused(tmp_path: Path) -> None:
    """A misspelt key is an error, not silently ignored."""
    f = tmp_path / "policy.yaml"
    f.write_text("monitoring:\n  breach_cycle: 3\n")
    with pytest.raises(ConfigError, match="breach_cycle"):
        load_policy(f)
