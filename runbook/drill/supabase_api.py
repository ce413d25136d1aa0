"""Supabase stand-ins over the real drill database: the PostgREST subset, GoTrue's user endpoint, Management API.

REST: `GET|HEAD /rest/v1/<table>?select=…` (apikey required), `Prefer: count=exact` → `Content-Range: 0-N/total`
(`*/total` for HEAD or no rows), `limit`, `offset`, `order=col.desc`, filters `col=eq.v` (neq, gt, gte, lt, lte,
like, ilike, is, in). `select=count` answers `[{"count": N}]` like PostgREST's aggregate. Enough for
`create_client(url, key).table("profiles").select("*", count="exact", head=True).execute().count`.
Management API: `GET /v1/projects/{ref}/health?services=db&services=auth…` → `[{name, healthy, status}]`, rate
limited as documented (supabase/supabase apps/docs/content/_partials/api_rate_limits.mdx): 120 requests a minute
per user, per project, per endpoint, a fixed window ("for the remainder of the minute"); every answer carries
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the window resets); past the
limit `429 {"message": …}`, no Retry-After. An injected rate limit answers the same, its reset `retry_after` s away.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.database import Database
from runbook.drill.faults import Fault
from runbook.drill.keys import SupabaseProject
from runbook.drill.standin import StandIn, bearer, json_response, opt_in_retry_after

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "like", "ilike": "ilike"}
_RESERVED = {"select", "limit", "offset", "order", "on_conflict", "columns"}
GOTRUE = {"version": "v2.170.0", "name": "GoTrue",
          "description": "GoTrue is a user registration and authentication API"}


def _pg_error(exc: Exception, status: int = 400) -> Response:
    code = getattr(exc, "sqlstate", None) or "PGRST000"
    return json_response({"code": code, "details": getattr(exc, "detail", None), "hint": getattr(exc, "hint", None),
                          "message": str(exc)}, status)


class SupabaseStandIn(StandIn):
    """The project URL (`https://<ref>.supabase.co`): REST over the drill database, and GoTrue basics."""

    name = "supabase"

    def __init__(self, *, db: Database, project: SupabaseProject) -> None:
        self.db = db
        self.project = project
        super().__init__()

    def error_body(self, status: int, message: str) -> Any:
        """Return PostgREST's error shape."""
        return {"code": f"PGRST{status}", "details": None, "hint": None, "message": message}

    def routes(self) -> list[BaseRoute]:
        """Return the REST and auth routes."""
        return [
            Route("/rest/v1/{table}", self._rest, methods=["GET", "HEAD"]),
            Route("/auth/v1/health", self._auth_health, methods=["GET"]),
            Route("/auth/v1/user", self._auth_user, methods=["GET"]),
        ]

    def _key_role(self, request: Request) -> str | None:
        return self.project.key_role(request.headers.get("apikey") or request.query_params.get("apikey"))

    @staticmethod
    def _no_key(request: Request) -> Response:
        if request.headers.get("apikey") or request.query_params.get("apikey"):
            return json_response({"message": "Invalid API key",
                                  "hint": "Double check your Supabase `anon` or `service_role` API key."}, 401)
        return json_response({"message": "No API key found in request",
                              "hint": "No `apikey` request header or url param was found."}, 401)

    async def _rest(self, request: Request) -> Response:
        if self._key_role(request) is None:
            return self._no_key(request)
        token = bearer(request)
        if token and self.project.key_role(token) is None and self.project.user_claims(token) is None:
            return json_response({"code": "PGRST301", "details": None, "hint": None,
                                  "message": "JWSError JWSInvalidSignature"}, 401)
        table = request.path_params["table"]
        pool = self.db.pool
        if pool is None:
            return json_response({"code": "PGRST000", "details": None, "hint": None,
                                  "message": "Database client error. Retrying the connection."}, 503)
        try:
            async with pool.acquire(timeout=10) as conn:
                return await self._query(request, conn, table)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            return _pg_error(exc, 503 if not isinstance(exc, asyncpg.PostgresError) else 400)

    async def _query(self, request: Request, conn: asyncpg.Connection, table: str) -> Response:
        columns = {r["column_name"]: r["data_type"] for r in await conn.fetch(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'public' and table_name = $1", table)}
        if not columns or not _IDENT.match(table):
            return json_response({"code": "PGRST205", "details": None, "hint": None,
                                  "message": f"Could not find the table 'public.{table}' in the schema cache"}, 404)
        q = request.query_params
        select = q.get("select", "*").strip() or "*"
        aggregate = select in ("count", "count()")
        if aggregate or select == "*":
            projection = "*"
        else:
            names = [c.strip() for c in select.split(",")]
            unknown = [c for c in names if c not in columns]
            if unknown:
                return json_response({"code": "42703", "details": None, "hint": None,
                                      "message": f"column {table}.{unknown[0]} does not exist"}, 400)
            projection = ", ".join(f'"{c}"' for c in names)

        where: list[str] = []
        args: list[Any] = []
        for key, raw in q.multi_items():
            if key in _RESERVED or key == "apikey":
                continue
            if key not in columns:
                return json_response({"code": "42703", "details": None, "hint": None,
                                      "message": f"column {table}.{key} does not exist"}, 400)
            op, _, value = raw.partition(".")
            if op == "is":
                lit = {"null": "null", "true": "true", "false": "false"}.get(value.lower())
                if lit is None:
                    return json_response({"code": "PGRST100", "details": None, "hint": None,
                                          "message": f"failed to parse filter ({raw})"}, 400)
                where.append(f'"{key}" is {lit}')
            elif op == "in":
                items = [v.strip().strip('"') for v in value.strip("()").split(",") if v.strip()]
                args.append(items)
                where.append(f'"{key}"::text = any(${len(args)}::text[])')
            elif op in _OPS:
                args.append(value)
                where.append(f'"{key}" {_OPS[op]} cast(${len(args)}::text as {columns[key]})')
            else:
                return json_response({"code": "PGRST100", "details": None, "hint": None,
                                      "message": f"failed to parse filter ({raw})"}, 400)
        where_sql = (" where " + " and ".join(where)) if where else ""

        order_sql = ""
        if order := q.get("order"):
            parts = []
            for item in order.split(","):
                col, _, direction = item.partition(".")
                if col not in columns:
                    return json_response({"code": "42703", "details": None, "hint": None,
                                          "message": f"column {table}.{col} does not exist"}, 400)
                parts.append(f'"{col}" {"desc" if direction.startswith("desc") else "asc"}')
            order_sql = " order by " + ", ".join(parts)
        try:
            limit = int(q["limit"]) if "limit" in q else None
            offset = int(q.get("offset", "0"))
        except ValueError:
            return json_response({"code": "PGRST100", "details": None, "hint": None,
                                  "message": "limit and offset must be integers"}, 400)
        if (rng := request.headers.get("range")) and (m := re.match(r"^(\d+)-(\d*)$", rng)):
            offset = int(m.group(1))
            if m.group(2):
                limit = int(m.group(2)) - offset + 1

        base = f'from public."{table}"{where_sql}'
        prefer = request.headers.get("prefer", "")
        wants_count = re.search(r"count=(exact|planned|estimated)", prefer) is not None
        total: int | None = None
        if wants_count or aggregate:
            total = int(await conn.fetchval(f"select count(*) {base}", *args))
        if aggregate:
            payload = f'[{{"count": {total}}}]'
            n = 1
        else:
            page = f" limit {limit}" if limit is not None else ""
            page += f" offset {offset}" if offset else ""
            sql = f"select coalesce(json_agg(t), '[]'::json)::text, count(*) from " \
                  f"(select {projection} {base}{order_sql}{page}) t"
            row = await conn.fetchrow(sql, *args)
            payload, n = row[0], int(row[1])
        shown = "*" if total is None else str(total)
        if n == 0 or request.method == "HEAD" or aggregate:
            content_range = f"*/{shown}"
        else:
            content_range = f"{offset}-{offset + n - 1}/{shown}"
        status = 206 if (total is not None and not aggregate and n and (offset or offset + n < total)) else 200
        headers = {"Content-Range": content_range, "Content-Profile": "public"}
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type="application/json")
        return Response(payload, status_code=status, headers=headers, media_type="application/json")

    async def _auth_health(self, request: Request) -> Response:
        if self._key_role(request) is None:
            return self._no_key(request)
        return json_response(GOTRUE)

    async def _auth_user(self, request: Request) -> Response:
        if self._key_role(request) is None:
            return self._no_key(request)
        claims = self.project.user_claims(bearer(request))
        if claims is None:
            return json_response({"code": 401, "error_code": "bad_jwt",
                                  "msg": "invalid JWT: unable to parse or verify signature"}, 401)
        rows = await self.db.fetch("select id::text, email, role, aud, created_at::text, last_sign_in_at::text "
                                   "from auth.users where id = $1::uuid", claims["sub"])
        if not rows:
            return json_response({"code": 404, "error_code": "user_not_found", "msg": "User not found"}, 404)
        return json_response(rows[0])


class SupabaseManagementStandIn(StandIn):
    """The Management API health endpoint (`api.supabase.com`), answered from real checks on the drill DB."""

    name = "supabase_api"

    # The `services` enum of the Management API document (tests/contracts/specs/supabase.json).
    SERVICES = ("auth", "db", "db_postgres_user", "pooler", "realtime", "rest", "storage", "pg_bouncer")

    RATE_LIMIT = 120  # requests per window, per token, project and endpoint
    RATE_WINDOW = 60.0

    def __init__(self, *, db: Database, project: SupabaseProject) -> None:
        self.db = db
        self.project = project
        self.overrides: dict[str, tuple[str, str | None]] = {}
        self.rate_limit, self.rate_window = self.RATE_LIMIT, self.RATE_WINDOW
        self.rate_clock: Callable[[], float] = time.time
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}
        super().__init__()

    def reset_state(self) -> None:
        """Forget service overrides and rate-limit windows (the documented limit again, on the wall clock)."""
        self.overrides = {}
        self.rate_limit, self.rate_window, self.rate_clock, self._windows = (
            self.RATE_LIMIT, self.RATE_WINDOW, time.time, {})

    def rate_limited(self, fault: Fault) -> Response:
        """An injected rate limit is the Management API's own 429: `{"message"}`, the X-RateLimit-* headers with
        the reset `retry_after` seconds away, no Retry-After (unless opted in)."""
        reset = max(1, math.ceil(fault.retry_after if fault.retry_after is not None else 1))
        headers = {**self._limit_headers(0, reset), **opt_in_retry_after(fault)}
        return json_response({"message": "Too many requests"}, fault.status, headers)

    def _limit_headers(self, remaining: int, reset: int) -> dict[str, str]:
        """Return the documented X-RateLimit-Limit/-Remaining/-Reset (seconds until the window resets)."""
        return {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(reset)}

    def set_service(self, name: str, status: str, error: str | None = None) -> None:
        """Force a service's reported status (COMING_UP | ACTIVE_HEALTHY | UNHEALTHY) until reset."""
        with self._lock:
            self.overrides[name] = (status, error)

    def error_body(self, status: int, message: str) -> Any:
        """Return the Management API's `{"message": …}`."""
        return {"message": message}

    def routes(self) -> list[BaseRoute]:
        """Return the health route."""
        return [Route("/v1/projects/{ref}/health", self._health, methods=["GET"])]

    async def _check(self, name: str, timeout: float) -> dict[str, Any]:
        with self._lock:
            override = self.overrides.get(name)
        if override is not None:
            status, error = override
        else:
            status, error = "ACTIVE_HEALTHY", None
            if name in ("db", "db_postgres_user", "auth", "rest", "pooler", "pg_bouncer"):
                sql = "select count(*) from auth.users" if name == "auth" else "select 1"
                try:
                    await asyncio.wait_for(self.db.fetch(sql), timeout)
                except Exception as exc:
                    status, error = "UNHEALTHY", f"{type(exc).__name__}: {exc}"[:200]
        item: dict[str, Any] = {"name": name, "healthy": status == "ACTIVE_HEALTHY", "status": status}
        if name == "auth":
            item["info"] = dict(GOTRUE)
        if error:
            item["error"] = error
        return item

    async def _health(self, request: Request) -> Response:
        used, number = self.count_in_window(request, f"health:{request.path_params['ref']}")
        reset = max(1, math.ceil((number + 1) * self.rate_window - self.rate_clock()))
        headers = self._limit_headers(self.rate_limit - used, reset)
        response = await self._answer_health(request, used)
        response.headers.update(headers)
        return response

    async def _answer_health(self, request: Request, used: int) -> Response:
        if used > self.rate_limit:
            return json_response({"message": "Too many requests"}, 429)
        if bearer(request) != self.project.access_token:
            return json_response({"message": "Unauthorized"}, 401)
        if request.path_params["ref"] != self.project.ref:
            return json_response({"message": "Project not found"}, 404)
        services = request.query_params.getlist("services")
        bad = [s for s in services if s not in self.SERVICES]
        if not services or bad:
            return json_response({"message": "services must be one or more of " + ", ".join(self.SERVICES)}, 400)
        try:
            timeout = int(request.query_params.get("timeout_ms", "2000")) / 1000
        except ValueError:
            return json_response({"message": "timeout_ms must be an integer"}, 400)
        results = await asyncio.gather(*(self._check(s, timeout) for s in services))
        return json_response(list(results))
