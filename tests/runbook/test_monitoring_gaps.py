"""Blind monitoring's plain core (issue 19): what a gap is called, which rules it blinds, when it is declared."""

from __future__ import annotations

from runbook.errors import AuthError, RateLimited, RequestRejected
from runbook.monitoring import GAP_RULE, BreachState, advance_gaps, probe_failure
from runbook.monitoring.gaps import blind_rules, gap_reason, gap_steps
from runbook.monitoring.probes import Measurement
from runbook.policy import Policy


def sentry_gap(exc: Exception) -> str:
    """Return the words a Sentry probe failure becomes."""
    return gap_reason("sentry", probe_failure(exc).message)


def test_sentry_gaps_are_named_specifically() -> None:
    """401, 403, 429 and a rejected query each say what is wrong with Sentry, not 'unreachable'."""
    assert sentry_gap(AuthError("sentry", "count errors", "Invalid token", 401)).startswith(
        "the monitor cannot measure Sentry: 401 Unauthorized — Sentry refused the auth token")
    assert "403 Forbidden — the auth token lacks a scope" in sentry_gap(
        AuthError("sentry", "count errors", "You do not have permission", 403))
    assert "429 rate limited" in sentry_gap(RateLimited("sentry", "count errors", None, detail="Rate limit exceeded"))
    assert "400 a rejected query" in sentry_gap(
        RequestRejected("sentry", "count requests", "Invalid query. Parse error", 400))


def test_other_sources_are_named_too() -> None:
    """A status page that times out and Stripe's 5xx say so, with the source's name."""
    assert gap_reason("status:openai", "timed out after 10 s") == (
        "the monitor cannot measure openai's status page: no answer within the probe timeout (timed out after 10 s)")
    assert gap_reason("stripe", "stripe list events failed (HTTP 503): down").startswith(
        "the monitor cannot measure Stripe: 503 server error")


def test_blind_rules_are_the_rules_on_the_gapped_metrics() -> None:
    """A Sentry gap blinds the rules on its metrics and no other."""
    measurements = [Measurement(metric="error_rate_pct", target="app", state="gap", source="sentry"),
                    Measurement(metric="traffic_anomaly", target="app", state="gap", source="sentry"),
                    Measurement(metric="app_up", target="app", value=1, source="app")]
    assert blind_rules("sentry", measurements, Policy().alert_rules) == ["high_error_rate", "unusual_traffic"]


def test_a_gap_is_declared_at_gap_cycles_and_recovers_once() -> None:
    """Four gapped cycles do nothing, the fifth declares, an open incident continues, a measured cycle recovers."""
    states: dict[str, BreachState] = {}
    actions = []
    for _ in range(5):
        [state] = advance_gaps(states, {"sentry": "401"})
        states[state.key] = state
        [step] = gap_steps([state], {"sentry": "401"}, 5)
        actions.append(step.action)
    assert actions == ["none"] * 4 + ["declare"]
    state = states[f"{GAP_RULE}:sentry"].model_copy(update={"incident_id": "inc-20261204-abcdef"})
    assert gap_steps([state], {"sentry": "401"}, 5)[0].action == "continuing"
    [measured] = advance_gaps({state.key: state}, {})
    assert measured.gap_cycles == 0 and gap_steps([measured], {}, 5)[0].action == "recovered"
