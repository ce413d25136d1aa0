"""One error hierarchy for the whole runbook.

    RunbookError                      base of everything we raise on purpose
    ├── ConfigError                   invalid settings or policy file (names the field)
    ├── InputError                    bad input caught before anything runs (alert, severity, version …)
    ├── StoreError                    the incident store
    │   ├── IncidentNotFound
    │   └── InvalidTransition         a status change the lifecycle does not allow
    ├── IntegrationError              a vendor call failed (vendor, operation, status; never a secret)
    │   ├── NotConfigured             the integration has no settings
    │   ├── TransientError            worth retrying: transport error, timeout, 5xx
    │   │   └── RateLimited           429 / 420, carries retry_after seconds, until (UTC), read/action
    │   ├── AuthError                 401 / 403: never retried
    │   └── RequestRejected           any other 4xx: never retried
    ├── RemediationError              a remediation refused or failed to act
    │   ├── PlanChanged               the state moved between approval and action
    │   ├── ApprovalDenied            rejected, or the approval timed out
    │   ├── RemediationLocked         another remediation holds the environment
    │   ├── UnsafeOperation           refused by a safety rule (e.g. no down script → PITR)
    │   └── VerificationFailed        acted, but the check afterwards did not pass
    └── DrillError                    the drill environment could not start or inject a fault
"""

from __future__ import annotations

from datetime import UTC, datetime


class RunbookError(Exception):
    """Base class of every error the runbook raises on purpose."""


class ConfigError(RunbookError):
    """Invalid settings or policy."""


class InputError(RunbookError, ValueError):
    """Bad input rejected before anything runs."""


class StoreError(RunbookError):
    """The incident store failed."""


class IncidentNotFound(StoreError, LookupError):
    """No incident with that id."""


class InvalidTransition(StoreError):
    """A status change the lifecycle does not allow."""


class IntegrationError(RunbookError):
    """A call to an external system failed; the message names vendor, operation and status."""

    def __init__(self, vendor: str, operation: str, message: str = "", status: int | None = None) -> None:
        self.vendor = vendor
        self.operation = operation
        self.status = status
        self.detail = message
        where = f"{vendor} {operation}"
        code = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where} failed{code}: {message}" if message else f"{where} failed{code}")


class NotConfigured(IntegrationError):
    """The integration has no settings."""

    def __init__(self, vendor: str, missing: str) -> None:
        super().__init__(vendor, "configure", f"not configured: set {missing}")


class TransientError(IntegrationError):
    """A failure worth retrying: transport error, timeout or 5xx."""


class RateLimited(TransientError):
    """The vendor said slow down: `retry_after` seconds and `until` (aware UTC) when it said how long, `detail` its own
    error code/message. A call that gave up rather than wait sets `use`: "read" (a read gives up at once past its
    short bound: a monitor cycle records a gap) or "action" (rollback, promote, page: waited as long as its timeout
    allows), and `why` says which bound stopped it."""

    def __init__(
        self,
        vendor: str,
        operation: str,
        retry_after: float | None,
        status: int = 429,
        *,
        detail: str = "",
        until: datetime | None = None,
        use: str | None = None,
        why: str = "",
    ) -> None:
        self.retry_after = retry_after
        self.until = until
        self.vendor_detail = detail
        self.use = use
        self.why = why
        if until is not None:
            wait = f"rate limited until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        elif retry_after is not None:
            wait = f"retry after {retry_after:g}s"
        else:
            wait = "rate limited"
        if why:
            wait += f", given up: {why}"
        super().__init__(vendor, operation, f"{wait}; {detail}" if detail else wait, status)

    def gave_up(self, use: str, why: str) -> RateLimited:
        """Return this error as given up by a read or an action, saying which bound stopped it."""
        return RateLimited(self.vendor, self.operation, self.retry_after, self.status or 429,
                           detail=self.vendor_detail, until=self.until, use=use, why=why)


class AuthError(IntegrationError):
    """Authentication or authorisation failed (401/403); never retried."""


class RequestRejected(IntegrationError):
    """The vendor rejected the request (4xx other than 401/403/429); never retried."""


class RemediationError(RunbookError):
    """A remediation refused to act or failed."""


class PlanChanged(RemediationError):
    """The state moved between approval and action; nothing was changed."""


class ApprovalDenied(RemediationError):
    """The approval was rejected or timed out; nothing was changed."""


class RemediationLocked(RemediationError):
    """Another remediation holds the environment."""


class UnsafeOperation(RemediationError):
    """A safety rule refused the operation."""


class VerificationFailed(RemediationError):
    """The action ran but the verification afterwards did not pass."""


class DrillError(RunbookError):
    """The drill environment could not start, inject or repair."""
