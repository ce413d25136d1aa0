"""The "Permit School" app as the drill serves it: its behaviour follows the real database and the deployment
that the Vercel stand-in says is in production.

The app's secrets (NEXT_PUBLIC_SUPABASE_ANON_KEY, STRIPE_WEBHOOK_SECRET, OPENAI_API_KEY, …) come from the env
snapshot of the CURRENT production deployment; a deployment built from broken code answers 500 everywhere (and
its health says unhealthy). Every request served is reported to the Sentry stand-in as a transaction, and every
5xx as an error event as well.

    GET  /api/health          {"status": healthy|degraded|unhealthy, "deployment", "maintenance", "checks": {
                                 "database"|"auth"|"config"|"openai": {"status", "latency_ms", "error"?}}}
                              200 when healthy or degraded (OpenAI down = degraded), 503 when unhealthy
    POST /api/auth/profile    Bearer <user access token> → 200 profile JSON; 401 without a valid token
    POST /api/billing/webhook Stripe-Signature verified with stripe.Webhook.construct_event; 400 when bad;
                              each event id processed once (a repeat → 200 {"received": true, "duplicate": true})
In maintenance mode (public.app_flags maintenance_mode) every route but /api/health answers 503.
Drill fault `fail_fraction` (0..1): that share of the requests to every route but /api/health answers 500
(deterministically spread: 0.2 fails every fifth request), reported to Sentry like any other 5xx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import stripe
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from runbook.drill.database import Database
from runbook.drill.keys import SupabaseProject
from runbook.drill.sentry import SentryStandIn
from runbook.drill.standin import StandIn, bearer, iso, json_response
from runbook.drill.vercel import Deployment, VercelStandIn

EXAM_ENGINES = ("standard_v2", "adaptive_v1", "legacy_v1")
BROKEN_BUILD_ERROR = "TypeError: Cannot read properties of undefined (reading 'examEngine')"
PROFILE_COLUMNS = "id::text, email, full_name, jurisdiction, role, created_at"
INTERMITTENT_ERROR = "Error: upstream request failed (drill: fail_fraction)"
Handler = Callable[[Request], Awaitable[Response]]


class PermitSchoolApp(StandIn):
    """The Next.js app's API routes, backed by the drill database and the production deployment's env."""

    name = "app"

    def __init__(self, *, db: Database, vercel: VercelStandIn, project: SupabaseProject, sentry: SentryStandIn,
                 db_timeout: float = 10.0, slow_query_ms: float = 500.0, openai_timeout: float = 2.0) -> None:
        self.db = db
        self.vercel = vercel
        self.project = project
        self.sentry = sentry
        self.db_timeout = db_timeout
        self.slow_query_ms = slow_query_ms
        self.openai_timeout = openai_timeout
        self._client: httpx.AsyncClient | None = None
        self.fail_fraction = 0.0
        self._fail_credit = 0.0
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        """Return the app's routes, each reported to Sentry as a transaction."""
        return [
            Route("/", self._traced(self._index), methods=["GET"]),
            Route("/api/health", self._traced(self._health), methods=["GET", "HEAD"]),
            Route("/api/auth/profile", self._traced(self._profile), methods=["GET", "POST"]),
            Route("/api/billing/webhook", self._traced(self._webhook), methods=["POST"]),
        ]

    def reset_state(self) -> None:
        """Clear the fail_fraction fault."""
        self.fail_fraction = 0.0
        self._fail_credit = 0.0

    def _traced(self, handler: Handler) -> Handler:
        """Wrap a route so that each request it serves is reported as a Sentry transaction (with its status)."""

        async def traced(request: Request) -> Response:
            status = 500
            try:
                response = await handler(request)
                status = response.status_code
                return response
            finally:
                dep = self.vercel.production()
                self.sentry.capture_transaction(request.url.path, release=dep.meta.get("githubCommitSha"),
                                                tags={"deployment": dep.id, "status_code": str(status),
                                                      "http.status_code": str(status),
                                                      "http.method": request.method})

        return traced

    def error_body(self, status: int, message: str) -> Any:
        """Return the app's error shape."""
        return {"error": message}

    async def aclose(self) -> None:
        """Close the outbound HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- helpers ----------------------------------------------------------------------------------------------
    def _pool(self) -> asyncpg.Pool:
        if self.db.pool is None:
            raise ConnectionError("database pool is closed")
        return self.db.pool

    def _report(self, dep: Deployment, request: Request, status: int, title: str) -> None:
        self.sentry.capture(title, release=dep.meta.get("githubCommitSha"), transaction=request.url.path,
                            tags={"deployment": dep.id, "status_code": str(status),
                                                      "http.status_code": str(status), "runtime": "node"})

    def _fail(self, dep: Deployment, request: Request, status: int, title: str, body: dict[str, Any]) -> Response:
        self._report(dep, request, status, title)
        return json_response(body, status)

    async def _maintenance(self) -> bool:
        try:
            async with self._pool().acquire(timeout=self.db_timeout) as conn:
                value = await conn.fetchval(
                    "select enabled from public.app_flags where name = 'maintenance_mode'", timeout=self.db_timeout)
            return bool(value)
        except Exception:
            return False

    async def _gate(self, request: Request, dep: Deployment) -> Response | None:
        """Answer for maintenance mode or a broken build before a route runs."""
        if await self._maintenance():
            return json_response({"error": "maintenance", "maintenance": True,
                                  "message": "Permit School is down for scheduled maintenance."}, 503,
                                 {"Retry-After": "300"})
        if dep.build == "broken":
            return self._fail(dep, request, 500, BROKEN_BUILD_ERROR, {"error": "Internal Server Error"})
        if self._intermittent_failure():
            return self._fail(dep, request, 500, INTERMITTENT_ERROR, {"error": "Internal Server Error"})
        return None

    def _intermittent_failure(self) -> bool:
        """Return True for `fail_fraction` of the calls, evenly spread (a credit that fails the call reaching 1)."""
        if self.fail_fraction <= 0:
            return False
        with self._lock:
            self._fail_credit += min(self.fail_fraction, 1.0)
            if self._fail_credit >= 1.0 - 1e-9:
                self._fail_credit -= 1.0
                return True
        return False

    # -- health -----------------------------------------------------------------------------------------------
    @staticmethod
    def _result(started: float, error: str | None = None, degraded: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "unhealthy" if error else "degraded" if degraded else "healthy",
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if error:
            out["error"] = error[:300]
        return out

    async def _check_database(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with self._pool().acquire(timeout=self.db_timeout) as conn, conn.transaction(readonly=True):
                await conn.execute(f"set local statement_timeout = {int(self.db_timeout * 1000)}")
                await conn.fetch(f"select {PROFILE_COLUMNS} from public.profiles order by created_at desc limit 5")
        except Exception as exc:
            return self._result(started, f"{type(exc).__name__}: {exc}")
        result = self._result(started)
        if result["latency_ms"] > self.slow_query_ms:
            result["status"] = "degraded"
        return result

    async def _check_auth(self, env: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        if self.project.key_role(env.get("NEXT_PUBLIC_SUPABASE_ANON_KEY")) != "anon":
            return self._result(started, "AuthApiError: Invalid API key (NEXT_PUBLIC_SUPABASE_ANON_KEY)")
        try:
            async with self._pool().acquire(timeout=self.db_timeout) as conn:
                await conn.fetchval("select count(*) from auth.users", timeout=self.db_timeout)
        except Exception as exc:
            return self._result(started, f"{type(exc).__name__}: {exc}")
        return self._result(started)

    async def _check_config(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with self._pool().acquire(timeout=self.db_timeout) as conn:
                rows = await conn.fetch("select jurisdiction, enabled, features::text, settings::text "
                                        "from public.jurisdiction_configs", timeout=self.db_timeout)
        except Exception as exc:
            return self._result(started, f"{type(exc).__name__}: {exc}")
        problems = []
        enabled = [r for r in rows if r["enabled"]]
        if not enabled:
            problems.append("no jurisdiction is enabled")
        for row in enabled:
            features, settings = json.loads(row["features"]), json.loads(row["settings"])
            engine = features.get("exam_engine") if isinstance(features, dict) else None
            if engine not in EXAM_ENGINES:
                problems.append(f"{row['jurisdiction']}: unknown exam_engine {engine!r}")
            score = settings.get("passing_score") if isinstance(settings, dict) else None
            if not isinstance(score, int | float) or not 0 < score <= 1:
                problems.append(f"{row['jurisdiction']}: invalid passing_score {score!r}")
        return self._result(started, "; ".join(problems) or None)

    async def _check_openai(self, env: dict[str, str]) -> dict[str, Any]:
        started = time.perf_counter()
        if self._client is None:
            self._client = httpx.AsyncClient()
        base = env.get("OPENAI_BASE_URL", "https://api.openai.com").rstrip("/")
        try:
            resp = await self._client.get(f"{base}/v1/models", timeout=self.openai_timeout,
                                          headers={"Authorization": f"Bearer {env.get('OPENAI_API_KEY', '')}",
                                                   "User-Agent": "permit-school-app"})
        except httpx.HTTPError as exc:
            return self._result(started, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if resp.status_code != 200:
            return self._result(started, f"HTTP {resp.status_code}")
        return self._result(started)

    async def _health(self, request: Request) -> Response:
        dep = self.vercel.production()
        env = dep.env
        database, auth, config, openai, maintenance = await asyncio.gather(
            self._check_database(), self._check_auth(env), self._check_config(), self._check_openai(env),
            self._maintenance())
        checks = {"database": database, "auth": auth, "config": config, "openai": openai}
        if dep.build == "broken":
            checks["app"] = {"status": "unhealthy", "latency_ms": 0.0, "error": BROKEN_BUILD_ERROR}
        critical = [c for name, c in checks.items() if name != "openai"]
        if any(c["status"] == "unhealthy" for c in critical):
            status = "unhealthy"
        elif any(c["status"] != "healthy" for c in checks.values()):
            status = "degraded"
        else:
            status = "healthy"
        body = {"status": status, "deployment": dep.id, "version": dep.meta.get("githubCommitSha", "")[:7],
                "maintenance": maintenance, "timestamp": iso(time.time()), "checks": checks}
        if status == "unhealthy":
            failing = next(f"{name}: {c.get('error')}" for name, c in checks.items() if c["status"] == "unhealthy")
            self._report(dep, request, 503, f"HealthCheckError: {failing}"[:200])
            return json_response(body, 503)
        return json_response(body)

    # -- routes -----------------------------------------------------------------------------------------------
    async def _index(self, request: Request) -> Response:
        dep = self.vercel.production()
        if (gated := await self._gate(request, dep)) is not None:
            return gated
        return HTMLResponse("<!doctype html><title>Permit School</title><h1>Permit School</h1>")

    async def _profile(self, request: Request) -> Response:
        dep = self.vercel.production()
        if (gated := await self._gate(request, dep)) is not None:
            return gated
        token = bearer(request)
        if not token:
            return json_response({"error": "Unauthorized", "message": "Missing bearer token"}, 401)
        if self.project.key_role(dep.env.get("NEXT_PUBLIC_SUPABASE_ANON_KEY")) != "anon":
            return self._fail(dep, request, 500, "AuthApiError: Invalid API key",
                              {"error": "Authentication service error"})
        claims = self.project.user_claims(token)
        if claims is None:
            return json_response({"error": "Unauthorized", "message": "Invalid or expired session"}, 401)
        try:
            async with self._pool().acquire(timeout=self.db_timeout) as conn:
                row = await conn.fetchrow(f"select {PROFILE_COLUMNS} from public.profiles where id = $1::uuid",
                                          claims["sub"], timeout=self.db_timeout)
        except Exception as exc:
            return self._fail(dep, request, 500, f"{type(exc).__name__}: {exc}"[:200],
                              {"error": "Internal Server Error"})
        if row is None:
            return json_response({"error": "Profile not found"}, 404)
        profile = dict(row)
        profile["created_at"] = iso(profile["created_at"].timestamp())
        return json_response(profile)

    async def _webhook(self, request: Request) -> Response:
        dep = self.vercel.production()
        if (gated := await self._gate(request, dep)) is not None:
            return gated
        payload = await request.body()
        header = request.headers.get("stripe-signature")
        secret = dep.env.get("STRIPE_WEBHOOK_SECRET")
        if not secret:
            return self._fail(dep, request, 500, "Error: STRIPE_WEBHOOK_SECRET is not set",
                              {"error": "Webhook not configured"})
        if not header:
            return json_response({"error": "Missing Stripe-Signature header"}, 400)
        try:
            stripe.Webhook.construct_event(payload, header, secret)
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, ValueError):
            return json_response({"error": "Webhook signature verification failed"}, 400)
        if not isinstance(event, dict):
            return json_response({"error": "Invalid event"}, 400)
        event_id, event_type = str(event.get("id", "")), str(event.get("type", ""))
        if not event_id.startswith("evt_"):
            return json_response({"error": "Invalid event id"}, 400)
        try:
            async with self._pool().acquire(timeout=self.db_timeout) as conn:
                inserted = await conn.fetchval(
                    "insert into public.stripe_events_processed (id, type) values ($1, $2) "
                    "on conflict (id) do nothing returning id", event_id, event_type, timeout=self.db_timeout)
        except Exception as exc:
            return self._fail(dep, request, 500, f"{type(exc).__name__}: {exc}"[:200],
                              {"error": "Internal Server Error"})
        if inserted is None:
            return json_response({"received": True, "duplicate": True})
        return json_response({"received": True})
