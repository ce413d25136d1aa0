"""`runbook check`: one harmless authenticated call per configured integration, as a table or JSON.

Unconfigured integrations are listed as `unconfigured`, never as failures. A freeze of remediations (`runbook
freeze`) that holds this environment is printed under the table (stderr with --json). PagerDuty (Events v2) and Slack
(incoming webhooks) have no harmless authenticated call: their credentials are checked for presence and shape
only, and the detail says so. Nothing here prints a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel

from runbook.clients._http import Redactor, RetryPolicy, settings_secrets
from runbook.clients.app import AppClient
from runbook.clients.openai import OpenAIClient
from runbook.clients.pagerduty import routing_key_shape
from runbook.clients.sentry import SentryClient
from runbook.clients.slack import CHANNELS, SlackClient, webhook_shape
from runbook.clients.statuspage import StatuspageClient
from runbook.clients.stripe import StripeClient
from runbook.clients.supabase import SupabaseDatabase, SupabaseManagement, SupabaseRest
from runbook.clients.vercel import VercelClient
from runbook.errors import NotConfigured, RunbookError
from runbook.settings import ENV_PREFIX, Settings

CheckState = Literal["ok", "failed", "unconfigured"]

# Preflight fails fast: two attempts, a few seconds of waiting at most.
PREFLIGHT_POLICY = RetryPolicy(
    max_attempts=2, max_total_wait=3.0, max_retry_after=3.0, connect_timeout=3.0, read_timeout=10.0
)
CHECK_TIMEOUT = 20.0


class CheckResult(BaseModel):
    """One integration's preflight result (the detail never holds a secret)."""

    integration: str
    state: CheckState
    latency_ms: float | None = None
    detail: str = ""


Check = Callable[[Settings, RetryPolicy], Awaitable[str]]


async def _app(settings: Settings, policy: RetryPolicy) -> str:
    async with AppClient.from_settings(settings, policy=policy) as app:
        health = await app.health()
    failing = "; ".join(f"{name}: {error}" for name, error in health.failing.items())
    summary = f"/api/health HTTP {health.status_code}, status {health.status or '?'}" + (
        f" ({failing})" if failing else ""
    )
    if not health.answered:
        raise _Failed(summary)
    return summary


async def _supabase_rest(settings: Settings, policy: RetryPolicy) -> str:
    async with SupabaseRest.from_settings(settings, policy=policy) as rest:
        count = await rest.count("profiles")
    return f"profiles: {count.count} rows (exact count)"


async def _supabase_db(settings: Settings, policy: RetryPolicy) -> str:
    async with SupabaseDatabase.from_settings(settings, policy=policy) as db:
        info = await db.connectivity()
    return f"connected: PostgreSQL {info.server_version}, database {info.database}"


async def _supabase_api(settings: Settings, policy: RetryPolicy) -> str:
    async with SupabaseManagement.from_settings(settings, policy=policy) as api:
        health = await api.project_health()
    summary = ", ".join(f"{s.name} {s.status}" for s in health.services) or "no services reported"
    if not health.healthy:
        raise _Failed(f"project health: {summary}")
    return f"project health: {summary}"


async def _vercel(settings: Settings, policy: RetryPolicy) -> str:
    async with VercelClient.from_settings(settings, policy=policy) as vercel:
        deployments = await vercel.list_deployments(state=None, limit=1, max_pages=1)
    if not deployments:
        return "no production deployments"
    latest = deployments[0]
    return f"latest production deployment {latest.id} ({latest.state})"


async def _stripe(settings: Settings, policy: RetryPolicy) -> str:
    async with StripeClient.from_settings(settings, policy=policy) as stripe:
        endpoints = await stripe.list_webhook_endpoints()
    return f"{len(endpoints)} webhook endpoint(s)"


async def _sentry(settings: Settings, policy: RetryPolicy) -> str:
    async with SentryClient.from_settings(settings, policy=policy) as sentry:
        count = await sentry.error_count("15m")
    return f"{count} error(s) in the last 15m"


async def _statuspage(settings: Settings, policy: RetryPolicy) -> str:
    async with StatuspageClient.from_settings(settings, policy=policy) as page:
        components = await page.list_components()
    return f"{len(components)} component(s)"


async def _pagerduty(settings: Settings, policy: RetryPolicy) -> str:
    if not settings.pagerduty_routing_key:
        raise NotConfigured("pagerduty", f"{ENV_PREFIX}PAGERDUTY_ROUTING_KEY")
    problem = routing_key_shape(settings.pagerduty_routing_key)
    if problem:
        raise _Failed(f"routing key {problem}")
    sent = "routing key well-formed; not sent (Events v2 has no harmless authenticated call)"
    secret, token = settings.pagerduty_webhook_secret, settings.pagerduty_api_token
    webhooks = bool(secret and secret.get_secret_value())
    if token and token.get_secret_value():
        from runbook.clients.pagerduty import PagerDutyRestClient

        async with PagerDutyRestClient.from_settings(settings, policy=policy) as rest:  # a read: harmless
            await rest.incidents("runbook-preflight")
        how = "V3 webhooks, and the REST API polled as a safety net" if webhooks else "the REST API, polled"
        return f"{sent}; REST API token works; acknowledgements made in PagerDuty are seen through {how}"
    if webhooks:
        return f"{sent}; acknowledgements made in PagerDuty arrive as V3 webhooks (POST /pagerduty/webhooks)"
    return (f"{sent}; WARNING: neither {ENV_PREFIX}PAGERDUTY_WEBHOOK_SECRET nor {ENV_PREFIX}PAGERDUTY_API_TOKEN "
            "is set: acknowledgements made in PagerDuty will not be seen (the escalation pages the lead and the "
            "CTO anyway)")


async def _slack(settings: Settings, policy: RetryPolicy) -> str:
    SlackClient.from_settings(settings, policy=policy)  # raises NotConfigured when no channel has a webhook
    problems: list[str] = []
    good: list[str] = []
    for channel in CHANNELS:
        hook = settings.slack_webhook(channel)
        if not hook:
            continue
        problem = webhook_shape(hook)
        (problems if problem else good).append(f"#{channel}" + (f": {problem}" if problem else ""))
    if problems:
        raise _Failed("webhook " + "; ".join(problems))
    hooks = f"webhooks for {', '.join(good)} well-formed" if good else "no webhooks"
    if not (settings.slack_bot_token and settings.slack_bot_token.get_secret_value()):
        return (f"{hooks}; incoming webhooks only: messages have no Approve / Reject / Acknowledge buttons "
                "(set RUNBOOK_SLACK_BOT_TOKEN and RUNBOOK_SLACK_SIGNING_SECRET for them); no message posted")
    if not (settings.slack_signing_secret and settings.slack_signing_secret.get_secret_value()):
        raise _Failed("RUNBOOK_SLACK_BOT_TOKEN is set but RUNBOOK_SLACK_SIGNING_SECRET is not: the intake would "
                      "refuse every button click")
    if not settings.slack_bot_token.get_secret_value().startswith("xoxb-"):
        raise _Failed("RUNBOOK_SLACK_BOT_TOKEN is not a bot token (xoxb-…; value not shown)")
    return (f"bot token and signing secret set: messages carry buttons, clicks come back to POST "
            f"/slack/interactions; {hooks}; no message posted")


async def _openai(settings: Settings, policy: RetryPolicy) -> str:
    async with OpenAIClient.from_settings(settings, policy=policy) as openai:
        live = await openai.liveness()
    return f"{live.models} model(s) listed"


CHECKS: dict[str, Check] = {
    "app": _app,
    "supabase-rest": _supabase_rest,
    "supabase-db": _supabase_db,
    "supabase-api": _supabase_api,
    "vercel": _vercel,
    "stripe": _stripe,
    "sentry": _sentry,
    "statuspage": _statuspage,
    "pagerduty": _pagerduty,
    "slack": _slack,
    "openai": _openai,
}


class _Failed(Exception):
    """The call worked but the answer is a failure (e.g. health not ok)."""


async def _run_one(
    name: str, check: Check, settings: Settings, policy: RetryPolicy, redact: Redactor, timeout: float
) -> CheckResult:
    started = time.perf_counter()

    def latency() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        detail = await asyncio.wait_for(check(settings, policy), timeout)
    except NotConfigured as exc:
        return CheckResult(integration=name, state="unconfigured", detail=redact(exc.detail))
    except (RunbookError, _Failed) as exc:
        return CheckResult(integration=name, state="failed", latency_ms=latency(), detail=redact(str(exc)))
    except TimeoutError:
        return CheckResult(integration=name, state="failed", latency_ms=latency(), detail=f"no answer in {timeout:g}s")
    except Exception as exc:  # an unexpected bug must not hide the other rows; its message is redacted
        detail = redact(f"unexpected {type(exc).__name__}: {exc}")[:300]
        return CheckResult(integration=name, state="failed", latency_ms=latency(), detail=detail)
    return CheckResult(integration=name, state="ok", latency_ms=latency(), detail=redact(detail))


async def run_preflight(
    settings: Settings, *, policy: RetryPolicy = PREFLIGHT_POLICY, timeout: float = CHECK_TIMEOUT
) -> list[CheckResult]:
    """Run every integration's harmless check concurrently; unconfigured ones are reported, not failed."""
    redact = Redactor(settings_secrets(settings))
    return list(
        await asyncio.gather(
            *(_run_one(name, check, settings, policy, redact, timeout) for name, check in CHECKS.items())
        )
    )


def failed(results: list[CheckResult]) -> bool:
    """Return True when any configured integration failed."""
    return any(r.state == "failed" for r in results)


def format_table(results: list[CheckResult]) -> str:
    """Render the results as a fixed-width text table."""
    rows = [("INTEGRATION", "STATE", "LATENCY", "DETAIL")]
    for r in results:
        latency = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else "-"
        rows.append((r.integration, r.state, latency, r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    ok = sum(r.state == "ok" for r in results)
    bad = sum(r.state == "failed" for r in results)
    off = sum(r.state == "unconfigured" for r in results)
    lines.append(f"\n{ok} ok, {bad} failed, {off} unconfigured")
    return "\n".join(lines)


async def freeze_lines(settings: Settings) -> list[str]:
    """Return one line per freeze that holds this environment's remediations (the store's `runbook freeze`)."""
    from runbook.guardrails import freeze_line
    from runbook.store import open_store

    try:
        async with open_store(settings.resolved_store_url) as store:
            held = [f for f in await store.freezes() if f["environment"] in {"*", settings.environment}]
    except Exception as exc:  # the store is not an integration: say it could not be read, do not fail the check
        return [f"FREEZE: unknown, the incident store could not be read ({type(exc).__name__})"]
    return [f"FROZEN: remediations are {freeze_line(f)} (`runbook unfreeze --by NAME` lifts it)" for f in held]


def cmd_check(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run the preflight, print the table (or JSON); return 1 when a configured integration failed."""
    from runbook.settings import load_settings

    results = asyncio.run(run_preflight(settings or load_settings()))
    if getattr(args, "json", False):
        payload: list[dict[str, Any]] = [r.model_dump() for r in results]
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(results))
    frozen = asyncio.run(freeze_lines(settings or load_settings()))
    for line in frozen:  # stderr with --json, so that stdout stays the JSON list
        print(line, file=sys.stderr if getattr(args, "json", False) else sys.stdout)
    if results and all(r.state == "unconfigured" for r in results):
        print("runbook check: nothing is configured, so nothing can be checked (and an incident could not be "
              "handled). Set the RUNBOOK_* settings of your integrations, e.g. RUNBOOK_APP_URL, "
              "RUNBOOK_PAGERDUTY_ROUTING_KEY, RUNBOOK_SLACK_WEBHOOK_INCIDENTS, RUNBOOK_STATUSPAGE_API_KEY, in the "
              "environment or a .env file; `runbook config` lists every setting.", file=sys.stderr)
        return 2
    return 1 if failed(results) else 0


def register(subparsers: Any) -> None:
    """Add `check [--json]` to the runbook command line."""
    parser = subparsers.add_parser(
        "check", help="preflight: one harmless authenticated call per configured integration"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=cmd_check)
