"""The Stripe stand-in through stripe-python: endpoints, failed events, real signed deliveries, resend."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe

from runbook.drill import DrillStack


@pytest.fixture
def client(stack: DrillStack) -> stripe.StripeClient:
    """Return a StripeClient pointed at the stand-in."""
    return stripe.StripeClient(stack.stripe.secret_key, base_addresses={"api": stack.urls["stripe"]})


def test_client_lists_webhook_endpoints(stack: DrillStack, client: stripe.StripeClient) -> None:
    """stripe-python lists the app's enabled endpoint."""
    endpoints = client.v1.webhook_endpoints.list(params={"limit": 10})
    assert [(e.url, e.status) for e in endpoints.data] == [(stack.stripe.webhook_url, "enabled")]


def test_client_lists_failed_events(stack: DrillStack, client: stripe.StripeClient) -> None:
    """After a secret rotation, delivery_success=false lists the undelivered events with pending_webhooks."""
    since = int(time.time()) - 60
    stack.stripe.rotate_secret()
    emitted = {stack.stripe.emit("invoice.paid")["id"], stack.stripe.emit("invoice.payment_failed")["id"]}
    events = client.v1.events.list(params={"delivery_success": False, "created": {"gte": since}, "limit": 100})
    assert {e.id for e in events.data} == emitted
    assert all(e.pending_webhooks == 1 for e in events.data)


def test_client_retrieves_one_event(stack: DrillStack, client: stripe.StripeClient) -> None:
    """stripe-python retrieves an event by id."""
    event_id = stack.stripe.emit("invoice.paid")["id"]
    assert client.v1.events.retrieve(event_id).type == "invoice.paid"


def test_wrong_key_is_an_authentication_error(stack: DrillStack) -> None:
    """A wrong secret key raises stripe's AuthenticationError (401)."""
    bad = stripe.StripeClient("sk_test_wrong", base_addresses={"api": stack.urls["stripe"]})
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.webhook_endpoints.list()


def test_emit_delivers_a_signed_event_to_the_app(stack: DrillStack) -> None:
    """emit() POSTs the event to the app with a valid signature; the app processes it."""
    event = stack.stripe.emit("checkout.session.completed")
    delivery = stack.app.requests_to("/api/billing/webhook")[-1]
    stripe.WebhookSignature.verify_header(delivery.raw.decode(), delivery.header("stripe-signature"),
                                          stack.stripe.endpoint.secret, tolerance=300)
    assert event["pending_webhooks"] == 0 and delivery.status == 200
    assert stack.query("select id from public.stripe_events_processed where id = $1", event["id"])


def test_unsubscribed_event_types_are_not_delivered(stack: DrillStack) -> None:
    """An event type the endpoint does not listen to is not sent."""
    event = stack.stripe.emit("charge.refunded")
    assert event["pending_webhooks"] == 0 and stack.app.requests_to("/api/billing/webhook") == []


def test_resend_endpoint_redelivers_a_failed_event(stack: DrillStack, http: httpx.Client) -> None:
    """POST /v1/events/{id}/retry answers at once (still pending) and then delivers, once the app has the secret."""
    stack.stripe.rotate_secret()
    event_id = stack.stripe.emit("invoice.paid")["id"]
    stack.vercel.set_env("STRIPE_WEBHOOK_SECRET", stack.stripe.endpoint.secret)
    stack.vercel.redeploy()
    stack.vercel.wait_idle()
    resp = http.post(f"{stack.urls['stripe']}/v1/events/{event_id}/retry",
                     data={"webhook_endpoint": stack.stripe.endpoint.id},
                     headers={"Authorization": f"Bearer {stack.stripe.secret_key}"})
    assert resp.status_code == 200 and resp.json()["pending_webhooks"] == 1  # queued: answered before delivery
    deadline = time.monotonic() + 60  # bounds a hang only; the delivery follows within a fraction of a second
    while stack.stripe.failed_events() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.stripe.failed_events() == []
