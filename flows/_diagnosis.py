"""What the five scenario diagnostics (flows/diagnose_<scenario>.py) share; flows/diagnose.py only dispatches.

- `Investigation` collects evidence and causes; a probe that fails (IntegrationError, a timeout) becomes evidence
  with ok=false and the typed error message, never an exception out of the diagnosis;
- `publish` returns the Diagnosis after publishing it as a table artifact (check, ok, value, detail) keyed
  `diagnosis-<scenario>-<incident-id>` and recording a DIAGNOSIS event (found, finding, suggestion) on the incident;
- helpers that read the app's /api/health body (`checks.<name>.status|latency_ms|error`) and long-running queries.
Every text that leaves a diagnosis passes a redactor of the configured secrets (defence in depth: the checks
themselves only ever handle fingerprints).
"""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prefect import get_run_logger

from runbook.clients.types import AppHealth, LongQuery
from runbook.errors import IntegrationError, NotConfigured, RunbookError
from runbook.models import Diagnosis, EventKind, Evidence, Suggestion
from tasks.common import redactor
from tasks.incident import record

T = TypeVar("T")

INCIDENT_ID_DESCRIPTION = "Record the diagnosis on this incident (timeline event + artifact key)"
HEALTHY = {"healthy", "ok", "up", "pass"}
NONE = "none"


# -- the shared machinery -------------------------------------------------------------------------------------


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RunbookError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return f"{type(exc).__name__}: timed out"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


class Investigation:
    """The evidence one diagnostic gathered and the causes it identified, in the order it found them."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.evidence: list[Evidence] = []
        self.causes: list[tuple[str, list[Suggestion]]] = []
        self.errors: dict[str, str] = {}
        self.unconfigured: set[str] = set()

    def note(self, check: str, ok: bool, value: Any = "", detail: str = "") -> Evidence:
        """Add one observation."""
        evidence = Evidence(check=check, ok=bool(ok), value=str(value), detail=detail)
        self.evidence.append(evidence)
        return evidence

    async def probe(self, check: str, call: Awaitable[T]) -> T | None:
        """Await a task; on failure note the typed error as evidence (ok=false) and return None."""
        try:
            return await call
        except (IntegrationError, TimeoutError) as exc:
            message = _error_text(exc)
            if isinstance(exc, NotConfigured):
                self.unconfigured.add(check)
        except Exception as exc:  # a diagnosis reports what it could not check; it never crashes on it
            message = _error_text(exc)
        self.unread(check, message)
        return None

    def unread(self, check: str, message: str, value: str = "error") -> None:
        """Note a read that did not answer (ok=false): it is named as not checked, never taken as evidence."""
        self.errors[check] = message
        self.note(check, False, value, message)

    def failed(self, check: str) -> bool:
        """Return True when the probe ran and failed (not merely: its integration is not configured)."""
        return check in self.errors and check not in self.unconfigured

    def cause(self, finding: str, *suggestions: Suggestion) -> None:
        """Record an identified cause and the remediations it points at."""
        self.causes.append((finding, list(suggestions)))

    def could_not_check(self) -> str:
        """Name the reads that failed, each with its error ('' when every configured probe ran)."""
        return "; ".join(f"{check} ({message.splitlines()[0][:160] if message else 'failed'})"
                         for check, message in self.errors.items() if self.failed(check))

    def diagnosis(self, nothing_found: str, *, all_clear: bool = False) -> Diagnosis:
        """Return the Diagnosis: the first cause leads; others are appended; secrets redacted.

        Without a cause, `nothing_found` is the finding, unless a read failed: a failed read is no evidence, so an
        all-clear text (`all_clear=True`: "healthy", "no bad deploy", "third parties operational") becomes "cause
        unknown" naming what could not be checked, and any other text says so after it. Integrations that are not
        configured are named too (they were not checked), without turning the finding into "unknown".
        """
        redact = redactor()
        blind = self.could_not_check()
        if blind and not self.causes:
            nothing_found = (f"Cause unknown: could not check {blind}. What could be checked looks healthy; this is "
                             "no all-clear." if all_clear
                             else f"{nothing_found.rstrip('.')}. Cause unknown: could not check {blind}.")
        if self.unconfigured and not self.causes:
            nothing_found += f" Not configured, so not checked: {', '.join(sorted(self.unconfigured))}."
        if self.causes:
            finding = self.causes[0][0]
            if len(self.causes) > 1:
                finding += " Also: " + " ".join(c[0] for c in self.causes[1:])
            suggestions: list[Suggestion] = []
            for _, items in self.causes:
                for s in items:
                    if all(s.flow != o.flow or s.parameters != o.parameters for o in suggestions):
                        suggestions.append(s)
        else:
            finding, suggestions = nothing_found, []
        return Diagnosis(
            scenario=self.scenario,
            found=bool(self.causes),
            finding=redact(finding),
            evidence=[e.model_copy(update={"value": redact(e.value), "detail": redact(e.detail)})
                      for e in self.evidence],
            suggestions=[s.model_copy(update={"why": redact(s.why)}) for s in suggestions],
        )


def artifact_key(scenario: str, incident_id: str | None) -> str:
    """Return the artifact key of a diagnosis (lowercase letters, digits and dashes only)."""
    return f"diagnosis-{scenario}-{incident_id or 'adhoc'}".lower().replace("_", "-")


def _suggestion_line(s: Suggestion) -> str:
    if s.flow == NONE:
        return f"none — {s.why}"
    params = ", ".join(f"{k}={v!r}" for k, v in s.parameters.items())
    return f"{s.flow}({params}) — {s.why}"


async def publish(diagnosis: Diagnosis, incident_id: str | None) -> Diagnosis:
    """Publish the diagnosis as a table artifact, record it on the incident and log it; return it."""
    from prefect.artifacts import acreate_table_artifact

    table = [{"check": e.check, "ok": e.ok, "value": e.value, "detail": e.detail} for e in diagnosis.evidence]
    lines = [f"**{diagnosis.scenario}: {'cause found' if diagnosis.found else 'no cause found'}** — "
             f"{diagnosis.finding}"]
    lines += [f"- suggested: {_suggestion_line(s)}" for s in diagnosis.suggestions]
    await acreate_table_artifact(table=table, key=artifact_key(diagnosis.scenario, incident_id),
                                 description="\n".join(lines))
    suggestion = diagnosis.suggestion
    await record(
        incident_id,
        EventKind.DIAGNOSIS,
        f"Diagnosis ({diagnosis.scenario}): {diagnosis.finding}",
        {"scenario": diagnosis.scenario, "found": diagnosis.found, "finding": diagnosis.finding,
         "suggestion": suggestion.model_dump() if suggestion else None,
         "suggestions": [s.model_dump() for s in diagnosis.suggestions],
         "failing_checks": [e.check for e in diagnosis.evidence if not e.ok]},
        actor=f"diagnose-{diagnosis.scenario}",
    )
    logger = get_run_logger()
    logger.info("diagnose-%s: %s — %s", diagnosis.scenario, "FOUND" if diagnosis.found else "nothing found",
                diagnosis.finding)
    for s in diagnosis.suggestions:
        logger.info("suggested remediation: %s", _suggestion_line(s))
    return diagnosis


def run_name(scenario: str) -> Callable[[], str]:
    """Return a flow-run-name function: `diagnose-<scenario> <incident id>`."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters.get("params")
        incident = (params.get("incident_id") if isinstance(params, dict)
                    else getattr(params, "incident_id", None))
        return f"diagnose-{scenario} {incident or 'ad hoc'}"

    return name


# -- the app's /api/health body -------------------------------------------------------------------------------


def health_checks(health: AppHealth | None) -> dict[str, dict[str, Any]]:
    """Return the body's per-dependency checks (name → {status, latency_ms, error})."""
    checks = ((health.body if health else None) or {}).get("checks")
    if not isinstance(checks, dict):
        return {}
    return {str(k): v for k, v in checks.items() if isinstance(v, dict)}


def check_status(health: AppHealth | None, name: str) -> str | None:
    """Return one dependency's reported status ('healthy', 'degraded', 'unhealthy' …) or None."""
    check = health_checks(health).get(name)
    if check is None:
        return None
    return str(check.get("status", "")).lower() or None


def is_failing(health: AppHealth | None, name: str) -> bool:
    """Return True when the body reports the dependency unhealthy (not merely degraded)."""
    status = check_status(health, name)
    return status is not None and status not in HEALTHY and status != "degraded"


def note_health(inv: Investigation, health: AppHealth | None, *names: str) -> None:
    """Add the /api/health answer and the named dependency checks as evidence."""
    if health is None:
        return
    body = health.body or {}
    reported = body.get("status", "")
    deployment = body.get("deployment")
    inv.note("app /api/health", health.ok, f"HTTP {health.status_code}",
             f"status {reported or 'n/a'}, {health.latency_ms:.0f} ms"
             + (f", deployment {deployment}" if deployment else ""))
    checks = health_checks(health)
    for name in names:
        check = checks.get(name)
        if check is None:
            inv.note(f"health: {name}", True, "not reported", "the /api/health body has no such check")
            continue
        status = str(check.get("status", "")).lower()
        latency = check.get("latency_ms")
        detail = f"{latency} ms" if latency is not None else ""
        if check.get("error"):
            detail = f"{detail}; {check['error']}" if detail else str(check["error"])
        inv.note(f"health: {name}", status in HEALTHY, status or "unknown", detail)


# -- long-running queries (database and performance) ---------------------------------------------------------


def query_line(q: LongQuery) -> str:
    """Return one line naming a long-running query: pid, duration, application, waits, blockers, its text."""
    waits = f", waiting on {q.wait_event_type}/{q.wait_event}" if q.wait_event_type else ""
    blocked = f", blocked by {q.blocking_pids}" if q.blocking_pids else ""
    app = f" [{q.application_name}]" if q.application_name else ""
    return f"pid {q.pid} running {q.duration_s:.1f} s{app}{waits}{blocked}: {' '.join(q.query.split())[:120]}"


def culprit(queries: list[LongQuery]) -> LongQuery:
    """Return the query to cancel: the root blocker of the others when there is one, else the longest."""
    by_pid = {q.pid: q for q in queries}
    blockers = {pid for q in queries for pid in q.blocking_pids}
    roots = [by_pid[p] for p in blockers if p in by_pid and not by_pid[p].blocking_pids]
    if roots:
        return max(roots, key=lambda q: q.duration_s)
    return max(queries, key=lambda q: q.duration_s)


def suggest_cancel(q: LongQuery, min_duration_s: float) -> Suggestion:
    """Return the cancel-query suggestion for a runaway query (its pid; queries at least this long)."""
    return Suggestion(flow="cancel-query",
                      parameters={"pids": [q.pid], "min_duration_seconds": max(0.5, round(min_duration_s, 3))},
                      why=f"terminate pid {q.pid}, running {q.duration_s:.1f} s: {' '.join(q.query.split())[:80]}")
