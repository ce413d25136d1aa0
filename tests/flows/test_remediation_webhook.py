"""webhook-check against the drill: rotated secret repaired, failed events resent and processed once."""

import pytest

from flows.webhook_check import WebhookCheckParams, webhook_check
from runbook.drill import DrillStack
from tests.flows.remediation_support import apply_env, decide, drill_fixture, new_incident  # noqa: F401


async def test_rotated_secret_is_repaired_and_events_resent(drill: DrillStack,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The app gets the endpoint's secret, is redeployed, and Stripe's failed events are delivered once each."""
    apply_env(monkeypatch, drill.inject("stripe-webhook-secret"))
    failed = [e.id for e in drill.stripe.failed_events()]
    assert failed and not drill.healthy("stripe-webhook-secret")
    incident = await new_incident()
    result = await decide(webhook_check(WebhookCheckParams(incident_id=incident, verify_within_seconds=20)),
                          incident)
    assert result.outcome == "verified", result.detail
    assert drill.healthy("stripe-webhook-secret")
    processed = drill.query("select id from public.stripe_events_processed where id = any($1::text[])", failed)
    assert sorted(r["id"] for r in processed) == sorted(failed)
    assert drill.stripe.endpoint.secret not in str(result.model_dump())


async def test_rejection_changes_nothing(drill: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected webhook repair writes no env var and resends nothing."""
    apply_env(monkeypatch, drill.inject("stripe-webhook-secret"))
    failed = {e.id for e in drill.stripe.failed_events()}
    incident = await new_incident()
    result = await decide(webhook_check(WebhookCheckParams(incident_id=incident)), incident, decision="reject")
    assert result.outcome == "rejected"
    assert {e.id for e in drill.stripe.failed_events()} == failed
    assert not [r for r in drill.vercel.requests if "/env" in r.path and r.method == "POST"]
    assert not [r for r in drill.stripe.requests if r.path.endswith("/retry")]


async def test_healthy_webhook_is_nothing_to_do(drill: DrillStack) -> None:
    """A healthy webhook is reported as nothing to do, without an approval."""
    result = await webhook_check(WebhookCheckParams())
    assert result.outcome == "nothing_to_do", result.detail
    assert "webhook healthy" in result.detail
