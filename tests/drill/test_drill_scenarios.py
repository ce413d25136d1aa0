"""Every scenario really breaks what it names, and its documented repair restores it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from runbook.drill import SCENARIOS, DrillStack
from runbook.drill.cli import format_scenarios, list_scenarios
from runbook.errors import DrillError

# Small delay and threshold so the slow-database scenario stays quick in tests.
PARAMS: dict[str, dict[str, Any]] = {"slow-database": {"delay": 1.0, "threshold": 0.8}}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_breaks_what_it_names(stack: DrillStack, name: str) -> None:
    """After inject, the scenario's health check says broken."""
    assert stack.healthy(name) is True
    stack.inject(name, **PARAMS.get(name, {}))
    assert stack.healthy(name) is False


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_repair_restores_health(stack: DrillStack, name: str) -> None:
    """The documented repair makes the scenario's check pass and /api/health answer 200 again."""
    stack.inject(name, **PARAMS.get(name, {}))
    stack.repair(name)
    assert stack.healthy(name) is True
    assert stack.health()[0] == 200


@pytest.mark.parametrize("name", ["database-migration", "bad-deploy", "config-flag", "auth-outage"])
def test_scenario_makes_health_503(stack: DrillStack, name: str) -> None:
    """Scenarios that break a critical dependency make /api/health unhealthy with 503."""
    stack.inject(name)
    code, body = stack.health()
    assert (code, body["status"]) == (503, "unhealthy")


def test_registry_describes_every_scenario() -> None:
    """The registry holds the seven runbook scenarios, each with severity, section and remediation."""
    assert set(SCENARIOS) == {"database-migration", "bad-deploy", "config-flag", "stripe-webhook-secret",
                              "auth-outage", "slow-database", "third-party-outage"}
    assert all(s.severity in ("P0", "P1", "P2", "P3") and s.runbook_section and s.remediation
               for s in SCENARIOS.values())
    assert [r["name"] for r in list_scenarios()] == list(SCENARIOS)
    assert all(name in format_scenarios() for name in SCENARIOS)


def test_unknown_scenario_is_a_drill_error(stack: DrillStack) -> None:
    """Injecting an unknown scenario raises DrillError naming the known ones."""
    with pytest.raises(DrillError, match="bad-deploy"):
        stack.inject("meteor-strike")


def test_migration_scenario_adds_file_down_script_and_history_row(stack: DrillStack) -> None:
    """database-migration writes <version>_<name>.sql and down/<version>_<name>.down.sql and records the version."""
    stack.inject("database-migration")
    version = stack.scenario_state["database-migration"]["version"]
    files = sorted(p.name for p in stack.migrations_dir.glob(f"{version}_*.sql"))
    downs = sorted(p.name for p in (stack.migrations_dir / "down").glob(f"{version}_*.down.sql"))
    rows = stack.query("select name, statements from supabase_migrations.schema_migrations where version = $1",
                       version)
    assert len(version) == 14 and files == [f"{version}_rename_profiles_full_name.sql"]
    assert downs == [f"{version}_rename_profiles_full_name.down.sql"]
    assert rows[0]["name"] == "rename_profiles_full_name" and len(rows[0]["statements"]) == 2
    assert "full_name" in stack.health()[1]["checks"]["database"]["error"]


def test_migration_repair_reverts_the_version(stack: DrillStack) -> None:
    """The repair runs the down script and deletes the version's schema_migrations row."""
    stack.inject("database-migration")
    version = stack.scenario_state["database-migration"]["version"]
    stack.repair("database-migration")
    assert stack.query("select 1 from supabase_migrations.schema_migrations where version = $1", version) == []
    assert stack.query("select full_name from public.profiles limit 1")


def test_bad_deploy_repair_rolls_back_to_the_previous_deployment(stack: DrillStack, http: httpx.Client) -> None:
    """bad-deploy puts a broken build in production (500s); the rollback returns the previous one."""
    previous = stack.vercel.production().id
    stack.inject("bad-deploy")
    broken = http.get(f"{stack.urls['app']}/").status_code
    stack.repair("bad-deploy")
    assert broken == 500 and stack.vercel.production().id == previous


def test_config_flag_is_visible_in_the_audit_trail(stack: DrillStack) -> None:
    """config-flag's bad value is what the config check names, and the audit trail has the old value."""
    stack.inject("config-flag")
    error = stack.health()[1]["checks"]["config"]["error"]
    audit = stack.query("select old_value->'features'->>'exam_engine' as old from public.config_audit "
                        "where row_key = 'CA' and operation = 'UPDATE'")
    assert "quantum_v9" in error and audit == [{"old": "standard_v2"}]


def test_webhook_secret_scenario_returns_the_new_secret(stack: DrillStack) -> None:
    """stripe-webhook-secret returns RUNBOOK_STRIPE_WEBHOOK_SECRET = the endpoint's new secret; settings follow."""
    old = stack.env["RUNBOOK_STRIPE_WEBHOOK_SECRET"]
    changes = stack.inject("stripe-webhook-secret")
    new = stack.stripe.endpoint.secret
    assert changes == {"RUNBOOK_STRIPE_WEBHOOK_SECRET": new} and new != old
    assert stack.settings().stripe_webhook_secret.get_secret_value() == new


def test_webhook_secret_scenario_piles_up_failed_deliveries(stack: DrillStack) -> None:
    """Deliveries answer 400 and the events stay pending while health stays 200."""
    stack.inject("stripe-webhook-secret", events=3)
    deliveries = stack.app.requests_to("/api/billing/webhook")
    assert [d.status for d in deliveries] == [400, 400, 400]
    assert len(stack.stripe.failed_events()) == 3 and stack.health()[0] == 200


def test_auth_outage_fails_profile_for_valid_users(stack: DrillStack, http: httpx.Client) -> None:
    """auth-outage makes /api/auth/profile fail for a valid token and health name the auth check."""
    stack.inject("auth-outage")
    resp = http.post(f"{stack.urls['app']}/api/auth/profile", headers={"Authorization": f"Bearer {stack.user_token()}"})
    assert resp.status_code == 500
    assert stack.health()[1]["checks"]["auth"]["status"] == "unhealthy"


def test_slow_database_shows_a_long_running_query(stack: DrillStack) -> None:
    """slow-database leaves a long-running active query in pg_stat_activity that blocks health's query."""
    stack.inject("slow-database", delay=1.0, threshold=0.8)
    rows = stack.query("select pid from pg_stat_activity where state = 'active' "
                       "and now() - query_start > interval '1 second' and pid <> pg_backend_pid()")
    started = time.perf_counter()
    code, body = stack.health()
    assert [r["pid"] for r in rows] == [stack.scenario_state["slow-database"]["pid"]]
    assert time.perf_counter() - started >= 1.0
    assert code == 200 and body["checks"]["database"]["latency_ms"] >= 1000


def test_third_party_outage_degrades_health(stack: DrillStack, http: httpx.Client) -> None:
    """third-party-outage: health 200 degraded with openai unhealthy, and OpenAI's status page says major."""
    stack.inject("third-party-outage")
    code, body = stack.health()
    page = http.get(f"{stack.settings().status_pages['openai']}/api/v2/status.json").json()
    assert (code, body["status"], body["checks"]["openai"]["status"]) == (200, "degraded", "unhealthy")
    assert page["status"]["indicator"] == "major"


def test_docs_name_the_scenarios_as_the_code_does() -> None:
    """One source: runbook/drill/README.md's table is generated from SCENARIOS, and every remediation a scenario
    names is a deployment of prefect.yaml (or `none`)."""
    from pathlib import Path

    import yaml

    from runbook.drill.scenarios import scenario_table

    root = Path(__file__).resolve().parents[2]
    assert scenario_table() in (root / "runbook/drill/README.md").read_text()
    deployments = {d["name"] for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]}
    assert {s.remediation for s in SCENARIOS.values()} - {"none"} <= deployments
