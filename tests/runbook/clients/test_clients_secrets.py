"""No secret (token, key, webhook URL, whsec) ever appears in a raised error's str or repr."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.openai import OpenAIClient
from runbook.clients.pagerduty import PagerDutyClient
from runbook.clients.sentry import SentryClient
from runbook.clients.slack import SlackClient
from runbook.clients.statuspage import StatuspageClient
from runbook.clients.stripe import StripeClient
from runbook.clients.supabase import SupabaseManagement, SupabaseRest
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack, Fault
from runbook.errors import IntegrationError
from runbook.settings import Settings

ONE_TRY = RetryPolicy(max_attempts=1)
Call = Callable[[Settings], Awaitable[Any]]


async def _vercel(s: Settings) -> Any:
    async with VercelClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.list_deployments()


async def _stripe(s: Settings) -> Any:
    async with StripeClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.list_webhook_endpoints()


async def _sentry(s: Settings) -> Any:
    async with SentryClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.error_count()


async def _statuspage(s: Settings) -> Any:
    async with StatuspageClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.list_components()


async def _openai(s: Settings) -> Any:
    async with OpenAIClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.liveness()


async def _pagerduty(s: Settings) -> Any:
    async with PagerDutyClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.trigger("INC-SECRET", "test")


async def _slack(s: Settings) -> Any:
    async with SlackClient.from_settings(s, policy=ONE_TRY) as c:
        return await c.post("#incidents", "test")


async def _supabase_rest(s: Settings) -> Any:
    async with SupabaseRest.from_settings(s, policy=ONE_TRY) as c:
        return await c.count("profiles")


async def _supabase_api(s: Settings) -> Any:
    async with SupabaseManagement.from_settings(s, policy=ONE_TRY) as c:
        return await c.project_health()


WRONG: list[tuple[str, str, Call]] = [
    ("vercel_token", "vcp_leak_canary_000000000000000000", _vercel),
    ("stripe_secret_key", "sk_test_leak_canary_0000000000000000", _stripe),
    ("sentry_token", "sntrys_leak_canary_00000000000000000", _sentry),
    ("statuspage_api_key", "leak-canary-statuspage-000000000000", _statuspage),
    ("openai_api_key", "sk-proj-leak_canary_000000000000000", _openai),
    ("pagerduty_routing_key", "R0leakcanary00000000000000000000", _pagerduty),
    ("supabase_anon_key", "eyJleak.canary.000000000000000000", _supabase_rest),
    ("supabase_access_token", "sbp_leak_canary_00000000000000000000", _supabase_api),
]


@pytest.mark.parametrize(("field", "wrong", "call"), WRONG, ids=[w[0] for w in WRONG])
async def test_a_rejected_credential_is_not_in_the_error(
    drill: DrillStack, settings: Settings, field: str, wrong: str, call: Call
) -> None:
    """The credential the vendor rejected appears in neither str nor repr of the raised error."""
    with pytest.raises(IntegrationError) as caught:
        await call(settings.model_copy(update={field: SecretStr(wrong)}))
    error = caught.value
    assert error.status in (400, 401, 403)
    assert wrong not in str(error) and wrong not in repr(error) and wrong not in error.detail


async def test_a_wrong_slack_webhook_is_not_in_the_error(drill: DrillStack, settings: Settings) -> None:
    """A webhook URL with a wrong token raises an error holding neither the URL nor its path."""
    good = settings.slack_webhook("incidents")
    assert good is not None
    wrong = good.get_secret_value().rsplit("/", 1)[0] + "/leakcanarytoken000000"
    with pytest.raises(IntegrationError) as caught:
        await _slack(settings.model_copy(update={"slack_webhook_incidents": SecretStr(wrong)}))
    text = str(caught.value) + repr(caught.value)
    assert caught.value.status == 403 and "leakcanarytoken000000" not in text and "/services/" not in text


@pytest.mark.parametrize(
    ("name", "call"), [("vercel", _vercel), ("stripe", _stripe), ("slack", _slack), ("openai", _openai)]
)
async def test_a_5xx_error_holds_no_configured_secret(
    drill: DrillStack, settings: Settings, name: str, call: Call
) -> None:
    """A vendor 5xx raised with the right credentials contains none of the configured secret values."""
    getattr(drill, name).inject(Fault.error(503, times=None))
    with pytest.raises(IntegrationError) as caught:
        await call(settings)
    text = str(caught.value) + repr(caught.value)
    secrets = [v.get_secret_value() for v in settings.__dict__.values() if isinstance(v, SecretStr)]
    assert caught.value.status == 503 and secrets and not [s for s in secrets if s in text]
