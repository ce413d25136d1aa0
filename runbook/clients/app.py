"""The Permit School app itself: `/api/health` and the auth endpoint probe."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, Field, SecretStr

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    RetryPolicy,
    Sleeper,
    elapsed_ms,
    require,
    secret_value,
    settings_secrets,
)
from runbook.settings import Settings

VENDOR = "app"
ANY_ERROR = range(400, 600)
HEALTHY = {"ok", "healthy", "pass", "up"}


class AppHealth(BaseModel):
    """What `/api/health` answered (a 5xx with a JSON body is an answer, not an exception)."""

    status_code: int
    ok: bool = Field(description="2xx and the body reports a healthy status")
    status: str | None = Field(None, description="The status the app reports (healthy, degraded, unhealthy …)")
    failing: dict[str, str] = Field(default_factory=dict, description="Checks that are not healthy → their error")
    body: dict[str, Any] | None = None
    latency_ms: float

    @property
    def answered(self) -> bool:
        """Return True when the app answered 2xx (healthy or degraded)."""
        return 200 <= self.status_code < 300


class AuthProbe(BaseModel):
    """The auth endpoint's answer: alive means it answered like an auth endpoint (401 without a token)."""

    status_code: int
    alive: bool
    authenticated: bool
    detail: str = ""
    latency_ms: float


class AppClient(BaseClient):
    """Typed client of the app's own endpoints (not retried: each call is an observation)."""

    vendor = VENDOR

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> AppClient:
        """Build from settings; NotConfigured names RUNBOOK_APP_URL when unset."""
        require(VENDOR, settings, "app_url")
        http = HttpClient(
            VENDOR, settings.app_url or "", policy=policy, secrets=settings_secrets(settings), sleep=sleep
        )
        return cls(http)

    async def health(self) -> AppHealth:
        """GET /api/health; ok when 2xx and the body does not report a failing status."""
        started = time.perf_counter()
        response = await self.http.request("GET", "/api/health", operation="health", accept=range(500, 600))
        body: dict[str, Any] | None = None
        try:
            parsed = response.json()
            body = parsed if isinstance(parsed, dict) else {"value": parsed}
        except ValueError:
            body = None
        reported = (body or {}).get("status")
        ok = response.is_success and str(reported or "ok").lower() in HEALTHY
        return AppHealth(
            status_code=response.status_code,
            ok=ok,
            status=str(reported) if reported is not None else None,
            failing=_failing_checks(body),
            body=body,
            latency_ms=elapsed_ms(started),
        )

    async def auth_probe(self, token: SecretStr | str | None = None) -> AuthProbe:
        """POST /api/auth/profile: without a token a 401 means alive; with a token expect 2xx."""
        headers = {"Authorization": f"Bearer {secret_value(token)}"} if token else {}
        started = time.perf_counter()
        response = await self.http.request(
            "POST", "/api/auth/profile", operation="auth probe", accept=ANY_ERROR, headers=headers, json={}
        )
        status = response.status_code
        if token:
            alive, authenticated = response.is_success, response.is_success
            detail = "token accepted" if authenticated else f"token not accepted (HTTP {status})"
        else:
            alive, authenticated = status == 401, False
            detail = "401 without a token: endpoint alive" if alive else f"expected 401, got HTTP {status}"
        return AuthProbe(
            status_code=status,
            alive=alive,
            authenticated=authenticated,
            detail=detail,
            latency_ms=elapsed_ms(started),
        )


def _failing_checks(body: dict[str, Any] | None) -> dict[str, str]:
    """Return `checks` entries whose status is not healthy, with their error (or their status)."""
    checks = (body or {}).get("checks")
    if not isinstance(checks, dict):
        return {}
    out: dict[str, str] = {}
    for name, check in checks.items():
        if isinstance(check, dict) and str(check.get("status", "healthy")).lower() not in HEALTHY:
            out[str(name)] = str(check.get("error") or check.get("status"))[:300]
    return out
