"""The Permit School app: health, maintenance mode, the profile endpoint, the Stripe webhook, Sentry reports."""

from __future__ import annotations

import json
import time

import httpx
import stripe

from runbook.drill import DrillStack


def _signed(payload: str, secret: str) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(payload, secret)
    return {"Content-Type": "application/json", "Stripe-Signature": header}


def _event(event_id: str = "evt_test_1") -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid", "created": int(time.time()),
                       "data": {"object": {"id": "in_1", "object": "invoice"}}})


def test_health_reports_latency_per_check(stack: DrillStack) -> None:
    """Each health check reports a status and a latency in milliseconds."""
    _, body = stack.health()
    assert all(isinstance(c["latency_ms"], float) and c["status"] == "healthy" for c in body["checks"].values())
    assert body["maintenance"] is False


def test_maintenance_mode_blocks_routes_but_not_health(stack: DrillStack, http: httpx.Client) -> None:
    """With maintenance_mode on, routes answer 503 and health says maintenance: true."""
    stack.execute("update public.app_flags set enabled = true where name = 'maintenance_mode'")
    resp = http.post(f"{stack.urls['app']}/api/auth/profile", headers={"Authorization": f"Bearer {stack.user_token()}"})
    code, body = stack.health()
    assert resp.status_code == 503 and resp.json()["error"] == "maintenance"
    assert code == 200 and body["maintenance"] is True


def test_profile_without_token_is_401(stack: DrillStack, http: httpx.Client) -> None:
    """POST /api/auth/profile without a bearer token answers 401 (the runbook's curl)."""
    assert http.post(f"{stack.urls['app']}/api/auth/profile").status_code == 401


def test_profile_with_forged_token_is_401(stack: DrillStack, http: httpx.Client) -> None:
    """A token not signed by the project is refused with 401."""
    forged = stack.user_token()[:-4] + "AAAA"
    resp = http.post(f"{stack.urls['app']}/api/auth/profile", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401


def test_webhook_accepts_a_valid_signature(stack: DrillStack, http: httpx.Client) -> None:
    """A payload signed with the app's secret is accepted and recorded once."""
    payload = _event("evt_valid_1")
    resp = http.post(f"{stack.urls['app']}/api/billing/webhook", content=payload,
                     headers=_signed(payload, stack.stripe.endpoint.secret))
    assert resp.status_code == 200 and resp.json() == {"received": True}
    assert stack.query("select type from public.stripe_events_processed where id = 'evt_valid_1'") == [
        {"type": "invoice.paid"}]


def test_webhook_rejects_a_wrong_signature(stack: DrillStack, http: httpx.Client) -> None:
    """A payload signed with another secret is rejected with 400."""
    payload = _event()
    resp = http.post(f"{stack.urls['app']}/api/billing/webhook", content=payload,
                     headers=_signed(payload, "whsec_not_the_right_one"))
    assert resp.status_code == 400


def test_webhook_rejects_the_runbooks_test_header(stack: DrillStack, http: httpx.Client) -> None:
    """The runbook's `Stripe-Signature: test` verification request gets 400."""
    resp = http.post(f"{stack.urls['app']}/api/billing/webhook", content='{"type":"test"}',
                     headers={"Stripe-Signature": "test"})
    assert resp.status_code == 400


def test_webhook_processes_each_event_once(stack: DrillStack, http: httpx.Client) -> None:
    """The same event delivered twice is answered as a duplicate the second time."""
    payload = _event("evt_dup_1")
    url = f"{stack.urls['app']}/api/billing/webhook"
    first = http.post(url, content=payload, headers=_signed(payload, stack.stripe.endpoint.secret))
    second = http.post(url, content=payload, headers=_signed(payload, stack.stripe.endpoint.secret))
    assert first.json() == {"received": True}
    assert second.status_code == 200 and second.json() == {"received": True, "duplicate": True}


def test_server_errors_are_reported_to_sentry(stack: DrillStack, http: httpx.Client) -> None:
    """Each 5xx the app answers becomes one Sentry event tagged with the deployment's release."""
    deployment = stack.vercel.deploy("broken")
    for _ in range(3):
        assert http.get(f"{stack.urls['app']}/").status_code == 500
    assert stack.sentry.count() == 3
    assert {e.release for e in stack.sentry.events} == {deployment.meta["githubCommitSha"]}


def test_every_request_served_is_a_sentry_transaction(stack: DrillStack, http: httpx.Client) -> None:
    """Each request the app serves, whatever its status, becomes one Sentry transaction tagged with the status."""
    http.get(f"{stack.urls['app']}/api/health")
    http.get(f"{stack.urls['app']}/")
    http.post(f"{stack.urls['app']}/api/auth/profile")
    assert [(t.transaction, t.tags["status_code"]) for t in stack.sentry.transactions] == [
        ("/api/health", "200"), ("/", "200"), ("/api/auth/profile", "401")]
    assert stack.sentry.events == []


def test_fail_fraction_fails_that_share_of_requests_but_not_health(stack: DrillStack, http: httpx.Client) -> None:
    """fail_fraction 0.2 answers 500 to every fifth request (each reported to Sentry) while /api/health stays 200."""
    stack.app.fail_fraction = 0.2
    statuses = [http.get(f"{stack.urls['app']}/").status_code for _ in range(10)]
    assert statuses.count(500) == 2 and statuses.count(200) == 8
    assert http.get(f"{stack.urls['app']}/api/health").status_code == 200
    assert stack.sentry.count() == 2


def test_app_uses_the_production_deployments_env(stack: DrillStack, http: httpx.Client) -> None:
    """A project env change reaches the app only after a redeploy."""
    stack.stripe.rotate_secret()
    stack.vercel.set_env("STRIPE_WEBHOOK_SECRET", stack.stripe.endpoint.secret)
    payload = _event("evt_env_1")
    url = f"{stack.urls['app']}/api/billing/webhook"
    before = http.post(url, content=payload, headers=_signed(payload, stack.stripe.endpoint.secret))
    stack.vercel.redeploy()
    stack.vercel.wait_idle()
    after = http.post(url, content=payload, headers=_signed(payload, stack.stripe.endpoint.secret))
    assert (before.status_code, after.status_code) == (400, 200)
