"""The runbook's "Configuration Rollback" as a diagnosis: which configuration change broke the app?

Symptoms: /api/health's config check (its error names the jurisdiction and the flag it rejects). Response: the
jurisdiction flags (`public.jurisdiction_configs`) as they are now, compared with the latest config snapshot
(flows/config_snapshot.py: flags, and env vars by fingerprint) when there is one, and the app's config audit trail
(`public.config_audit`: which flag changed, from what, to what, when, by whom). Verification: /api/health.

Cause: the config check fails and a flag is identified → NAMES it (jurisdiction + path, old → new value),
suggests config-rollback of the flags, from the newest snapshot that still holds a different (good) value.
"""

import json
import re
from datetime import datetime
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from flows._diagnosis import (
    INCIDENT_ID_DESCRIPTION,
    Investigation,
    check_status,
    health_checks,
    note_health,
    publish,
    run_name,
)
from flows.config_snapshot import ConfigSnapshot, list_snapshots
from runbook.models import Diagnosis, IncidentId, Suggestion
from runbook.settings import get_settings
from tasks.diagnostics import ConfigChange, read_config_changes
from tasks.health import check_app_health
from tasks.supabase import read_jurisdiction_configs
from tasks.vercel import read_env_vars

JURISDICTION_ERROR = re.compile(r"\b([A-Z]{2}):\s*([^;]+)")
ROW_FIELDS = ("enabled", "features", "settings")


class DiagnoseConfigurationParams(BaseModel):
    """Parameters of diagnose-configuration."""

    incident_id: IncidentId | None = Field(default=None, description=INCIDENT_ID_DESCRIPTION)
    changes_hours: float = Field(default=24, gt=0, le=24 * 30,
                                 description="Look at flag changes in the config audit trail this far back")


class FlagChange(BaseModel):
    """One flag whose value differs: jurisdiction, path inside the row, before and after."""

    jurisdiction: str
    path: str
    old: Any = None
    new: Any = None
    source: str = Field(description="audit trail | snapshot <file>")
    at: datetime | None = None
    by: str | None = None

    @property
    def name(self) -> str:
        """Return `CA features.exam_engine`."""
        return f"{self.jurisdiction} {self.path}"

    def describe(self) -> str:
        """Return one line: name, old → new, when and by whom."""
        when = f" at {self.at:%Y-%m-%d %H:%M:%S} UTC" if self.at else ""
        by = f" by {self.by}" if self.by else ""
        return f"{self.name}: {json.dumps(self.old)} → {json.dumps(self.new)} ({self.source}{when}{by})"


def diff_paths(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Return (dotted path, old, new) for every leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            out += diff_paths(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [(prefix, old, new)]


def row(value: dict[str, Any] | None) -> dict[str, Any]:
    """Return the flag part of a jurisdiction_configs row (enabled, features, settings)."""
    return {k: (value or {}).get(k) for k in ROW_FIELDS} if value is not None else {}


def audit_changes(changes: list[ConfigChange]) -> list[FlagChange]:
    """Return the flag changes in the audit trail, newest first: leaf by leaf for an update, whole rows otherwise."""
    out: list[FlagChange] = []
    for change in changes:
        if change.table != "jurisdiction_configs":
            continue
        if change.operation.upper() != "UPDATE":
            out.append(FlagChange(jurisdiction=change.key, path=f"(row {change.operation.lower()})",
                                  old=row(change.old) or None, new=row(change.new) or None, source="audit trail",
                                  at=change.changed_at, by=change.changed_by))
            continue
        for path, old, new in diff_paths(row(change.old), row(change.new)):
            out.append(FlagChange(jurisdiction=change.key, path=path, old=old, new=new, source="audit trail",
                                  at=change.changed_at, by=change.changed_by))
    return out


def read_snapshots(inv: Investigation) -> list[ConfigSnapshot]:
    """Return this environment's config snapshots, oldest first (a unreadable folder is evidence)."""
    try:
        return list_snapshots()
    except (OSError, ValueError) as exc:
        inv.note("config snapshots", False, "error", f"{type(exc).__name__}: {str(exc)[:200]}")
        return []


def value_at(rows: dict[str, dict[str, Any]], jurisdiction: str, path: str) -> Any:
    """Return the value at `features.exam_engine`-style path of a jurisdiction's row (None when absent)."""
    value: Any = row(rows.get(jurisdiction))
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def last_good(snapshots: list[ConfigSnapshot], change: FlagChange) -> tuple[ConfigSnapshot, Any] | None:
    """Return the newest snapshot whose value of the flag differs from the bad one, with that value."""
    for snapshot in reversed(snapshots):
        if not snapshot.flags:
            continue
        value = value_at(snapshot.flags, change.jurisdiction, change.path)
        if value != change.new:
            return snapshot, value
    return None


def snapshot_changes(name: str, snapshot: dict[str, dict[str, Any]],
                     current: dict[str, dict[str, Any]]) -> list[FlagChange]:
    """Return the flags that differ between a snapshot and the current rows."""
    out: list[FlagChange] = []
    for jurisdiction in sorted(set(snapshot) | set(current)):
        for path, old, new in diff_paths(row(snapshot.get(jurisdiction)), row(current.get(jurisdiction))):
            out.append(FlagChange(jurisdiction=jurisdiction, path=path, old=old, new=new,
                                  source=f"snapshot {name}"))
    return out


def named_in_error(error: str, current: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Return (jurisdiction, flag path, message) for each problem the health error names."""
    out = []
    for jurisdiction, message in JURISDICTION_ERROR.findall(error):
        leaves = [p for p, _, _ in diff_paths({}, row(current.get(jurisdiction)))]
        path = next((p for p in leaves if re.search(rf"\b{re.escape(p.rsplit('.', 1)[-1])}\b", message)), "")
        out.append((jurisdiction, path, message.strip()))
    return out


@flow(name="diagnose-configuration", flow_run_name=run_name("configuration"))
async def diagnose_configuration(params: DiagnoseConfigurationParams) -> Diagnosis:
    """Diagnose a configuration change: health config check, flags vs snapshot, the config audit trail."""
    inv = Investigation("configuration")

    # Symptoms (and the runbook's verification: /api/health)
    health = await inv.probe("app /api/health", check_app_health(params.incident_id, purpose="diagnosis"))
    note_health(inv, health, "config")
    config_error = str(health_checks(health).get("config", {}).get("error") or "")
    config_failing = check_status(health, "config") == "unhealthy"

    # Response 2: revert feature flags (Database → jurisdiction_configs): what are they, what changed?
    current = await inv.probe("jurisdiction flags", read_jurisdiction_configs())
    if current is not None:
        enabled = [j for j, r in sorted(current.items()) if r.get("enabled")]
        inv.note("jurisdiction flags", bool(enabled), f"{len(current)} jurisdictions",
                 f"enabled: {', '.join(enabled) or 'none'}")
    changes = await inv.probe("config audit trail", read_config_changes(params.changes_hours * 60))
    recent = audit_changes(changes or [])
    if "config audit trail" not in inv.errors:
        updates = [c for c in recent if not c.path.startswith("(row")]
        inv.note("recent flag changes", not (config_failing and recent), f"{len(updates)} updated, "
                 f"{len(recent) - len(updates)} rows inserted/deleted",
                 "; ".join(c.describe() for c in (updates or recent)[:5])
                 or (f"none in the last {params.changes_hours:g} h" if changes is not None
                     else "the app keeps no config audit trail"))
    snapshots = read_snapshots(inv)
    latest = snapshots[-1] if snapshots else None
    drift: list[FlagChange] = []
    if latest is None:
        inv.note("config snapshot", True, "none", f"no snapshot in {get_settings().snapshots_dir}")
    else:
        taken = f"{latest.id} taken {latest.taken_at:%Y-%m-%d %H:%M:%S} UTC ({latest.reason})"
        if current is not None:
            drift = snapshot_changes(latest.id, latest.flags, current)
            inv.note("flags vs snapshot", not (config_failing and drift), f"{len(drift)} differ",
                     "; ".join(c.describe() for c in drift[:5]) or f"match {taken}")
        # Response 1: environment variables, by fingerprint against the snapshot (never values)
        env_now = await inv.probe("env vs snapshot", read_env_vars(sorted(latest.env)))
        if env_now is not None:
            differ = sorted(k for k, v in latest.env.items() if not v.write_only and v.fingerprint
                            and env_now.get(k, {}).get("fingerprint") != v.fingerprint)
            inv.note("env vs snapshot", not differ, f"{len(differ)} differ",
                     ", ".join(f"{k}: {latest.env[k].fingerprint} → {env_now.get(k, {}).get('fingerprint') or 'unset'}"
                               for k in differ) or f"fingerprints match {taken}")

    # Cause
    if config_failing:
        named = named_in_error(config_error, current or {})
        culprits: list[FlagChange] = []
        for jurisdiction, path, _ in named:
            match = [c for c in [*recent, *drift] if c.jurisdiction == jurisdiction and (not path or c.path == path)]
            if match:
                culprits.append(match[0])
            elif path and current is not None:
                culprits.append(FlagChange(jurisdiction=jurisdiction, path=path,
                                           new=value_at(current, jurisdiction, path), source="health check"))
        updated = [c for c in [*recent, *drift] if not c.path.startswith("(row")]
        if not culprits and updated:
            culprits = [updated[0]]
        if culprits:
            names = ", ".join(dict.fromkeys(c.name for c in culprits))
            good = last_good(snapshots, culprits[0])
            parameters: dict[str, Any] = {"restore_flags": True, "restore_env": False}
            if good is not None:
                parameters["snapshot_id"] = good[0].id
                why = f"restore {names} from snapshot {good[0].id} (value {json.dumps(good[1])})"
            else:
                why = (f"restore {names} from the latest snapshot taken before the incident"
                       + ("" if snapshots else " — none exists yet: take one (config-snapshot) or set the flag back "
                                               "by hand to the audit trail's old value"))
            inv.cause(f"Jurisdiction flag {names} is bad: " + "; ".join(c.describe() for c in culprits)
                      + f". /api/health's config check fails: {config_error[:200]}.",
                      Suggestion(flow="config-rollback", parameters=parameters, why=why))
    if config_failing and not inv.causes:
        nothing = f"/api/health's config check fails ({config_error[:200] or 'unhealthy'}) but no flag was identified"
    else:
        nothing = "Configuration healthy: the config check passes" + (
            f" ({len(recent)} recent flag change(s) did not break it)." if recent else ".")
    return await publish(inv.diagnosis(nothing, all_clear=nothing.startswith("Configuration healthy")),
                         params.incident_id)

