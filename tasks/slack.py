"""Slack tasks: post to a runbook channel (#incidents, #engineering, #operations) and record it on the timeline.

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

from runbook.clients.slack import CHANNELS, SlackClient
from runbook.errors import InputError, IntegrationError
from runbook.models import EventKind
from runbook.policy import get_policy
from tasks.common import open_client
from tasks.incident import record

log = logging.getLogger("runbook.tasks.slack")


class SlackResult(BaseModel):
    """What happened to one message."""

    channel: str
    sent: bool
    reason: str = ""
    event_id: int | None = None


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
    key = channel_key(channel)
    display = get_policy().channels().get(key, f"#{key}")
    sent, reason = False, ""
    try:
        async with open_client(SlackClient) as slack:
            await slack.post(key, text)
        sent = True
    except IntegrationError as exc:  # not configured, rejected, or still failing after the client's retries
        reason = str(exc)
        _logger().warning("Slack message to %s not sent: %s", display, reason)
    event = await record(
        incident_id,
        kind,
        (summary or f"Posted to {display}: {text.splitlines()[0] if text else ''}")
        + ("" if sent else " (not sent)"),
        {**(details or {}), "channel": display, "sent": sent, "reason": reason, "text": text},
        actor=actor,
    )
    return SlackResult(channel=display, sent=sent, reason=reason, event_id=event.id if event else None)
