"""Every client capability against a healthy drill stack (real HTTP, real Postgres)."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from runbook.clients.app import AppClient
from runbook.clients.health import HealthClient, probe, probe_many
from runbook.clients.openai import OpenAIClient
from runbook.clients.pagerduty import PagerDutyClient
from runbook.clients.sentry import SentryClient
from runbook.clients.slack import SlackClient
from runbook.clients.statuspage import StatuspageClient
from runbook.clients.stripe import StripeClient
from runbook.clients.supabase import SupabaseDatabase, SupabaseManagement, SupabaseRest
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack
from runbook.settings import Settings, fingerprint

# The app


async def test_app_health_is_ok(settings: Settings) -> None:
    """/api/health answers 200 healthy with no failing check."""
    async with AppClient.from_settings(settings) as app:
        health = await app.health()
    assert health.ok and health.status == "healthy" and health.failing == {}


async def test_auth_probe_without_a_token_expects_401(settings: Settings) -> None:
    """Without a token the auth endpoint answers 401, which means it is alive."""
    async with AppClient.from_settings(settings) as app:
        result = await app.auth_probe()
    assert result.status_code == 401 and result.alive and not result.authenticated


async def test_auth_probe_with_a_user_token_is_authenticated(drill: DrillStack, settings: Settings) -> None:
    """A seeded user's token is accepted by the auth endpoint."""
    async with AppClient.from_settings(settings) as app:
        result = await app.auth_probe(SecretStr(drill.user_token()))
    assert result.status_code == 200 and result.authenticated


# Health probes and vendor status pages


async def test_probe_reports_status_timings_and_json(settings: Settings) -> None:
    """A probe of /api/health has a status, a connect/first-byte/total breakdown in order, and the parsed body."""
    result = await probe(f"{settings.app_url}/api/health")
    assert result.ok and result.status == 200 and result.body["status"] == "healthy"
    assert result.connect_s is not None and result.first_byte_s is not None and result.tls_s is None
    assert 0 <= result.connect_s <= result.first_byte_s <= result.total_s


async def test_probe_many_keeps_input_order(settings: Settings) -> None:
    """Concurrent probes come back in the order asked, failures included (never raised)."""
    urls = [f"{settings.app_url}/api/health", "http://127.0.0.1:9/nothing", f"{settings.openai_api_url}/v1/models"]
    results = await probe_many(urls, timeout=2.0)
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error and results[2].status == 401


async def test_vendor_status_pages_are_all_operational(settings: Settings) -> None:
    """Statuspage-format and Stripe-format pages all normalize to operational on a healthy stack."""
    async with HealthClient.from_settings(settings) as health:
        statuses = await health.vendor_statuses()
    assert {s.vendor for s in statuses} == {"supabase", "vercel", "openai", "stripe"}
    assert all(s.level == "operational" for s in statuses), statuses


# Supabase


async def test_rest_exact_count_matches_the_database(drill: DrillStack, settings: Settings) -> None:
    """The PostgREST exact count of profiles equals the rows in the database."""
    expected = drill.query("select count(*)::int as n from public.profiles")[0]["n"]
    async with SupabaseRest.from_settings(settings) as rest:
        result = await rest.count("profiles")
    assert result.count == expected and expected > 0


async def test_rest_count_with_a_wrong_key_is_an_auth_error(drill: DrillStack, settings: Settings) -> None:
    """A key of another project is rejected with a 401 AuthError, tried once."""
    from runbook.drill.keys import SupabaseProject
    from runbook.errors import AuthError

    wrong = SupabaseProject().anon_key
    async with SupabaseRest.from_settings(settings.model_copy(update={"supabase_anon_key": SecretStr(wrong)})) as rest:
        try:
            await rest.count("profiles")
        except AuthError as exc:
            error = exc
    assert error.status == 401 and wrong not in str(error)
    assert len(drill.supabase.requests) == 1


async def test_database_connectivity(settings: Settings) -> None:
    """The direct Postgres URL connects and reports the server version."""
    async with SupabaseDatabase.from_settings(settings) as db:
        info = await db.connectivity()
    assert info.ok and info.server_version


async def test_migration_history_has_no_drift_at_baseline(settings: Settings) -> None:
    """Every local migration is applied and every applied one has a file."""
    async with SupabaseDatabase.from_settings(settings) as db:
        status = await db.migration_status()
    assert status.rows and not status.drift and status.history_table
    assert status.latest_applied == status.rows[-1].version


async def test_migration_files_list_their_down_scripts(settings: Settings) -> None:
    """Local migrations are read as <version>_<name>.sql with their down scripts where present."""
    async with SupabaseDatabase.from_settings(settings) as db:
        files = db.migration_files()
    assert files and all(f.version.isdigit() and f.path.name.startswith(f.version) for f in files)
    assert all(f.down_script is None or f.down_script.name == f"{f.version}_{f.name}.down.sql" for f in files)


async def test_database_health_at_baseline(settings: Settings) -> None:
    """Connections are counted against max_connections and no query runs long."""
    async with SupabaseDatabase.from_settings(settings) as db:
        health = await db.health(long_query_threshold=5.0)
    assert 0 < health.total_connections <= health.max_connections
    assert 0 < health.pool_utilisation_pct < 100 and health.long_running == []
    assert health.mean_query_source in ("pg_stat_statements", "pg_stat_activity")


async def test_management_api_project_health(settings: Settings) -> None:
    """The Management API reports auth, db and rest ACTIVE_HEALTHY."""
    async with SupabaseManagement.from_settings(settings) as api:
        health = await api.project_health()
    assert health.healthy and {s.name for s in health.services} == {"auth", "db", "rest"}


# Vercel


async def test_list_production_deployments_follows_pagination(drill: DrillStack, settings: Settings) -> None:
    """With limit=1 every production deployment is still listed, page by page through `until`."""
    async with VercelClient.from_settings(settings) as vercel:
        deployments = await vercel.list_deployments(limit=1)
    expected = [d.id for d in drill.vercel.deployments if d.target == "production" and d.state == "READY"]
    assert [d.id for d in deployments] == expected and len(expected) > 1
    assert all("teamId=" in str(r.query) or r.query.get("teamId") for r in drill.vercel.requests)


async def test_current_production_and_rollback_candidate(drill: DrillStack, settings: Settings) -> None:
    """The current production deployment is found and the rollback candidate is the previous READY one."""
    async with VercelClient.from_settings(settings) as vercel:
        current = await vercel.current_production()
        candidate = await vercel.rollback_candidate()
    assert current is not None and current.id == drill.vercel.production().id
    assert candidate is not None and candidate.id == drill.vercel.rollback_candidates()[0].id


async def test_rollback_polls_the_alias_job_until_it_succeeds(drill: DrillStack, settings: Settings) -> None:
    """A rollback returns a succeeded alias job and production then serves the candidate."""
    async with VercelClient.from_settings(settings, poll_interval=0.1) as vercel:
        candidate = await vercel.rollback_candidate()
        assert candidate is not None
        job = await vercel.rollback(candidate.id, timeout=10)
    assert job.succeeded and job.to_deployment_id == candidate.id
    assert drill.vercel.production().id == candidate.id


async def test_promote_switches_production(drill: DrillStack, settings: Settings) -> None:
    """Promoting the previous deployment succeeds through the same alias-job polling."""
    target = drill.vercel.rollback_candidates()[0]
    async with VercelClient.from_settings(settings, poll_interval=0.1) as vercel:
        job = await vercel.promote(target.id, timeout=10)
    assert job.succeeded and drill.vercel.production().id == target.id


async def test_env_vars_are_listed_without_values_and_read_one_by_one(settings: Settings) -> None:
    """The list carries no values; reading one returns its decrypted value; sensitive ones are write-only."""
    async with VercelClient.from_settings(settings) as vercel:
        listed = await vercel.list_env()
        anon = await vercel.find_env("NEXT_PUBLIC_SUPABASE_ANON_KEY")
        webhook = await vercel.find_env("STRIPE_WEBHOOK_SECRET")
    assert listed and all(e.value is None for e in listed if e.type != "plain")
    assert anon is not None and anon.value is not None
    assert fingerprint(anon.value) == fingerprint(settings.supabase_anon_key)
    assert webhook is not None and webhook.write_only and webhook.value is None


async def test_env_upsert_then_delete(drill: DrillStack, settings: Settings) -> None:
    """An upserted env var reaches the project and a delete removes it."""
    async with VercelClient.from_settings(settings) as vercel:
        created = await vercel.upsert_env("RUNBOOK_PROBE_FLAG", SecretStr("on"), targets=["production"])
        assert drill.vercel.env_var("RUNBOOK_PROBE_FLAG") is not None
        await vercel.upsert_env("RUNBOOK_PROBE_FLAG", "off", targets=["production"])
        value = drill.vercel.env_var("RUNBOOK_PROBE_FLAG")
        await vercel.delete_env(created[0].id)
    assert value is not None and value.value == "off"
    assert drill.vercel.env_var("RUNBOOK_PROBE_FLAG") is None


async def test_redeploy_waits_until_ready_and_becomes_production(drill: DrillStack, settings: Settings) -> None:
    """A production redeploy creates a new deployment, is polled to READY and then serves production."""
    source = drill.vercel.production().id
    async with VercelClient.from_settings(settings, poll_interval=0.1) as vercel:
        deployment = await vercel.redeploy(source, timeout=10)
    assert deployment.id != source and deployment.state == "READY"
    body = drill.vercel.requests_to("/v13/deployments", "POST")[0].json
    assert body == {"name": "permit-school", "deploymentId": source, "target": "production"}
    drill.vercel.wait_idle()
    assert drill.vercel.production().id == deployment.id


# Stripe


async def test_webhook_endpoint_is_registered_and_enabled(settings: Settings) -> None:
    """The app's URL is registered, enabled and subscribed to the billing events."""
    async with StripeClient.from_settings(settings) as stripe:
        check = await stripe.check_webhook_endpoint()
    assert check.ok and check.enabled and check.missing_events == []


async def test_no_failed_deliveries_at_baseline(settings: Settings) -> None:
    """No event is waiting for delivery on a healthy stack."""
    async with StripeClient.from_settings(settings) as stripe:
        assert await stripe.failed_events() == []


async def test_webhook_secret_check_passes_by_live_probe(settings: Settings) -> None:
    """The app's secret is write-only, so the live probe decides: the app accepts Stripe's signature."""
    async with (
        StripeClient.from_settings(settings) as stripe,
        VercelClient.from_settings(settings) as vercel,
    ):
        check = await stripe.check_webhook_secret(vercel)
    assert check.ok and check.app_state == "write-only" and check.live_probe == "accepted"
    assert "cannot compare: STRIPE_WEBHOOK_SECRET is write-only" in check.detail


async def test_webhook_probe_rejects_unsigned_and_accepts_signed(drill: DrillStack, settings: Settings) -> None:
    """The app rejects an unsigned request (400) and accepts a signed `runbook.probe` event (2xx)."""
    async with StripeClient.from_settings(settings) as stripe:
        result = await stripe.probe_webhook()
    assert result.ok and result.unsigned_status == 400 and result.signed_status == 200
    assert drill.query("select 1 from public.stripe_events_processed where id = $1", result.event_id)


# Sentry, Statuspage, PagerDuty, Slack, OpenAI


async def test_sentry_error_rate_and_series(drill: DrillStack, settings: Settings) -> None:
    """Errors captured in the window are counted, rated per minute and as % of requests, and bucketed."""
    for _ in range(3):
        drill.sentry.capture("TypeError: boom", release="abc", transaction="/api/health", tags={})
    async with SentryClient.from_settings(settings) as sentry:
        rate = await sentry.error_rate("15m", requests=300)
        series = await sentry.error_series("30m", interval=60)
    assert rate.count == 3 and rate.per_minute == 0.2 and rate.percent_of_requests == 1.0
    assert sum(p.count for p in series) == 3 and len(series) >= 30


async def test_sentry_error_rate_uses_the_request_count(drill: DrillStack, settings: Settings) -> None:
    """Without a request count given, the rate is errors as % of Sentry's segment spans (the app's requests)."""
    drill.sentry.reset()  # tests without the `drill` fixture leave the app's transactions behind
    drill.app.fail_fraction = 0.25
    async with httpx.AsyncClient(base_url=drill.urls["app"]) as http:
        for _ in range(8):
            await http.get("/")
    async with SentryClient.from_settings(settings) as sentry:
        requests = await sentry.request_count("15m")
        rate = await sentry.error_rate("15m")
    assert requests == 8 and (rate.count, rate.requests, rate.percent_of_requests) == (2, 8, 25.0)


async def test_sentry_request_count_unavailable_is_none(drill: DrillStack, settings: Settings) -> None:
    """Without performance monitoring the request count is None (a 400, not retried) and the rate has no %."""
    drill.sentry.reset()
    drill.sentry.performance = False
    drill.sentry.capture("TypeError: boom")
    async with SentryClient.from_settings(settings) as sentry:
        requests = await sentry.request_count("15m")
        rate = await sentry.error_rate("15m")
    assert requests is None and (rate.count, rate.requests, rate.percent_of_requests) == (1, None, None)
    assert len([r for r in drill.sentry.requests if r.query.get("dataset") == "spans"]) == 2
    assert rate.requests_gap is not None and "HTTP 400" in rate.requests_gap


async def test_sentry_traffic_counts_requests_and_failed_logins(drill: DrillStack, settings: Settings) -> None:
    """traffic() counts the requests served and the auth endpoint's 401/403 segment spans (a Discover query)."""
    drill.sentry.reset()
    async with httpx.AsyncClient(base_url=drill.urls["app"]) as http:
        for _ in range(5):
            await http.get("/")
        for _ in range(3):
            await http.post("/api/auth/profile", headers={"Authorization": "Bearer wrong"})
    async with SentryClient.from_settings(settings) as sentry:
        traffic = await sentry.traffic("5m", auth_window="1m")
    assert (traffic.requests, traffic.auth_failures) == (8, 3)
    assert (traffic.requests_per_minute, traffic.auth_failures_per_minute) == (1.6, 3.0)
    assert traffic.routes is not None and traffic.routes.complete
    assert traffic.routes.counts == {"/": 5, "/api/auth/profile": 3}
    assert list(traffic.routes.counts) == ["/", "/api/auth/profile"]  # busiest first


async def test_sentry_route_counts_page_is_marked_incomplete(drill: DrillStack, settings: Settings) -> None:
    """A full page of routes (Discover's 100) is marked incomplete: a route past it is unlisted, not unused."""
    drill.sentry.reset()
    for i in range(120):
        for _ in range(1 + (i < 10)):
            drill.sentry.capture_transaction(f"/api/courses/{i}")
    async with SentryClient.from_settings(settings) as sentry:
        routes = await sentry.route_counts("5m")
    assert routes is not None and not routes.complete and len(routes.counts) == 100
    assert all(routes.counts[f"/api/courses/{i}"] == 2 for i in range(10))
    (request,) = [r for r in drill.sentry.requests if ("field", "transaction") in r.query_items]
    assert ("field", "count()") in request.query_items
    assert (request.query["sort"], request.query["per_page"], request.query["dataset"]) == (
        "-count()", "100", "spans")
    assert request.query["query"] == "is_transaction:true"


async def test_sentry_traffic_rejected_query_is_unavailable(drill: DrillStack, settings: Settings) -> None:
    """A vendor that rejects the spans queries leaves every count None and names each gap, never an error."""
    drill.sentry.reset()
    drill.sentry.performance = False
    async with SentryClient.from_settings(settings) as sentry:
        traffic = await sentry.traffic("5m", auth_window="1m")
    assert (traffic.requests, traffic.auth_failures, traffic.routes) == (None, None, None)
    assert set(traffic.gaps) == {"requests", "auth_failures", "routes"}


async def test_statuspage_incident_lifecycle_and_component(drill: DrillStack, settings: Settings) -> None:
    """An incident is created (id kept), updated through the states, and a component is patched."""
    async with StatuspageClient.from_settings(settings) as page:
        incident = await page.create_incident(
            "Elevated API errors",
            status="investigating",
            impact_override="major",
            body="We are investigating.",
            components={"app": "partial_outage"},
        )
        await page.update_incident(incident.id, status="identified", body="Cause found.")
        resolved = await page.update_incident(incident.id, status="resolved", components={"app": "operational"})
        component = await page.set_component_status("database", "degraded_performance")
    assert incident.id and resolved.id == incident.id and resolved.status == "resolved"
    assert drill.statuspage.component_status("app") == "operational"
    assert component.status == "degraded_performance" == drill.statuspage.component_status("database")


async def test_pagerduty_trigger_acknowledge_resolve_with_dedup(drill: DrillStack, settings: Settings) -> None:
    """The dedup_key is the incident id: a re-sent trigger does not open a second alert."""
    async with PagerDutyClient.from_settings(settings) as pagerduty:
        first = await pagerduty.trigger("INC-42", "Site down", severity="critical")
        await pagerduty.trigger("INC-42", "Site down", severity="critical")
        await pagerduty.acknowledge("INC-42")
        assert drill.pagerduty.alert("INC-42")["status"] == "acknowledged"
        await pagerduty.resolve("INC-42")
    assert first.dedup_key == "INC-42" and len(drill.pagerduty.alerts) == 1
    assert drill.pagerduty.alert("INC-42")["status"] == "resolved"


async def test_slack_post_reaches_the_channel(drill: DrillStack, settings: Settings) -> None:
    """A message with blocks posted to #incidents arrives in that channel only."""
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*P0* site down"}}]
    async with SlackClient.from_settings(settings) as slack:
        result = await slack.post("#incidents", "P0: site down", blocks)
    assert result.ok
    messages = drill.slack.messages("incidents")
    assert [m["text"] for m in messages] == ["P0: site down"] and messages[0]["blocks"] == blocks
    assert drill.slack.messages("engineering") == []


async def test_openai_liveness(settings: Settings) -> None:
    """OpenAI lists its models."""
    async with OpenAIClient.from_settings(settings) as openai:
        live = await openai.liveness()
    assert live.models > 0
