"""Vercel tasks: production deployments, rollback candidates, rollback/promote, env vars, redeploy."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runbook.clients.vercel import AliasJob, Deployment, VercelClient
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


@task(name="redeploy_production", retries=0, timeout_seconds=900, cache_policy=NO_CACHE)
async def redeploy_production(incident_id: str | None, reason: str) -> Deployment:
    """Build a new production deployment from the current env (env changes only reach new deployments)."""
    async with open_client(VercelClient) as vc:
        current = await vc.current_production()
        if current is None:
            raise RuntimeError("no production deployment to rebuild")
        new = await vc.redeploy(current.id)
        job = await vc.wait_alias(new.id)
    await record(incident_id, EventKind.NOTE, f"Redeployed production as {new.id} ({reason}): {job.job_status}",
                 {"from": current.id, "to": new.id, "job_status": job.job_status}, actor="vercel")
    return new
