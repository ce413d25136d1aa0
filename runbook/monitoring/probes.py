"""What one monitor cycle probed, and the Measurement each result becomes (the data the other modules share).

A probe's result is the client's typed answer or a ProbeFailure (why it did not answer). A probe that itself fails
because the monitor cannot run it (NotConfigured, its own error) is NOT_MEASURED: a gap, never an outage.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runbook.clients.app import AppHealth, AuthProbe
from runbook.clients.health import VendorStatus
from runbook.clients.openai import OpenAILiveness
from runbook.clients.sentry import ErrorRate, Traffic
from runbook.clients.stripe import FailedEvent
from runbook.clients.supabase import DatabaseHealth, LongQuery, RowCount
from runbook.errors import AuthError, IntegrationError, NotConfigured, RateLimited, RequestRejected

HEALTHY = frozenset({"healthy", "ok", "up", "pass"})

FailureKind = Literal[
    "unconfigured", "timeout", "unreachable", "server_error", "rate_limited", "auth", "rejected", "error"
]

NOT_MEASURED: frozenset[str] = frozenset({"unconfigured", "error"})  # the monitor's own problem: a gap

MeasurementState = Literal["measured", "gap", "masked", "unknown"]


class ProbeFailure(BaseModel):
    """A probe that did not produce its result: why (kind) and the error message (never a secret)."""

    model_config = ConfigDict(frozen=True)

    kind: FailureKind
    message: str
    elapsed_s: float | None = None


def probe_failure(exc: BaseException, elapsed_s: float | None = None) -> ProbeFailure:
    """Classify an exception raised by a probe into a ProbeFailure."""
    if isinstance(exc, NotConfigured):
        kind: FailureKind = "unconfigured"
    elif isinstance(exc, TimeoutError):
        kind = "timeout"
    elif isinstance(exc, RateLimited):
        kind = "rate_limited"
    elif isinstance(exc, AuthError):
        kind = "auth"
    elif isinstance(exc, RequestRejected):
        kind = "rejected"
    elif isinstance(exc, IntegrationError):
        if exc.status is not None and exc.status >= 500:
            kind = "server_error"
        elif "timed out" in exc.detail or "timeout" in exc.detail:
            kind = "timeout"
        else:
            kind = "unreachable"
    else:
        kind = "unreachable"
    message = str(exc) or type(exc).__name__
    return ProbeFailure(kind=kind, message=message[:300], elapsed_s=elapsed_s)


class CycleProbes(BaseModel):
    """Everything one cycle probed; each item is the probe's result or its ProbeFailure."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    health: AppHealth | ProbeFailure
    auth: AuthProbe | ProbeFailure
    rest: RowCount | ProbeFailure
    database: DatabaseHealth | ProbeFailure
    stripe: list[FailedEvent] | ProbeFailure
    sentry: ErrorRate | ProbeFailure
    openai: OpenAILiveness | ProbeFailure
    vendors: list[VendorStatus] | ProbeFailure
    traffic: Traffic | ProbeFailure | None = Field(default=None, description="None: not probed (no traffic metrics)")


class Measurement(BaseModel):
    """One measured metric of one target, or why it has no value (gap: the probe failed; masked: attributed)."""

    metric: str
    target: str
    value: float | None = None
    state: MeasurementState = "measured"
    source: str
    detail: str = ""
    scenario: str | None = Field(default=None, description="Scenario hint when the evidence knows better than the rule")
    samples: dict[str, float] = Field(
        default_factory=dict, description="Values this cycle may add to a baseline (`monitor_rates` metric → value)")

    @property
    def key(self) -> str:
        """Return `metric:target`."""
        return f"{self.metric}:{self.target}"


def measurement(metric: str, target: str, value: float | None, source: str, detail: str = "", *,
                state: MeasurementState = "measured", scenario: str | None = None) -> Measurement:
    """Return a Measurement; its value only when measured (a gap, masked or unknown one has none)."""
    return Measurement(metric=metric, target=target, value=value if state == "measured" else None, state=state,
                       source=source, detail=detail, scenario=scenario)


def health_checks(health: AppHealth) -> dict[str, dict[str, Any]]:
    """Return the dependency checks of an /api/health body ({} when it has none)."""
    checks = (health.body or {}).get("checks")
    return {str(k): v for k, v in checks.items() if isinstance(v, dict)} if isinstance(checks, dict) else {}


def check_status(checks: dict[str, dict[str, Any]], name: str) -> str | None:
    """Return a health check's status in lower case ('healthy', 'degraded', 'unhealthy'), or None when absent."""
    check = checks.get(name)
    return str(check.get("status", "")).lower() if check is not None else None


def blocked_queries(db: DatabaseHealth | ProbeFailure) -> list[LongQuery]:
    """Return the long-running queries that wait on another session's lock."""
    return [q for q in db.long_running if q.blocking_pids] if isinstance(db, DatabaseHealth) else []
