"""Stripe: the webhook checks and repairs speak Stripe's published API (and the CLI's resend), checked exchange by
exchange; a resend counts as delivered only once a re-read of the event says so."""

from __future__ import annotations

import json

from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.stripe import StripeClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RateLimited
from tests.contracts.contract import Recorder, Spec, assert_conforms

VENDOR = "stripe"


def _watch(recorder: Recorder, stripe: StripeClient) -> None:
    recorder.watch(stripe)  # the SDK's httpx client (and the app client: not Stripe, filtered below)


def _stripe_only(recorder: Recorder, drill: DrillStack) -> list:
    return [e for e in recorder.exchanges if e.url.port == drill.stripe.port]


async def test_every_stripe_read_conforms(drill: DrillStack, recorder: Recorder) -> None:
    """Endpoints, failed events (paged) and one event's payload are documented requests with documented answers."""
    drill.inject("stripe-webhook-secret")
    async with StripeClient.from_settings(drill.settings()) as stripe:
        _watch(recorder, stripe)
        check = await stripe.check_webhook_endpoint()
        failed = await stripe.failed_events(limit=2, max_pages=3)
        payload = await stripe.get_event_payload(failed[0].id)
    assert check.ok and len(failed) == 2 and json.loads(payload)["id"] == failed[0].id
    assert_conforms(VENDOR, _stripe_only(recorder, drill))


async def test_resend_is_confirmed_by_rereading_the_event(drill: DrillStack, recorder: Recorder) -> None:
    """Stripe answers the resend while the event is still pending; the client re-reads it until it is delivered."""
    drill.inject("stripe-webhook-secret")
    drill.vercel.set_env("STRIPE_WEBHOOK_SECRET", drill.stripe.endpoint.secret)
    drill.vercel.redeploy()
    drill.vercel.wait_idle()
    drill.stripe.redelivery_delay = 0.5
    async with StripeClient.from_settings(drill.settings()) as stripe:
        failed = await stripe.failed_events()
        _watch(recorder, stripe)
        results = await stripe.resend_events([failed[0].id], confirm_timeout=30, poll_interval=0.2)
    assert [r.ok for r in results] == [True] and "confirmed" in results[0].detail
    exchanges = _stripe_only(recorder, drill)
    retry = next(e for e in exchanges if e.path.endswith("/retry"))
    assert retry.response_json()["pending_webhooks"] == 1  # the answer came before the delivery
    rereads = [e for e in exchanges if e.method == "GET" and e.path == f"/v1/events/{failed[0].id}"]
    assert rereads and rereads[-1].response_json()["pending_webhooks"] == 0
    assert_conforms(VENDOR, exchanges)


async def test_resend_that_never_lands_is_not_reported_delivered(drill: DrillStack) -> None:
    """Before the repair the app rejects the redelivery: after the confirm window the event is still pending."""
    drill.inject("stripe-webhook-secret")
    async with StripeClient.from_settings(drill.settings()) as stripe:
        failed = await stripe.failed_events()
        results = await stripe.resend_events([failed[0].id], confirm_timeout=1.0, poll_interval=0.2)
    assert [r.ok for r in results] == [False] and "still pending for 1 endpoint" in results[0].detail
    assert drill.stripe.attempts and drill.stripe.attempts[-1].status == 400


async def test_stripe_errors_conform(drill: DrillStack, recorder: Recorder, fast: RetryPolicy) -> None:
    """A 429, a 404 and a 401 are answered with Stripe's documented error object."""
    settings = drill.settings()
    drill.stripe.inject(Fault.rate_limit(retry_after=0, times=1, path="/v1/webhook_endpoints"))
    async with StripeClient.from_settings(settings, policy=fast) as stripe:
        _watch(recorder, stripe)
        await stripe.list_webhook_endpoints()
        results = await stripe.resend_events(["evt_doesnotexist00000000"], endpoint_id=drill.stripe.endpoint.id)
    bad = settings.model_copy(update={"stripe_secret_key": SecretStr("sk_test_wrong000000000000")})
    async with StripeClient.from_settings(bad, policy=fast) as stripe:
        _watch(recorder, stripe)
        try:
            await stripe.list_webhook_endpoints()
        except Exception:  # noqa: BLE001 - the 401 itself is what is checked
            pass
    assert not results[0].ok
    assert [e.status for e in _stripe_only(recorder, drill)] == [429, 200, 404, 401]
    assert_conforms(VENDOR, _stripe_only(recorder, drill))


def test_stripes_current_examples_fit_the_extracted_schemas() -> None:
    """Stripe's own example event and webhook endpoint of today (fixtures3.json at HEAD) fit the extract's schemas."""
    spec = Spec.load(VENDOR)
    fixtures = spec.doc["x-fixtures"]["objects"]
    for name in ("event", "webhook_endpoint"):
        schema = {"$ref": f"#/components/schemas/{name}"}
        assert spec.errors(fixtures[name], schema, name) == []
        assert spec.undeclared(fixtures[name], schema) == []


async def test_past_the_documented_per_second_limit_the_read_backs_off_and_lands(drill: DrillStack,
                                                                                 recorder: Recorder) -> None:
    """Stripe counts requests per second per endpoint and answers 429 with the `rate_limit` error object, no
    Retry-After and no rate-limit header (none documented): the client backs off until the second rolls."""
    now = [1_800_000_000.999]  # a millisecond before a window boundary: any backoff rolls it
    drill.stripe.rate_limit, drill.stripe.rate_clock = 2, lambda: now[0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds  # the stand-in's window rolls while the client waits

    async with StripeClient.from_settings(drill.settings(), sleep=sleep) as stripe:
        _watch(recorder, stripe)
        for _ in range(3):
            assert await stripe.list_webhook_endpoints()
    exchanges = _stripe_only(recorder, drill)
    statuses = [e.status for e in exchanges]
    assert statuses[:3] == [200, 200, 429] and statuses[-1] == 200 and set(statuses[2:-1]) == {429}
    throttled = exchanges[2]
    assert throttled.response_json()["error"]["code"] == "rate_limit"
    assert throttled.response_json()["error"]["type"] == "invalid_request_error"
    assert not {k.lower() for k in throttled.response_headers} & {"retry-after", "x-ratelimit-reset",
                                                                   "ratelimit-reset"}
    assert waits and all(0 < w <= 8 for w in waits)  # the policy's backoff: nothing from the answer to wait for
    assert_conforms(VENDOR, exchanges)


async def test_a_read_still_throttled_says_stripes_own_code_type_and_message(drill: DrillStack,
                                                                             recorder: Recorder) -> None:
    """Every attempt throttled: the RateLimited error keeps Stripe's error object (code `rate_limit`, type
    `invalid_request_error`, its message), says it was a read that gave up, and holds no key."""
    drill.stripe.rate_limit = 0
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    settings = drill.settings()
    async with StripeClient.from_settings(settings, sleep=sleep) as stripe:
        _watch(recorder, stripe)
        try:
            await stripe.list_webhook_endpoints()
        except RateLimited as exc:
            error = exc
    assert error.use == "read" and error.status == 429 and len(waits) == 3
    assert "rate_limit (invalid_request_error): Request rate limit exceeded" in str(error)
    assert error.vendor_detail.startswith("rate_limit (invalid_request_error): ")
    key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else "unset"
    assert key not in str(error) and key not in repr(error)
    assert {e.status for e in _stripe_only(recorder, drill)} == {429}
    assert_conforms(VENDOR, _stripe_only(recorder, drill))
