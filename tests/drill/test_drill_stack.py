"""The DrillStack interface: env and settings, URLs, database URI, migrations folder, health, tokens, reset."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from pydantic import SecretStr

from runbook.drill import DrillStack, Fault
from runbook.settings import Settings


def test_env_sets_every_runbook_target(stack: DrillStack) -> None:
    """stack.env (+ the Slack app's settings, opt-in with `--approve slack`) sets every target and credential.

    Not in it: the stores and the policy, which each drill sets for itself (deployments/drill.py run_one).
    """
    names = {key.removeprefix("RUNBOOK_").lower() for key in {**stack.env, **stack.slack.app_env()}}
    missing = set(Settings.model_fields) - names - {"store_url", "monitor_store_url", "policy_file"}
    assert missing == set()


def test_every_url_is_loopback(stack: DrillStack) -> None:
    """Every URL in env and urls points at 127.0.0.1."""
    urls = list(stack.urls.values()) + [v for k, v in stack.env.items() if v.startswith("http")]
    urls += list(json.loads(stack.env["RUNBOOK_STATUS_PAGES"]).values())
    assert urls and all(u.startswith("http://127.0.0.1:") for u in urls)


def test_settings_are_built_from_env(stack: DrillStack) -> None:
    """settings() returns Settings for the drill with parsed JSON fields and secrets."""
    settings = stack.settings()
    assert settings.drill is True
    assert settings.app_url == stack.urls["app"]
    assert set(settings.statuspage_components) == {"app", "database", "auth", "payments"}
    assert set(settings.status_pages) == {"supabase", "vercel", "openai", "stripe"}
    assert isinstance(settings.vercel_token, SecretStr)
    assert settings.vercel_token.get_secret_value() == stack.vercel.token
    assert settings.webhook_url == f"{stack.urls['app']}/api/billing/webhook"


def test_settings_overrides_win(stack: DrillStack) -> None:
    """settings(**overrides) replaces individual values."""
    assert stack.settings(environment="staging").environment == "staging"


def test_db_url_is_a_unix_socket_uri(stack: DrillStack) -> None:
    """db_url is the postgres URI on a socket inside the work directory."""
    assert stack.db_url.startswith("postgresql://postgres:@/postgres?host=")
    assert str(stack.workdir) in stack.db_url
    assert stack.env["RUNBOOK_SUPABASE_DB_URL"] == stack.db_url


def test_migrations_dir_is_a_copy_with_down_scripts(stack: DrillStack) -> None:
    """RUNBOOK_MIGRATIONS_DIR is the work copy: one down script per top-level migration."""
    folder = Path(stack.env["RUNBOOK_MIGRATIONS_DIR"])
    assert folder == stack.migrations_dir and folder.is_relative_to(stack.workdir)
    ups = sorted(p.name.removesuffix(".sql") for p in folder.glob("*.sql"))
    downs = sorted(p.name.removesuffix(".down.sql") for p in (folder / "down").glob("*.down.sql"))
    assert len(ups) >= 4 and ups == downs


def test_state_dir_exists_in_workdir(stack: DrillStack) -> None:
    """RUNBOOK_STATE_DIR is an existing directory inside the work directory."""
    state = Path(stack.env["RUNBOOK_STATE_DIR"])
    assert state.is_dir() and state.is_relative_to(stack.workdir)


def test_baseline_health_is_healthy(stack: DrillStack) -> None:
    """At baseline every health check is healthy and the answer is 200."""
    code, body = stack.health()
    assert code == 200
    assert body["status"] == "healthy"
    assert body["deployment"] == stack.vercel.production().id
    assert {name: c["status"] for name, c in body["checks"].items()} == {
        "database": "healthy", "auth": "healthy", "config": "healthy", "openai": "healthy"}


def test_user_token_opens_the_profile(stack: DrillStack, http: httpx.Client) -> None:
    """user_token() is accepted by /api/auth/profile for the matching seeded user."""
    user = next(u for u in stack.seed_users if u.role == "student")
    resp = http.post(f"{stack.urls['app']}/api/auth/profile", headers={"Authorization": f"Bearer {stack.user_token()}"})
    assert resp.status_code == 200
    assert resp.json()["email"] == user.email


def test_reset_restores_the_baseline(stack: DrillStack, http: httpx.Client) -> None:
    """reset() undoes data, flags, migrations files, deployments, env, faults and records."""
    baseline_prod = stack.vercel.production().id
    stack.execute("delete from public.profiles where role = 'student'")
    stack.execute("update public.app_flags set enabled = true where name = 'maintenance_mode'")
    (stack.migrations_dir / "20990101000000_stray.sql").write_text("select 1;")
    stack.vercel.deploy("broken")
    stack.inject("stripe-webhook-secret", events=1)
    stack.sentry.inject(Fault.error(503))
    http.get(f"{stack.urls['sentry']}/anything")

    stack.reset()

    assert stack.query("select count(*) as n from public.profiles")[0]["n"] == 300
    assert stack.query("select enabled from public.app_flags where name = 'maintenance_mode'")[0]["enabled"] is False
    assert not (stack.migrations_dir / "20990101000000_stray.sql").exists()
    assert stack.vercel.production().id == baseline_prod
    assert stack.env["RUNBOOK_STRIPE_WEBHOOK_SECRET"] == stack.stripe.endpoint.secret
    assert stack.stripe.failed_events() == []
    assert stack.sentry.faults == [] and stack.sentry.requests == []
    assert stack.health()[0] == 200


def test_settings_leave_os_environ_alone(stack: DrillStack) -> None:
    """Building settings does not add RUNBOOK_* variables to os.environ."""
    import os

    before = {k: v for k, v in os.environ.items() if k.startswith("RUNBOOK_")}
    stack.settings()
    assert {k: v for k, v in os.environ.items() if k.startswith("RUNBOOK_")} == before


def test_a_failing_inject_is_a_drill_error(stack: DrillStack) -> None:
    """Injecting the migration scenario twice fails with a DrillError naming the scenario."""
    import pytest

    from runbook.errors import DrillError

    stack.inject("database-migration")
    files = sorted(stack.migrations_dir.glob("*.sql"))
    with pytest.raises(DrillError, match="database-migration"):
        stack.inject("database-migration")
    assert sorted(stack.migrations_dir.glob("*.sql")) == files
