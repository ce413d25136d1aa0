"""DrillEnvironment: the whole local stand-in of production, started and stopped by the code itself.

    with DrillEnvironment() as env:      # usually through its subclass DrillStack (stack.py), which adds scenarios
        env.env              # RUNBOOK_* variables pointing every runbook setting at the stack
        env.settings()       # runbook.settings.Settings built from env.env (os.environ untouched)
        env.health(); env.query("select 1"); env.vercel.deploy(...)
        env.reset()          # back to the seeded baseline

Everything listens on 127.0.0.1 (free ports); PostgreSQL listens on a Unix socket in the work directory. On exit
(also on an exception or Ctrl-C) every server and the postmaster stop and the temporary directory is removed.
The scenarios (scenarios.py) break an environment; this module knows nothing of them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Self

import asyncpg
import httpx

from runbook.drill.app import PermitSchoolApp
from runbook.drill.database import Database, SeedUser
from runbook.drill.host import ServerHost
from runbook.drill.intake import IntakeServer
from runbook.drill.keys import SupabaseProject, token
from runbook.drill.pagerduty import PagerDutyStandIn
from runbook.drill.sentry import SentryStandIn
from runbook.drill.slack import CHANNELS, SlackStandIn
from runbook.drill.standin import StandIn, rand_id
from runbook.drill.statuspage import StatuspageStandIn
from runbook.drill.stripe_api import StripeStandIn
from runbook.drill.supabase_api import SupabaseManagementStandIn, SupabaseStandIn
from runbook.drill.thirdparty import STATUSPAGE_VENDORS, OpenAIStandIn, StatusPagesStandIn
from runbook.drill.vercel import VercelStandIn
from runbook.errors import DrillError
from runbook.settings import ENV_PREFIX, Settings, load_settings

_log = logging.getLogger(__name__)

PROJECT_NAME = "permit-school"


def package_migrations() -> Path:
    """Return the migrations folder shipped with the package (the seeded baseline)."""
    return Path(str(resources.files("runbook.drill") / "supabase" / "migrations"))


class DrillEnvironment:
    """The drill environment: real Postgres, the Permit School app and every vendor stand-in on 127.0.0.1."""

    def __init__(self, workdir: str | Path | None = None, *, users: int = 300, alias_delay: float = 0.4,
                 build_delay: float = 0.4, db_timeout: float = 10.0, slow_query_ms: float = 500.0,
                 openai_timeout: float = 2.0) -> None:
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self._owns_workdir = workdir is None
        self._users = users
        self._alias_delay, self._build_delay = alias_delay, build_delay
        self._db_timeout, self._slow_query_ms, self._openai_timeout = db_timeout, slow_query_ms, openai_timeout
        self.workdir: Path = Path()
        self.env: dict[str, str] = {}
        self._baseline_env: dict[str, str] = {}
        self.active: dict[str, dict[str, Any]] = {}
        self.scenario_state: dict[str, dict[str, Any]] = {}
        self.sessions: list[tuple[asyncpg.Connection, asyncio.Future[Any]]] = []
        self.startup_seconds = 0.0
        self.host: ServerHost | None = None
        self.db: Database | None = None
        self._db_future: Future[None] | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def migrations_dir(self) -> Path:
        """Return the stack's working copy of the migrations folder (what RUNBOOK_MIGRATIONS_DIR points at)."""
        return self.workdir / "supabase" / "migrations"

    @property
    def state_dir(self) -> Path:
        """Return RUNBOOK_STATE_DIR."""
        return self.workdir / "state"

    def start(self) -> Self:
        """Start Postgres, the app and every stand-in; on any failure (or Ctrl-C) clean up and re-raise."""
        if self._started:
            return self
        if self._stopped:
            raise DrillError("a DrillStack cannot be restarted; create a new one")
        self._started = True
        began = time.monotonic()
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, DrillError):
                raise DrillError(f"the drill environment could not start: {type(exc).__name__}: {exc}") from exc
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _start(self) -> None:
        if self._requested_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="drill-"))
            if len(str(self.workdir)) > 60:  # the Postgres socket path must stay short
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = Path(tempfile.mkdtemp(prefix="drill-", dir="/tmp"))
        else:
            self.workdir = self._requested_workdir.resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        self._copy_migrations()
        self.state_dir.mkdir(parents=True, exist_ok=True)

        self.db = Database(self.workdir, users=self._users)
        executor = ThreadPoolExecutor(1, thread_name_prefix="drill-postgres")
        self._db_future = executor.submit(self.db.start)
        executor.shutdown(wait=False)

        self.host = ServerHost()
        self.host.start()
        self.project = SupabaseProject()
        self.sentry = SentryStandIn(token=token("sntrys_", 24), org="permit-school",
                                    project_id="4508000000000001", project_slug="permit-school-web")
        self.vercel = VercelStandIn(token=token("vcp_", 20), project_id=rand_id("prj_", 28),
                                    project_name=PROJECT_NAME, team_id=rand_id("team_", 24),
                                    alias_delay=self._alias_delay, build_delay=self._build_delay)
        self.app = PermitSchoolApp(db=self.db, vercel=self.vercel, project=self.project, sentry=self.sentry,
                                   db_timeout=self._db_timeout, slow_query_ms=self._slow_query_ms,
                                   openai_timeout=self._openai_timeout)
        self.supabase = SupabaseStandIn(db=self.db, project=self.project)
        self.supabase_api = SupabaseManagementStandIn(db=self.db, project=self.project)
        self.stripe = StripeStandIn(secret_key=token("sk_test_", 24), webhook_url="",
                                    webhook_secret=token("whsec_", 24))
        self.statuspage = StatuspageStandIn(api_key=token("", 20), page_id=rand_id("", 12, lower=True))
        self.pagerduty = PagerDutyStandIn(routing_key=token("R0", 15), api_token=token("u+", 18))
        self.pagerduty_webhook_secret = token("", 32)  # the V3 subscription's signing secret
        self.intake = IntakeServer()
        self.slack = SlackStandIn()
        self.openai = OpenAIStandIn(api_key=token("sk-proj-", 24))
        self.status_pages = StatusPagesStandIn()
        self.host.serve(self.standins)

        self.stripe.webhook_url = f"{self.app.base_url}/api/billing/webhook"
        self.stripe.seed()
        self.vercel.seed(self._app_env())

        try:
            self._db_future.result(timeout=60)
        except Exception as exc:
            raise DrillError(f"PostgreSQL did not start: {exc}") from exc
        self.host.run(self.db.open())
        self.host.run(self.db.install_baseline(self.migrations_dir))
        self.env = self._build_env()
        self._baseline_env = dict(self.env)
        # Our intake, with PagerDuty's V3 webhook subscription pointing at it (acknowledgements made in PagerDuty)
        self.intake.configure(self.settings())
        self.pagerduty.subscribe(self.intake.webhook_url, self.pagerduty_webhook_secret)

    def stop(self) -> None:
        """Stop every server and the postmaster and remove the temporary data (idempotent, never raises)."""
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        atexit.unregister(self.stop)
        host, db = self.host, self.db
        if host is not None and host.loop is not None:
            for step in (self._close_sessions(), self._close_clients(), db.close() if db else None):
                if step is None:
                    continue
                try:
                    host.run(step, timeout=10)
                except BaseException as exc:  # keep cleaning up
                    _log.warning("drill: shutdown step failed: %s", exc)
            host.stop()
        if self._db_future is not None:
            with contextlib.suppress(BaseException):
                self._db_future.result(timeout=60)
        if db is not None:
            socket_dir = db.socket_dir
            try:
                db.stop()
            except BaseException as exc:
                _log.warning("drill: stopping PostgreSQL failed: %s", exc)
            if socket_dir is not None and self.workdir not in socket_dir.parents and socket_dir != self.workdir:
                shutil.rmtree(socket_dir, ignore_errors=True)
        if self._owns_workdir and str(self.workdir) not in ("", "."):
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _close_clients(self) -> None:
        closers = [c.aclose() for c in (getattr(self, "app", None), getattr(self, "stripe", None)) if c is not None]
        await asyncio.gather(*closers, return_exceptions=True)

    async def _close_sessions(self) -> None:
        sessions, self.sessions = self.sessions, []
        for conn, task in sessions:
            task.cancel()
            conn.terminate()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 2)

    def _copy_migrations(self) -> None:
        target = self.migrations_dir
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(package_migrations(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py*"))

    # -- configuration ----------------------------------------------------------------------------------------
    @property
    def standins(self) -> list[StandIn]:
        """Return every served component (the app, Supabase and the vendor stand-ins)."""
        return [self.app, self.supabase, self.supabase_api, self.vercel, self.stripe, self.sentry,
                self.statuspage, self.pagerduty, self.slack, self.openai, self.status_pages, self.intake]

    @property
    def urls(self) -> dict[str, str]:
        """Return component name → base URL."""
        return {s.name: s.base_url for s in self.standins}

    @property
    def db_url(self) -> str:
        """Return the PostgreSQL URI (a Unix socket; user postgres, no password)."""
        return self.db.uri if self.db else ""

    @property
    def seed_users(self) -> list[SeedUser]:
        """Return the seeded users."""
        return list(self.db.users) if self.db else []

    def _app_env(self) -> dict[str, tuple[str, str]]:
        """Return the app's Vercel env: key → (value, type)."""
        return {
            "NEXT_PUBLIC_APP_URL": (self.app.base_url, "plain"),
            "NEXT_PUBLIC_SUPABASE_URL": (self.supabase.base_url, "plain"),
            "NEXT_PUBLIC_SUPABASE_ANON_KEY": (self.project.anon_key, "plain"),
            "SUPABASE_SERVICE_ROLE_KEY": (self.project.service_role_key, "encrypted"),
            "STRIPE_SECRET_KEY": (self.stripe.secret_key, "sensitive"),
            "STRIPE_WEBHOOK_SECRET": (self.stripe.endpoint.secret, "sensitive"),
            "OPENAI_API_KEY": (self.openai.api_key, "encrypted"),
            "OPENAI_BASE_URL": (self.openai.base_url, "plain"),
            "SENTRY_DSN": (f"http://public@127.0.0.1:{self.sentry.port}/{self.sentry.project_id}", "plain"),
        }

    def _build_env(self) -> dict[str, str]:
        p = ENV_PREFIX
        env = {
            f"{p}DRILL": "true",
            f"{p}ENVIRONMENT": "drill",
            f"{p}APP_URL": self.app.base_url,
            f"{p}SUPABASE_URL": self.supabase.base_url,
            f"{p}SUPABASE_ANON_KEY": self.project.anon_key,
            f"{p}SUPABASE_SERVICE_ROLE_KEY": self.project.service_role_key,
            f"{p}SUPABASE_DB_URL": self.db_url,
            f"{p}SUPABASE_PROJECT_REF": self.project.ref,
            f"{p}SUPABASE_ACCESS_TOKEN": self.project.access_token,
            f"{p}SUPABASE_API_URL": self.supabase_api.base_url,
            f"{p}MIGRATIONS_DIR": str(self.migrations_dir),
            f"{p}VERCEL_TOKEN": self.vercel.token,
            f"{p}VERCEL_PROJECT_ID": self.vercel.project_id,
            f"{p}VERCEL_TEAM_ID": self.vercel.team_id,
            f"{p}VERCEL_API_URL": self.vercel.base_url,
            f"{p}STRIPE_SECRET_KEY": self.stripe.secret_key,
            f"{p}STRIPE_WEBHOOK_SECRET": self.stripe.endpoint.secret,
            f"{p}STRIPE_API_URL": self.stripe.base_url,
            f"{p}STRIPE_WEBHOOK_URL": self.stripe.webhook_url,
            f"{p}SENTRY_TOKEN": self.sentry.token,
            f"{p}SENTRY_ORG": self.sentry.org,
            f"{p}SENTRY_PROJECT": self.sentry.project_id,
            f"{p}SENTRY_URL": self.sentry.base_url,
            f"{p}STATUSPAGE_API_KEY": self.statuspage.api_key,
            f"{p}STATUSPAGE_PAGE_ID": self.statuspage.page_id,
            f"{p}STATUSPAGE_API_URL": f"{self.statuspage.base_url}/v1",
            f"{p}STATUSPAGE_COMPONENTS": json.dumps(self.statuspage.component_ids),
            f"{p}PAGERDUTY_ROUTING_KEY": self.pagerduty.routing_key,
            f"{p}PAGERDUTY_EVENTS_URL": f"{self.pagerduty.base_url}/v2/enqueue",
            f"{p}PAGERDUTY_WEBHOOK_SECRET": self.pagerduty_webhook_secret,
            f"{p}PAGERDUTY_API_TOKEN": self.pagerduty.api_token,
            f"{p}PAGERDUTY_API_URL": self.pagerduty.base_url,
            f"{p}OPENAI_API_KEY": self.openai.api_key,
            f"{p}OPENAI_API_URL": self.openai.base_url,
            f"{p}STATUS_PAGES": json.dumps(
                {v: self.status_pages.page_url(v) for v in (*STATUSPAGE_VENDORS, "stripe")}),
            f"{p}STATE_DIR": str(self.state_dir),
            f"{p}INTAKE_TOKEN": token("intake_", 16),
            f"{p}INTAKE_HMAC_SECRET": token("", 24),
        }
        for channel in CHANNELS:
            env[f"{p}SLACK_WEBHOOK_{channel.upper()}"] = self.slack.webhook_url(channel)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """Return runbook Settings built from `env` (and `overrides`); os.environ is not modified."""
        values: dict[str, Any] = {}
        for key, value in self.env.items():
            name = key[len(ENV_PREFIX):].lower()
            field = Settings.model_fields.get(name)
            if field is None:
                continue
            values[name] = json.loads(value) if "dict" in str(field.annotation) else value
        values.update(overrides)
        return load_settings(_env_file=None, **values)

    # -- helpers for tests and scenarios ----------------------------------------------------------------------
    def _host(self) -> ServerHost:
        if self.host is None or self.host.loop is None or self.db is None:
            raise DrillError("the drill stack is not running")
        return self.host

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Run a query on the drill database and return rows as dicts."""
        assert self.db is not None
        return self._host().run(self.db.fetch(sql, *args))

    def execute(self, sql: str, *args: Any) -> str:
        """Run a statement on the drill database; return its status tag."""
        assert self.db is not None
        return self._host().run(self.db.execute(sql, *args))

    def health(self, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """GET /api/health and return (status code, JSON body)."""
        resp = httpx.get(f"{self.app.base_url}/api/health", timeout=timeout)
        return resp.status_code, resp.json()

    def user_token(self, email: str | None = None) -> str:
        """Return a valid access token for a seeded user (default: the first student) for /api/auth/profile."""
        users = self.seed_users
        user = next((u for u in users if u.email == email), None) if email else next(
            u for u in users if u.role == "student")
        if user is None:
            raise DrillError(f"no seeded user {email!r}")
        return self.project.user_token(user.id, user.email)

    def open_session(self, sql: str, application_name: str) -> int:
        """Start a background database session running `sql`; return its backend pid (ended by reset/stop)."""
        host = self._host()
        assert self.db is not None
        uri = self.db.uri

        async def begin() -> tuple[asyncpg.Connection, asyncio.Future[Any], int]:
            conn = await asyncpg.connect(uri, server_settings={"application_name": application_name})
            pid = conn.get_server_pid()
            task = asyncio.ensure_future(conn.execute(sql))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return conn, task, pid

        conn, task, pid = host.run(begin())
        self.sessions.append((conn, task))
        return pid

    def reset(self) -> None:
        """Return to the seeded baseline: database, migrations folder, vendor state, env, faults and records."""
        host = self._host()
        assert self.db is not None
        host.run(self._close_sessions())
        for standin in self.standins:
            standin.reset()
        self._copy_migrations()
        host.run(self.db.install_baseline(self.migrations_dir))
        self.env = dict(self._baseline_env)
        self.active.clear()
        self.scenario_state.clear()
