"""Slack incoming-webhook stand-in: one URL per runbook channel (#incidents, #engineering, #operations).

`POST /services/T0DRILL/B<CHANNEL>/<token>` with `{"text"}` and/or `{"blocks"}` → 200 `ok` (plain text);
400 `invalid_payload` / `no_text`, 403 `invalid_token`, 404 `no_service`, like Slack.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from runbook.drill.standin import StandIn

CHANNELS = ("incidents", "engineering", "operations")


class SlackStandIn(StandIn):
    """Incoming webhooks for the runbook's channels."""

    name = "slack"

    def __init__(self) -> None:
        self.tokens = {channel: secrets.token_urlsafe(18) for channel in CHANNELS}
        self._messages: list[dict[str, Any]] = []
        super().__init__()

    def webhook_url(self, channel: str) -> str:
        """Return the incoming-webhook URL of a channel."""
        channel = channel.lstrip("#")
        return f"{self.base_url}/services/T0DRILL/B{channel.upper()}/{self.tokens[channel]}"

    def reset_state(self) -> None:
        """Forget every message."""
        self._messages = []

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Return the messages posted (to one channel, or all), oldest first."""
        with self._lock:
            return [dict(m) for m in self._messages if channel is None or m["channel"] == channel.lstrip("#")]

    def error_body(self, status: int, message: str) -> Any:
        """Return Slack's plain-text error."""
        return "rate_limited" if status == 429 else "service_unavailable"

    def routes(self) -> list[BaseRoute]:
        """Return the webhook route."""
        return [Route("/services/{team}/{bot}/{token}", self._post, methods=["POST"])]

    async def _post(self, request: Request) -> Response:
        bot = request.path_params["bot"]
        channel = bot[1:].lower() if bot.startswith("B") else ""
        if request.path_params["team"] != "T0DRILL" or channel not in self.tokens:
            return PlainTextResponse("no_service", 404)
        if not secrets.compare_digest(request.path_params["token"], self.tokens[channel]):
            return PlainTextResponse("invalid_token", 403)
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("invalid_payload", 400)
        if not isinstance(body, dict):
            return PlainTextResponse("invalid_payload", 400)
        if not body.get("text") and not body.get("blocks"):
            return PlainTextResponse("no_text", 400)
        with self._lock:
            self._messages.append({"channel": channel, "text": body.get("text"), "blocks": body.get("blocks"),
                                   "time": time.time(), "payload": body})
        return PlainTextResponse("ok")
