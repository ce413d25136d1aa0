"""What every task module shares: the current flow-run id, settings, and opening a vendor client.

Vendor clients (runbook.clients) already retry transport errors, timeouts, 429 and 5xx with backoff, jitter and
Retry-After; tasks therefore run with Prefect `retries=0` so a call is never retried twice over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from runbook.clients._http import Redactor, settings_secrets
from runbook.settings import Settings, get_settings


class _FromSettings(Protocol):
    @classmethod
    def from_settings(cls, settings: Settings, /) -> Any: ...


C = TypeVar("C")


def flow_run_id() -> str | None:
    """Return the id of the flow run we are in, if any."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
        return str(run_id) if run_id else None
    except Exception:  # outside any run context
        return None


def flow_run_url(run_id: str | None = None) -> str | None:
    """Return the Prefect UI address of a flow run (default: ours), as the engine's "View at" line forms it."""
    run_id = run_id or flow_run_id()
    if not run_id:
        return None
    try:
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

        base = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    except Exception:
        return None
    return f"{base.rstrip('/')}/runs/flow-run/{run_id}" if base else None


def flow_run_name() -> str | None:
    """Return the name of the flow run we are in, if any."""
    try:
        from prefect.runtime import flow_run

        return flow_run.name or None
    except Exception:
        return None


def redactor(settings: Settings | None = None) -> Redactor:
    """Return a Redactor of every secret the settings (default: the current ones) hold."""
    return Redactor(settings_secrets(settings or get_settings()))


@asynccontextmanager
async def open_client(cls: type[C], settings: Settings | None = None) -> AsyncIterator[C]:
    """Build a vendor client from settings and close it afterwards."""
    client = cls.from_settings(settings or get_settings())  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        await client.aclose()


def run_parameter(field: str, default: Any = None) -> Any:
    """Return a field of the current flow run's `params` model (a model when called directly, a dict via the API)."""
    try:
        from prefect.runtime import flow_run

        params = flow_run.parameters.get("params")
    except Exception:
        return default
    if params is None:
        return default
    if isinstance(params, dict):
        return params.get(field, default)
    return getattr(params, field, default)
