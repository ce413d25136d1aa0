"""OpenAI liveness: `GET /v1/models` with the API key."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

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

VENDOR = "openai"


class OpenAILiveness(BaseModel):
    """OpenAI answered the models list."""

    models: int
    latency_ms: float


class OpenAIClient(BaseClient):
    """Typed client of the one OpenAI call the runbook makes."""

    vendor = VENDOR

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> OpenAIClient:
        """Build from settings; NotConfigured names RUNBOOK_OPENAI_API_KEY when unset."""
        require(VENDOR, settings, "openai_api_key")
        http = HttpClient(
            VENDOR,
            settings.openai_api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {secret_value(settings.openai_api_key)}"},
            policy=policy,
            secrets=settings_secrets(settings),
            sleep=sleep,
        )
        return cls(http)

    async def liveness(self) -> OpenAILiveness:
        """List models; raise AuthError (bad key), RateLimited (quota) or TransientError (down)."""
        started = time.perf_counter()
        body = await self.http.json("GET", "/v1/models", operation="list models")
        data = body.get("data", []) if isinstance(body, dict) else []
        return OpenAILiveness(models=len(data), latency_ms=elapsed_ms(started))
