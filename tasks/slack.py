"""Slack tasks: post to a runbook channel (#incidents, #engineering, #operations) and record it on the timeline;
post an approval request with Approve / Reject buttons, a page with an Acknowledge button, and update a message
after the decision (buttons need the Web API: RUNBOOK_SLACK_BOT_TOKEN; with webhooks only they are plain text).

A channel without a webhook, or a post that still failed after the client's retries, does not fail the flow:
the message is recorded as not sent (details.sent = false, with the reason) and a warning is logged, so the
on-call engineer sees what did not go out and the procedure carries on. The webhook URL is a secret: it never
appears in a log line, an event or an error (the client redacts its messages).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from runbook.clients.slack import CHANNELS, SlackClient, ack_blocks, approval_blocks, decided_blocks, offer_blocks
from runbook.errors import InputError, IntegrationError
from runbook.models import EventKind
from runbook.policy import get_policy
from runbook.settings import get_settings
from tasks.common import open_client
from tasks.incident import record

log = logging.getLogger("runbook.tasks.slack")


class SlackResult(BaseModel):
    """What happened to one message."""

    channel: str
    sent: bool
    reason: str = ""
    event_id: int | None = None
    channel_id: str | None = None
    ts: str | None = None
    interactive: bool = False


def channel_key(channel: str) -> str:
    """Return the runbook channel's purpose key ('incidents', 'engineering', 'operations') of '#x' or 'x'."""
    name = channel.lstrip("#").strip().lower()
    if name in CHANNELS:
        return name
    for key, display in get_policy().channels().items():
        if display.lstrip("#").lower() == name:
            return key
    raise InputError(f"unknown Slack channel {channel!r}; the runbook's channels are {', '.join(CHANNELS)}")


def _logger() -> Any:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run
        return log


@task(name="post_slack_message", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def post_slack_message(
    channel: str,
    text: str,
    incident_id: str | None = None,
    kind: str = EventKind.SLACK,
    summary: str | None = None,
    details: dict[str, Any] | None = None,
    actor: str = "runbook",
) -> SlackResult:
    """Post `text` to a runbook channel; record it (kind, sent or not and why) on the incident when one is given."""
    return await _post(channel, text, None, incident_id=incident_id, kind=kind, summary=summary, details=details,
                       actor=actor)


async def _post(channel: str, text: str, blocks: Any, *, incident_id: str | None, kind: str, summary: str | None,
                details: dict[str, Any] | None, actor: str) -> SlackResult:
    """Post (blocks built by `blocks(interactive)` when given), record it, never raise for Slack's failures."""
    key = channel_key(channel)
    display = get_policy().channels().get(key, f"#{key}")
    sent, reason, interactive = False, "", False
    post = None
    try:
        async with open_client(SlackClient) as slack:
            interactive = slack.interactive
            post = await slack.post(key, text, blocks(interactive) if blocks else None, display=display)
        sent = True
    except IntegrationError as exc:  # not configured, rejected, or still failing after the client's retries
        reason = str(exc)
        _logger().warning("Slack message to %s not sent: %s", display, reason)
    event = await record(
        incident_id,
        kind,
        (summary or f"Posted to {display}: {text.splitlines()[0] if text else ''}")
        + ("" if sent else " (not sent)"),
        {**(details or {}), "channel": display, "sent": sent, "reason": reason, "text": text,
         **({"buttons": interactive} if blocks else {})},
        actor=actor,
    )
    return SlackResult(channel=display, sent=sent, reason=reason, event_id=event.id if event else None,
                       channel_id=post.channel_id if post else None, ts=post.ts if post else None,
                       interactive=interactive)


@task(name="post_approval_request", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def post_approval_request(
    *, action: str, summary: str, steps: list[str], warnings: list[str], plan_hash: str, flow_run_id: str,
    url: str | None, incident_id: str | None, two_person_requester: str | None = None,
) -> SlackResult:
    """Post an approval request to #incidents: with Approve / Reject buttons (Web API), else plain text."""
    text = (f"Approval needed: {action}: {summary} (plan {plan_hash}). "
            f"Decide in Slack or in Prefect: {url or 'the paused run of ' + action}")

    def blocks(interactive: bool) -> list[dict[str, Any]] | None:
        if not interactive:
            return None
        return approval_blocks(action=action, summary=summary, steps=steps, warnings=warnings, plan_hash=plan_hash,
                               flow_run_id=flow_run_id, url=url, incident_id=incident_id,
                               two_person_requester=two_person_requester)

    return await _post("incidents", text, blocks, incident_id=incident_id, kind=EventKind.SLACK,
                       summary=f"Slack: approval needed for {action} (plan {plan_hash})",
                       details={"plan_hash": plan_hash, "action": action, "url": url}, actor="runbook")


@task(name="post_remediation_offer", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def post_remediation_offer(
    *, action: str, summary: str, steps: list[str], warnings: list[str], plan_hash: str, flow_run_id: str,
    url: str | None, incident_id: str | None,
) -> SlackResult | None:
    """Post a dry run's plan to #incidents with a Request button (Web API only; nothing without the Slack app)."""
    token = get_settings().slack_bot_token
    if token is None or not token.get_secret_value():
        return None  # a plain message would offer nothing to click
    text = f"Plan (dry run): {action}: {summary} (plan {plan_hash}). Nothing was changed."

    def blocks(interactive: bool) -> list[dict[str, Any]] | None:
        return offer_blocks(action=action, summary=summary, steps=steps, warnings=warnings, plan_hash=plan_hash,
                            flow_run_id=flow_run_id, url=url, incident_id=incident_id) if interactive else None

    return await _post("incidents", text, blocks, incident_id=incident_id, kind=EventKind.SLACK,
                       summary=f"Slack: dry-run plan of {action} offered with a Request button (plan {plan_hash})",
                       details={"plan_hash": plan_hash, "action": action, "offer": True}, actor="runbook")


@task(name="post_ack_request", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def post_ack_request(incident_id: str, text: str) -> SlackResult:
    """Post a page to #incidents with an Acknowledge button (Web API), else as plain text."""

    def blocks(interactive: bool) -> list[dict[str, Any]] | None:
        return ack_blocks(text, incident_id) if interactive else None

    return await _post("incidents", text, blocks, incident_id=incident_id, kind=EventKind.SLACK,
                       summary=f"Slack: page posted with an Acknowledge button ({incident_id})",
                       details={"acknowledge": True}, actor="runbook")


@task(name="update_slack_message", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def update_slack_message(channel_id: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> bool:
    """Update a posted message in place (chat.update); False (and a warning) when Slack refused or failed."""
    try:
        async with open_client(SlackClient) as slack:
            await slack.update_message(channel_id, ts, text, blocks)
        return True
    except IntegrationError as exc:
        _logger().warning("could not update the Slack message: %s", exc)
        return False


async def show_decision(channel_id: str, ts: str, text: str, summary: str = "") -> bool:
    """Replace an approval request's message with its decision (buttons removed)."""
    return await update_slack_message(channel_id, ts, text, decided_blocks(text, summary=summary))
