"""Vercel tasks: production deployments, rollback candidates, rollback/promote, env vars, redeploy."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, SecretStr

from runbook.clients.vercel import AliasJob, Deployment, VercelClient
from runbook.errors import RequestRejected
from runbook.models import EventKind
from runbook.settings import fingerprint
from tasks.common import open_client
from tasks.incident import record


@task(name="list_production_deployments", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def list_production_deployments(limit: int = 10) -> list[Deployment]:
    """Return recent READY production deployments, newest first."""
    async with open_client(VercelClient) as vc:
        return await vc.list_deployments(limit=limit)


@task(name="find_rollback_target", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def find_rollback_target(target_id: str | None = None) -> tuple[Deployment | None, Deployment | None]:
    """Return (current production deployment, the named one or the previous READY rollback candidate)."""
    async with open_client(VercelClient) as vc:
        current = await vc.current_production()
        if target_id:
            return current, await vc.get_deployment(target_id)
        return current, await vc.rollback_candidate(current)


@task(name="rollback_deployment", retries=0, timeout_seconds=600, cache_policy=NO_CACHE)
async def rollback_deployment(incident_id: str | None, deployment_id: str, timeout_s: float = 300) -> AliasJob:
    """Roll production back to a deployment and wait until the alias job succeeded or failed."""
    async with open_client(VercelClient) as vc:
        current = await vc.current_production()
        if current is not None and current.id == deployment_id:
            job = AliasJob(job_status="succeeded", type="rollback", to_deployment_id=deployment_id)
            await record(incident_id, EventKind.NOTE, f"{deployment_id} is already in production; no rollback needed",
                         {"deployment_id": deployment_id}, actor="vercel")
            return job
        job = await vc.rollback(deployment_id, timeout=timeout_s)
    await record(incident_id, EventKind.NOTE, f"Vercel rollback to {deployment_id}: {job.job_status}",
                 {"deployment_id": deployment_id, "job_status": job.job_status,
                  "from": current.id if current else None}, actor="vercel")
    return job


@task(name="read_env_vars", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_env_vars(keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Read production env vars one by one: key → {id, type, fingerprint, write_only}; never values."""
    out: dict[str, dict[str, Any]] = {}
    async with open_client(VercelClient) as vc:
        for var in await vc.list_env():
            if "production" not in var.target or (keys is not None and var.key not in keys):
                continue
            full = await vc.get_env(var.id)
            out[var.key] = {"id": var.id, "type": full.type, "write_only": full.write_only,
                            "fingerprint": fingerprint(full.value) if full.value else ""}
    return out


# -- env values for snapshots and restores (values as SecretStr, never logged) -------------------------------

class EnvValue(BaseModel):
    """One production env var with its value (None when write-only)."""

    id: str
    key: str
    type: str | None = None
    target: list[str]
    value: SecretStr | None = None

    @property
    def write_only(self) -> bool:
        """Return True when Vercel never returns the value (type sensitive)."""
        return self.type == "sensitive"

    @property
    def fingerprint(self) -> str:
        """Return the value's short fingerprint ('' when unknown)."""
        return fingerprint(self.value)


@task(name="read_env_values", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def read_env_values() -> dict[str, EnvValue]:
    """Read every production env var one by one, with its value as a SecretStr."""
    out: dict[str, EnvValue] = {}
    async with open_client(VercelClient) as vc:
        for var in await vc.list_env():
            if var.target and "production" not in var.target:
                continue
            full = await vc.get_env(var.id)
            out[var.key] = EnvValue(id=var.id, key=var.key, type=full.type or var.type, target=var.target,
                                    value=full.value)
    return out


@task(name="upsert_env_var", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def upsert_env_var(incident_id: str | None, key: str, value: SecretStr, type: str = "encrypted",
                         reason: str = "") -> dict[str, Any]:
    """Create or replace a production env var; record key and fingerprint only."""
    async with open_client(VercelClient) as vc:
        await vc.upsert_env(key, value, targets=["production"], type=type)
    details = {"key": key, "fingerprint": fingerprint(value), "type": type, "reason": reason}
    await record(incident_id, EventKind.NOTE, f"Vercel env {key} set ({fingerprint(value)}) {reason}".strip(),
                 details, actor="vercel")
    return details


@task(name="delete_env_var", retries=0, timeout_seconds=120, cache_policy=NO_CACHE)
async def delete_env_var(incident_id: str | None, env_id: str, key: str, reason: str = "") -> None:
    """Delete a production env var (by id); record its key."""
    async with open_client(VercelClient) as vc:
        await vc.delete_env(env_id)
    await record(incident_id, EventKind.NOTE, f"Vercel env {key} deleted {reason}".strip(), {"key": key},
                 actor="vercel")


@task(name="redeploy_with_current_env", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)
async def redeploy_with_current_env(incident_id: str | None, reason: str, timeout_s: float = 300) -> str:
    """Rebuild production with the current env and wait until it is READY (it then serves production).

    A production redeploy is promoted when its build is READY; it creates no alias job to wait for.
    """
    async with open_client(VercelClient) as vc:
        current = await vc.current_production()
        if current is None:
            raise RequestRejected("vercel", "redeploy", "no production deployment to rebuild")
        new = await vc.redeploy(current.id, timeout=timeout_s)
    if (new.state or "").upper() != "READY":
        raise RequestRejected("vercel", "redeploy", f"the new deployment {new.id} ended {new.state}")
    await record(incident_id, EventKind.NOTE, f"Redeployed production as {new.id} ({reason}): {new.state}",
                 {"from": current.id, "to": new.id, "state": new.state}, actor="vercel")
    return new.id
