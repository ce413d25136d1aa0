"""Configuration rollback (runbook "Rollback Procedures > Configuration Rollback"): feature flags and env vars
back to a snapshot.

Plan: the diff of now vs the chosen snapshot (default: the latest taken before the incident was declared): each
changed flag path (`jurisdiction_configs.CA.features.exam_engine`) with old and new value, each changed env var by
key and fingerprint only. After approval: a fresh snapshot of the current state, the flags restored in one
transaction, the env vars restored from the snapshot's Secret block (Vercel upsert), and a redeploy (env changes
only reach new deployments). Verify: the runbook's check and "now matches the snapshot".

Re-runs for the same incident repeat nothing: the flag restore is one compare-and-set transaction and the env
restores are upserts of the diff that is left, so a re-run plans only what is still different (nothing, when an
earlier run restored it all: the re-run only verifies). One step is not visible in that diff: the redeploy. An
earlier run that restored the env and ended before its redeploy (killed, cancelled, the redeploy failed) leaves
the env matching the snapshot while production still runs the old build; the re-run plans that redeploy.
"""

from typing import Any, Literal

from prefect import flow
from pydantic import Field

from flows._remediation import (
    Checked,
    EarlierRun,
    Plan,
    Remediation,
    RemediationParams,
    RemediationResult,
    latest_that_acted,
    run_name,
    run_remediation,
    verify_scenario,
)
from flows.config_snapshot import ConfigSnapshot, list_snapshots, load_env_values, load_snapshot, take_snapshot
from runbook.errors import UnsafeOperation
from runbook.models import Approval, EventKind
from runbook.settings import get_settings
from runbook.store import open_store
from tasks.supabase import read_jurisdiction_configs, restore_jurisdiction_configs
from tasks.vercel import (
    EnvValue,
    delete_env_var,
    find_rollback_target,
    read_env_values,
    redeploy_with_current_env,
    upsert_env_var,
)

ACTION = "config-rollback"


class ConfigRollbackParams(RemediationParams):
    """Restore feature flags and production env vars from a snapshot (a form in the Prefect UI)."""

    snapshot_id: str | None = Field(None, pattern=r"^snap-[0-9]{8}t[0-9]{6}z-[0-9a-f]{6}$", max_length=28,
                                    description="Snapshot to restore; empty: the latest taken before the incident")
    restore_flags: bool = Field(True, description="Restore public.jurisdiction_configs")
    restore_env: bool = Field(True, description="Restore the Vercel production env vars")
    redeploy: bool = Field(True, description="Redeploy production after env changes (they only reach new builds)")
    verify_scenario: Literal["configuration", "authentication", "database", "payment", "performance"] = Field(
        "configuration", description="Which runbook verification proves the restore worked")


def flag_diff(old: Any, new: Any, path: str) -> list[dict[str, Any]]:
    """Return the leaf paths where two flag values differ, with the snapshot's and the current value."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(old) | set(new)):
            out += flag_diff(old.get(key), new.get(key), f"{path}.{key}")
        return out
    return [] if old == new else [{"path": path, "snapshot": old, "now": new}]


def env_diff(snapshot: ConfigSnapshot, now: dict[str, EnvValue]) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the env changes to undo (key, fingerprints, what to do) and warnings for what cannot be compared."""
    changes: list[dict[str, Any]] = []
    warnings: list[str] = []
    for key in sorted(set(snapshot.env) | set(now)):
        was, cur = snapshot.env.get(key), now.get(key)
        if was is not None and cur is None:
            if was.has_value:
                changes.append({"key": key, "do": "recreate", "snapshot": was.fingerprint, "now": ""})
            else:
                warnings.append(f"{key} was deleted but is write-only in the snapshot: set it by hand")
        elif was is None and cur is not None:
            changes.append({"key": key, "do": "delete", "snapshot": "", "now": cur.fingerprint or "write-only"})
        elif was is not None and cur is not None:
            if not was.has_value or cur.write_only:
                warnings.append(f"{key} is write-only: cannot compare it with the snapshot")
            elif was.fingerprint != cur.fingerprint:
                changes.append({"key": key, "do": "restore", "snapshot": was.fingerprint, "now": cur.fingerprint})
    return changes, warnings


async def choose_snapshot(params: ConfigRollbackParams) -> ConfigSnapshot:
    """Return the named snapshot, else the latest taken before the incident was declared (else the latest)."""
    if params.snapshot_id:
        return load_snapshot(params.snapshot_id)
    candidates = list_snapshots()
    if params.incident_id:
        async with open_store() as store:
            declared = (await store.get(params.incident_id)).created_at
        candidates = [s for s in candidates if s.taken_at < declared]
    if not candidates:
        raise UnsafeOperation("no config snapshot to restore (none taken before the incident); run config-snapshot "
                              "on a schedule so there is one")
    return candidates[-1]


async def plan_config_rollback(params: ConfigRollbackParams) -> Plan:
    """Diff the current flags and env with the chosen snapshot."""
    settings = get_settings()
    snapshot = await choose_snapshot(params)
    flags_now = await read_jurisdiction_configs() if params.restore_flags else {}
    flags = [d for j in sorted(set(snapshot.flags) | set(flags_now)) if params.restore_flags
             for d in flag_diff(snapshot.flags.get(j), flags_now.get(j), f"jurisdiction_configs.{j}")]
    env_now = await read_env_values() if params.restore_env else {}
    env, warnings = env_diff(snapshot, env_now) if params.restore_env else ([], [])
    state = {"snapshot": snapshot.id, "flags_now": flags_now, "flag_diff": flags, "env_diff": env,
             "env_now": {k: v.fingerprint for k, v in env_now.items()}}
    when = f"{snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC"
    pending = (await pending_redeploy(params.incident_id)
               if not env and params.restore_env and params.redeploy else None)
    if pending is not None:  # the env is back, but production was built before: only a redeploy is left
        state["redeploy_pending_from"] = pending.flow_run_id
        steps = ["Snapshot the current flags and env (so this change can be undone)",
                 f"Redeploy production: run {pending.flow_run_id} restored the env vars and ended before its "
                 "redeploy (env changes only reach new deployments)"]
        steps += [f"Set {d['path']}: {d['now']!r} → {d['snapshot']!r}" for d in flags]
        steps.append(f"Verify ({params.verify_scenario}) and compare with the snapshot")
        return Plan(action=ACTION, environment=settings.environment, state=state, steps=steps, warnings=warnings,
                    summary=f"redeploy production with the env restored from snapshot {snapshot.id} ({when}) by "
                            f"run {pending.flow_run_id}" + (f", and restore {', '.join(d['path'] for d in flags)}"
                                                            if flags else ""))
    if not flags and not env:
        return Plan(action=ACTION, environment=settings.environment, noop=True, state=state, warnings=warnings,
                    summary=f"flags and env already match snapshot {snapshot.id} ({when})")
    steps = ["Snapshot the current flags and env (so this change can be undone)"]
    steps += [f"Set {d['path']}: {d['now']!r} → {d['snapshot']!r}" for d in flags]
    if flags:
        steps.append("(flags restored in ONE transaction)")
    verbs = {"restore": "Restore", "recreate": "Re-create", "delete": "Delete"}
    steps += [f"{verbs[c['do']]} env {c['key']} ({c['now'] or 'absent'} → {c['snapshot'] or 'absent'})" for c in env]
    if env and params.redeploy:
        steps.append("Redeploy production (env changes only reach new deployments)")
    steps.append(f"Verify ({params.verify_scenario}) and compare with the snapshot")
    changed = [d["path"] for d in flags] + [c["key"] for c in env]
    return Plan(action=ACTION, environment=settings.environment, state=state, steps=steps, warnings=warnings,
                summary=f"restore {', '.join(changed)} from snapshot {snapshot.id} ({when})")


async def pending_redeploy(incident_id: str | None) -> EarlierRun | None:
    """Return the newest earlier run of this rollback for the incident that restored env vars and ended before its
    redeploy reached production (killed, cancelled, the redeploy failed), else None.

    The run got past its approval, planned a redeploy, recorded env writes, and neither its result nor a redeploy;
    and production was built before its last env write (a redeploy that went through before the run died is not
    repeated).
    """
    run = await latest_that_acted(incident_id, ACTION)
    if run is None or run.applied is not None or not run.state.get("env_diff") \
            or not any(step.startswith("Redeploy production") for step in run.steps):
        return None
    async with open_store() as store:
        notes = [e for e in await store.timeline(incident_id or "", kind=EventKind.NOTE)
                 if e.flow_run_id == run.flow_run_id]
    if any(e.summary.startswith("Redeployed production") for e in notes):
        return None
    writes = [e.at for e in notes if e.summary.startswith("Vercel env ")]
    if not writes:
        return None  # it ended before changing the env: the env diff (none now) says what is left
    production, _ = await find_rollback_target(None)
    built = production.created_at if production is not None else None
    if built is not None and built > max(writes):
        return None
    return run


@flow(name=ACTION, flow_run_name=run_name(ACTION))
async def config_rollback(params: ConfigRollbackParams) -> RemediationResult:
    """Restore flags and env vars from a snapshot: plan the diff, approve, snapshot, restore, redeploy, verify."""

    async def plan() -> Plan:
        return await plan_config_rollback(params)

    async def act(plan: Plan, approval: Approval) -> dict[str, Any]:
        snapshot = load_snapshot(plan.state["snapshot"])
        before = await take_snapshot(f"before {ACTION} to {snapshot.id}", params.incident_id)
        restored: list[str] = []
        if plan.state["flag_diff"]:
            restored = await restore_jurisdiction_configs(snapshot.flags, expected_current=plan.state["flags_now"])
        env_done: list[str] = []
        if plan.state["env_diff"]:
            values = await load_env_values(snapshot)
            current = await read_env_values()
            for change in plan.state["env_diff"]:
                key = change["key"]
                if change["do"] == "delete":
                    await delete_env_var(params.incident_id, current[key].id, key, f"(not in snapshot {snapshot.id})")
                else:
                    await upsert_env_var(params.incident_id, key, values[key],
                                         snapshot.env[key].type or "encrypted", f"(from snapshot {snapshot.id})")
                env_done.append(key)
        redeployed = None
        if (env_done or plan.state.get("redeploy_pending_from")) and params.redeploy:
            redeployed = await redeploy_with_current_env(params.incident_id, f"{ACTION} to {snapshot.id}")
        return {"snapshot": snapshot.id, "pre_change_snapshot": before.id, "flags_restored": restored,
                "env_restored": env_done, "redeployed": redeployed}

    async def verify(plan: Plan, applied: dict[str, Any]) -> Checked:
        after = await plan_config_rollback(params.model_copy(update={"snapshot_id": plan.state["snapshot"]}))
        remaining = [d["path"] for d in after.state["flag_diff"]] + [c["key"] for c in after.state["env_diff"]]
        extra = {"matches_snapshot": {"ok": not remaining, "still_different": remaining}}
        return await verify_scenario(params.verify_scenario, params.incident_id, params.verify_within_seconds,
                                     extra)

    return await run_remediation(Remediation(ACTION, plan, act, verify), params)
