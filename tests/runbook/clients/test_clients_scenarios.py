"""The clients notice each drill scenario the way the runbook's diagnosis needs them to."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.app import AppClient
from runbook.clients.health import HealthClient
from runbook.clients.openai import OpenAIClient
from runbook.clients.sentry import SentryClient
from runbook.clients.stripe import StripeClient
from runbook.clients.supabase import SupabaseDatabase
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack
from runbook.errors import TransientError
from runbook.settings import fingerprint

# database-migration


async def test_database_migration_breaks_health_on_the_database_check(drill: DrillStack) -> None:
    """After the bad migration /api/health answers 503 with the database check failing on full_name."""
    drill.inject("database-migration")
    async with AppClient.from_settings(drill.settings()) as app:
        health = await app.health()
    assert health.status_code == 503 and not health.ok and health.status == "unhealthy"
    assert "full_name" in health.failing["database"]


async def test_database_migration_is_the_latest_applied_with_a_down_script(drill: DrillStack) -> None:
    """The migration history names the injected version as the latest applied, with its down script."""
    drill.inject("database-migration")
    version = drill.scenario_state["database-migration"]["version"]
    async with SupabaseDatabase.from_settings(drill.settings()) as db:
        status = await db.migration_status()
        files = {f.version: f for f in db.migration_files()}
    assert status.latest_applied == version and files[version].down_script is not None


async def test_migration_drift_is_seen_in_both_directions(drill: DrillStack) -> None:
    """An applied version without a file is remote-only; a file never applied is pending."""
    drill.inject("database-migration")
    version = drill.scenario_state["database-migration"]["version"]
    name = drill.scenario_state["database-migration"]["name"]
    (drill.migrations_dir / f"{version}_{name}.sql").unlink()
    (drill.migrations_dir / "29991231000000_future_change.sql").write_text("select 1;\n")
    async with SupabaseDatabase.from_settings(drill.settings()) as db:
        status = await db.migration_status()
    assert status.drift and status.remote_only == [version] and status.pending == ["29991231000000"]


# bad-deploy


async def test_bad_deploy_is_current_production_with_the_previous_as_candidate(drill: DrillStack) -> None:
    """The broken deployment is production and the rollback candidate is the one it replaced."""
    drill.inject("bad-deploy")
    state = drill.scenario_state["bad-deploy"]
    async with VercelClient.from_settings(drill.settings()) as vercel:
        current = await vercel.current_production()
        candidate = await vercel.rollback_candidate()
    assert current is not None and current.id == state["deployment"]
    assert candidate is not None and candidate.id == state["previous"]


async def test_bad_deploy_fails_health_and_shows_in_sentry(drill: DrillStack) -> None:
    """Health answers 503 with the app check failing, and the errors reach Sentry."""
    drill.inject("bad-deploy")
    settings = drill.settings()
    async with AppClient.from_settings(settings) as app, SentryClient.from_settings(settings) as sentry:
        health = await app.health()
        errors = await sentry.error_count("15m")
    assert health.status_code == 503 and "app" in health.failing and errors >= 1


# config-flag and auth-outage


async def test_config_flag_fails_the_config_check(drill: DrillStack) -> None:
    """A bad exam_engine makes the config check fail and names the jurisdiction."""
    drill.inject("config-flag")
    async with AppClient.from_settings(drill.settings()) as app:
        health = await app.health()
    assert health.status_code == 503 and "CA: unknown exam_engine" in health.failing["config"]


async def test_auth_outage_rejects_a_valid_user(drill: DrillStack) -> None:
    """With the wrong anon key deployed, a valid user's token is not accepted and auth is unhealthy."""
    drill.inject("auth-outage")
    async with AppClient.from_settings(drill.settings()) as app:
        probe = await app.auth_probe(SecretStr(drill.user_token()))
        health = await app.health()
    assert probe.status_code == 500 and not probe.authenticated
    assert "Invalid API key" in health.failing["auth"]


# stripe-webhook-secret


async def test_failed_deliveries_are_listed(drill: DrillStack) -> None:
    """The events the app refused show up as not delivered since the window start."""
    drill.inject("stripe-webhook-secret")
    async with StripeClient.from_settings(drill.settings()) as stripe:
        failed = await stripe.failed_events()
    assert {e.id for e in failed} == {e.id for e in drill.stripe.failed_events()} and len(failed) == 3
    assert all(e.pending_webhooks == 1 for e in failed)


async def test_secret_mismatch_is_found_by_live_probe_without_any_value(drill: DrillStack) -> None:
    """The app's secret is write-only, the live probe is rejected: a mismatch, reported by fingerprint only."""
    old = drill.vercel.env_var("STRIPE_WEBHOOK_SECRET")
    assert old is not None
    drill.inject("stripe-webhook-secret")
    settings = drill.settings()
    async with StripeClient.from_settings(settings) as stripe, VercelClient.from_settings(settings) as vercel:
        check = await stripe.check_webhook_secret(vercel)
    assert not check.ok and check.mismatch and check.live_probe == "rejected"
    assert check.fingerprint == fingerprint(settings.stripe_webhook_secret)
    text = check.model_dump_json() + repr(check)
    assert old.value not in text and drill.stripe.endpoint.secret not in text


async def test_secret_mismatch_by_fingerprint_when_readable(drill: DrillStack) -> None:
    """When the app's value is readable the two fingerprints differ and neither value is shown."""
    old = drill.vercel.env_var("STRIPE_WEBHOOK_SECRET")
    assert old is not None
    old_value = old.value
    drill.inject("stripe-webhook-secret")
    drill.vercel.set_env("STRIPE_WEBHOOK_SECRET", old_value, type="encrypted")
    settings = drill.settings()
    async with StripeClient.from_settings(settings) as stripe, VercelClient.from_settings(settings) as vercel:
        check = await stripe.check_webhook_secret(vercel)
    assert check.app_state == "mismatch" and check.app_fingerprint == fingerprint(old_value)
    assert check.app_fingerprint != check.fingerprint and check.live_probe == "not-run"
    text = check.model_dump_json() + repr(check) + check.detail
    assert old_value not in text and drill.stripe.endpoint.secret not in text


async def test_replay_after_repair_delivers_the_failed_events(drill: DrillStack) -> None:
    """With the app's secret fixed and redeployed, replaying the failed events signs them freshly and they land."""
    drill.inject("stripe-webhook-secret")
    settings = drill.settings()
    assert settings.stripe_webhook_secret is not None
    async with (
        StripeClient.from_settings(settings) as stripe,
        VercelClient.from_settings(settings, poll_interval=0.1) as vercel,
    ):
        failed = await stripe.failed_events()
        await vercel.upsert_env("STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret, type="sensitive")
        current = await vercel.current_production()
        assert current is not None
        await vercel.redeploy(current.id, timeout=10)
        drill.vercel.wait_idle()
        results = await stripe.replay_events([e.id for e in failed])
    assert [r.ok for r in results] == [True] * 3
    processed = drill.query(
        "select id from public.stripe_events_processed where id = any($1::text[])", [e.id for e in failed]
    )
    assert len(processed) == 3


async def test_resend_through_stripe_clears_the_backlog_once_repaired(drill: DrillStack) -> None:
    """After the repair, Stripe's own redelivery marks every failed event delivered."""
    drill.inject("stripe-webhook-secret")
    drill.vercel.set_env("STRIPE_WEBHOOK_SECRET", drill.stripe.endpoint.secret)
    drill.vercel.redeploy()
    drill.vercel.wait_idle()
    async with StripeClient.from_settings(drill.settings()) as stripe:
        failed = await stripe.failed_events()
        results = await stripe.resend_events([e.id for e in failed])
        remaining = await stripe.failed_events()
    assert len(results) == 3 and all(r.ok for r in results) and remaining == []


# slow-database


async def test_slow_database_shows_the_long_running_query(drill: DrillStack) -> None:
    """The runaway session appears among long-running queries with its pid, state and query text."""
    drill.inject("slow-database")
    pid = drill.scenario_state["slow-database"]["pid"]
    async with SupabaseDatabase.from_settings(drill.settings()) as db:
        health = await db.health(long_query_threshold=1.0)
    runaway = next(q for q in health.long_running if q.pid == pid)
    assert runaway.duration_s >= 1.0 and runaway.state == "active"
    assert runaway.application_name == "nightly-progress-rollup" and "nightly job" in runaway.query


# third-party-outage


async def test_third_party_outage_openai_down_and_status_page_major(drill: DrillStack, fast: RetryPolicy) -> None:
    """OpenAI's 503 is a TransientError after retries and its status page reads major_outage."""
    drill.inject("third-party-outage")
    settings = drill.settings()
    async with OpenAIClient.from_settings(settings, policy=fast) as openai:
        with pytest.raises(TransientError) as caught:
            await openai.liveness()
    async with HealthClient.from_settings(settings) as health:
        status = await health.vendor_status("openai")
    assert caught.value.status == 503 and len(drill.openai.requests_to("/v1/models")) == fast.max_attempts
    assert status.level == "major_outage" and status.indicator == "major"


async def test_third_party_outage_degrades_the_app(drill: DrillStack) -> None:
    """The app stays up (200) but reports degraded with openai failing."""
    drill.inject("third-party-outage")
    async with AppClient.from_settings(drill.settings()) as app:
        health = await app.health()
    assert health.status_code == 200 and health.status == "degraded" and health.answered
    assert not health.ok and "openai" in health.failing
