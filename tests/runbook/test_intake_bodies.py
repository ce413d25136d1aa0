"""Every intake route reads its body in chunks and stops at its limit: a chunked upload with no Content-Length is
refused with 413 once it passes the limit, the rest never read (issue 21)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from runbook.intake import MAX_BODY_BYTES, create_app
from runbook.intake.pagerduty import MAX_WEBHOOK_BYTES
from tests.e2e.test_intake import CountingBody


@pytest.fixture
async def client(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """The intake app (ASGI) with every sender's secret configured."""
    monkeypatch.setenv("RUNBOOK_INTAKE_TOKEN", "intake-token-0123456789abcdef")
    monkeypatch.setenv("RUNBOOK_SLACK_SIGNING_SECRET", "slack-signing-secret-0123456789")
    monkeypatch.setenv("RUNBOOK_PAGERDUTY_WEBHOOK_SECRET", "pagerduty-webhook-secret-0123456789")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url="http://intake") as c:
        yield c


@pytest.mark.parametrize(("path", "limit", "content_type"), [
    ("/slack/interactions", MAX_BODY_BYTES, "application/x-www-form-urlencoded"),
    ("/pagerduty/webhooks", MAX_WEBHOOK_BYTES, "application/json"),
])
async def test_a_chunked_oversized_body_is_413_after_reading_up_to_the_limit(
        client: httpx.AsyncClient, path: str, limit: int, content_type: str) -> None:
    """A 200 MB chunked upload (no Content-Length) is answered 413, read only up to the route's limit."""
    body = CountingBody(chunks=3200)
    response = await client.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text
    assert str(limit) in response.json()["error"]
    assert body.pulled == limit // body.size + 1  # read up to the limit, not one chunk more


@pytest.mark.parametrize("path", ["/slack/interactions", "/pagerduty/webhooks"])
async def test_a_chunked_body_under_the_limit_is_read_and_checked(client: httpx.AsyncClient, path: str) -> None:
    """A small chunked body is read whole and reaches the signature check (401 unsigned), not 413."""
    body = CountingBody(chunks=2, size=1024)
    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and body.pulled == 2


async def test_a_signed_deeply_nested_pagerduty_webhook_is_400(client: httpx.AsyncClient) -> None:
    """A correctly signed PagerDuty webhook nested 10,000 levels deep is refused 400 (it was a RecursionError, 500)."""
    from runbook.intake.signatures import sign_pagerduty

    body = b"[" * 10_000 + b"]" * 10_000
    response = await client.post("/pagerduty/webhooks", content=body, headers={
        "Content-Type": "application/json",
        "X-PagerDuty-Signature": sign_pagerduty(body, "pagerduty-webhook-secret-0123456789")})
    assert response.status_code == 400, response.text
    assert "nested deeper" in response.json()["error"]


async def test_a_signed_deeply_nested_slack_payload_is_400(client: httpx.AsyncClient) -> None:
    """A correctly signed Slack interaction whose payload is nested 5,000 levels deep is refused 400, not 500."""
    import time

    from runbook.intake.signatures import sign_slack

    body = b"payload=" + b"[" * 5_000 + b"]" * 5_000
    stamp = str(int(time.time()))
    response = await client.post("/slack/interactions", content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sign_slack(body, "slack-signing-secret-0123456789", stamp)})
    assert response.status_code == 400, response.text
