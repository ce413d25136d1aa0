"""The runbook's "Database Issues" scenario as a diagnosis.

Symptoms: /api/health's database check (500s, connection timeouts, RLS errors). Response: `supabase status`
(direct connectivity), Database → Performance (connections vs max_connections, pool use, long-running and blocking
queries, mean query time against the policy's key metrics), `supabase migration list` (latest applied version,
drift both ways, the recorded statements of the newest migrations). Verification: the REST count of profiles
(verify-service's check task, run here as evidence).

Causes, most specific first:
- database unreachable;
- a migration broke it: the health check fails with an SQL error while the database answers, and an applied
  migration is suspect (applied without a local file, recent by its version time, or its statements touch the
  object the error names) → NAMES the migration (version + name), suggests database-rollback of that version;
- long-running / blocking queries → names the pid, suggests cancel-query of the blocker (else the longest);
- connections or pool over the policy's limits.
"""

import re
from datetime import UTC, datetime

from prefect import flow
from pydantic import BaseModel, Field

from flows._diagnosis import (
    INCIDENT_ID_DESCRIPTION,
    NONE,
    Investigation,
    check_status,
    culprit,
    health_checks,
    note_health,
    publish,
    query_line,
    run_name,
    suggest_cancel,
)
from runbook.clients.types import DatabaseHealth, MigrationStatus
from runbook.models import Diagnosis, IncidentId, Suggestion
from runbook.policy import get_policy
from tasks.diagnostics import AppliedMigrationDetail, read_applied_migrations
from tasks.health import check_app_health
from tasks.supabase import (
    check_database_connectivity,
    check_database_health,
    check_rest_count,
    read_migration_status,
)

QUOTED = re.compile(r"[\"']([A-Za-z_][A-Za-z0-9_.]*)[\"']")


class DiagnoseDatabaseParams(BaseModel):
    """Parameters of diagnose-database."""

    incident_id: IncidentId | None = Field(default=None, description=INCIDENT_ID_DESCRIPTION)
    long_query_seconds: float | None = Field(default=None, gt=0, le=3600,
        description="A query running longer than this is long-running (default: the policy's response-time "
                    "target, key_metrics.response_time_s)")
    recent_migration_hours: float = Field(
        default=72, gt=0, le=24 * 90, description="A migration whose version time is this recent is a suspect")


def version_time(version: str) -> datetime | None:
    """Return the time a `YYYYMMDDHHMMSS…` migration version encodes, or None."""
    try:
        return datetime.strptime(version[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _age(version: str) -> str:
    at = version_time(version)
    if at is None:
        return "version is not a timestamp"
    hours = (datetime.now(UTC) - at).total_seconds() / 3600
    return f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.0f} days ago"


def error_identifiers(text: str) -> set[str]:
    """Return the quoted identifiers an SQL error names (`column "full_name"`, `relation "public.x"`)."""
    out: set[str] = set()
    for match in QUOTED.findall(text or ""):
        out.add(match.lower())
        out.add(match.lower().rsplit(".", 1)[-1])
    return out


def touches(statements: list[str], identifiers: set[str]) -> list[str]:
    """Return the identifiers that appear as whole words in the statements."""
    text = "\n".join(statements).lower()
    return sorted(i for i in identifiers if re.search(rf"(?<![a-z0-9_]){re.escape(i)}(?![a-z0-9_])", text))


def suspect_migration(
    status: MigrationStatus, applied: list[AppliedMigrationDetail], error: str, recent_hours: float
) -> tuple[str, str | None, list[str]] | None:
    """Return (version, name, reasons) of the applied migration that most likely broke the database."""
    names = {r.version: r.name for r in status.rows}
    details = {m.version: m for m in applied}
    candidates = [*reversed(status.remote_only)]
    if status.latest_applied and status.latest_applied not in candidates:
        candidates.append(status.latest_applied)
    identifiers = error_identifiers(error)
    for version in candidates:
        reasons: list[str] = []
        if version in status.remote_only:
            reasons.append("applied to the database but missing from the migrations folder")
        at = version_time(version)
        if at is not None and (datetime.now(UTC) - at).total_seconds() <= recent_hours * 3600:
            reasons.append(f"the newest applied migration, version time {_age(version)}")
        hit = touches(details[version].statements, identifiers) if version in details else []
        if hit:
            reasons.append(f"its statements touch {', '.join(hit)}, which the error names")
        if reasons:
            return version, names.get(version) or (details[version].name if version in details else None), reasons
    return None


def note_database_health(inv: Investigation, dbh: DatabaseHealth) -> None:
    """Add connections, pool use, long-running queries and mean query time against the key metrics."""
    km = get_policy().key_metrics
    inv.note("connections", dbh.active_connections < km.active_connections,
             f"{dbh.active_connections} active / {dbh.total_connections} total",
             f"max_connections {dbh.max_connections}; target: active < {km.active_connections}")
    inv.note("connection pool", dbh.pool_utilisation_pct < km.pool_utilisation_pct,
             f"{dbh.pool_utilisation_pct:.1f} %", f"target < {km.pool_utilisation_pct:g} %")
    inv.note("long-running queries", not dbh.long_running, str(len(dbh.long_running)),
             "; ".join(query_line(q) for q in dbh.long_running[:3]) or "none")
    mean = dbh.mean_query_ms
    inv.note("mean query time", mean is None or mean < km.query_time_ms,
             "n/a" if mean is None else f"{mean:.0f} ms",
             f"target < {km.query_time_ms:g} ms (from {dbh.mean_query_source})")


@flow(name="diagnose-database", flow_run_name=run_name("database"))
async def diagnose_database(params: DiagnoseDatabaseParams) -> Diagnosis:
    """Diagnose the runbook's database scenario: health, connectivity, performance, migration history."""
    inv = Investigation("database")
    policy = get_policy()
    long_s = params.long_query_seconds or policy.key_metrics.response_time_s

    # Symptoms
    health = await inv.probe("app /api/health", check_app_health(params.incident_id, purpose="diagnosis"))
    note_health(inv, health, "database")
    db_error = str(health_checks(health).get("database", {}).get("error") or "")
    db_failing = check_status(health, "database") == "unhealthy" or bool(db_error)

    # Response 1: supabase status
    conn = await inv.probe("database connectivity", check_database_connectivity())
    if conn is not None:
        inv.note("database connectivity", True, f"PostgreSQL {conn.server_version}",
                 f"database {conn.database}, {conn.latency_ms:.0f} ms")
    # Response 2: Database → Performance
    dbh = await inv.probe("database health", check_database_health(long_s))
    if dbh is not None:
        note_database_health(inv, dbh)
    # Response 3: supabase migration list
    status = await inv.probe("migration history", read_migration_status())
    applied = await inv.probe("applied migrations", read_applied_migrations()) or []
    if status is not None:
        latest = status.latest_applied
        name = next((r.name for r in status.rows if r.version == latest), None)
        inv.note("latest applied migration", True, f"{latest} {name or ''}".strip() if latest else "none",
                 _age(latest) if latest else ("no history table" if not status.history_table else "no rows"))
        inv.note("migration drift", not status.drift,
                 f"{len(status.pending)} pending, {len(status.remote_only)} remote-only",
                 "; ".join(filter(None, [
                     f"not applied: {', '.join(status.pending)}" if status.pending else "",
                     f"applied without a local file: {', '.join(status.remote_only)}" if status.remote_only else "",
                 ])) or "local files and applied history agree")
    # Verification: the runbook's REST count of profiles (verify-service's check)
    count = await inv.probe("verification: REST profiles count", check_rest_count(None))
    if count is not None:
        inv.note("verification: REST profiles count", True, str(count.count),
                 f"Supabase REST profiles?select=count, {count.latency_ms:.0f} ms")

    # Causes
    if inv.failed("database connectivity"):
        inv.cause(f"The database is unreachable over its direct URL ({inv.errors.get('database connectivity')}).",
                  Suggestion(flow=NONE, why="check Supabase's status and the project's compute; escalate to "
                                            "Supabase support if the project is down"),
                  Suggestion(flow="maintenance-mode", parameters={"enabled": True},
                             why="optional: serve the maintenance page while the database is down"))
    suspect = (suspect_migration(status, applied, db_error, params.recent_migration_hours)
               if status is not None and db_failing and conn is not None else None)
    if suspect is not None:
        version, name, reasons = suspect
        label = f"{version} {name}" if name else version
        inv.note("suspect migration", False, label, "; ".join(reasons))
        inv.cause(f"Migration {label} broke the database: /api/health's database check fails "
                  f"({db_error[:160]}); the migration is suspect because {'; '.join(reasons)}.",
                  Suggestion(flow="database-rollback", parameters={"versions": [version]},
                             why=f"revert migration {label} with its down script (backup first)"))
    if dbh is not None and dbh.long_running:
        q = culprit(dbh.long_running)
        inv.cause(f"Long-running query: {query_line(q)}.", suggest_cancel(q, long_s))
    if dbh is not None:
        km = policy.key_metrics
        if dbh.pool_utilisation_pct >= km.pool_utilisation_pct or dbh.active_connections >= km.active_connections:
            inv.cause(f"Connections exhausted: {dbh.total_connections} of {dbh.max_connections} "
                      f"({dbh.pool_utilisation_pct:.0f} % ≥ {km.pool_utilisation_pct:g} %).",
                      Suggestion(flow=NONE, why="find the client holding connections (pooler, leaked sessions)"))
    if db_failing and not inv.causes:
        nothing = f"/api/health's database check fails ({db_error[:160] or 'unhealthy'}) but no cause was identified"
    else:
        nothing = "Database healthy: reachable, no long-running queries, no suspect migration."
    return await publish(inv.diagnosis(nothing, all_clear=nothing.startswith("Database healthy")),
                         params.incident_id)
