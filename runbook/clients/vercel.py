"""Vercel REST API: production deployments, rollback/promote with alias-job polling, env vars, redeploy.

Every endpoint is in Vercel's OpenAPI document (tests/contracts/specs/vercel.json) except two, kept on purpose:
- `POST /v9/projects/{id}/rollback/{deployment}` (what `vercel rollback` calls): the documented promote would also
  re-point production, but only a rollback leaves the project rolled back, so the next git push does not undo the
  remediation. Promote uses the documented `POST /v10/projects/{id}/promote/{deployment}`.
- `?rollbackInfo=true` on the documented `GET /v9/projects/{id}`: it makes the project carry `lastAliasRequest`
  (documented field), the job both commands poll (vercel/vercel packages/cli/src/util/{rollback,promote}/status.ts).

A rollback/promote is one alias job. The job we wait for is ours only when it targets our deployment, is newer than
the job the project showed before we asked, and was not requested before our request (allowing `CLOCK_SKEW_MS`): an
older job, even a succeeded one to the same deployment, is not our answer. A 409 to our request (it was retried
after a read timeout while the first one runs, or the deployment is already production) is "in progress" when the
project's job is ours, and we poll it; any other 409 (another job running) is refused with Vercel's message.

Rollback, promote and redeploy are actions (`acting`), and so are the env var writes (within the policy's total
wait): a 429 whose `X-RateLimit-Reset` comes before the action's timeout is waited out, reads and polls included; a
reset past it gives up at once, saying the timeout ends first. The reads elsewhere (a monitor's, a plan's) give up at
once when the reset is more than `max_retry_after` away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from runbook.clients._http import (
    DEFAULT_POLICY,
    BaseClient,
    HttpClient,
    RetryPolicy,
    Sleeper,
    acting,
    require,
    secret_value,
    settings_secrets,
)
from runbook.errors import InputError, RequestRejected, TransientError
from runbook.settings import Settings

VENDOR = "vercel"
# A job requested before our request is not ours; this much clock difference between us and Vercel is allowed.
# (The CLI's bound is looser: it treats jobs requested more than 3 minutes ago as stale.)
CLOCK_SKEW_MS = 60 * 1000
AliasJobStatus = Literal["pending", "in-progress", "succeeded", "failed", "skipped", "unknown"]
TERMINAL_JOB = {"succeeded", "failed", "skipped"}
TERMINAL_DEPLOY = {"READY", "ERROR", "CANCELED"}


class Deployment(BaseModel):
    """One Vercel deployment."""

    id: str
    url: str | None = None
    state: str | None = Field(None, description="READY, ERROR, BUILDING, QUEUED, CANCELED, INITIALIZING")
    target: str | None = None
    created: int | None = Field(None, description="Creation time, ms since the epoch")
    is_rollback_candidate: bool | None = None
    commit_sha: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def created_at(self) -> datetime | None:
        """Return the creation time as an aware datetime."""
        return datetime.fromtimestamp(self.created / 1000, UTC) if self.created else None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Deployment:
        """Build from a v6 list item or a v13 deployment."""
        meta = raw.get("meta") or {}
        return cls(
            id=raw.get("uid") or raw.get("id") or "",
            url=raw.get("url"),
            state=raw.get("readyState") or raw.get("state"),
            target=raw.get("target"),
            created=raw.get("createdAt") or raw.get("created"),
            is_rollback_candidate=raw.get("isRollbackCandidate"),
            commit_sha=meta.get("githubCommitSha"),
            meta=meta,
        )


class AliasJob(BaseModel):
    """The project's last alias request (a rollback or promote) as Vercel reports it."""

    job_status: AliasJobStatus = "unknown"
    type: str | None = None
    from_deployment_id: str | None = None
    to_deployment_id: str | None = None
    requested_at: int | None = Field(None, description="When the job was requested, ms since the epoch")

    @property
    def done(self) -> bool:
        """Return True once the job reached a terminal state."""
        return self.job_status in TERMINAL_JOB

    @property
    def succeeded(self) -> bool:
        """Return True when the alias now points at the target deployment."""
        return self.job_status == "succeeded"


class Project(BaseModel):
    """The Vercel project and its last alias request."""

    id: str
    name: str | None = None
    production_deployment_id: str | None = Field(None, description="`targets.production.id` when reported")
    last_alias_request: AliasJob | None = None


class EnvVar(BaseModel):
    """A project environment variable; the value is a SecretStr and only present when read one by one."""

    id: str
    key: str
    type: str | None = None
    target: list[str] = Field(default_factory=list)
    value: SecretStr | None = None
    decrypted: bool | None = None

    @property
    def write_only(self) -> bool:
        """Return True when Vercel never returns the value (type sensitive)."""
        return self.type == "sensitive"

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> EnvVar:
        """Build from a Vercel env object."""
        target = raw.get("target") or []
        value = raw.get("value")
        # The list returns opaque (encrypted) values with decrypted=false: only a decrypted value is a value.
        readable = raw.get("decrypted") is True or (raw.get("decrypted") is None and raw.get("type") == "plain")
        return cls(
            id=raw.get("id") or "",
            key=raw.get("key") or "",
            type=raw.get("type"),
            target=[target] if isinstance(target, str) else list(target),
            value=SecretStr(value) if readable and isinstance(value, str) and value != "" else None,
            decrypted=raw.get("decrypted"),
        )


class VercelClient(BaseClient):
    """Typed client of the Vercel REST API for one project (teamId on every call)."""

    vendor = VENDOR

    def __init__(self, http: HttpClient, project_id: str, poll_interval: float = 2.0, *,
                 clock: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] | None = None) -> None:
        super().__init__(http)
        self.project_id = project_id
        self.poll_interval = poll_interval
        self.clock = clock
        self.wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._project_name: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleeper = asyncio.sleep,
        poll_interval: float = 2.0,
    ) -> VercelClient:
        """Build from settings; NotConfigured names RUNBOOK_VERCEL_TOKEN/_PROJECT_ID when unset."""
        require(VENDOR, settings, "vercel_token", "vercel_project_id")
        params = {"teamId": settings.vercel_team_id} if settings.vercel_team_id else {}
        http = HttpClient(
            VENDOR,
            settings.vercel_api_url,
            headers={"Authorization": f"Bearer {secret_value(settings.vercel_token)}"},
            params=params,
            policy=policy,
            secrets=settings_secrets(settings),
            sleep=sleep,
        )
        return cls(http, settings.vercel_project_id or "", poll_interval)

    # Deployments

    async def list_deployments(
        self,
        *,
        target: str | None = "production",
        state: str | None = "READY",
        limit: int = 20,
        max_pages: int = 5,
    ) -> list[Deployment]:
        """List the project's deployments, newest first, following `pagination.next` as `until`."""
        params: dict[str, Any] = {"projectId": self.project_id, "limit": limit}
        if target:
            params["target"] = target
        if state:
            params["state"] = state
        out: list[Deployment] = []
        for _ in range(max_pages):
            body = await self.http.json("GET", "/v6/deployments", operation="list deployments", params=params)
            out.extend(Deployment.from_api(d) for d in (body or {}).get("deployments", []))
            nxt = ((body or {}).get("pagination") or {}).get("next")
            if not nxt:
                break
            params["until"] = nxt
        return out

    async def get_deployment(self, deployment_id: str) -> Deployment:
        """Return one deployment."""
        _check_id(deployment_id)
        body = await self.http.json("GET", f"/v13/deployments/{deployment_id}", operation="get deployment")
        return Deployment.from_api(body or {})

    async def project(self) -> Project:
        """Return the project with its last alias request (`?rollbackInfo=true`)."""
        body = (
            await self.http.json(
                "GET",
                f"/v9/projects/{self.project_id}",
                operation="get project",
                params={"rollbackInfo": "true"},
            )
            or {}
        )
        job = body.get("lastAliasRequest")
        self._project_name = body.get("name") or self._project_name
        production = (body.get("targets") or {}).get("production") or {}
        return Project(
            id=body.get("id") or self.project_id,
            name=body.get("name"),
            production_deployment_id=production.get("id") if isinstance(production, dict) else None,
            last_alias_request=_alias_job(job) if isinstance(job, dict) else None,
        )

    async def current_production(self) -> Deployment | None:
        """Return the deployment production serves (`targets.production`, a succeeded alias job, else newest)."""
        project = await self.project()
        job = project.last_alias_request
        if project.production_deployment_id:
            return await self.get_deployment(project.production_deployment_id)
        if job and job.succeeded and job.to_deployment_id:
            return await self.get_deployment(job.to_deployment_id)
        deployments = await self.list_deployments(limit=1, max_pages=1)
        return deployments[0] if deployments else None

    async def rollback_candidate(self, current: Deployment | str | None = None) -> Deployment | None:
        """Return the newest READY production deployment older than `current` (default: production's)."""
        if current is None:
            current = await self.current_production()
            if current is None:
                return None
        elif isinstance(current, str):
            current = await self.get_deployment(current)
        for deployment in await self.list_deployments(state="READY"):
            if deployment.id == current.id or deployment.is_rollback_candidate is False:
                continue
            if current.created is None or (deployment.created or 0) < current.created:
                return deployment
        return None

    async def rollback(
        self, deployment_id: str, *, timeout: float = 120.0, poll_interval: float | None = None
    ) -> AliasJob:
        """Roll production back to a deployment and wait for our alias job to finish (TransientError on timeout;
        a rate limit is waited out when its reset comes within `timeout`)."""
        return await self._alias_change("rollback", f"/v9/projects/{self.project_id}/rollback", deployment_id,
                                        timeout, poll_interval, body={})

    async def promote(
        self, deployment_id: str, *, timeout: float = 120.0, poll_interval: float | None = None
    ) -> AliasJob:
        """Promote a deployment to production (201 started / 202 queued) and wait for our alias job (rate limits:
        as rollback)."""
        return await self._alias_change("promote", f"/v10/projects/{self.project_id}/promote", deployment_id,
                                        timeout, poll_interval, body=None)

    async def _alias_change(
        self, operation: str, path: str, deployment_id: str, timeout: float, poll_interval: float | None,
        *, body: dict[str, Any] | None,
    ) -> AliasJob:
        _check_id(deployment_id)
        with acting(operation, timeout, clock=self.clock) as action:
            before = (await self.project()).last_alias_request
            asked_ms = self.wall_ms()
            extra: dict[str, Any] = {} if body is None else {"json": body}
            try:
                await self.http.request("POST", f"{path}/{deployment_id}", operation=operation, idempotent=True,
                                        **extra)
            except RequestRejected as exc:
                if exc.status != 409:
                    raise
                job = (await self.project()).last_alias_request
                if not self._ours(job, deployment_id, before, asked_ms):
                    raise  # another rollback/promote is running, or Vercel refused for another reason
                # Our earlier attempt (timed out, then retried) is the job running: wait for it.
            return await self.wait_alias(deployment_id, timeout=action.remaining(), poll_interval=poll_interval,
                                         after=before, asked_ms=asked_ms)

    def _ours(self, job: AliasJob | None, deployment_id: str, before: AliasJob | None, asked_ms: int) -> bool:
        """Say whether a job is the one our request started: to our deployment, newer than `before`, not older
        than our request."""
        if job is None or job.to_deployment_id != deployment_id or job.requested_at is None:
            return False
        if job.requested_at < asked_ms - CLOCK_SKEW_MS:
            return False
        if before is not None and before.requested_at is not None and job.requested_at <= before.requested_at:
            return False
        return True

    async def wait_alias(
        self,
        deployment_id: str,
        *,
        timeout: float = 120.0,
        poll_interval: float | None = None,
        after: AliasJob | None = None,
        asked_ms: int | None = None,
    ) -> AliasJob:
        """Poll `lastAliasRequest` until our job to `deployment_id` ends; TransientError on timeout.

        `after` is the job the project showed before we asked and `asked_ms` when we asked: older jobs are ignored.
        """
        interval = self.poll_interval if poll_interval is None else poll_interval
        asked = self.wall_ms() if asked_ms is None else asked_ms
        deadline = self.clock() + timeout
        job: AliasJob | None = None
        while True:
            job = (await self.project()).last_alias_request
            if self._ours(job, deployment_id, after, asked) and job is not None and job.done:
                return job
            if self.clock() + interval > deadline:
                status = job.job_status if self._ours(job, deployment_id, after, asked) and job else "not started"
                raise TransientError(VENDOR, f"wait for alias to {deployment_id}",
                                     f"our job is still {status} after {timeout:.0f}s")
            await self.http.sleep(interval)

    async def redeploy(
        self,
        deployment_id: str,
        *,
        wait: bool = True,
        timeout: float = 300.0,
        poll_interval: float | None = None,
    ) -> Deployment:
        """Rebuild a deployment for production (picks up current env vars); wait for READY/ERROR/CANCELED (rate
        limits: as rollback, within `timeout`)."""
        _check_id(deployment_id)
        with acting("redeploy", timeout, clock=self.clock) as action:
            name = self._project_name or (await self.project()).name or self.project_id
            body = await self.http.json(
                "POST",
                "/v13/deployments",
                operation="redeploy",
                idempotent=False,
                json={"name": name, "deploymentId": deployment_id, "target": "production"},
            )
            deployment = Deployment.from_api(body or {})
            if not wait or not deployment.id:
                return deployment
            return await self.wait_deployment(deployment.id, timeout=action.remaining(), poll_interval=poll_interval)

    async def wait_deployment(
        self, deployment_id: str, *, timeout: float = 300.0, poll_interval: float | None = None
    ) -> Deployment:
        """Poll a deployment until READY, ERROR or CANCELED; TransientError on timeout."""
        interval = self.poll_interval if poll_interval is None else poll_interval
        deadline = self.clock() + timeout
        while True:
            deployment = await self.get_deployment(deployment_id)
            if (deployment.state or "").upper() in TERMINAL_DEPLOY:
                return deployment
            if self.clock() + interval > deadline:
                raise TransientError(VENDOR, "wait for deployment", f"still {deployment.state} after {timeout:.0f}s")
            await self.http.sleep(interval)

    # Environment variables

    async def list_env(self) -> list[EnvVar]:
        """List the project's env vars (values are not decrypted in the list)."""
        body = await self.http.json("GET", f"/v10/projects/{self.project_id}/env", operation="list env")
        items = body.get("envs", []) if isinstance(body, dict) else body or []
        return [EnvVar.from_api(e) for e in items]

    async def get_env(self, env_id: str) -> EnvVar:
        """Read one env var with its decrypted value (none for type sensitive)."""
        _check_id(env_id)
        body = await self.http.json("GET", f"/v1/projects/{self.project_id}/env/{env_id}", operation="read env")
        return EnvVar.from_api(body or {})

    async def find_env(self, key: str, target: str = "production") -> EnvVar | None:
        """Return the env var `key` for `target`, read one by one (with its value when readable)."""
        for env in await self.list_env():
            if env.key == key and (not env.target or target in env.target):
                return await self.get_env(env.id)
        return None

    async def upsert_env(
        self,
        key: str,
        value: SecretStr | str,
        *,
        targets: list[str] | None = None,
        type: str = "encrypted",
    ) -> list[EnvVar]:
        """Create or replace an env var (`?upsert=true`); RequestRejected when `failed[]` is not empty."""
        payload = {
            "key": key,
            "value": secret_value(value),
            "type": type,
            "target": targets or ["production"],
        }
        with acting("upsert env", self.http.policy.max_total_wait, clock=self.clock):
            body = await self.http.json(
                "POST",
                f"/v10/projects/{self.project_id}/env",
                operation="upsert env",
                params={"upsert": "true"},
                idempotent=True,
                json=payload,
            )
        body = body or {}
        failed = body.get("failed") or []
        if failed:
            reasons = self.http.redact("; ".join(_failure_reason(f) for f in failed))
            raise RequestRejected(VENDOR, "upsert env", f"{key}: {reasons}", 201)
        created = body.get("created")
        items = created if isinstance(created, list) else [created] if isinstance(created, dict) else []
        return [EnvVar.from_api(e) for e in items]

    async def delete_env(self, env_id: str) -> None:
        """Delete an env var."""
        _check_id(env_id)
        with acting("delete env", self.http.policy.max_total_wait, clock=self.clock):
            await self.http.request("DELETE", f"/v9/projects/{self.project_id}/env/{env_id}", operation="delete env")


def _alias_job(raw: dict[str, Any]) -> AliasJob:
    status = raw.get("jobStatus")
    return AliasJob(
        job_status=status if status in {"pending", "in-progress", "succeeded", "failed", "skipped"} else "unknown",
        type=raw.get("type"),
        from_deployment_id=raw.get("fromDeploymentId"),
        to_deployment_id=raw.get("toDeploymentId"),
        requested_at=int(raw["requestedAt"]) if isinstance(raw.get("requestedAt"), int | float) else None,
    )


def _failure_reason(item: Any) -> str:
    """Describe one `failed[]` entry by its error code/message only (never a value)."""
    if isinstance(item, dict):
        nested = item.get("error")
        error: dict[str, Any] = nested if isinstance(nested, dict) else item
        return ": ".join(str(p) for p in (error.get("code"), error.get("message")) if p) or "failed"
    return "failed"


def _check_id(value: str) -> None:
    """Refuse ids that could change the request path."""
    if not value or any(c in value for c in "/?#& \t\n"):
        raise InputError(f"not a Vercel id: {value[:40]!r}")
