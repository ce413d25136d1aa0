"""Slack incoming webhooks, one per runbook channel (#incidents, #engineering, #operations)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    RetryPolicy,
    Sleeper,
    secret_value,
    settings_secrets,
)
from runbook.errors import NotConfigured, RequestRejected
from runbook.settings import ENV_PREFIX, Settings

VENDOR = "slack"
CHANNELS = ("incidents", "engineering", "operations")


class SlackPost(BaseModel):
    """The result of posting to a channel's webhook."""

    channel: str
    ok: bool
    response: str = ""


def webhook_shape(url: SecretStr | str | None) -> str | None:
    """Return None when the value looks like an incoming-webhook URL, else the problem (never the value)."""
    raw = secret_value(url)
    if not raw:
        return "unset"
    split = urlsplit(raw)
    if split.scheme not in ("http", "https") or not split.netloc:
        return "not an http(s) URL"
    if split.hostname == "hooks.slack.com" and not split.path.startswith("/services/"):
        return "not a /services/… incoming-webhook path"
    if len(split.path.strip("/")) < 8:
        return "path too short for a webhook"
    return None


def _channel_name(channel: str) -> str:
    return channel.lstrip("#").strip().lower()


class SlackClient(BaseClient):
    """Posts messages to the runbook's channels through their incoming webhooks."""

    vendor = VENDOR

    def __init__(self, http: HttpClient, settings: Settings) -> None:
        super().__init__(http)
        self._settings = settings

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> SlackClient:
        """Build from settings; NotConfigured when no channel webhook is set."""
        if not any(settings.slack_webhook(c) for c in CHANNELS):
            names = ", ".join(f"{ENV_PREFIX}SLACK_WEBHOOK_{c.upper()}" for c in CHANNELS)
            raise NotConfigured(VENDOR, f"one of {names}")
        return cls(HttpClient(VENDOR, policy=policy, secrets=settings_secrets(settings), sleep=sleep), settings)

    def configured_channels(self) -> list[str]:
        """Return the channels that have a webhook."""
        return [c for c in CHANNELS if self._settings.slack_webhook(c)]

    async def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> SlackPost:
        """Post `text` (and Block Kit `blocks`) to a channel; not retried once it may have been delivered."""
        name = _channel_name(channel)
        hook = self._settings.slack_webhook(name)
        if not hook or not hook.get_secret_value():
            raise NotConfigured(VENDOR, f"{ENV_PREFIX}SLACK_WEBHOOK_{name.upper()}")
        payload: dict[str, Any] = {"text": text}
        if blocks:
            payload["blocks"] = blocks
        response = await self.http.request(
            "POST", hook.get_secret_value(), operation=f"post to #{name}", idempotent=False, json=payload
        )
        body = response.text.strip()
        if body and body != "ok" and body.startswith("{"):
            data = response.json()
            if isinstance(data, dict) and data.get("ok") is False:
                reason = self.http.redact(str(data.get("error") or "not ok"))
                raise RequestRejected(VENDOR, f"post to #{name}", reason, response.status_code)
        return SlackPost(channel=name, ok=True, response=self.http.redact(body[:40]))
