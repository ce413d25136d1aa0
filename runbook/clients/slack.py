"""Slack: the Web API (bot token: chat.postMessage, chat.update, views.open, response_url) and, as the fallback
for plain messages, incoming webhooks, one per runbook channel (#incidents, #engineering, #operations).

With a bot token (RUNBOOK_SLACK_BOT_TOKEN, scope chat:write) messages carry Block Kit buttons (Approve / Reject on
an approval request, Acknowledge on a page); the clicks come back, signed, to the intake's POST /slack/interactions.
With webhooks only, messages are plain (no buttons). Slack answers Web API calls with HTTP 200 and
`{"ok": false, "error": "<code>"}` on failure (translated here: invalid_auth & co. → AuthError, others →
RequestRejected) and 429 with `Retry-After` when rate limited (retried by the shared HTTP helper; every call here
is a write, an action of the policy's total wait: a Retry-After within it is waited, one past it gives up at once).
Block builders (`approval_blocks`, `offer_blocks`, `decided_blocks`, `ack_blocks`, `reject_modal`) are plain data,
shared by the tasks that post and the intake that updates a message after a click.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    RetryPolicy,
    Sleeper,
    acting,
    secret_value,
    settings_secrets,
)
from runbook.errors import AuthError, NotConfigured, RequestRejected
from runbook.settings import ENV_PREFIX, Settings

VENDOR = "slack"
CHANNELS = ("incidents", "engineering", "operations")
AUTH_ERRORS = frozenset({"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired",
                         "no_permission", "missing_scope", "not_allowed_token_type"})
# Button action ids and the values they carry: "<flow run id>|<action>|<plan hash>" or the incident id
# (Request: the flow run is the dry run whose plan is shown).
APPROVE, REJECT, ACKNOWLEDGE = "runbook_approve", "runbook_reject", "runbook_acknowledge"
REQUEST = "runbook_request"
REJECT_MODAL = "runbook_reject_reason"
REASON_BLOCK, REASON_INPUT = "reason", "reason_input"


class SlackPost(BaseModel):
    """The result of posting to a channel (webhook or Web API)."""

    channel: str
    ok: bool
    response: str = ""
    channel_id: str | None = Field(None, description="Web API: the channel id Slack posted to (for chat.update)")
    ts: str | None = Field(None, description="Web API: the message's timestamp, its id (for chat.update)")


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
        """Build from settings; NotConfigured when neither a bot token nor a channel webhook is set."""
        if not secret_value(settings.slack_bot_token) and not any(settings.slack_webhook(c) for c in CHANNELS):
            names = ", ".join(f"{ENV_PREFIX}SLACK_WEBHOOK_{c.upper()}" for c in CHANNELS)
            raise NotConfigured(VENDOR, f"{ENV_PREFIX}SLACK_BOT_TOKEN or one of {names}")
        return cls(HttpClient(VENDOR, policy=policy, secrets=settings_secrets(settings), sleep=sleep), settings)

    @property
    def interactive(self) -> bool:
        """Return True when a bot token is set: messages can carry buttons."""
        return bool(secret_value(self._settings.slack_bot_token))

    def channel_ref(self, channel: str, display: str | None = None) -> str:
        """Return what chat.postMessage gets as `channel`: the configured id, else the channel's name."""
        name = _channel_name(channel)
        return self._settings.slack_channel_ids.get(name) or (display or f"#{name}")

    async def call(self, method: str, body: dict[str, Any], *, idempotent: bool = False) -> dict[str, Any]:
        """Call a Web API method with the bot token; return its body or raise (Slack's `ok: false` translated)."""
        token = secret_value(self._settings.slack_bot_token)
        if not token:
            raise NotConfigured(VENDOR, f"{ENV_PREFIX}SLACK_BOT_TOKEN")
        url = f"{self._settings.slack_api_url.rstrip('/')}/{method}"
        with acting(method, self.http.policy.max_total_wait):  # a write: a Retry-After within its time is waited
            data = await self.http.json("POST", url, operation=method, idempotent=idempotent, json=body,
                                        headers={"Authorization": f"Bearer {token}"})
        if not isinstance(data, dict):
            raise RequestRejected(VENDOR, method, "answer is not a JSON object")
        if data.get("ok") is not True:
            code = self.http.redact(str(data.get("error") or "not ok"))
            if code in AUTH_ERRORS:
                raise AuthError(VENDOR, method, code, 200)
            raise RequestRejected(VENDOR, method, code, 200)
        return data

    async def post_message(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
                           *, display: str | None = None) -> SlackPost:
        """chat.postMessage to a runbook channel; return the channel id and ts (needed to update it)."""
        body: dict[str, Any] = {"channel": self.channel_ref(channel, display), "text": text}
        if blocks:
            body["blocks"] = blocks
        data = await self.call("chat.postMessage", body)
        return SlackPost(channel=_channel_name(channel), ok=True, channel_id=str(data.get("channel") or ""),
                         ts=str(data.get("ts") or ""))

    async def update_message(self, channel_id: str, ts: str, text: str,
                             blocks: list[dict[str, Any]] | None = None) -> None:
        """chat.update a message in place (an empty `blocks` list removes the buttons)."""
        await self.call("chat.update", {"channel": channel_id, "ts": ts, "text": text, "blocks": blocks or []},
                        idempotent=True)

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """views.open a modal for the user who clicked (the trigger id is valid for 3 seconds)."""
        await self.call("views.open", {"trigger_id": trigger_id, "view": view})

    async def respond(self, response_url: str, body: dict[str, Any]) -> None:
        """POST to an interaction's response_url: an ephemeral answer, or replace the original message."""
        if not response_url.startswith(("https://", "http://")):
            raise RequestRejected(VENDOR, "response_url", "not an http(s) URL")
        with acting("response_url", self.http.policy.max_total_wait):
            await self.http.request("POST", response_url, operation="response_url", idempotent=True, json=body)

    def configured_channels(self) -> list[str]:
        """Return the channels that have a webhook."""
        return [c for c in CHANNELS if self._settings.slack_webhook(c)]

    async def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
                   *, display: str | None = None) -> SlackPost:
        """Post `text` (and Block Kit `blocks`) to a channel; not retried once it may have been delivered.

        With a bot token through chat.postMessage (the answer has the message's ts); else the channel's webhook.
        """
        if self.interactive:
            return await self.post_message(channel, text, blocks, display=display)
        name = _channel_name(channel)
        hook = self._settings.slack_webhook(name)
        if not hook or not hook.get_secret_value():
            raise NotConfigured(VENDOR, f"{ENV_PREFIX}SLACK_WEBHOOK_{name.upper()}")
        payload: dict[str, Any] = {"text": text}
        if blocks:
            payload["blocks"] = blocks
        with acting(f"post to #{name}", self.http.policy.max_total_wait):
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


# -- Block Kit ------------------------------------------------------------------------------------------------

def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text[:3000]}


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": text}, "action_id": action_id,
                              "value": value}
    if style:
        button["style"] = style
    return button


def approval_value(flow_run_id: str, action: str, plan_hash: str) -> str:
    """Return a button's value: what the click binds to (the run, the action, the exact plan)."""
    return f"{flow_run_id}|{action}|{plan_hash}"


def parse_approval_value(value: str) -> tuple[str, str, str]:
    """Return (flow run id, action, plan hash) from a button value; ValueError when malformed."""
    parts = value.split("|")
    if len(parts) != 3 or not all(parts):
        raise ValueError("not a runbook approval button value")
    return parts[0], parts[1], parts[2]


def approval_blocks(*, action: str, summary: str, steps: list[str], warnings: list[str], plan_hash: str,
                    flow_run_id: str, url: str | None, incident_id: str | None,
                    two_person_requester: str | None = None) -> list[dict[str, Any]]:
    """Return the approval request: summary, steps, warnings, hash, the run's link and Approve / Reject."""
    head = f"*Approval needed: {action}*" + (f" ({incident_id})" if incident_id else "") + f"\n{summary}"
    blocks = _plan_blocks(head, steps, warnings)
    context = [f"Plan hash `{plan_hash}`: approve only this plan; it is re-checked before acting."]
    if two_person_requester:
        context.append(f"Two-person rule: the approver must not be the requester ({two_person_requester}).")
    if url:
        context.append(f"<{url}|Open the run in Prefect>")
    blocks.append({"type": "context", "block_id": "hash", "elements": [_mrkdwn(" ".join(context))]})
    value = approval_value(flow_run_id, action, plan_hash)
    blocks.append({"type": "actions", "block_id": "decide", "elements": [
        _button("Approve", APPROVE, value, "primary"), _button("Reject", REJECT, value, "danger")]})
    return blocks


def _plan_blocks(head: str, steps: list[str], warnings: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "section", "block_id": "plan", "text": _mrkdwn(head)}]
    if steps:
        blocks.append({"type": "section", "block_id": "steps",
                       "text": _mrkdwn("*Steps*\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)))})
    if warnings:
        blocks.append({"type": "section", "block_id": "warnings",
                       "text": _mrkdwn("*Warnings*\n" + "\n".join(f"• :warning: {w}" for w in warnings))})
    return blocks


def offer_blocks(*, action: str, summary: str, steps: list[str], warnings: list[str], plan_hash: str,
                 flow_run_id: str, url: str | None, incident_id: str | None) -> list[dict[str, Any]]:
    """Return a dry run's plan with a Request button: a click starts the remediation for real, requested by the
    verified clicker (someone else must then approve it when the action has the two-person rule)."""
    head = f"*Plan (dry run): {action}*" + (f" ({incident_id})" if incident_id else "") + f"\n{summary}"
    blocks = _plan_blocks(head, steps, warnings)
    context = f"Plan hash `{plan_hash}`. Nothing was changed. Request it to start the remediation; it asks for " \
              "approval before acting."
    if url:
        context += f" <{url}|Open the dry run in Prefect>"
    blocks.append({"type": "context", "block_id": "hash", "elements": [_mrkdwn(context)]})
    blocks.append({"type": "actions", "block_id": "request", "elements": [
        _button("Request this remediation", REQUEST, approval_value(flow_run_id, action, plan_hash), "primary")]})
    return blocks


def decided_blocks(text: str, *, summary: str = "") -> list[dict[str, Any]]:
    """Return a decided request's blocks: what happened, no buttons."""
    blocks = [{"type": "section", "block_id": "decided", "text": _mrkdwn(text)}]
    if summary:
        blocks.insert(0, {"type": "section", "block_id": "plan", "text": _mrkdwn(summary)})
    return blocks


def ack_blocks(text: str, incident_id: str) -> list[dict[str, Any]]:
    """Return a page's message with an Acknowledge button bound to the incident."""
    return [{"type": "section", "block_id": "page", "text": _mrkdwn(text)},
            {"type": "actions", "block_id": "ack",
             "elements": [_button("Acknowledge", ACKNOWLEDGE, incident_id, "primary")]}]


def reject_modal(value: str, *, action: str, plan_hash: str, message: dict[str, str]) -> dict[str, Any]:
    """Return the modal that asks for the reason of a rejection (the button's value rides in private_metadata)."""
    import json

    return {
        "type": "modal", "callback_id": REJECT_MODAL,
        "title": {"type": "plain_text", "text": "Reject the plan"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"value": value, **message}),
        "blocks": [
            {"type": "section", "text": _mrkdwn(f"Reject *{action}* (plan `{plan_hash}`)? Nothing will change.")},
            {"type": "input", "block_id": REASON_BLOCK, "label": {"type": "plain_text", "text": "Why?"},
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                         "max_length": 500}},
        ],
    }
