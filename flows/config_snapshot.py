"""Config snapshot: the feature flags (`public.jurisdiction_configs`) and the Vercel production env, kept so that
a configuration rollback has something to go back to. Runs on a schedule and before every config change.

The snapshot file (JSON in settings.snapshots_dir) holds the flags, each env var's key, type and fingerprint, and
the name of the Prefect Secret block that holds the env VALUES; values never reach the file, a log or a report.
Write-only (sensitive) env vars are recorded without a value: they cannot be restored from a snapshot.
"""

import json
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.blocks.system import Secret
from pydantic import BaseModel, Field, SecretStr

from flows._remediation import run_name
from runbook.errors import InputError
from runbook.models import EventKind, IncidentId, utcnow
from runbook.settings import get_settings
from tasks.incident import record
from tasks.supabase import read_jurisdiction_configs
from tasks.vercel import read_env_values

SNAPSHOT_ID = re.compile(r"^snap-[0-9]{8}t[0-9]{6}z-[0-9a-f]{6}$")


class SnapshotEnvVar(BaseModel):
    """One env var in a snapshot: never its value."""

    key: str
    type: str | None = None
    fingerprint: str = ""
    write_only: bool = False
    has_value: bool = False


class ConfigSnapshot(BaseModel):
    """A snapshot of the flags and the production env (values in the Secret block `secret_block`)."""

    id: str
    environment: str
    taken_at: datetime
    reason: str = ""
    incident_id: str | None = None
    flags: dict[str, dict[str, Any]] = Field(default_factory=dict, description="jurisdiction → row")
    env: dict[str, SnapshotEnvVar] = Field(default_factory=dict)
    secret_block: str | None = None

    def markdown(self) -> str:
        """Render the snapshot for people: flags, env keys and fingerprints only."""
        lines = [f"## Config snapshot {self.id} ({self.environment})", "",
                 f"Taken {self.taken_at:%Y-%m-%d %H:%M:%S} UTC — {self.reason}", "",
                 f"Flags: {', '.join(sorted(self.flags)) or 'none'}", "", "| env var | type | fingerprint |",
                 "|---|---|---|"]
        lines += [f"| {v.key} | {v.type} | {'write-only' if v.write_only else v.fingerprint} |"
                  for v in sorted(self.env.values(), key=lambda v: v.key)]
        return "\n".join(lines)


class ConfigSnapshotParams(BaseModel):
    """Take a config snapshot (a form in the Prefect UI; also the schedule's parameters)."""

    incident_id: IncidentId | None = Field(None, description="Record on this incident")
    reason: str = Field("scheduled", min_length=1, max_length=200, description="Why the snapshot was taken")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "default"


def snapshot_dir() -> Path:
    """Return the folder of this environment's snapshots."""
    return get_settings().snapshots_dir / _slug(get_settings().environment)


def list_snapshots() -> list[ConfigSnapshot]:
    """Return this environment's snapshots, oldest first."""
    folder = snapshot_dir()
    items = [ConfigSnapshot.model_validate_json(p.read_text()) for p in folder.glob("snap-*.json")] \
        if folder.exists() else []
    return sorted(items, key=lambda s: s.taken_at)


def load_snapshot(snapshot_id: str) -> ConfigSnapshot:
    """Return one snapshot by id (InputError when unknown or malformed)."""
    if not SNAPSHOT_ID.match(snapshot_id):
        raise InputError(f"not a snapshot id: {snapshot_id[:40]!r}")
    path = snapshot_dir() / f"{snapshot_id}.json"
    if not path.is_file():
        raise InputError(f"no snapshot {snapshot_id} for environment {get_settings().environment}")
    return ConfigSnapshot.model_validate_json(path.read_text())


async def load_env_values(snapshot: ConfigSnapshot) -> dict[str, SecretStr]:
    """Return the snapshot's env values from its Secret block, as SecretStr."""
    if not snapshot.secret_block:
        return {}
    block: Any = await Secret.aload(snapshot.secret_block)  # type: ignore[attr-defined]
    raw: Any = block.get()
    values = raw if isinstance(raw, dict) else json.loads(raw)
    return {k: SecretStr(str(v)) for k, v in values.items()}


async def take_snapshot(reason: str, incident_id: str | None = None) -> ConfigSnapshot:
    """Read the flags and the production env; save values in a Secret block and the rest as JSON."""
    settings = get_settings()
    flags = await read_jurisdiction_configs()
    env = await read_env_values()
    taken_at = utcnow()
    snapshot_id = f"snap-{taken_at:%Y%m%dt%H%M%Sz}-{secrets.token_hex(3)}"
    values = {k: v.value.get_secret_value() for k, v in env.items() if v.value is not None}
    block_name = f"config-{_slug(settings.environment)}-{snapshot_id}" if values else None
    if block_name:
        await Secret(value=json.dumps(values)).save(block_name, overwrite=True)  # type: ignore[call-arg]
    snapshot = ConfigSnapshot(
        id=snapshot_id, environment=settings.environment, taken_at=taken_at, reason=reason, incident_id=incident_id,
        flags=flags, secret_block=block_name,
        env={k: SnapshotEnvVar(key=k, type=v.type, fingerprint=v.fingerprint, write_only=v.write_only,
                               has_value=v.value is not None) for k, v in env.items()})
    folder = snapshot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{snapshot_id}.json").write_text(snapshot.model_dump_json(indent=2))
    await record(incident_id, EventKind.NOTE, f"Config snapshot {snapshot_id} taken ({reason})",
                 {"snapshot_id": snapshot_id, "flags": sorted(flags), "env_keys": sorted(env)})
    return snapshot


@flow(name="config-snapshot", flow_run_name=run_name("config-snapshot"))
async def config_snapshot(params: ConfigSnapshotParams) -> ConfigSnapshot:
    """Snapshot the feature flags and the production env (values kept in a Prefect Secret block)."""
    snapshot = await take_snapshot(params.reason, params.incident_id)
    await acreate_markdown_artifact(markdown=snapshot.markdown(), key=f"config-snapshot-{_slug(snapshot.environment)}",
                                    description=f"config snapshot {snapshot.id}")
    get_run_logger().info("Config snapshot %s: %d flag rows, %d env vars", snapshot.id, len(snapshot.flags),
                          len(snapshot.env))
    return snapshot
