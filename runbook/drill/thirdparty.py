"""Third parties the runbook only watches: OpenAI's `/v1/models`, and the vendors' public status pages.

Status pages live on one server under a prefix per vendor, in Statuspage format for supabase, vercel and openai
(`/<vendor>/api/v2/status.json`) and in Stripe's own format for stripe (`/stripe/current`).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.standin import StandIn, bearer, iso, json_response

MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
INDICATORS = {"none": "All Systems Operational", "minor": "Minor Service Outage",
              "major": "Partial System Outage", "critical": "Major System Outage"}
STATUSPAGE_VENDORS = ("supabase", "vercel", "openai")
STRIPE_LEVELS = {"none": "up", "minor": "degraded", "major": "down", "critical": "down"}
STRIPE_COMPONENTS = ("api", "dashboard", "checkout", "webhooks", "emails")


class OpenAIStandIn(StandIn):
    """`GET /v1/models` with a bearer key (401 with OpenAI's error shape otherwise)."""

    name = "openai"

    def __init__(self, *, api_key: str) -> None:
        self.api_key = api_key
        super().__init__()

    def error_body(self, status: int, message: str) -> Any:
        """Return OpenAI's `{"error": {"message", "type", "param", "code"}}`."""
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def routes(self) -> list[BaseRoute]:
        """Return the models routes."""
        return [Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/models/{model}", self._model, methods=["GET"])]

    def _guard(self, request: Request) -> Response | None:
        key = bearer(request)
        if key != self.api_key:
            shown = f"{key[:3]}***{key[-4:]}" if key else ""
            message = (f"Incorrect API key provided: {shown}." if key else
                       "You didn't provide an API key.")
            return json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                            "code": "invalid_api_key"}}, 401)
        return None

    @staticmethod
    def _model_json(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}

    async def _models(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        return json_response({"object": "list", "data": [self._model_json(m) for m in MODELS]})

    async def _model(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        model = request.path_params["model"]
        if model not in MODELS:
            return json_response({"error": {"message": f"The model '{model}' does not exist",
                                            "type": "invalid_request_error", "param": "model",
                                            "code": "model_not_found"}}, 404)
        return json_response(self._model_json(model))


class StatusPagesStandIn(StandIn):
    """Public status pages of supabase, vercel, openai (Statuspage format) and stripe (its own format)."""

    name = "status_pages"

    def __init__(self) -> None:
        self.indicators: dict[str, tuple[str, str]] = {}
        self.stripe_statuses: dict[str, str] = {}
        super().__init__()
        self.reset_state()

    def reset_state(self) -> None:
        """Every vendor operational."""
        self.indicators = {v: ("none", INDICATORS["none"]) for v in STATUSPAGE_VENDORS}
        self.stripe_statuses = dict.fromkeys(STRIPE_COMPONENTS, "up")

    def page_url(self, vendor: str) -> str:
        """Return the base URL of a vendor's status page."""
        return f"{self.base_url}/{vendor}"

    def set(self, vendor: str, indicator: str, description: str | None = None,
            component: str | None = None) -> None:
        """Set a vendor's indicator (none|minor|major|critical); for stripe, optionally one component."""
        if indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {', '.join(INDICATORS)}")
        with self._lock:
            if vendor == "stripe":
                level = STRIPE_LEVELS[indicator]
                for name in [component] if component else STRIPE_COMPONENTS:
                    self.stripe_statuses[name] = level
            else:
                self.indicators[vendor] = (indicator, description or INDICATORS[indicator])

    def routes(self) -> list[BaseRoute]:
        """Return the status routes."""
        return [Route("/{vendor}/api/v2/status.json", self._status, methods=["GET"]),
                Route("/{vendor}/api/v2/summary.json", self._status, methods=["GET"]),
                Route("/stripe/current", self._stripe, methods=["GET"])]

    def error_body(self, status: int, message: str) -> Any:
        """Return a plain error object."""
        return {"error": message}

    async def _status(self, request: Request) -> Response:
        vendor = request.path_params["vendor"]
        with self._lock:
            if vendor not in self.indicators:
                return json_response({"error": "Not found"}, 404)
            indicator, description = self.indicators[vendor]
        body: dict[str, Any] = {
            "page": {"id": f"{vendor}drill", "name": vendor.capitalize(), "url": self.page_url(vendor),
                     "time_zone": "Etc/UTC", "updated_at": iso(time.time())},
            "status": {"indicator": indicator, "description": description},
        }
        if request.url.path.endswith("summary.json"):
            body["components"], body["incidents"], body["scheduled_maintenances"] = [], [], []
        return json_response(body)

    async def _stripe(self, request: Request) -> Response:
        with self._lock:
            statuses = dict(self.stripe_statuses)
        worst = "down" if "down" in statuses.values() else "degraded" if "degraded" in statuses.values() else "up"
        message = {"up": "All services are online", "degraded": "Some services are degraded",
                   "down": "Some services are down"}[worst]
        return json_response({"largestatus": worst, "message": message, "statuses": statuses,
                              "time": iso(time.time())})
