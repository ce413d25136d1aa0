"""PagerDuty Events API v2: trigger, acknowledge, resolve; dedup_key = incident id makes each idempotent.

PagerDuty's document (PagerDuty/api-schema reference/events-v2/openapiv3.json, "API Response Codes & Retry Logic")
says to retry 429, 5xx and network errors "after some time", and "if each of the events your monitoring system is
sending is important, be sure to retry on a 429 response code, preferably with a back off". A page is the most
important event we send, so events are retried under `PAGE_POLICY`: exponential backoff with jitter (Retry-After
honoured up to 5 minutes) for up to 10 minutes, not the ~30 s of other calls. The dedup_key makes every retry safe.
`on_retry` lets the caller say, while it waits, that the page is still pending.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from runbook.clients._http import (
    BaseClient,
    HttpClient,
    RetryHook,
    RetryPolicy,
    Sleeper,
    parse_json,
    require,
    secret_value,
    settings_secrets,
)
from runbook.errors import InputError
from runbook.settings import Settings

VENDOR = "pagerduty"
Severity = Literal["critical", "error", "warning", "info"]
ROUTING_KEY = re.compile(r"^[A-Za-z0-9]{32}$")
# Minutes, not seconds: a page must not be dropped because PagerDuty throttled or failed for a while.
PAGE_POLICY = RetryPolicy(max_attempts=40, base_delay=1.0, max_delay=60.0, max_total_wait=600.0,
                          max_retry_after=300.0)


class PagerDutyResult(BaseModel):
    """PagerDuty's answer to an event: 202 `{status, dedup_key, message}`."""

    status: str
    dedup_key: str | None = None
    message: str | None = None


def routing_key_shape(key: SecretStr | str | None) -> str | None:
    """Return None when the key looks like an Events v2 integration key (32 alphanumerics), else why not."""
    raw = secret_value(key)
    if not raw:
        return "unset"
    if not ROUTING_KEY.match(raw):
        return f"not 32 alphanumeric characters (length {len(raw)})"
    return None


class PagerDutyClient(BaseClient):
    """Typed client of the Events API v2 (no auth header: the routing key is in the body)."""

    vendor = VENDOR

    def __init__(self, http: HttpClient, routing_key: SecretStr, events_url: str) -> None:
        super().__init__(http)
        self._routing_key = routing_key
        self.events_url = events_url

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = PAGE_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> PagerDutyClient:
        """Build from settings; NotConfigured names RUNBOOK_PAGERDUTY_ROUTING_KEY when unset."""
        require(VENDOR, settings, "pagerduty_routing_key")
        assert settings.pagerduty_routing_key is not None
        http = HttpClient(VENDOR, policy=policy, secrets=settings_secrets(settings), sleep=sleep)
        return cls(http, settings.pagerduty_routing_key, settings.pagerduty_events_url)

    async def _send(self, action: str, dedup_key: str, payload: dict[str, Any] | None = None, *,
                    on_retry: RetryHook | None = None) -> PagerDutyResult:
        if not dedup_key:
            raise InputError("a PagerDuty event needs a dedup_key (the incident id)")
        body: dict[str, Any] = {
            "routing_key": self._routing_key.get_secret_value(),
            "event_action": action,
            "dedup_key": dedup_key,
        }
        if payload is not None:
            body["payload"] = payload
        # Idempotent thanks to dedup_key: 429/5xx/timeouts are retried; 400 never is.
        response = await self.http.request(
            "POST", self.events_url, operation=f"{action} event", idempotent=True, json=body, on_retry=on_retry
        )
        data = parse_json(VENDOR, f"{action} event", response) or {}
        return PagerDutyResult(
            status=str(data.get("status") or "success"),
            dedup_key=data.get("dedup_key") or dedup_key,
            message=data.get("message"),
        )

    async def trigger(
        self,
        dedup_key: str,
        summary: str,
        *,
        source: str = "permit-school-runbook",
        severity: Severity = "critical",
        custom_details: dict[str, Any] | None = None,
        on_retry: RetryHook | None = None,
    ) -> PagerDutyResult:
        """Page on-call (re-sending with the same dedup_key does not page twice); retried for minutes."""
        if severity not in ("critical", "error", "warning", "info"):
            raise InputError(f"PagerDuty severity must be critical|error|warning|info, not {severity!r}")
        payload = {
            "summary": summary[:1024],
            "source": source,
            "severity": severity,
            "custom_details": custom_details or {},
        }
        return await self._send("trigger", dedup_key, payload, on_retry=on_retry)

    async def acknowledge(self, dedup_key: str) -> PagerDutyResult:
        """Acknowledge the alert of an incident."""
        return await self._send("acknowledge", dedup_key)

    async def resolve(self, dedup_key: str) -> PagerDutyResult:
        """Resolve the alert of an incident."""
        return await self._send("resolve", dedup_key)
