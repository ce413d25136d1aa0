"""Scenario diagnostics against the drill stack: each scenario is diagnosed, named and published; a healthy stack
gives nothing found; probe failures become evidence; secrets never appear."""

from __future__ import annotations

import importlib
import json
import logging
import typing
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from pydantic import BaseModel, ValidationError

from flows._diagnosis import artifact_key
from flows.config_snapshot import take_snapshot
from flows.diagnose import diagnose, order_scenarios, run_diagnostic
from flows.diagnose_database import DiagnoseDatabaseParams
from runbook.clients.app import AppHealth
from runbook.drill import DrillStack, Fault
from runbook.models import Diagnosis, EventKind, Incident, Severity, TimelineEvent
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")

SLOW_DELAY = 1.5  # seconds each app query waits behind the runaway session
DIAGNOSTIC_SCENARIOS = ["database", "authentication", "payment", "performance", "configuration"]


def inject(stack: DrillStack, monkeypatch: pytest.MonkeyPatch, name: str, **params: Any) -> None:
    """Break the drill stack and apply the env changes the scenario returns."""
    for key, value in stack.inject(name, **params).items():
        monkeypatch.setenv(key, value)


async def new_incident() -> str:
    """Declare a drill incident in the store and return its id."""
    async with open_store() as store:
        incident, _ = await store.declare(Incident(title="drill: diagnose", severity=Severity.P1, drill=True),
                                          None, actor="test")
    return incident.id


async def diagnosis_events(incident_id: str) -> list[TimelineEvent]:
    """Return the incident's DIAGNOSIS events."""
    async with open_store() as store:
        return await store.timeline(incident_id, kind=EventKind.DIAGNOSIS)


async def artifact_rows(key: str) -> list[dict[str, Any]]:
    """Return the rows of the latest table artifact with that key."""
    async with get_client() as client:
        (artifact,) = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])))
    assert artifact.type == "table"
    data = artifact.data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def lower_response_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Use a policy whose response-time target (and long-query threshold) is 1 s, so a 1.5 s drill delay is slow."""
    path = tmp_path / "policy.yaml"
    path.write_text("key_metrics:\n  response_time_s: 1.0\n")
    monkeypatch.setenv("RUNBOOK_POLICY_FILE", str(path))


def suggestion_flows(d: Diagnosis) -> list[str]:
    """Return the flows a diagnosis suggests, in order, after checking each could be started as suggested."""
    for s in d.suggestions:
        if s.flow == "none":
            continue
        name = s.flow.replace("-", "_")
        fn = getattr(importlib.import_module(f"flows.{name}"), name)
        (model,) = [v for k, v in typing.get_type_hints(fn.fn).items() if k != "return"]
        assert set(s.parameters) <= set(model.model_fields), f"{s.flow}: unknown parameters {s.parameters}"
        model(**s.parameters, requested_by="test")
    return [s.flow for s in d.suggestions]


# -- a healthy stack ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", DIAGNOSTIC_SCENARIOS)
async def test_healthy_stack_finds_nothing(drill_env: DrillStack, scenario: str) -> None:
    """On a healthy stack every scenario diagnostic reports found=False."""
    result = await run_diagnostic(scenario, None)
    assert result.scenario == scenario
    assert result.found is False, result.finding
    assert result.suggestions == []


# -- each drill scenario lands in its diagnosis and names its cause -------------------------------------------


async def test_database_migration_names_the_migration(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration scenario names the applied migration (version + name) and suggests rolling that version back."""
    inject(drill_env, monkeypatch, "database-migration")
    state = drill_env.scenario_state["database-migration"]
    result = await run_diagnostic("database", None)
    assert result.found
    assert f"{state['version']} {state['name']}" in result.finding
    assert suggestion_flows(result) == ["database-rollback"]
    assert result.suggestions[0].parameters == {"versions": [state["version"]]}


async def test_bad_deploy_names_the_deployment_and_the_previous_one(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad-deploy scenario names the new deployment and the previous good one, and suggests a code rollback."""
    inject(drill_env, monkeypatch, "bad-deploy")
    state = drill_env.scenario_state["bad-deploy"]
    result = await run_diagnostic("performance", None)
    assert result.found
    assert state["deployment"] in result.finding and state["previous"] in result.finding
    assert suggestion_flows(result) == ["code-rollback"]
    assert result.suggestions[0].parameters == {"target_deployment_id": state["previous"]}


async def test_config_flag_names_the_flag(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config-flag scenario names the jurisdiction and the flag path, with its old and new value."""
    inject(drill_env, monkeypatch, "config-flag")
    result = await run_diagnostic("configuration", None)
    assert result.found
    assert "CA features.exam_engine" in result.finding
    assert '"standard_v2" → "quantum_v9"' in result.finding
    assert suggestion_flows(result) == ["config-rollback"]


async def test_config_flag_rollback_targets_the_last_good_snapshot(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a snapshot taken before the bad change, config-rollback is pointed at it and the flags only."""
    snapshot = await take_snapshot("before the drill")
    inject(drill_env, monkeypatch, "config-flag")
    result = await run_diagnostic("configuration", None)
    assert suggestion_flows(result) == ["config-rollback"]
    assert result.suggestions[0].parameters == {"restore_flags": True, "restore_env": False,
                                                "snapshot_id": snapshot.id}
    drift = next(e for e in result.evidence if e.check == "flags vs snapshot")
    assert drift.value == "1 differ" and "CA features.exam_engine" in drift.detail


async def test_webhook_secret_mismatch_is_reported(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stripe-webhook-secret scenario reports a secret mismatch and suggests the webhook check with repair."""
    inject(drill_env, monkeypatch, "stripe-webhook-secret")
    result = await run_diagnostic("payment", None)
    assert result.found
    assert "mismatch" in result.finding.lower()
    assert suggestion_flows(result) == ["webhook-check"]
    assert result.suggestions[0].parameters == {"repair_secret": True, "replay": True}


async def test_webhook_secret_never_appears(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Neither the endpoint's new secret nor the app's old one appears in the diagnosis, its artifact or the logs."""
    old = drill_env.vercel.env_var("STRIPE_WEBHOOK_SECRET").value  # type: ignore[union-attr]
    inject(drill_env, monkeypatch, "stripe-webhook-secret")
    new = drill_env.stripe.endpoint.secret
    incident = await new_incident()
    caplog.set_level(logging.DEBUG)
    # not the store driver's own chatter: its worker thread logs each operation, late ones onto the terminal
    caplog.set_level(logging.INFO, logger="aiosqlite")
    result = await run_diagnostic("payment", incident)
    rows = await artifact_rows(artifact_key("payment", incident))
    events = await diagnosis_events(incident)
    output = capsys.readouterr()
    texts = [result.model_dump_json(), json.dumps(rows), json.dumps([e.model_dump(mode="json") for e in events]),
             caplog.text, output.out, output.err]
    assert result.found and rows and events
    for secret in (old, new):
        assert secret.startswith("whsec_")
        assert not any(secret in text for text in texts)


async def test_auth_outage_names_the_variable(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The auth-outage scenario names the anon-key variable; config-rollback first, code-rollback as alternative."""
    inject(drill_env, monkeypatch, "auth-outage")
    previous = drill_env.scenario_state["auth-outage"]["previous"]
    result = await run_diagnostic("authentication", None)
    assert result.found
    wrong = drill_env.vercel.env_var("NEXT_PUBLIC_SUPABASE_ANON_KEY").value  # type: ignore[union-attr]
    assert "NEXT_PUBLIC_SUPABASE_ANON_KEY" in result.finding
    assert not any(key in result.model_dump_json() for key in (drill_env.project.anon_key, wrong))
    assert suggestion_flows(result) == ["config-rollback", "code-rollback"]
    assert result.suggestions[0].parameters["restore_env"] is True
    assert result.suggestions[1].parameters == {"target_deployment_id": previous}


async def test_slow_database_names_the_query(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The slow-database scenario lands in performance, names the runaway pid and suggests cancelling it."""
    lower_response_target(tmp_path, monkeypatch)
    inject(drill_env, monkeypatch, "slow-database", delay=SLOW_DELAY)
    pid = drill_env.scenario_state["slow-database"]["pid"]
    result = await run_diagnostic("performance", None)
    assert result.found
    assert f"pid {pid}" in result.finding
    assert suggestion_flows(result) == ["cancel-query"]
    assert result.suggestions[0].parameters["pids"] == [pid]


async def test_third_party_outage_names_openai(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third-party outage names OpenAI; nothing to run, maintenance mode as the optional workaround."""
    inject(drill_env, monkeypatch, "third-party-outage")
    result = await run_diagnostic("performance", None)
    assert result.found
    assert "OpenAI" in result.finding
    assert suggestion_flows(result) == ["none", "maintenance-mode"]
    assert result.suggestions[1].parameters == {"enabled": True}


# -- the dispatcher -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("drill", "params", "expected"), [
    ("database-migration", {}, "database"),
    ("bad-deploy", {}, "performance"),
    ("config-flag", {}, "configuration"),
    ("stripe-webhook-secret", {}, "payment"),
    ("auth-outage", {}, "authentication"),
    ("slow-database", {"delay": SLOW_DELAY}, "performance"),
    ("third-party-outage", {}, "performance"),
])
async def test_dispatcher_without_hint_lands_in_the_scenario(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, drill: str, params: dict[str, Any],
    expected: str,
) -> None:
    """Without a scenario hint the dispatcher returns the diagnosis of the scenario the drill broke."""
    lower_response_target(tmp_path, monkeypatch)
    inject(drill_env, monkeypatch, drill, **params)
    result = await diagnose(None, None)
    assert result.found, result.finding
    assert result.scenario == expected


async def test_dispatcher_with_hint_runs_that_scenario(drill_env: DrillStack) -> None:
    """With a hint the dispatcher runs only that scenario's diagnostic."""
    result = await diagnose("payment", None)
    assert result.scenario == "payment"
    assert not result.found


async def test_dispatcher_on_healthy_stack_finds_nothing(drill_env: DrillStack) -> None:
    """Without a hint on a healthy stack the dispatcher reports that no diagnostic identified a cause."""
    result = await diagnose(None, None)
    assert result.found is False
    assert result.scenario == "undetermined"
    assert [e.check for e in result.evidence] == [f"diagnose-{s}" for s in
                                                  ("database", "authentication", "configuration", "payment",
                                                   "performance")]


# -- publication, recording, robustness -----------------------------------------------------------------------


async def test_diagnosis_is_recorded_on_the_incident(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an incident id the diagnosis appends one DIAGNOSIS event with found, finding and suggestion."""
    inject(drill_env, monkeypatch, "config-flag")
    incident = await new_incident()
    result = await run_diagnostic("configuration", incident)
    events = await diagnosis_events(incident)
    assert len(events) == 1
    details = events[0].details
    assert details["found"] is True and details["finding"] == result.finding
    assert details["suggestion"]["flow"] == "config-rollback"


async def test_diagnosis_is_published_as_a_table_artifact(drill_env: DrillStack) -> None:
    """The evidence is published as a table artifact keyed by scenario and incident, one row per check."""
    incident = await new_incident()
    result = await run_diagnostic("database", incident)
    rows = await artifact_rows(f"diagnosis-database-{incident}")
    assert [r["check"] for r in rows] == [e.check for e in result.evidence]
    assert set(rows[0]) == {"check", "ok", "value", "detail"}


async def test_probe_failure_becomes_evidence(drill_env: DrillStack) -> None:
    """A probe that fails (Sentry answers 403) is evidence with its typed error, not a failed diagnosis."""
    drill_env.sentry.inject(Fault.error(403, times=None))
    result = await run_diagnostic("performance", None)
    sentry = next(e for e in result.evidence if e.check == "Sentry errors")
    assert sentry.ok is False
    assert sentry.detail.startswith("AuthError:") and "HTTP 403" in sentry.detail
    assert result.found is False


async def test_unconfigured_integration_is_not_a_cause(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a database URL the database diagnostic says so in its evidence and does not call it an outage."""
    monkeypatch.delenv("RUNBOOK_SUPABASE_DB_URL")
    result = await run_diagnostic("database", None)
    connectivity = next(e for e in result.evidence if e.check == "database connectivity")
    assert connectivity.ok is False and "RUNBOOK_SUPABASE_DB_URL" in connectivity.detail
    assert result.found is False


def test_incident_id_must_match_the_pattern() -> None:
    """A malformed incident id is rejected by the parameters model before anything runs."""
    with pytest.raises(ValidationError):
        DiagnoseDatabaseParams(incident_id="INC-1; drop table")


def test_degraded_database_orders_performance_first() -> None:
    """A slow (degraded) database check puts performance first; an unhealthy one puts database first."""
    def health(status: str) -> AppHealth:
        body = {"status": "degraded", "checks": {"database": {"status": status}, "auth": {"status": "healthy"}}}
        return AppHealth(status_code=200, ok=False, status="degraded", body=body, latency_ms=1.0)

    assert order_scenarios(health("degraded"))[0] == "performance"
    assert order_scenarios(health("unhealthy"))[0] == "database"


def test_every_diagnostic_has_one_parameters_model() -> None:
    """Each scenario flow takes exactly one pydantic parameters model with an optional incident id."""
    import importlib
    import typing

    for scenario in DIAGNOSTIC_SCENARIOS:
        module = importlib.import_module(f"flows.diagnose_{scenario}")
        fn = getattr(module, f"diagnose_{scenario}")
        assert fn.name == f"diagnose-{scenario}"
        hints = {k: v for k, v in typing.get_type_hints(fn.fn).items() if k != "return"}
        (model,) = hints.values()
        assert issubclass(model, BaseModel)
        assert model().incident_id is None  # type: ignore[call-arg]


# -- a read that failed is no evidence (issue 21: diagnosis under faults) ----------------------------------------


async def test_vendor_reads_down_make_the_performance_diagnosis_unknown_not_healthy(drill_env: DrillStack) -> None:
    """Vercel and the vendors' status pages answer 503: the diagnosis says the cause is unknown and names both
    reads, never "no recent bad deploy" or "third parties operational" from reads that failed."""
    drill_env.vercel.inject(Fault.error(503, times=None))
    drill_env.status_pages.inject(Fault.error(503, times=None))
    result = await run_diagnostic("performance", None)
    assert result.found is False and result.suggestions == []
    assert result.finding.startswith("Cause unknown: could not check "), result.finding
    assert "production deployments (" in result.finding and "status page: openai (" in result.finding
    assert "healthy" not in result.finding.split("What could be checked")[0]
    assert "third parties operational" not in result.finding and "no recent bad deploy" not in result.finding


async def test_an_env_read_that_failed_is_no_evidence_that_vercels_value_matches(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The auth check names the anon key while Vercel's env cannot be read: the finding names the variable and says
    Vercel's value is unknown, never "Vercel's value matches now", and suggests no redeploy from a failed read."""
    inject(drill_env, monkeypatch, "auth-outage")
    drill_env.vercel.inject(Fault.error(503, times=None))
    result = await run_diagnostic("authentication", None)
    assert result.found is True and "NEXT_PUBLIC_SUPABASE_ANON_KEY" in result.finding
    assert "Vercel's env could not be read" in result.finding and "is unknown" in result.finding, result.finding
    assert "matches now" not in result.finding
    assert [s.flow for s in result.suggestions] == ["none"], result.suggestions


async def test_every_read_answering_is_still_the_plain_all_clear(drill_env: DrillStack) -> None:
    """With every read answering, the healthy text stands alone: no "unknown", nothing named as not checked."""
    result = await run_diagnostic("performance", None)
    assert result.finding.startswith("Performance healthy") and "unknown" not in result.finding.lower()
