"""Atlassian Statuspage: incidents (the runbook's four states), impact, body, component statuses.

Statuspage allows "1 request / second as measured on a 60 second rolling window" per API token and answers 420 or
429 past it ("Error codes 420 or 429 indicate that you have exceeded the rate limit and the request has been
rejected"); the document promises no Retry-After or rate-limit header. Every request of every client holding the
same token goes through one shared `Pacer` (one slot per `PACE` seconds), so a burst (incident + components +
update) is spaced instead of throttled. A 420/429 that still comes (another process using the key) is retried
under `POLICY`: exponential backoff from 1-2 s, doubling, never under half its cap (equal jitter), for up to a
minute (the rolling window's length); each wait pushes the shared pacer back by as much, so the key's other requests
hold back too. A Retry-After, should Statuspage send one, is honoured; the pacing never relies on one. Errors are
`{"message": …}`. Writes (incident create/update, component status) are actions (`acting`, the policy's minute):
a throttle is waited out within that minute, else given up at once saying the write's time ran out; the reads give
up as reads.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    Pacer,
    RetryPolicy,
    Sleeper,
    acting,
    require,
    secret_value,
    settings_secrets,
    shared_pacer,
)
from runbook.errors import InputError
from runbook.settings import Settings, fingerprint

VENDOR = "statuspage"
PACE = 1.0  # seconds between two requests with one API token (the documented 1 request / second)
# A throttled request backs off 1-2 s, 2-4, 4-8, 8-16, 8-16, 8-16 s (at most 60 s: the rolling window's length).
POLICY = DEFAULT_POLICY.with_(max_attempts=7, base_delay=2.0, max_delay=16.0, max_total_wait=60.0)
IncidentStatus = Literal["investigating", "identified", "monitoring", "resolved"]
Impact = Literal["none", "minor", "major", "critical"]
ComponentStatus = Literal["operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage"]


class StatusIncident(BaseModel):
    """A status-page incident; keep `id` on the incident record to update it later."""

    id: str
    name: str | None = None
    status: str | None = None
    impact: str | None = None
    shortlink: str | None = None
    component_ids: list[str] = Field(default_factory=list)


class Component(BaseModel):
    """A status-page component."""

    id: str
    name: str | None = None
    status: str | None = None


class StatuspageClient(BaseClient):
    """Typed client of one Statuspage page (`Authorization: OAuth <key>`)."""

    vendor = VENDOR

    def __init__(self, http: HttpClient, page_id: str, components: dict[str, str] | None = None) -> None:
        super().__init__(http)
        self.page_id = page_id
        self.components = dict(components or {})

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy = POLICY,
        sleep: Sleeper = asyncio.sleep,
        pacer: Pacer | None = None,
    ) -> StatuspageClient:
        """Build from settings (paced by the token's shared pacer unless one is given); NotConfigured names
        RUNBOOK_STATUSPAGE_API_KEY / _PAGE_ID when unset."""
        require(VENDOR, settings, "statuspage_api_key", "statuspage_page_id")
        key = secret_value(settings.statuspage_api_key)
        http = HttpClient(
            VENDOR,
            settings.statuspage_api_url.rstrip("/"),
            headers={"Authorization": f"OAuth {key}"},
            policy=policy,
            secrets=settings_secrets(settings),
            sleep=sleep,
            pacer=pacer if pacer is not None else _pacer(key, sleep),
        )
        return cls(http, settings.statuspage_page_id or "", settings.statuspage_components)

    def component_id(self, component: str) -> str:
        """Map a logical component (app, database, auth, payments) to its id; ids pass through."""
        return self.components.get(component, component)

    def _incident_body(
        self,
        *,
        name: str | None,
        status: str | None,
        body: str | None,
        impact_override: str | None,
        components: dict[str, str] | None,
    ) -> dict[str, Any]:
        _one_of("status", status, IncidentStatus)
        _one_of("impact_override", impact_override, Impact)
        incident: dict[str, Any] = {}
        if name is not None:
            incident["name"] = name
        if status is not None:
            incident["status"] = status
        if body is not None:
            incident["body"] = body
        if impact_override is not None:
            incident["impact_override"] = impact_override
        if components:
            mapped = {self.component_id(c): s for c, s in components.items()}
            for value in mapped.values():
                _one_of("component status", value, ComponentStatus)
            incident["component_ids"] = list(mapped)
            incident["components"] = mapped
        return {"incident": incident}

    async def create_incident(
        self,
        name: str,
        *,
        status: IncidentStatus = "investigating",
        body: str | None = None,
        impact_override: Impact | None = None,
        components: dict[str, ComponentStatus] | None = None,
    ) -> StatusIncident:
        """Create an incident (not retried after it may have landed: the caller keeps the returned id)."""
        payload = self._incident_body(
            name=name,
            status=status,
            body=body,
            impact_override=impact_override,
            components=dict(components or {}),
        )
        with acting("create incident", self.http.policy.max_total_wait):
            data = await self.http.json(
                "POST",
                f"/pages/{self.page_id}/incidents",
                operation="create incident",
                idempotent=False,
                json=payload,
            )
        return _incident(data)

    async def update_incident(
        self,
        incident_id: str,
        *,
        status: IncidentStatus | None = None,
        body: str | None = None,
        impact_override: Impact | None = None,
        components: dict[str, ComponentStatus] | None = None,
        name: str | None = None,
    ) -> StatusIncident:
        """Update an incident's status/impact/components; a `body` adds an update to its timeline."""
        payload = self._incident_body(
            name=name,
            status=status,
            body=body,
            impact_override=impact_override,
            components=dict(components or {}),
        )
        with acting("update incident", self.http.policy.max_total_wait):
            data = await self.http.json(
                "PATCH",
                f"/pages/{self.page_id}/incidents/{_safe(incident_id)}",
                operation="update incident",
                idempotent=True,
                json=payload,
            )
        return _incident(data)

    async def set_component_status(self, component: str, status: ComponentStatus) -> Component:
        """Set one component's status (logical name or id)."""
        _one_of("component status", status, ComponentStatus)
        with acting("update component", self.http.policy.max_total_wait):
            data = await self.http.json(
                "PATCH",
                f"/pages/{self.page_id}/components/{_safe(self.component_id(component))}",
                operation="update component",
                json={"component": {"status": status}},
            )
        return Component.model_validate({"id": self.component_id(component), **(data or {})})

    async def list_components(self) -> list[Component]:
        """List the page's components (a harmless authenticated call)."""
        data = await self.http.json("GET", f"/pages/{self.page_id}/components", operation="list components")
        return [Component.model_validate(c) for c in data or [] if isinstance(c, dict)]

    async def list_unresolved_incidents(self) -> list[StatusIncident]:
        """List the page's unresolved incidents."""
        data = await self.http.json(
            "GET", f"/pages/{self.page_id}/incidents/unresolved", operation="list unresolved incidents"
        )
        return [_incident(i) for i in data or [] if isinstance(i, dict)]


def _pacer(key: str, sleep: Sleeper) -> Pacer:
    """Return the token's process-wide pacer; a client with its own sleep (a test's) gets a pacer of its own."""
    if sleep is asyncio.sleep:
        return shared_pacer(f"{VENDOR}:{fingerprint(key)}", PACE)
    return Pacer(PACE)


def _incident(data: Any) -> StatusIncident:
    data = data if isinstance(data, dict) else {}
    components = data.get("components") or []
    ids = [str(c["id"]) for c in components if isinstance(c, dict) and c.get("id")]
    return StatusIncident(
        id=str(data.get("id") or ""),
        name=data.get("name"),
        status=data.get("status"),
        impact=data.get("impact"),
        shortlink=data.get("shortlink"),
        component_ids=ids,
    )


def _one_of(what: str, value: str | None, literal: Any) -> None:
    if value is not None and value not in get_args(literal):
        raise InputError(f"{what} must be one of {', '.join(get_args(literal))}, not {value!r}")


def _safe(value: str) -> str:
    if not value or any(c in value for c in "/?#& "):
        raise InputError(f"not a Statuspage id: {value[:40]!r}")
    return value
