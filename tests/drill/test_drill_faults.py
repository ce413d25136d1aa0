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
    """A Vercel 429 carries Vercel's {"error": {"code", "message"}} body."""
    stack.vercel.inject(Fault.rate_limit(retry_after=1))
    resp = http.get(f"{stack.urls['vercel']}/v6/deployments", headers={"Authorization": f"Bearer {stack.vercel.token}"})
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"


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
