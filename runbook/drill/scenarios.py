"""The drill scenarios: each breaks the RUNNING stack the way the runbook's "Common Incident Scenarios" describe.

Each Scenario has `inject(stack, **params) -> env changes`, `repair(stack)` (the documented manual repair, for
drill tests) and `healthy(stack) -> bool` (is what it broke working again?). Remediation names:

    database-rollback     run the migration's down script, mark the version reverted in schema_migrations
    code-rollback         Vercel rollback to the previous READY production deployment
    config-rollback       restore a jurisdiction_configs row / an env var (+ redeploy)
    webhook-check         set the app's STRIPE_WEBHOOK_SECRET to the endpoint's secret, redeploy, replay events
    cancel-query          pg_cancel_backend / pg_terminate_backend the session blocking the app's queries
    none                  nothing to undo on our side (a vendor's outage): watch its status page until it recovers

Each name but `none` is a deployment of prefect.yaml (tested). The scenario table of runbook/drill/README.md is
generated from SCENARIOS by `scenario_table()` (tested equal).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import stripe

from runbook.drill.database import MigrationFile, apply_migration, list_migrations
from runbook.drill.environment import DrillEnvironment
from runbook.drill.faults import Fault
from runbook.drill.keys import SupabaseProject
from runbook.errors import DrillError


@dataclass(frozen=True)
class Scenario:
    """One incident scenario of the runbook, as a fault on the drill stack with its repair and its check."""

    name: str
    title: str
    description: str
    runbook_section: str
    severity: str  # what the runbook's alerting rules (runbook/policy.py) classify the fault as
    remediation: str
    symptom: str
    inject: Callable[..., dict[str, str]]
    repair: Callable[[DrillEnvironment], None]
    healthy: Callable[[DrillEnvironment], bool]

    def describe(self) -> dict[str, str]:
        """Return the scenario's data as plain strings (for `runbook drill --list`)."""
        return {"name": self.name, "title": self.title, "severity": self.severity,
                "runbook_section": self.runbook_section, "remediation": self.remediation,
                "symptom": self.symptom, "description": self.description}


def _health(stack: DrillEnvironment, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    try:
        return stack.health(timeout=timeout)
    except (httpx.HTTPError, ValueError):
        return 0, {}


def _check_ok(stack: DrillEnvironment, check: str) -> bool:
    code, body = _health(stack)
    return code == 200 and body.get("checks", {}).get(check, {}).get("status") in ("healthy", "degraded")


def _state(stack: DrillEnvironment, name: str) -> dict[str, Any]:
    return stack.scenario_state.setdefault(name, {})


# -- database-migration ---------------------------------------------------------------------------------------
MIGRATION_NAME = "rename_profiles_full_name"
MIGRATION_UP = """-- Profiles: rename full_name to display_name (matches the new onboarding form).
alter table public.profiles rename column full_name to display_name;
comment on column public.profiles.display_name is 'Name shown in the dashboard and on certificates';
"""
MIGRATION_DOWN = """-- Down: restore profiles.full_name
comment on column public.profiles.display_name is null;
alter table public.profiles rename column display_name to full_name;
"""


def next_version(folder: Any) -> str:
    """Return a 14-digit version after every migration in the folder (UTC now, or the last one + 1 s)."""
    now = datetime.now(UTC).replace(microsecond=0)
    existing = [m.version for m in list_migrations(folder)]
    if existing:
        last = datetime.strptime(max(existing), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        now = max(now, last + timedelta(seconds=1))
    return now.strftime("%Y%m%d%H%M%S")


def _inject_migration(stack: DrillEnvironment, *, name: str = MIGRATION_NAME) -> dict[str, str]:
    folder = stack.migrations_dir
    version = next_version(folder)
    path = folder / f"{version}_{name}.sql"
    path.write_text(MIGRATION_UP)
    migration = MigrationFile(version, name, path)
    migration.down_path.parent.mkdir(exist_ok=True)
    migration.down_path.write_text(MIGRATION_DOWN)
    assert stack.db is not None and stack.host is not None
    admin = stack.db.admin
    assert admin is not None

    async def run() -> None:
        async with admin.acquire() as conn:
            await apply_migration(conn, migration)

    try:
        stack.host.run(run())
    except Exception:  # not applied: leave no stray files behind
        path.unlink(missing_ok=True)
        migration.down_path.unlink(missing_ok=True)
        raise
    _state(stack, "database-migration").update(version=version, name=name)
    return {}


def _repair_migration(stack: DrillEnvironment) -> None:
    state = _state(stack, "database-migration")
    if not state:
        return
    migration = MigrationFile(state["version"], state["name"], stack.migrations_dir / f"{state['version']}_"
                                                                                     f"{state['name']}.sql")
    down = migration.down_path.read_text()
    assert stack.db is not None and stack.host is not None and stack.db.admin is not None
    admin = stack.db.admin

    async def run() -> None:
        async with admin.acquire() as conn, conn.transaction():
            await conn.execute("set local lock_timeout = '5s'")
            await conn.execute(down)
            await conn.execute("delete from supabase_migrations.schema_migrations where version = $1",
                               migration.version)

    stack.host.run(run())
    state.clear()


# -- bad-deploy -----------------------------------------------------------------------------------------------
def _inject_bad_deploy(stack: DrillEnvironment, *, message: str = "feat: new exam scheduler") -> dict[str, str]:
    previous = stack.vercel.production().id
    deployment = stack.vercel.deploy("broken", message=message)
    _state(stack, "bad-deploy").update(deployment=deployment.id, previous=previous)
    return {}


def _repair_bad_deploy(stack: DrillEnvironment) -> None:
    previous = _state(stack, "bad-deploy").get("previous")
    if stack.vercel.production().build == "ok":
        return
    stack.vercel.rollback(previous)
    stack.vercel.wait_idle()


def _deploy_healthy(stack: DrillEnvironment) -> bool:
    code, _ = _health(stack)
    return code == 200


# -- config-flag ----------------------------------------------------------------------------------------------
def _inject_config_flag(stack: DrillEnvironment, *, jurisdiction: str = "CA",
                        exam_engine: str = "quantum_v9") -> dict[str, str]:
    rows = stack.query("select features::text from public.jurisdiction_configs where jurisdiction = $1",
                       jurisdiction)
    if not rows:
        raise DrillError(f"no jurisdiction {jurisdiction!r} in jurisdiction_configs")
    stack.execute(
        "update public.jurisdiction_configs set features = jsonb_set(features, '{exam_engine}', to_jsonb($2::text)),"
        " updated_at = now() where jurisdiction = $1", jurisdiction, exam_engine)
    _state(stack, "config-flag").update(jurisdiction=jurisdiction, features=rows[0]["features"])
    return {}


def _repair_config_flag(stack: DrillEnvironment) -> None:
    state = _state(stack, "config-flag")
    if not state:
        return
    stack.execute("update public.jurisdiction_configs set features = $2::jsonb, updated_at = now() "
                  "where jurisdiction = $1", state["jurisdiction"], state["features"])
    state.clear()


# -- stripe-webhook-secret ------------------------------------------------------------------------------------
WEBHOOK_EVENTS = ("invoice.paid", "customer.subscription.updated", "checkout.session.completed")


def _inject_webhook_secret(stack: DrillEnvironment, *, events: int = 3) -> dict[str, str]:
    secret = stack.stripe.rotate_secret()
    for n in range(events):
        stack.stripe.emit(WEBHOOK_EVENTS[n % len(WEBHOOK_EVENTS)])
    return {"RUNBOOK_STRIPE_WEBHOOK_SECRET": secret}


def _repair_webhook_secret(stack: DrillEnvironment) -> None:
    stack.vercel.set_env("STRIPE_WEBHOOK_SECRET", stack.stripe.endpoint.secret)
    stack.vercel.redeploy()
    stack.vercel.wait_idle()
    stack.stripe.retry_failed()


def _webhook_healthy(stack: DrillEnvironment) -> bool:
    if stack.stripe.failed_events():
        return False
    payload = json.dumps({"id": f"evt_probe{int(time.time() * 1000)}", "object": "event", "type": "drill.probe",
                          "data": {"object": {}}, "created": int(time.time())})
    header = stripe.WebhookSignature.generate_signature_header(payload, stack.stripe.endpoint.secret)
    try:
        resp = httpx.post(stack.stripe.webhook_url, content=payload.encode(), timeout=10,
                          headers={"Content-Type": "application/json", "Stripe-Signature": header})
    except httpx.HTTPError:
        return False
    return 200 <= resp.status_code < 300


# -- auth-outage ----------------------------------------------------------------------------------------------
def _inject_auth(stack: DrillEnvironment) -> dict[str, str]:
    wrong = SupabaseProject().anon_key  # another project's key (e.g. staging) pasted into production
    _state(stack, "auth-outage").update(previous=stack.vercel.production().id)
    stack.vercel.set_env("NEXT_PUBLIC_SUPABASE_ANON_KEY", wrong)
    stack.vercel.redeploy()
    stack.vercel.wait_idle()
    return {}


def _repair_auth(stack: DrillEnvironment) -> None:
    stack.vercel.set_env("NEXT_PUBLIC_SUPABASE_ANON_KEY", stack.project.anon_key)
    stack.vercel.redeploy()
    stack.vercel.wait_idle()


def _auth_healthy(stack: DrillEnvironment) -> bool:
    if not _check_ok(stack, "auth"):
        return False
    try:
        resp = httpx.post(f"{stack.app.base_url}/api/auth/profile", timeout=10,
                          headers={"Authorization": f"Bearer {stack.user_token()}"})
    except httpx.HTTPError:
        return False
    return resp.status_code == 200


# -- slow-database --------------------------------------------------------------------------------------------
RUNAWAY_SQL = """/* nightly job: rebuild course progress rollup */
DO $runaway$
DECLARE
  started timestamptz := clock_timestamp();
  waited double precision;
BEGIN
  LOOP
    LOCK TABLE public.profiles IN ACCESS EXCLUSIVE MODE;
    LOOP
      PERFORM pg_sleep(0.05);
      PERFORM pg_stat_clear_snapshot();
      SELECT coalesce(max(extract(epoch FROM clock_timestamp() - a.query_start)), 0) INTO waited
        FROM pg_stat_activity a WHERE pg_backend_pid() = ANY (pg_blocking_pids(a.pid));
      EXIT WHEN waited >= {delay} OR clock_timestamp() - started > interval '{limit} seconds';
    END LOOP;
    COMMIT;
    EXIT WHEN clock_timestamp() - started > interval '{limit} seconds';
  END LOOP;
END
$runaway$"""

BLOCKERS_SQL = """
select distinct a.pid, a.application_name, left(a.query, 80) as query,
       extract(epoch from now() - a.query_start) as running_s
from pg_locks l
join pg_stat_activity a on a.pid = l.pid
join pg_class c on c.oid = l.relation
join pg_namespace n on n.oid = c.relnamespace
where l.mode = 'AccessExclusiveLock' and n.nspname = 'public'
  and a.pid <> pg_backend_pid() and a.state = 'active' and now() - a.query_start > interval '1 second'
"""


def _inject_slow_db(stack: DrillEnvironment, *, delay: float = 6.0, threshold: float = 5.0,
                    limit: float = 600.0) -> dict[str, str]:
    sql = RUNAWAY_SQL.replace("{delay}", f"{float(delay)}").replace("{limit}", f"{float(limit)}")
    pid = stack.open_session(sql, "nightly-progress-rollup")
    deadline = time.monotonic() + 60  # bounds a hang only: a busy machine may take a while to start the session
    while time.monotonic() < deadline:  # locked and long-running (> 1 s), as the diagnosis queries look for it
        if any(row["pid"] == pid for row in stack.query(BLOCKERS_SQL)):
            break
        time.sleep(0.05)
    else:
        raise DrillError("the runaway session did not take its lock")
    _state(stack, "slow-database").update(pid=pid, delay=delay, threshold=threshold)
    return {}


def _repair_slow_db(stack: DrillEnvironment) -> None:
    for row in stack.query(BLOCKERS_SQL):
        stack.query("select pg_terminate_backend($1)", row["pid"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and stack.query(BLOCKERS_SQL):
        time.sleep(0.05)


def _slow_db_healthy(stack: DrillEnvironment) -> bool:
    threshold = float(_state(stack, "slow-database").get("threshold", 5.0))
    started = time.perf_counter()
    code, body = _health(stack)
    elapsed = time.perf_counter() - started
    database = body.get("checks", {}).get("database", {})
    return code == 200 and elapsed < threshold and database.get("status") != "unhealthy"


# -- third-party-outage ---------------------------------------------------------------------------------------
def _inject_vendor(stack: DrillEnvironment) -> dict[str, str]:
    stack.openai.inject(Fault.error(503, times=None, path="/v1/models"))
    stack.status_pages.set("openai", "major", "Elevated error rates on the API")
    return {}


def _repair_vendor(stack: DrillEnvironment) -> None:
    stack.openai.clear_faults()
    stack.status_pages.set("openai", "none")


def _vendor_healthy(stack: DrillEnvironment) -> bool:
    code, body = _health(stack)
    return code == 200 and body.get("checks", {}).get("openai", {}).get("status") == "healthy"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario(
        name="database-migration",
        title="A migration breaks a table the app needs",
        description="A new migration (with its down script) is added to the migrations folder and applied like "
                    "`supabase db push`: it renames profiles.full_name, which the app still reads.",
        runbook_section="Common Incident Scenarios > Database Issues; Rollback Procedures > Database Rollback",
        severity="P0",
        remediation="database-rollback",
        symptom="/api/health 503: database check fails (column \"full_name\" does not exist)",
        inject=_inject_migration, repair=_repair_migration,
        healthy=lambda stack: _check_ok(stack, "database"),
    ),
    Scenario(
        name="bad-deploy",
        title="A deployment built from broken code is in production",
        description="A new production deployment from a broken build becomes production: every route 500s.",
        runbook_section="Rollback Procedures > Code Rollback",
        severity="P0",
        remediation="code-rollback",
        symptom="/api/health 503 and 500 on every other route; errors in Sentry tagged with the new release",
        inject=_inject_bad_deploy, repair=_repair_bad_deploy, healthy=_deploy_healthy,
    ),
    Scenario(
        name="config-flag",
        title="A jurisdiction flag is set to a bad value",
        description="jurisdiction_configs CA features.exam_engine is set to an engine the app does not know "
                    "(the change is in public.config_audit).",
        runbook_section="Rollback Procedures > Configuration Rollback (feature flags)",
        severity="P0",
        remediation="config-rollback",
        symptom="/api/health 503: config check fails (CA: unknown exam_engine)",
        inject=_inject_config_flag, repair=_repair_config_flag,
        healthy=lambda stack: _check_ok(stack, "config"),
    ),
    Scenario(
        name="stripe-webhook-secret",
        title="The Stripe webhook secret was rotated; the app still has the old one",
        description="The endpoint's signing secret is rolled; the production deployment's STRIPE_WEBHOOK_SECRET "
                    "is the old one, so deliveries fail and events pile up with delivery_success=false. The "
                    "operator's RUNBOOK_STRIPE_WEBHOOK_SECRET is the endpoint's NEW secret.",
        runbook_section="Common Incident Scenarios > Payment/Billing Issues",
        severity="P0",
        remediation="webhook-check",
        symptom="webhook deliveries answer 400; GET /v1/events?delivery_success=false lists them (health 200)",
        inject=_inject_webhook_secret, repair=_repair_webhook_secret, healthy=_webhook_healthy,
    ),
    Scenario(
        name="auth-outage",
        title="The production deployment has a wrong Supabase anon key",
        description="NEXT_PUBLIC_SUPABASE_ANON_KEY is changed to another project's key and redeployed: sign-in "
                    "and every authenticated call fail for valid users.",
        runbook_section="Common Incident Scenarios > Authentication Issues",
        severity="P1",
        remediation="config-rollback",
        symptom="/api/health 503 (auth unhealthy: Invalid API key); /api/auth/profile 500 for valid tokens",
        inject=_inject_auth, repair=_repair_auth, healthy=_auth_healthy,
    ),
    Scenario(
        name="slow-database",
        title="A runaway session blocks the app's queries",
        description="A long-running session holds an ACCESS EXCLUSIVE lock on public.profiles, so each app "
                    "query waits `delay` seconds (default 6, above the runbook's 5 s warning threshold).",
        runbook_section="Common Incident Scenarios > Performance Issues; Database Issues",
        severity="P1",
        remediation="cancel-query",
        symptom="/api/health takes > 5 s (database latency); pg_stat_activity shows the long-running query",
        inject=_inject_slow_db, repair=_repair_slow_db, healthy=_slow_db_healthy,
    ),
    Scenario(
        name="third-party-outage",
        title="OpenAI is down",
        description="OpenAI answers 503 on /v1/models and its status page says major; the app degrades.",
        runbook_section="Common Incident Scenarios > Performance Issues (check external services)",
        severity="P2",
        remediation="none",
        symptom="/api/health 200 degraded with openai unhealthy; status.openai.com indicator major",
        inject=_inject_vendor, repair=_repair_vendor, healthy=_vendor_healthy,
    ),
]}


def scenario_table() -> str:
    """Return the Markdown table of the scenarios, as runbook/drill/README.md shows it (one source: SCENARIOS)."""
    rows = ["| name | severity | symptom | remediation | runbook section |", "|---|---|---|---|---|"]
    rows += [f"| {s.name} | {s.severity} | {s.symptom} | {s.remediation} | {s.runbook_section} |"
             for s in SCENARIOS.values()]
    return "\n".join(rows)


def get_scenario(name: str) -> Scenario:
    """Return a scenario by name; DrillError naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise DrillError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
