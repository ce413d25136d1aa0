"""Fault injection on the stand-ins (429 + Retry-After, 5xx, latency, hang, refused connections) and records."""

from __future__ import annotations

import time

import httpx
import pytest

from runbook.drill import DrillStack, Fault


def _models(stack: DrillStack, client: httpx.Client) -> httpx.Response:
    return client.get(f"{stack.urls['openai']}/v1/models", headers={"Authorization": f"Bearer {stack.openai.api_key}"})


def test_rate_limit_answers_429_with_retry_after_then_recovers(stack: DrillStack, http: httpx.Client) -> None:
    """Fault.rate_limit(times=2) answers 429 + Retry-After twice, then normally."""
    stack.openai.inject(Fault.rate_limit(retry_after=3, times=2))
    codes = [_models(stack, http) for _ in range(3)]
    assert [r.status_code for r in codes] == [429, 429, 200]
    assert codes[0].headers["retry-after"] == "3"


def test_rate_limit_uses_the_vendor_error_shape(stack: DrillStack, http: httpx.Client) -> None:
    """A Vercel 429 is Vercel's own: {"error": {"code": "too_many_requests"}}, X-RateLimit-Reset (UTC epoch seconds)
    `retry_after` from now, no Retry-After (Vercel documents none)."""
    stack.vercel.inject(Fault.rate_limit(retry_after=20))
    before = time.time()
    resp = http.get(f"{stack.urls['vercel']}/v6/deployments", headers={"Authorization": f"Bearer {stack.vercel.token}"})
    assert resp.status_code == 429
    assert resp.json() == {"error": {"code": "too_many_requests", "message": "Rate limit exceeded"}}
    assert "retry-after" not in resp.headers and resp.headers["x-ratelimit-remaining"] == "0"
    assert before + 20 <= int(resp.headers["x-ratelimit-reset"]) <= time.time() + 21


def _throttled(stack: DrillStack, http: httpx.Client, vendor: str) -> httpx.Response:
    """One request to a rate-limited endpoint of a vendor stand-in, authenticated as the runbook is."""
    if vendor == "vercel":
        return http.get(f"{stack.urls['vercel']}/v6/deployments",
                        headers={"Authorization": f"Bearer {stack.vercel.token}"})
    if vendor == "sentry":
        return http.get(f"{stack.urls['sentry']}/api/0/organizations/{stack.sentry.org}/events/",
                        headers={"Authorization": f"Bearer {stack.sentry.token}"})
    if vendor == "stripe":
        return http.get(f"{stack.urls['stripe']}/v1/webhook_endpoints",
                        headers={"Authorization": f"Bearer {stack.stripe.secret_key}"})
    page = stack.statuspage
    return http.get(f"{stack.urls['statuspage']}/v1/pages/{page.page_id}/components",
                    headers={"Authorization": f"OAuth {page.api_key}"})


@pytest.mark.parametrize("vendor", ["vercel", "sentry", "stripe", "statuspage"])
def test_an_injected_rate_limit_answers_as_the_vendors_own(stack: DrillStack, http: httpx.Client,
                                                           vendor: str) -> None:
    """Vendors that document no Retry-After: the fault's 429 has the same body and headers as the stand-in's own
    rate limit (the one that models the documented limit), so a client cannot tell them apart."""
    standin = getattr(stack, vendor)
    try:
        if vendor == "statuspage":
            standin.rolling_limit = (1, 60.0)
        else:
            standin.rate_limit = 1
        standin.inject(Fault.rate_limit(retry_after=5))
        injected = _throttled(stack, http, vendor)
        assert _throttled(stack, http, vendor).status_code != 429  # the fault's answer used none of the window
        own = _throttled(stack, http, vendor)
    finally:
        stack.reset()
    names = {"content-type", "content-length", "date", "server"}
    assert injected.status_code == own.status_code == 429
    assert injected.json() == own.json()
    assert set(injected.headers) - names == set(own.headers) - names
    assert "retry-after" not in injected.headers


def test_error_fault_answers_5xx_for_n_requests(stack: DrillStack, http: httpx.Client) -> None:
    """Fault.error(502, times=1) answers 502 once."""
    stack.openai.inject(Fault.error(502, times=1))
    assert [_models(stack, http).status_code for _ in range(2)] == [502, 200]


def test_fault_limited_to_a_path_prefix(stack: DrillStack, http: httpx.Client) -> None:
    """A fault with a path prefix leaves other paths alone."""
    stack.openai.inject(Fault.error(503, times=None, path="/v1/models/"))
    one = http.get(f"{stack.urls['openai']}/v1/models/gpt-4o",
                   headers={"Authorization": f"Bearer {stack.openai.api_key}"})
    assert one.status_code == 503 and _models(stack, http).status_code == 200


def test_latency_fault_delays_answers(stack: DrillStack, http: httpx.Client) -> None:
    """Fault.latency adds its delay before a normal answer."""
    stack.openai.inject(Fault.latency(0.3, times=1))
    started = time.perf_counter()
    assert _models(stack, http).status_code == 200
    assert time.perf_counter() - started >= 0.3


def test_hang_fault_outlasts_the_client_timeout(stack: DrillStack) -> None:
    """Fault.hang makes the client time out; clear_faults releases the server side."""
    stack.openai.inject(Fault.hang(seconds=30))
    with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        _models(stack, client)
    stack.openai.clear_faults()
    with httpx.Client(timeout=5) as client:
        assert _models(stack, client).status_code == 200


def test_refuse_fault_closes_the_port_until_cleared(stack: DrillStack, http: httpx.Client) -> None:
    """Fault.refuse makes connections fail; clear_faults listens on the same port again."""
    port = stack.slack.port
    stack.slack.inject(Fault.refuse())
    with httpx.Client(timeout=2) as fresh, pytest.raises(httpx.ConnectError):
        fresh.post(stack.env["RUNBOOK_SLACK_WEBHOOK_INCIDENTS"], json={"text": "x"})
    stack.slack.clear_faults()
    resp = http.post(stack.env["RUNBOOK_SLACK_WEBHOOK_INCIDENTS"], json={"text": "x"})
    assert resp.status_code == 200 and stack.slack.port == port


def test_requests_are_recorded(stack: DrillStack, http: httpx.Client) -> None:
    """A stand-in records method, path, query, headers and parsed body of each request."""
    http.post(stack.env["RUNBOOK_PAGERDUTY_EVENTS_URL"] + "?x=1", json={"event_action": "trigger"},
              headers={"X-Test": "yes"})
    record = stack.pagerduty.requests[-1]
    assert (record.method, record.path, record.query, record.status) == ("POST", "/v2/enqueue", {"x": "1"}, 400)
    assert record.header("x-test") == "yes" and record.body == {"event_action": "trigger"}
    assert record.time <= time.time()


def test_faulted_requests_are_recorded_with_the_fault(stack: DrillStack, http: httpx.Client) -> None:
    """A request answered by a fault is recorded with the fault kind and status."""
    stack.sentry.inject(Fault.error(503))
    http.get(f"{stack.urls['sentry']}/api/0/organizations/x/events/")
    record = stack.sentry.requests[-1]
    assert (record.fault, record.status) == ("error", 503)
