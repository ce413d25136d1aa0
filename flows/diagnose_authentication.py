"""The runbook's "Authentication Issues" scenario as a diagnosis.

Symptoms: users can't log in, session errors (the auth endpoint, /api/health's auth check). Response: Supabase
Auth status (the Management API's auth service health), then "verify environment variables": the app's
NEXT_PUBLIC_SUPABASE_URL and NEXT_PUBLIC_SUPABASE_ANON_KEY in Vercel production are compared BY FINGERPRINT with the
runbook's own settings (supabase_url, supabase_anon_key). This replaces the runbook's
`echo $NEXT_PUBLIC_SUPABASE_ANON_KEY`: no value is ever printed. Verification: POST /api/auth/profile answers 401
without a token (the verify-service check, run as evidence).

Causes: a variable differs from the project's (NAMED; config-rollback of the env, or code-rollback to the previous
deployment, built with the old values); the health check names a variable the production deployment still has
wrong; Supabase Auth itself unhealthy (nothing to roll back: monitor/escalate).
"""

import re
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from flows._diagnosis import (
    INCIDENT_ID_DESCRIPTION,
    NONE,
    Investigation,
    check_status,
    health_checks,
    note_health,
    publish,
    run_name,
)
from flows.config_snapshot import list_snapshots
from runbook.clients.types import Deployment
from runbook.models import Diagnosis, IncidentId, Suggestion
from runbook.settings import fingerprint, get_settings
from tasks.health import check_app_health, check_auth_endpoint
from tasks.supabase import check_project_health
from tasks.vercel import find_rollback_target, read_env_vars

# The app's variable → the runbook setting that holds the value it must have.
AUTH_ENV = {"NEXT_PUBLIC_SUPABASE_URL": "supabase_url", "NEXT_PUBLIC_SUPABASE_ANON_KEY": "supabase_anon_key"}
ENV_NAME = re.compile(r"\b(NEXT_PUBLIC_[A-Z0-9_]+|SUPABASE_[A-Z0-9_]+)\b")


class DiagnoseAuthenticationParams(BaseModel):
    """Parameters of diagnose-authentication."""

    incident_id: IncidentId | None = Field(default=None, description=INCIDENT_ID_DESCRIPTION)


def expected_fingerprints() -> dict[str, str]:
    """Return variable → fingerprint of the value the runbook's settings say it must have."""
    settings = get_settings()
    return {key: fingerprint(getattr(settings, setting)) for key, setting in AUTH_ENV.items()}


def compare_env(app_vars: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Return variable → (state, detail) comparing the app's fingerprints with the runbook's settings."""
    fingerprints = expected_fingerprints()
    out: dict[str, tuple[str, str]] = {}
    for key, setting in AUTH_ENV.items():
        expected = fingerprints[key]
        var = app_vars.get(key)
        if var is None:
            out[key] = ("missing", "not set for production in Vercel")
        elif not expected:
            out[key] = ("not-checked", f"the runbook has no {setting} to compare with (RUNBOOK_{setting.upper()})")
        elif var.get("write_only") or not var.get("fingerprint"):
            out[key] = ("write-only", f"type {var.get('type')}: Vercel does not return the value; not comparable")
        elif var["fingerprint"] == expected:
            out[key] = ("match", f"matches the project's {setting} ({expected})")
        else:
            out[key] = ("mismatch", f"Vercel production has {var['fingerprint']}, the project's {setting} is "
                                    f"{expected}")
    return out


def env_rollback(keys: list[str], expected: dict[str, str]) -> Suggestion:
    """Return config-rollback of the env: from the newest snapshot holding the project's values, if any."""
    parameters: dict[str, Any] = {"restore_flags": False, "restore_env": True, "redeploy": True,
                                  "verify_scenario": "authentication"}
    names = " and ".join(keys)
    try:
        snapshots = list_snapshots()
    except (OSError, ValueError):
        snapshots = []
    good = next((snap for snap in reversed(snapshots)
                 if all(k in snap.env and snap.env[k].fingerprint == expected.get(k) for k in keys)), None)
    if good is not None:
        parameters["snapshot_id"] = good.id
        why = f"restore {names} from snapshot {good.id} (fingerprints match the project) and redeploy"
    else:
        why = (f"restore {names} from the latest snapshot taken before the incident and redeploy"
               + ("" if snapshots else " — no snapshot exists: set it in Vercel by hand, or roll back the code"))
    return Suggestion(flow="config-rollback", parameters=parameters, why=why)


def rollback_alternative(previous: Deployment | None, current: Deployment | None, why: str) -> list[Suggestion]:
    """Return the code-rollback suggestion to the previous deployment, when there is one."""
    if previous is None:
        return []
    built = f" (built {previous.created_at:%Y-%m-%d %H:%M} UTC)" if previous.created_at else ""
    return [Suggestion(flow="code-rollback", parameters={"target_deployment_id": previous.id},
                       why=f"alternative: roll production back from {current.id if current else '?'} to "
                           f"{previous.id}{built}, {why}")]


@flow(name="diagnose-authentication", flow_run_name=run_name("authentication"))
async def diagnose_authentication(params: DiagnoseAuthenticationParams) -> Diagnosis:
    """Diagnose the runbook's authentication scenario: auth endpoint, Supabase Auth, the app's Supabase env."""
    inv = Investigation("authentication")

    # Symptoms, and the runbook's verification (POST /api/auth/profile)
    probe = await inv.probe("auth endpoint", check_auth_endpoint())
    if probe is not None:
        inv.note("auth endpoint", probe.alive, f"HTTP {probe.status_code}",
                 f"POST /api/auth/profile without a token: {probe.detail} ({probe.latency_ms:.0f} ms)")
    health = await inv.probe("app /api/health", check_app_health(params.incident_id, purpose="diagnosis"))
    note_health(inv, health, "auth")
    auth_error = str(health_checks(health).get("auth", {}).get("error") or "")
    auth_failing = check_status(health, "auth") == "unhealthy"

    # Response 1: Supabase Auth status
    project = await inv.probe("Supabase Auth service", check_project_health())
    auth_service = next((s for s in project.services if s.name == "auth"), None) if project else None
    if project is not None:
        if auth_service is None:
            inv.note("Supabase Auth service", True, "not reported",
                     ", ".join(f"{s.name} {s.status}" for s in project.services))
        else:
            inv.note("Supabase Auth service", auth_service.healthy, auth_service.status, auth_service.error or "")
    # Response 3: verify environment variables (fingerprints only)
    app_vars = await inv.probe("app Supabase env", read_env_vars(list(AUTH_ENV)))
    states = compare_env(app_vars) if app_vars is not None else {}
    for key, (state, detail) in states.items():
        inv.note(f"env {key}", state in {"match", "not-checked", "write-only"}, state, detail)
    # The deployment to roll back to, if it comes to that
    target = await inv.probe("rollback candidate", find_rollback_target())
    current, previous = target if target is not None else (None, None)
    if target is not None:
        inv.note("rollback candidate", previous is not None, previous.id if previous else "none",
                 f"production is {current.id if current else 'unknown'}")

    # Causes
    mismatched = [k for k, (state, _) in states.items() if state in {"mismatch", "missing"}]
    if mismatched:
        names = " and ".join(mismatched)
        details = "; ".join(f"{k}: {states[k][1]}" for k in mismatched)
        symptom = f" /api/health: {auth_error[:120]}." if auth_error else ""
        inv.cause(f"The app's {names} in Vercel production does not match the Supabase project ({details}).{symptom}",
                  env_rollback(mismatched, expected_fingerprints()),
                  *rollback_alternative(previous, current, "built with the previous environment"))
    elif auth_failing and (named := sorted(set(ENV_NAME.findall(auth_error)))) and app_vars is None:
        # Vercel's env did not answer: whether its value is wrong or production was built with an old one is not
        # known, and the two need different remediations, so none is suggested from a read that failed.
        names = " and ".join(named)
        inv.cause(f"/api/health's auth check names {names} ({auth_error[:160]}); Vercel's env could not be read "
                  f"({inv.errors.get('app Supabase env', 'no answer')[:160]}), so whether its value is wrong or "
                  "production was built with an old one is unknown.",
                  Suggestion(flow=NONE, why=f"read {names} in Vercel once it answers: roll the env back "
                                            "(config-rollback) if it differs from Supabase's, else redeploy"))
    elif auth_failing and (named := sorted(set(ENV_NAME.findall(auth_error)))):
        names = " and ".join(named)
        inv.cause(f"/api/health's auth check names {names} ({auth_error[:160]}) although Vercel's value matches "
                  "now: production was built with the old value.",
                  Suggestion(flow="config-rollback",
                             parameters={"restore_flags": False, "restore_env": False, "redeploy": True,
                                         "verify_scenario": "authentication"},
                             why=f"redeploy so production picks up the current {names}"),
                  *rollback_alternative(previous, current, "built with the previous environment"))
    if auth_service is not None and not auth_service.healthy:
        inv.cause(f"Supabase Auth reports {auth_service.status}"
                  + (f" ({auth_service.error})." if auth_service.error else "."),
                  Suggestion(flow=NONE, why="Supabase Auth itself is unhealthy: follow status.supabase.com, "
                                            "escalate to Supabase support; nothing of ours to roll back"))
    if auth_failing and not inv.causes:
        nothing = f"/api/health's auth check fails ({auth_error[:160] or 'unhealthy'}) but no cause was identified"
    elif probe is not None and not probe.alive and not inv.causes:
        nothing = (f"The auth endpoint answers HTTP {probe.status_code}, but Supabase Auth and the app's Supabase "
                   "env are fine: look at the app itself (performance scenario)" if project is not None
                   and app_vars is not None else f"The auth endpoint answers HTTP {probe.status_code}")
    else:
        nothing = "Authentication healthy: endpoint alive, Supabase Auth healthy, the app's Supabase env matches."
    return await publish(inv.diagnosis(nothing, all_clear=nothing.startswith("Authentication healthy")),
                         params.incident_id)
