"""Vercel stand-in: deployments, production alias (rollback / promote with job status), env vars, redeploys.

Each deployment carries the env snapshot it was built with and a code build ("ok" or "broken"); the Permit School
app serves whatever deployment is production here. Env changes reach only NEW deployments (a redeploy), exactly
like Vercel. State changes that take time on Vercel (a build, an alias job) are computed from timestamps on every
read: BUILDING → READY after `build_delay`; an alias job is pending, then in-progress, then succeeded after
`alias_delay`, at which moment production switches.

Answers have the shapes of Vercel's OpenAPI document (tests/contracts/specs/vercel.json; the contract tests check
them). Like Vercel, a rollback or promote while another alias job is running is refused with 409, and so is one to
the deployment production already serves. Two knobs model what a retried request meets on the real service:
`answer_delays` holds back the answer of the next rollback/promote requests while their job runs (a client that
times out and retries gets 409), and `job_visible_after` keeps a new job out of `lastAliasRequest` for a moment (a
poll that does not check `requestedAt` mistakes the previous, older job for its own).

Rate limits as Vercel documents them (the REST API docs' "Rate Limits" section, from ZEIT's API docs; read in copies
of that text, not on vercel.com itself; the limit values vary per endpoint and plan): every answer carries
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (UTC epoch seconds); past the limit
`429 {"error": {"code": "too_many_requests", "message": "Rate limit exceeded"}}` (the code vercel/sdk's
TooManyRequests model spells, docs/models/toomanyrequestscode.md) with those headers. The stand-in counts a fixed
window per token and endpoint (`rate_limit` requests per `rate_window` seconds on `rate_clock`); it sends no
Retry-After (the CLI honours one when sent: packages/cli/src/util/error.ts). An injected rate-limit fault answers
exactly that 429, its `X-RateLimit-Reset` the fault's `retry_after` seconds from now.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.faults import Fault
from runbook.drill.standin import StandIn, bearer, json_response, now_ms, opt_in_retry_after, rand_id

ENV_TYPES = ("plain", "encrypted", "sensitive", "secret", "system")
TARGETS = ("production", "preview", "development")
RATE_LIMIT = (1000, 60.0)  # requests per fixed window (seconds) per token and endpoint (Vercel's vary per endpoint)
_ERROR_CODES = {400: "bad_request", 401: "forbidden", 403: "forbidden", 404: "not_found", 409: "conflict",
                429: "too_many_requests"}


@dataclass
class EnvVar:
    """One project environment variable."""

    id: str
    key: str
    value: str
    type: str
    target: list[str]
    created_at: int
    updated_at: int
    comment: str = ""


@dataclass
class Deployment:
    """One deployment: its build, its env snapshot and its lifecycle."""

    id: str
    url: str
    created: int
    state: str
    target: str | None
    build: str
    env: dict[str, str]
    meta: dict[str, str]
    source: str = "git"
    building_at: int = 0
    ready_at: float | None = None
    promote_on_ready: bool = False
    was_production: bool = False
    alias_assigned_at: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AliasJob:
    """A rollback or promote in flight (Vercel's `lastAliasRequest`)."""

    type: str
    from_id: str | None
    to_id: str
    requested_at: float
    delay: float
    applied: bool = False

    def status(self, now: float) -> str:
        """Return pending → in-progress → succeeded as time passes."""
        if now >= self.requested_at + self.delay:
            return "succeeded"
        if now >= self.requested_at + self.delay / 2:
            return "in-progress"
        return "pending"


class VercelStandIn(StandIn):
    """The Vercel REST API subset the runbook uses, for one team and one project."""

    name = "vercel"

    def __init__(self, *, token: str, project_id: str, project_name: str, team_id: str,
                 alias_delay: float = 0.4, build_delay: float = 0.4) -> None:
        self.token = token
        self.project_id = project_id
        self.project_name = project_name
        self.team_id = team_id
        self.alias_delay = alias_delay
        self.build_delay = build_delay
        self.env_vars: list[EnvVar] = []
        self._deployments: list[Deployment] = []
        self.production_id: str | None = None
        self.alias_job: AliasJob | None = None
        self.previous_alias_job: AliasJob | None = None
        self.job_visible_after = 0.0  # seconds before a new alias job shows in lastAliasRequest
        self.answer_delays: list[float] = []  # per rollback/promote request: seconds its answer is held back
        self._baseline: Any = None
        self.rate_limit, self.rate_window = RATE_LIMIT
        self.rate_clock: Callable[[], float] = time.time
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # (token, endpoint) → (window number, used)
        super().__init__()

    # -- baseline ---------------------------------------------------------------------------------------------
    def seed(self, env: dict[str, tuple[str, str]], *, history: int = 3) -> None:
        """Set the project env (key → (value, type)) and a history of READY production deployments."""
        with self._lock:
            now = now_ms()
            self.env_vars = [
                EnvVar(rand_id("", 16), key, value, kind, list(TARGETS), now - 90 * 86_400_000,
                       now - 30 * 86_400_000)
                for key, (value, kind) in env.items()
            ]
            self._deployments = []
            messages = ["feat: jurisdiction settings page", "fix: exam timer drift",
                        "chore: bump next to 14.2.5", "feat: parent portal invites"]
            for n in range(history):
                created = now - (history - n) * 3 * 86_400_000
                dep = self._new_deployment("ok", self._env_snapshot("production"), messages[n % len(messages)],
                                           created=created, target="production")
                dep.state = "READY"
                self._set_production(dep, created + 60_000)
            preview = self._new_deployment("ok", self._env_snapshot("preview"), "wip: new dashboard",
                                           created=now - 3_600_000, target=None)
            preview.state = "READY"
            self.alias_job = None
            self._baseline = copy.deepcopy((self.env_vars, self._deployments, self.production_id))

    def reset_state(self) -> None:
        """Restore the seeded env vars, deployments and production alias."""
        if self._baseline is not None:
            self.env_vars, self._deployments, self.production_id = copy.deepcopy(self._baseline)
        self.alias_job = None
        self.previous_alias_job = None
        self.job_visible_after = 0.0
        self.answer_delays = []
        self.rate_limit, self.rate_window = RATE_LIMIT
        self.rate_clock = time.time
        self._windows = {}

    # -- model ------------------------------------------------------------------------------------------------
    def _env_snapshot(self, target: str) -> dict[str, str]:
        return {e.key: e.value for e in self.env_vars if target in e.target}

    def _new_deployment(self, build: str, env: dict[str, str], message: str, *, created: int | None = None,
                        target: str | None = "production", source: str = "git",
                        meta: dict[str, str] | None = None) -> Deployment:
        created = created if created is not None else now_ms()
        if self._deployments:
            created = max(created, max(d.created for d in self._deployments) + 1)
        dep = Deployment(
            id=rand_id("dpl_", 28),
            url=f"{self.project_name}-{rand_id('', 9, lower=True)}-permit.vercel.app",
            created=created,
            state="BUILDING",
            target=target,
            build=build,
            env=dict(env),
            meta=meta if meta is not None else {
                "githubCommitSha": secrets.token_hex(20),
                "githubCommitMessage": message,
                "githubCommitRef": "main",
                "githubCommitAuthorName": "permit-ci",
            },
            source=source,
            building_at=created,
        )
        self._deployments.append(dep)
        return dep

    def _set_production(self, dep: Deployment, at: int | None = None) -> None:
        self.production_id = dep.id
        dep.was_production = True
        dep.alias_assigned_at = at or now_ms()

    def _advance(self) -> None:
        """Apply every build completion and alias job that is due, in time order."""
        now = time.time()
        due: list[tuple[float, int, Any]] = []
        for d in self._deployments:
            if d.state == "BUILDING" and d.ready_at is not None and d.ready_at <= now:
                due.append((d.ready_at, 0, d))
        job = self.alias_job
        if job is not None and not job.applied and job.requested_at + job.delay <= now:
            due.append((job.requested_at + job.delay, 1, job))
        for when, _, item in sorted(due, key=lambda x: (x[0], x[1])):
            if isinstance(item, Deployment):
                item.state = "READY"
                if item.promote_on_ready:
                    self._set_production(item, int(when * 1000))
            else:
                item.applied = True
                target = self._find(item.to_id)
                if target is not None:
                    self._set_production(target, int(when * 1000))

    def _find(self, id_or_url: str) -> Deployment | None:
        for d in self._deployments:
            if id_or_url in (d.id, d.url, "https://" + d.url):
                return d
        return None

    def _is_rollback_candidate(self, d: Deployment) -> bool:
        return d.state == "READY" and d.target == "production" and d.was_production and d.id != self.production_id

    # -- Python API -------------------------------------------------------------------------------------------
    @property
    def deployments(self) -> list[Deployment]:
        """Return every deployment, newest first."""
        with self._lock:
            self._advance()
            return sorted(self._deployments, key=lambda d: d.created, reverse=True)

    def production(self) -> Deployment:
        """Return the deployment production currently serves."""
        with self._lock:
            self._advance()
            dep = self._find(self.production_id or "")
            if dep is None:
                raise LookupError("no production deployment")
            return dep

    def deployment(self, deployment_id: str) -> Deployment:
        """Return one deployment by id or URL."""
        with self._lock:
            self._advance()
            dep = self._find(deployment_id)
            if dep is None:
                raise LookupError(deployment_id)
            return dep

    def rollback_candidates(self) -> list[Deployment]:
        """Return previous READY production deployments, newest first."""
        return [d for d in self.deployments if self._is_rollback_candidate(d)]

    def deploy(self, build: str = "ok", *, message: str = "feat: new release", promote: bool = True) -> Deployment:
        """Create a READY production deployment from the current env (like a git push) and promote it now."""
        with self._lock:
            self._advance()
            dep = self._new_deployment(build, self._env_snapshot("production"), message)
            dep.state = "READY"
            dep.ready_at = time.time()
            if promote:
                self._set_production(dep)
            return dep

    def redeploy(self, deployment_id: str | None = None, *, target: str | None = "production") -> Deployment:
        """Rebuild a deployment's code with the CURRENT project env; it becomes production when READY."""
        with self._lock:
            self._advance()
            source = self._find(deployment_id or self.production_id or "")
            if source is None:
                raise LookupError(deployment_id)
            meta = dict(source.meta, action="redeploy", originalDeploymentId=source.id)
            dep = self._new_deployment(source.build, self._env_snapshot(target or "preview"), "",
                                       target=target, source="redeploy", meta=meta)
            dep.ready_at = time.time() + self.build_delay
            dep.promote_on_ready = target == "production"
            return dep

    def start_alias_job(self, kind: str, deployment_id: str) -> AliasJob:
        """Start a rollback or promote to a deployment (production switches after `alias_delay`)."""
        with self._lock:
            self._advance()
            job = AliasJob(kind, self.production_id, deployment_id, time.time(), self.alias_delay)
            self.previous_alias_job, self.alias_job = self.alias_job, job
            if self.alias_delay <= 0:
                self._advance()
            return job

    def rollback(self, deployment_id: str | None = None) -> AliasJob:
        """Roll production back to a deployment (default: the newest rollback candidate)."""
        if deployment_id is None:
            candidates = self.rollback_candidates()
            if not candidates:
                raise LookupError("no rollback candidate")
            deployment_id = candidates[0].id
        return self.start_alias_job("rollback", deployment_id)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no build and no alias job is in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                self._advance()
                busy = any(d.state == "BUILDING" for d in self._deployments) or (
                    self.alias_job is not None and not self.alias_job.applied)
            if not busy:
                return
            time.sleep(0.02)
        raise TimeoutError("vercel stand-in still busy")

    def env_var(self, key: str, target: str = "production") -> EnvVar | None:
        """Return the project env var `key` for a target."""
        with self._lock:
            for e in self.env_vars:
                if e.key == key and target in e.target:
                    return e
        return None

    def set_env(self, key: str, value: str, *, type: str | None = None,
                target: list[str] | None = None) -> EnvVar:
        """Create or update a project env var (like the dashboard); reaches only new deployments."""
        with self._lock:
            existing = self.env_var(key, (target or ["production"])[0])
            now = now_ms()
            if existing is not None:
                existing.value = value
                existing.type = type or existing.type
                existing.updated_at = now
                return existing
            env = EnvVar(rand_id("", 16), key, value, type or "encrypted", list(target or TARGETS), now, now)
            self.env_vars.append(env)
            return env

    # -- HTTP -------------------------------------------------------------------------------------------------
    def error_body(self, status: int, message: str) -> Any:
        """Return Vercel's `{"error": {"code", "message"}}`."""
        code = _ERROR_CODES.get(status, "internal_server_error" if status >= 500 else "bad_request")
        return {"error": {"code": code, "message": message}}

    def rate_limited(self, fault: Fault) -> Response:
        """An injected rate limit is Vercel's own 429: no Retry-After, the window reset `retry_after` s from now."""
        reset = math.ceil(self.rate_clock() + (fault.retry_after if fault.retry_after is not None else 1))
        response = self._throttled(fault.status, 0, reset)
        response.headers.update(opt_in_retry_after(fault))
        return response

    def _throttled(self, status: int, remaining: int, reset: int) -> Response:
        response = self._err(status, "too_many_requests", "Rate limit exceeded")
        response.headers.update(self._limit_headers(remaining, reset))
        return response

    def _limit_headers(self, remaining: int, reset: int) -> dict[str, str]:
        """Return the documented X-RateLimit-Limit/-Remaining/-Reset (UTC epoch seconds) of an answer."""
        return {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(reset)}

    def _err(self, status: int, code: str, message: str, **extra: Any) -> Response:
        return json_response({"error": {"code": code, "message": message, **extra}}, status)

    def _guard(self, request: Request, project: str | None = None) -> Response | None:
        token = bearer(request)
        if token is None:
            return self._err(401, "forbidden", "The request is missing an authentication token",
                             missingToken=True)
        if token != self.token:
            return self._err(401, "forbidden", "Not authorized", invalidToken=True)
        team = request.query_params.get("teamId")
        if team is not None and team != self.team_id:
            return self._err(403, "forbidden", "You don't have permission to access this team")
        if project is not None and project not in (self.project_id, self.project_name):
            return self._err(404, "not_found", "Project not found")
        return None

    def _creator(self) -> dict[str, Any]:
        return {"uid": "usr_permitci", "username": "permit-ci", "email": "ci@permit.school"}

    def _deployment_v6(self, d: Deployment) -> dict[str, Any]:
        """Return a `GET /v6/deployments` item (getDeployments' documented shape)."""
        out: dict[str, Any] = {
            "uid": d.id,
            "name": self.project_name,
            "url": d.url,
            "created": d.created,
            "createdAt": d.created,
            "buildingAt": d.building_at,
            "state": d.state,
            "readyState": d.state,
            "type": "LAMBDAS",
            "target": d.target,
            "projectId": self.project_id,
            "source": d.source,
            "meta": d.meta,
            "creator": self._creator(),
            "inspectorUrl": f"https://vercel.com/permit/{self.project_name}/{d.id[4:]}",
            "isRollbackCandidate": self._is_rollback_candidate(d),
        }
        if d.ready_at and d.state == "READY":
            out["ready"] = int(d.ready_at * 1000)
        return out

    def _deployment_v13(self, d: Deployment) -> dict[str, Any]:
        """Return a deployment as `GET /v13/deployments/{id}` and `POST /v13/deployments` answer it (with the
        private information: the token belongs to the team)."""
        is_prod = d.id == self.production_id
        out: dict[str, Any] = {
            "id": d.id,
            "name": self.project_name,
            "url": d.url,
            "createdAt": d.created,
            "buildingAt": d.building_at,
            "bootedAt": d.building_at,
            "buildSkipped": False,
            "readyState": d.state,
            "status": d.state,
            "type": "LAMBDAS",
            "target": d.target,
            "projectId": self.project_id,
            "ownerId": self.team_id,
            "source": d.source,
            "meta": d.meta,
            "alias": ["permit.school", f"{self.project_name}.vercel.app"] if is_prod else [],
            "aliasAssigned": is_prod and d.alias_assigned_at is not None,
            "regions": ["iad1"],
            "version": 2,
            "public": False,
            "plan": "pro",
            "createdIn": "iad1",
            "creator": {"uid": "usr_permitci", "username": "permit-ci"},
            "inspectorUrl": f"https://vercel.com/permit/{self.project_name}/{d.id[4:]}",
            "isInConcurrentBuildsQueue": False,
            "isInSystemBuildsQueue": False,
            "build": {"env": sorted(d.env)},
            "env": sorted(d.env),
            "projectSettings": {"framework": "nextjs"},
            "routes": None,
        }
        if d.ready_at and d.state == "READY":
            out["ready"] = int(d.ready_at * 1000)
        return out

    def _target(self, d: Deployment) -> dict[str, Any]:
        """Return the project's `targets.production` (a deployment summary, getProject's documented shape)."""
        return {
            "id": d.id, "name": self.project_name, "url": d.url, "createdAt": d.created, "createdIn": "iad1",
            "creator": self._creator(), "deploymentHostname": d.url.removesuffix(".vercel.app"), "plan": "pro",
            "private": True, "readyState": d.state, "type": "LAMBDAS", "userId": "usr_permitci",
            "target": d.target, "meta": d.meta,
            "alias": ["permit.school", f"{self.project_name}.vercel.app"],
            "aliasAssigned": d.alias_assigned_at,
        }

    def _env_json(self, e: EnvVar, *, decrypted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": e.id, "key": e.key, "type": e.type, "target": list(e.target), "configurationId": None,
            "createdAt": e.created_at, "updatedAt": e.updated_at, "comment": e.comment,
            "customEnvironmentIds": [],
        }
        if e.type == "sensitive":
            out["decrypted"] = False
            if not decrypted:
                out["value"] = _opaque(e.value)  # the list carries an opaque value for every type
        elif decrypted:
            out["value"], out["decrypted"] = e.value, True
        else:
            out["value"], out["decrypted"] = _opaque(e.value), False
        return out

    def routes(self) -> list[BaseRoute]:
        """Return the Vercel routes."""
        routes = [
            ("GET", "/v6/deployments", self._list_deployments),
            ("GET", "/v13/deployments/{deployment}", self._get_deployment),
            ("POST", "/v13/deployments", self._create_deployment),
            ("GET", "/v9/projects/{project}", self._get_project),
            ("POST", "/v9/projects/{project}/rollback/{deployment}", self._rollback),
            ("POST", "/v10/projects/{project}/promote/{deployment}", self._promote),
            ("GET", "/v10/projects/{project}/env", self._list_env),
            ("POST", "/v10/projects/{project}/env", self._create_env),
            ("GET", "/v1/projects/{project}/env/{env_id}", self._get_env),
            ("PATCH", "/v9/projects/{project}/env/{env_id}", self._edit_env),
            ("DELETE", "/v9/projects/{project}/env/{env_id}", self._delete_env),
        ]
        # every route is counted against its token's window and answers the documented X-RateLimit-* headers
        return [Route(path, self._limited(f"{method} {path}", handler), methods=[method])
                for method, path, handler in routes]

    def _limited(self, endpoint: str, handler: Callable[[Request], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Count the request in its token's window for the endpoint; 429 past the limit; add the headers."""

        async def limited(request: Request) -> Response:
            used, number = self.count_in_window(request, endpoint)
            reset = int((number + 1) * self.rate_window)
            if used > self.rate_limit:
                return self._throttled(429, 0, reset)
            response = await handler(request)
            response.headers.update(self._limit_headers(self.rate_limit - used, reset))
            return response

        return limited

    async def _list_deployments(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        q = request.query_params
        project = q.get("projectId")
        if project is not None and project not in (self.project_id, self.project_name):
            return json_response({"deployments": [], "pagination": {"count": 0, "next": None, "prev": None}})
        try:
            limit = max(1, min(100, int(q.get("limit", "20"))))
            until = int(q["until"]) if q.get("until") else None
            since = int(q["since"]) if q.get("since") else None
        except ValueError:
            return self._err(400, "bad_request", "Invalid query parameter")
        states = {s.strip().upper() for s in q.get("state", "").split(",") if s.strip()}
        target = q.get("target")
        with self._lock:
            self._advance()
            items = sorted(self._deployments, key=lambda d: d.created, reverse=True)
            items = [d for d in items
                     if (not states or d.state in states)
                     and (target is None or d.target == target)
                     and (until is None or d.created < until)
                     and (since is None or d.created > since)]
            page = items[:limit]
            body = {
                "deployments": [self._deployment_v6(d) for d in page],
                "pagination": {
                    "count": len(page),
                    "next": page[-1].created if len(items) > limit else None,
                    "prev": page[0].created if page else None,
                },
            }
        return json_response(body)

    async def _get_deployment(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            self._advance()
            dep = self._find(request.path_params["deployment"])
            if dep is None:
                return self._err(404, "not_found", "The deployment could not be found.")
            return json_response(self._deployment_v13(dep))

    async def _create_deployment(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return self._err(400, "bad_request", "Invalid JSON body")
        if not isinstance(body, dict) or not body.get("name"):
            return self._err(400, "bad_request", "Invalid request: missing required property `name`.")
        if body["name"] not in (self.project_name, self.project_id):
            return self._err(404, "not_found", "Project not found")
        source_id = body.get("deploymentId")
        if not source_id:
            return self._err(400, "bad_request", "Only redeploys (`deploymentId`) are supported by the drill.")
        target = body.get("target")
        if target not in (None, "production", "preview"):
            return self._err(400, "bad_request", "Invalid request: `target` should be production or preview.")
        try:
            dep = self.redeploy(source_id, target="production" if target == "production" else None)
        except LookupError:
            return self._err(404, "not_found", "The deployment could not be found.")
        with self._lock:
            return json_response(self._deployment_v13(dep))

    async def _get_project(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        with self._lock:
            self._advance()
            prod = self._find(self.production_id or "")
            body: dict[str, Any] = {
                "id": self.project_id,
                "name": self.project_name,
                "accountId": self.team_id,
                "framework": "nextjs",
                "nodeVersion": "20.x",
                "directoryListing": False,
                "resourceConfig": {"functionDefaultRegions": ["iad1"]},
                "defaultResourceConfig": {"functionDefaultRegions": ["iad1"]},
                "targets": {"production": self._target(prod) if prod else None},
                "live": False,
            }
            if request.query_params.get("rollbackInfo") == "true":
                job = self._visible_job(time.time())
                body["lastAliasRequest"] = None if job is None else {
                    "fromDeploymentId": job.from_id or "",
                    "toDeploymentId": job.to_id,
                    "jobStatus": job.status(time.time()),
                    "requestedAt": int(job.requested_at * 1000),
                    "type": job.type,
                }
                body["lastRollbackTarget"] = None
            return json_response(body)

    def _visible_job(self, now: float) -> AliasJob | None:
        """Return the job `lastAliasRequest` shows: a new job only after `job_visible_after` (Vercel queues it)."""
        job = self.alias_job
        if job is not None and now < job.requested_at + self.job_visible_after:
            return self.previous_alias_job
        return job

    async def _alias_request(self, request: Request, kind: str) -> Response:
        with self._lock:
            self._advance()
            dep = self._find(request.path_params["deployment"])
            if dep is None:
                return self._err(404, "not_found", "The deployment could not be found.")
            if self.alias_job is not None and not self.alias_job.applied:
                return self._err(409, "conflict", "A rollback or promotion is already in progress.")
            if dep.state != "READY":
                return self._err(400, "bad_request", f"Deployment is not READY (state {dep.state}).")
            if dep.id == self.production_id:
                return self._err(409, "conflict", "The deployment is already the current production deployment.")
            if kind == "rollback" and not self._is_rollback_candidate(dep):
                return self._err(400, "bad_request", "The deployment is not a rollback candidate.")
            self.start_alias_job(kind, dep.id)
            delay = self.answer_delays.pop(0) if self.answer_delays else 0.0
        if delay > 0:  # the job runs; only the answer is late (a client may time out and retry)
            await asyncio.sleep(delay)
        return json_response({}, 201)

    async def _rollback(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        return await self._alias_request(request, "rollback")

    async def _promote(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        return await self._alias_request(request, "promote")

    async def _list_env(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        with self._lock:
            return json_response({"envs": [self._env_json(e, decrypted=False) for e in self.env_vars]})

    def _env_by_id(self, env_id: str) -> EnvVar | None:
        return next((e for e in self.env_vars if e.id == env_id), None)

    async def _get_env(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        with self._lock:
            env = self._env_by_id(request.path_params["env_id"])
            if env is None:
                return self._err(404, "not_found", "Environment Variable was not found.")
            return json_response(self._env_json(env, decrypted=True))

    def _validate_env(self, item: Any) -> str | None:
        if not isinstance(item, dict):
            return "Invalid environment variable object."
        if not isinstance(item.get("key"), str) or not item["key"]:
            return "Missing required property `key`."
        if not isinstance(item.get("value"), str):
            return "Missing required property `value`."
        if item.get("type", "encrypted") not in ENV_TYPES:
            return f"Invalid `type`: {item.get('type')!r}."
        target = item.get("target", ["production"])
        if isinstance(target, str):
            target = [target]
        if not isinstance(target, list) or not target or any(t not in TARGETS for t in target):
            return "Invalid `target`."
        return None

    async def _create_env(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return self._err(400, "bad_request", "Invalid JSON body")
        items = body if isinstance(body, list) else [body]
        upsert = request.query_params.get("upsert") == "true"
        created: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        with self._lock:
            for item in items:
                problem = self._validate_env(item)
                if problem is not None:
                    failed.append({"error": {"code": "bad_request", "message": problem,
                                             "key": item.get("key") if isinstance(item, dict) else None}})
                    continue
                target = item.get("target", ["production"])
                target = [target] if isinstance(target, str) else list(target)
                clash = [e for e in self.env_vars if e.key == item["key"] and set(e.target) & set(target)]
                now = now_ms()
                if clash and not upsert:
                    failed.append({"error": {"code": "ENV_ALREADY_EXISTS", "key": item["key"], "target": target,
                                             "message": f"A variable with the name `{item['key']}` already "
                                                        "exists for the target. Use upsert=true to update it."}})
                    continue
                if clash:
                    env = clash[0]
                    env.value, env.type, env.updated_at = item["value"], item.get("type", env.type), now
                    env.target = sorted(set(env.target) | set(target), key=TARGETS.index)
                    env.comment = item.get("comment", env.comment)
                else:
                    env = EnvVar(rand_id("", 16), item["key"], item["value"], item.get("type", "encrypted"),
                                 target, now, now, item.get("comment", ""))
                    self.env_vars.append(env)
                created.append(self._env_json(env, decrypted=False))
        if not created and failed and not isinstance(body, list):
            return json_response(failed[0], 400)
        return json_response({"created": created[0] if len(created) == 1 else created, "failed": failed}, 201)

    async def _edit_env(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return self._err(400, "bad_request", "Invalid JSON body")
        with self._lock:
            env = self._env_by_id(request.path_params["env_id"])
            if env is None:
                return self._err(404, "not_found", "Environment Variable was not found.")
            merged = {"key": env.key, "value": env.value, "type": env.type, "target": env.target,
                      **(body if isinstance(body, dict) else {})}
            if (problem := self._validate_env(merged)) is not None:
                return self._err(400, "bad_request", problem)
            env.key, env.value, env.type = merged["key"], merged["value"], merged["type"]
            env.target = [merged["target"]] if isinstance(merged["target"], str) else list(merged["target"])
            env.updated_at = now_ms()
            return json_response(self._env_json(env, decrypted=env.type != "sensitive"))

    async def _delete_env(self, request: Request) -> Response:
        if (denied := self._guard(request, request.path_params["project"])) is not None:
            return denied
        with self._lock:
            env = self._env_by_id(request.path_params["env_id"])
            if env is None:
                return self._err(404, "not_found", "Environment Variable was not found.")
            self.env_vars.remove(env)
            return json_response(self._env_json(env, decrypted=False))


def _opaque(value: str) -> str:
    """Return an opaque stand-in for an encrypted value (never the value itself)."""
    return base64.b64encode(hashlib.sha256(b"vercel-drill:" + value.encode()).digest() * 2).decode()
