"""PagerDuty Events API v2: trigger, acknowledge, resolve; dedup_key = incident id makes each idempotent.

PagerDuty's document (PagerDuty/api-schema reference/events-v2/openapiv3.json, "API Response Codes & Retry Logic")
says to retry 429, 5xx and network errors "after some time", and "if each of the events your monitoring system is
sending is important, be sure to retry on a 429 response code, preferably with a back off". A page is the most
important event we send, so events are retried under `PAGE_POLICY`: exponential backoff with jitter (Retry-After
honoured up to 5 minutes) for up to 10 minutes, not the ~30 s of other calls. The dedup_key makes every retry safe.
`on_retry` lets the caller say, while it waits, that the page is still pending. Each event is an action
(`acting`, its timeout the policy's `max_total_wait`): a throttle is waited out while that time allows, else given
up at once, saying so (the caller keeps the page pending).

`PagerDutyRestClient` reads what people did in PagerDuty (the polling alternative to V3 webhooks): the incidents of
a dedup key, `GET /incidents?incident_key=…` (reference/REST/openapiv3.json), with `Authorization: Token token=…`
and the versioned `Accept: application/vnd.pagerduty+json;version=2`. A 429 waits for `ratelimit-reset` (the REST
API's rate-limit headers, docs/REST-API/04-Rate-Limits.md) through the shared retry.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, SecretStr

from runbook.clients._http import (
    BaseClient,
    HttpClient,
    RetryHook,
    RetryPolicy,
    Sleeper,
    acting,
    parse_json,
    require,
    secret_value,
    settings_secrets,
)
from runbook.errors import InputError, RequestRejected
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
        with acting(f"{action} event", self.http.policy.max_total_wait):
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


REST_ACCEPT = "application/vnd.pagerduty+json;version=2"
# A poll is cheap to skip (the next one comes within seconds): a short budget, Retry-After/ratelimit-reset honoured.
REST_POLICY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=4.0, max_total_wait=20.0, max_retry_after=20.0)
PERSON = "user_reference"


class PagerIncident(BaseModel):
    """What the REST API says of one incident: its status and who acknowledged (or last changed) it."""

    id: str
    status: Literal["triggered", "acknowledged", "resolved"]
    incident_key: str | None = None
    html_url: str | None = None
    acknowledgers: list[dict[str, Any]] = []
    last_status_change_by: dict[str, Any] | None = None
    last_status_change_at: str | None = None
    created_at: str | None = None

    def person(self) -> dict[str, Any] | None:
        """Return the user (a `user_reference`) who acknowledged or resolved it, or None (an integration did)."""
        for who in [*self.acknowledgers, self.last_status_change_by or {}]:
            if who.get("type") == PERSON:
                return who
        return None


# One quick try: a webhook answers PagerDuty within seconds, and the email is a nicety, not the acknowledgement.
LOOKUP_POLICY = RetryPolicy(max_attempts=1, connect_timeout=2.0, read_timeout=3.0)


class PagerDutyRestClient(BaseClient):
    """The REST API, read-only: the incidents of the dedup keys we sent."""

    vendor = VENDOR

    @classmethod
    def from_settings(cls, settings: Settings, *, policy: RetryPolicy = REST_POLICY,
                      sleep: Sleeper = asyncio.sleep) -> PagerDutyRestClient:
        """Build from settings; NotConfigured names RUNBOOK_PAGERDUTY_API_TOKEN when unset."""
        require(VENDOR, settings, "pagerduty_api_token")
        assert settings.pagerduty_api_token is not None
        headers = {"Authorization": f"Token token={settings.pagerduty_api_token.get_secret_value()}",
                   "Accept": REST_ACCEPT}
        http = HttpClient(VENDOR, settings.pagerduty_api_url.rstrip("/"), headers=headers, policy=policy,
                          secrets=settings_secrets(settings), sleep=sleep)
        return cls(http)

    async def user(self, user_id: str) -> dict[str, Any]:
        """Return a user's id, name, email and html_url (`GET /users/{id}`: webhooks name a person, not their email)."""
        if not user_id:
            raise InputError("a PagerDuty user id is required")
        data = await self.http.json("GET", f"/users/{quote(user_id, safe='')}", operation="get user")
        user = data.get("user") if isinstance(data, dict) else None
        if not isinstance(user, dict) or not user.get("id"):
            raise RequestRejected(VENDOR, "get user", "the answer has no user object")
        return {k: user[k] for k in ("id", "name", "email", "html_url") if user.get(k)}

    async def incidents(self, incident_key: str) -> list[PagerIncident]:
        """Return the incidents whose incident key (our dedup key) is `incident_key`, newest last."""
        if not incident_key:
            raise InputError("an incident_key (the dedup key we sent) is required")
        data = await self.http.json("GET", "/incidents", operation="list incidents",
                                    params={"incident_key": incident_key, "limit": "25"})
        if not isinstance(data, dict) or not isinstance(data.get("incidents"), list):
            raise RequestRejected(VENDOR, "list incidents", "the answer has no incidents array")
        out = []
        for item in data["incidents"]:
            acks = [a.get("acknowledger") or {} for a in item.get("acknowledgements") or [] if isinstance(a, dict)]
            out.append(PagerIncident(
                id=str(item.get("id")), status=item.get("status"), incident_key=item.get("incident_key"),
                html_url=item.get("html_url"), acknowledgers=acks,
                last_status_change_by=item.get("last_status_change_by"),
                last_status_change_at=item.get("last_status_change_at"), created_at=item.get("created_at")))
        return out


async def with_email(agent: dict[str, Any] | None, settings: Settings) -> dict[str, Any] | None:
    """Return a person's `user_reference` with their email added from the REST API when a token is configured.

    V3 webhooks and the REST incident name who acted (id, summary) but not their email; the record names both.
    Never raises: without a token, or when PagerDuty does not answer, the reference is returned as it came.
    """
    if not agent or agent.get("email") or agent.get("type") != "user_reference" or not agent.get("id") \
            or settings.pagerduty_api_token is None:
        return agent
    try:
        async with PagerDutyRestClient.from_settings(settings, policy=LOOKUP_POLICY) as rest:
            user = await rest.user(str(agent["id"]))
    except Exception:  # the acknowledgement counts without the email
        return agent
    return {**agent, **({"email": user["email"]} if user.get("email") else {})}
