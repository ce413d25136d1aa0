"""Settings: every target and credential the runbook names, from the environment (prefix RUNBOOK_) or a .env file.

Every credential is a `SecretStr`. Nothing here ever prints a secret: `describe()` shows set/unset and a short
fingerprint only. Secrets never travel as flow parameters; flows and tasks call `get_settings()`.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runbook.errors import ConfigError

ENV_PREFIX = "RUNBOOK_"
# In the state dir: the API credential ("user:password", mode 0600) of the Prefect server `runbook up` runs.
API_AUTH_FILE = "api-auth"

DEFAULT_STATUS_PAGES = {
    "supabase": "https://status.supabase.com",
    "vercel": "https://www.vercel-status.com",
    "openai": "https://status.openai.com",
    "stripe": "https://status.stripe.com",
}


def fingerprint(value: str | SecretStr | None) -> str:
    """Return a short, non-reversible fingerprint of a secret (`sha256:` + 8 hex digits), or '' when unset."""
    if value is None:
        return ""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not raw:
        return ""
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:8]


class Settings(BaseSettings):
    """Targets and credentials of the Permit School stack; each integration is optional until used."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    environment: str = Field("production", description="Name of the environment under incident (locks, reports)")
    drill: bool = Field(False, description="Incidents declared with these settings are drills")

    # The app (Next.js on Vercel)
    app_url: str | None = Field(None, description="Base URL of the app, e.g. https://permit.school")

    # Supabase
    supabase_url: str | None = None
    supabase_anon_key: SecretStr | None = None
    supabase_service_role_key: SecretStr | None = None
    supabase_db_url: SecretStr | None = Field(None, description="Direct Postgres URL (holds a password)")
    supabase_project_ref: str | None = None
    supabase_access_token: SecretStr | None = Field(None, description="Management API token (sbp_…)")
    supabase_api_url: str = "https://api.supabase.com"
    migrations_dir: Path | None = Field(None, description="The supabase/migrations folder of the app")

    # Vercel
    vercel_token: SecretStr | None = None
    vercel_project_id: str | None = None
    vercel_team_id: str | None = None
    vercel_api_url: str = "https://api.vercel.com"

    # Stripe
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = Field(None, description="The app's whsec_… endpoint secret")
    stripe_api_url: str = "https://api.stripe.com"
    stripe_webhook_url: str | None = Field(None, description="The app's webhook URL; default app_url + path")

    # Sentry
    sentry_token: SecretStr | None = None
    sentry_org: str | None = None
    sentry_project: str | None = None
    sentry_url: str = "https://sentry.io"

    # Statuspage
    statuspage_api_key: SecretStr | None = None
    statuspage_page_id: str | None = None
    statuspage_api_url: str = "https://api.statuspage.io/v1"
    statuspage_components: dict[str, str] = Field(
        default_factory=dict, description="Logical component (app, database, auth, payments) → component id"
    )

    # PagerDuty
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    # Acknowledgements made in PagerDuty: V3 webhooks to POST /pagerduty/webhooks (push), or the REST API (pull)
    pagerduty_webhook_secret: SecretStr | None = Field(
        None, description="The V3 webhook subscription's signing secret (verifies X-PagerDuty-Signature)")
    pagerduty_api_token: SecretStr | None = Field(
        None, description="REST API key (read-only is enough): the escalation polls the incidents' status")
    pagerduty_api_url: str = "https://api.pagerduty.com"

    # Slack: one incoming webhook per channel of the runbook
    slack_webhook_incidents: SecretStr | None = None
    slack_webhook_engineering: SecretStr | None = None
    slack_webhook_operations: SecretStr | None = None
    # Slack app (Web API: messages with buttons; interactions come back to the intake, signed)
    slack_bot_token: SecretStr | None = Field(None, description="Bot token (xoxb-…) with chat:write")
    slack_signing_secret: SecretStr | None = Field(None, description="Verifies POST /slack/interactions")
    slack_api_url: str = "https://slack.com/api"
    slack_channel_ids: dict[str, str] = Field(
        default_factory=dict, description="Runbook channel (incidents, engineering, operations) → Slack channel id; "
                                          "default: the channel's name from the policy")

    # OpenAI and vendor status pages
    openai_api_key: SecretStr | None = None
    openai_api_url: str = "https://api.openai.com"
    status_pages: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_PAGES))

    # Our own state
    store_url: str | None = Field(None, description="Incident store; default SQLite file in state_dir")
    monitor_store_url: str | None = Field(
        None, description="The monitor's state (breaches, samples, baselines); default: the incident store")
    state_dir: Path = Field(Path(".runbook"), description="Reports, backups, snapshots, the default store")
    policy_file: Path | None = Field(None, description="YAML or TOML file overriding the runbook's tables")
    intake_token: SecretStr | None = Field(None, description="Bearer token accepted by the alert intake")
    intake_hmac_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for signed alerts")

    @field_validator("app_url", "supabase_url", "stripe_webhook_url", mode="after")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("stripe_webhook_secret", mode="after")
    @classmethod
    def _whsec_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must start with whsec_ (value not shown)")
        return value

    @property
    def resolved_monitor_store_url(self) -> str:
        """Return the monitor's state store: monitor_store_url, else the incident store."""
        return self.monitor_store_url or self.resolved_store_url

    @property
    def resolved_store_url(self) -> str:
        """Return the store URL, defaulting to a SQLite file in the state directory."""
        if self.store_url:
            return self.store_url
        return f"sqlite+aiosqlite:///{(self.state_dir / 'incidents.db').resolve()}"

    @property
    def api_auth_file(self) -> Path:
        """The file holding the API credential of `runbook up`'s Prefect server (never printed, only its path)."""
        return self.state_dir / API_AUTH_FILE

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def backups_dir(self) -> Path:
        return self.state_dir / "backups"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @property
    def webhook_url(self) -> str | None:
        """Return the app's Stripe webhook URL."""
        if self.stripe_webhook_url:
            return self.stripe_webhook_url
        return f"{self.app_url}/api/billing/webhook" if self.app_url else None

    def slack_webhook(self, channel: str) -> SecretStr | None:
        """Return the webhook of a runbook channel ('#incidents', 'engineering', …)."""
        return getattr(self, f"slack_webhook_{channel.lstrip('#')}", None)

    def describe(self) -> dict[str, Any]:
        """Return every setting with secrets as 'set (sha256:…)' / 'unset'; safe to print."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) or name in _SECRET_FIELDS:
                out[name] = f"set ({fingerprint(value)})" if value else "unset"
            elif isinstance(value, Path):
                out[name] = str(value)
            elif name in _URL_FIELDS and value:
                out[name] = redacted_url(value)
            else:
                out[name] = value
        return out


_SECRET_FIELDS = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
_URL_FIELDS = {"store_url", "monitor_store_url"}  # plain strings, but a database URL may carry a password


def redacted_url(url: str) -> str:
    """Return a database URL fit to print: its password masked; a string that is not a URL is not shown at all."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy can read (it could be anything, a secret too): say nothing of it
        return "<unreadable URL>"
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def _explain(exc: ValidationError) -> str:
    """Name each invalid field without echoing its value (the value may be a secret)."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment; raise ConfigError naming each invalid field (never its value)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


@lru_cache(maxsize=1)
def _cached(key: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings()


def get_settings() -> Settings:
    """Return the settings for the current environment (re-read when RUNBOOK_* variables change)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX)))
    return _cached(key)
