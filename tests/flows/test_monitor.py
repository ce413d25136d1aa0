"""The monitor flow against the drill stack: no noise when healthy, every scenario detected, flaps and gaps ignored."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

from flows.monitor import ARTIFACT_KEY, MonitorParams, MonitorResult, monitor
from runbook.drill import SCENARIOS, DrillStack, Fault
from runbook.models import EventKind, Incident, Severity, utcnow
from runbook.policy import Policy
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")

# scenario → (rule, severity, target, scenario hint of the incident)
EXPECTED: dict[str, tuple[str, Severity, str, str]] = {
    "database-migration": ("database_unavailable", Severity.P0, "database", "database"),
    "bad-deploy": ("application_down", Severity.P0, "app", "performance"),
    "config-flag": ("application_down", Severity.P0, "app", "configuration"),
    "stripe-webhook-secret": ("payment_processing_failed", Severity.P0, "stripe", "payment"),
    "auth-outage": ("authentication_failing", Severity.P1, "auth", "authentication"),
    "slow-database": ("database_degradation", Severity.P1, "database", "database"),
    "third-party-outage": ("third_party_degraded", Severity.P2, "openai", "performance"),
}
# Drill parameters that keep the suite fast: the runaway session delays each query 1.5 s instead of 6 s.
INJECT_PARAMS: dict[str, dict[str, Any]] = {"slow-database": {"delay": 1.5, "threshold": 1.0}}


def use_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, monitoring: dict[str, Any] | None = None,
               thresholds: dict[str, float] | None = None) -> None:
    """Write a policy file with these monitoring settings and rule thresholds and point RUNBOOK_POLICY_FILE at it."""
    data: dict[str, Any] = {"monitoring": monitoring or {}}
    if thresholds:
        rules = [r.model_dump(mode="json") for r in Policy().alert_rules]
        for rule in rules:
            rule["threshold"] = thresholds.get(rule["name"], rule["threshold"])
        data["alert_rules"] = rules
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("RUNBOOK_POLICY_FILE", str(path))


# The traffic tests judge traffic alone. On a loaded machine the app's own profiles query can take over 500 ms, which
# the monitor rightly calls database_degradation, a cause rule that masks the traffic rules for that cycle (seen in
# CI: the spike's first cycle masked, the second breached, too late for a two-cycle run). These thresholds keep
# a busy machine's slowness out of a test about traffic; the masking itself is tested on its own.
MACHINE_SLOWNESS_IS_NOT_THE_SUBJECT = {"database_degradation": 60_000.0, "slow_response_time": 60.0}


def inject(stack: DrillStack, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Break the stack with a scenario and apply its env changes to this test."""
    for key, value in stack.inject(name, **INJECT_PARAMS.get(name, {})).items():
        monkeypatch.setenv(key, value)


async def run(cycles: int = 1) -> MonitorResult:
    """Run the monitor without starting any response flow."""
    return await monitor(MonitorParams(respond="none", cycles=cycles, interval_seconds=0))


async def incidents() -> list[Incident]:
    """Return every incident in the store."""
    async with open_store() as store:
        return await store.list()


async def test_healthy_stack_declares_nothing(drill_env: DrillStack) -> None:
    """Three cycles over a healthy stack declare nothing, show no gap and report 100 % uptime."""
    result = await run(cycles=3)
    assert result.declared == [] and await incidents() == [], [c.breaches for c in result.cycles]
    assert all(c.gaps == {} for c in result.cycles), [c.gaps for c in result.cycles]
    assert result.uptime_pct == 100.0 and result.uptime_ok is True and result.uptime_samples == 3


async def traffic(stack: DrillStack, requests: int = 40) -> list[int]:
    """Send users' requests to the app's home page (the monitor's own probes alone are few); return the statuses."""
    async with httpx.AsyncClient(base_url=stack.urls["app"], timeout=10) as http:
        return [(await http.get("/")).status_code for _ in range(requests)]


async def test_healthy_stack_with_traffic_has_no_errors(drill_env: DrillStack) -> None:
    """Two cycles over a healthy stack serving traffic measure a 0 % error rate and declare nothing."""
    await traffic(drill_env)
    result = await run(cycles=2)
    rows = {(r["metric"], r["target"]): r for r in result.cycles[-1].rows}
    assert (rows[("error_rate_pct", "app")]["value"], rows[("error_rate_pct", "app")]["state"]) == ("0", "ok")
    assert result.declared == [] and await incidents() == []


async def test_high_error_rate_is_detected_within_two_cycles(drill_env: DrillStack) -> None:
    """A fifth of the app's requests failing while /api/health stays 200 opens one P1 high_error_rate incident."""
    drill_env.app.fail_fraction = 0.2
    assert (await traffic(drill_env)).count(500) == 8
    result = await run(cycles=2)
    assert [(d.rule, d.target, d.severity) for d in result.declared] == [("high_error_rate", "app", "P1")]
    (incident,) = await incidents()
    assert incident.severity is Severity.P1 and incident.fingerprint == "monitor:high_error_rate:app"
    rows = {(r["metric"], r["target"]): r for r in result.cycles[-1].rows}
    assert rows[("app_up", "app")]["state"] == "ok" and float(rows[("error_rate_pct", "app")]["value"]) > 5


async def test_errors_left_in_the_window_after_a_recovery_open_no_second_incident(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a bad deploy is repaired, its errors still in Sentry's window belong to the open application_down."""
    inject(drill_env, monkeypatch, "bad-deploy")
    await traffic(drill_env, 10)
    first = await run(cycles=2)
    drill_env.repair("bad-deploy")
    after = await run(cycles=2)
    assert [d.rule for d in first.declared] == ["application_down"] and after.declared == []
    rows = {(r["metric"], r["target"]): r for r in after.cycles[-1].rows}
    assert rows[("error_rate_pct", "app")]["state"] == "masked"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_scenario_is_detected_within_two_cycles(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scenario: str
) -> None:
    """Each drill scenario opens exactly one incident, of the expected rule and severity, by the second cycle."""
    rule, severity, target, hint = EXPECTED[scenario]
    # slow-database: a 1 s response-time rule so that slow responses breach too and must be attributed
    use_policy(tmp_path, monkeypatch, thresholds={"slow_response_time": 1.0})
    inject(drill_env, monkeypatch, scenario)
    result = await run(cycles=2)
    assert [(d.rule, d.target, d.severity) for d in result.declared] == [(rule, target, severity.value)]
    (incident,) = await incidents()
    assert incident.severity is severity and incident.fingerprint == f"monitor:{rule}:{target}"
    assert incident.scenario == hint and incident.source == "monitor"


async def test_continuing_breach_keeps_one_incident(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A breach that goes on over three monitor runs stays one open incident."""
    inject(drill_env, monkeypatch, "bad-deploy")
    first = await run(cycles=2)
    later = [await run() for _ in range(2)]
    assert len(first.declared) == 1 and all(r.declared == [] for r in later)
    assert len(await incidents()) == 1


async def test_recovery_is_noted_once(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the breach clears, the open incident's timeline gets one recovery_observed event."""
    inject(drill_env, monkeypatch, "config-flag")
    (declared,) = (await run(cycles=2)).declared
    drill_env.repair("config-flag")
    after = await run(cycles=2)
    assert after.cycles[0].recovered == [declared.incident_id] and after.cycles[1].recovered == []
    async with open_store() as store:
        events = await store.timeline(declared.incident_id, kind=EventKind.RECOVERY_OBSERVED)
    assert len(events) == 1 and events[0].details["rule"] == "application_down"


async def test_flapping_endpoint_opens_at_most_one_incident(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/api/health answering 503 every other cycle breaches but never holds for two cycles in a row."""
    breaches = 0
    for cycle in range(4):
        if cycle % 2 == 0:
            drill_env.app.inject(Fault.error(503, times=1, path="/api/health"))
        result = await run()
        breaches += len(result.cycles[0].breaches)
    assert breaches == 2
    assert len(await incidents()) <= 1


@pytest.mark.parametrize("fault", ["refuse", "hang"])
async def test_unreachable_sentry_is_a_monitoring_gap(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fault: str
) -> None:
    """Sentry refusing connections or hanging past the probe timeout is a persistent gap, never an app incident."""
    use_policy(tmp_path, monkeypatch, monitoring={"probe_timeout_s": 2.0})
    drill_env.sentry.inject(Fault.refuse() if fault == "refuse" else Fault.hang(seconds=30))
    result = await run(cycles=2)
    assert "sentry" in result.gaps and result.persistent_gaps == ["sentry"]
    rows = {(r["metric"], r["target"]): r for r in result.cycles[-1].rows}
    assert rows[("error_rate_pct", "app")]["state"] == "gap" and rows[("app_up", "app")]["state"] == "ok"
    assert result.declared == [] and await incidents() == []


async def test_breach_emits_a_prefect_event(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A breaching cycle emits runbook.monitor.breach for resource runbook.monitor.<rule>.<target>."""
    since = utcnow() - timedelta(seconds=1)
    inject(drill_env, monkeypatch, "third-party-outage")
    await run()
    resource = "runbook.monitor.third_party_degraded.openai"
    event_filter = EventFilter(occurred=EventOccurredFilter(since=since), event=EventNameFilter(
        name=["runbook.monitor.breach"]), resource=EventResourceFilter(id=[resource]))
    events: list[Any] = []
    async with get_client() as client:
        for _ in range(50):  # events reach the server asynchronously
            events = (await client.read_events(filter=event_filter, limit=10)).events
            if events:
                break
            await asyncio.sleep(0.2)
    assert events and events[0].payload["rule"] == "third_party_degraded"


async def test_cycle_table_is_published(drill_env: DrillStack) -> None:
    """Each cycle publishes its measurements (metric, value, threshold, state) as the monitor-cycle table."""
    result = await run()
    async with get_client() as client:
        (artifact,) = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[ARTIFACT_KEY])))
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert rows == result.cycles[-1].rows
    assert {"metric", "value", "threshold", "state"} <= set(rows[0])
    assert {r["metric"] for r in rows} >= {"app_up", "database_up", "response_time_s", "query_time_ms",
                                           "stripe_failed_deliveries", "error_rate_pct", "uptime_pct"}


async def test_uptime_counts_failed_cycles(drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """One healthy and one failed cycle give 50 % uptime, below the 99.9 % target."""
    await run()
    inject(drill_env, monkeypatch, "bad-deploy")
    result = await run()
    assert result.uptime_pct == 50.0 and result.uptime_samples == 2 and result.uptime_ok is False


async def failed_logins(stack: DrillStack, attempts: int = 60) -> list[int]:
    """Try to log in with a bad token again and again (a brute-force pattern); return the statuses."""
    async with httpx.AsyncClient(base_url=stack.urls["app"], timeout=10) as http:
        headers = {"Authorization": "Bearer not-a-valid-session-token"}
        return [(await http.post("/api/auth/profile", headers=headers)).status_code for _ in range(attempts)]


async def test_failed_login_burst_raises_a_security_event(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A burst of failed logins above the policy's per-minute threshold opens one P2 security_event incident."""
    use_policy(tmp_path, monkeypatch, monitoring={"auth_failures_per_minute": 20},
               thresholds=MACHINE_SLOWNESS_IS_NOT_THE_SUBJECT)
    assert set(await failed_logins(drill_env)) == {401}
    result = await run(cycles=2)
    assert [(d.rule, d.target, d.severity) for d in result.declared] == [("security_event", "auth", "P2")]
    (incident,) = await incidents()
    assert incident.severity is Severity.P2 and incident.fingerprint == "monitor:security_event:auth"
    rows = {(r["metric"], r["target"]): r for r in result.cycles[-1].rows}
    assert float(rows[("security_events", "auth")]["value"]) >= 60 and rows[("auth_up", "auth")]["state"] == "ok"


async def test_traffic_spike_after_a_baseline_raises_unusual_traffic(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Steady traffic teaches the baseline; a request rate far above it then opens one P2 unusual_traffic incident."""
    use_policy(tmp_path, monkeypatch, monitoring={"traffic_window_minutes": 1, "traffic_baseline_min_samples": 3},
               thresholds=MACHINE_SLOWNESS_IS_NOT_THE_SUBJECT)
    await traffic(drill_env, 40)
    learning = await run(cycles=3)
    assert learning.declared == [], [c.breaches for c in learning.cycles]
    await traffic(drill_env, 400)
    result = await run(cycles=2)
    seen = [[(r["metric"], r["target"], r["state"], r["detail"]) for r in c.rows
             if r["metric"] in ("request_rate_per_minute", "traffic_anomaly") or r["state"] in ("gap", "breach")]
            for c in learning.cycles + result.cycles]
    assert [(d.rule, d.target, d.severity) for d in result.declared] == [("unusual_traffic", "app", "P2")], seen
    (incident,) = await incidents()
    assert incident.severity is Severity.P2 and incident.fingerprint == "monitor:unusual_traffic:app"


async def usage(stack: DrillStack, home: int, profile: int) -> None:
    """Students use two features: the home page, and their profile while signed in."""
    headers = {"Authorization": f"Bearer {stack.user_token()}"}
    async with httpx.AsyncClient(base_url=stack.urls["app"], timeout=10) as http:
        for _ in range(home):
            assert (await http.get("/")).status_code == 200
        for _ in range(profile):
            assert (await http.get("/api/auth/profile", headers=headers)).status_code == 200


async def test_feature_that_stops_being_used_raises_feature_usage_anomaly(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The profile's share of the requests collapses while the total holds: one P3 feature_usage_anomaly, naming it."""
    use_policy(tmp_path, monkeypatch, monitoring={"traffic_window_minutes": 1, "traffic_baseline_min_samples": 3,
                                                 "feature_min_requests": 20},
               thresholds=MACHINE_SLOWNESS_IS_NOT_THE_SUBJECT)
    await usage(drill_env, home=30, profile=20)
    learning = await run(cycles=4)  # three cycles learn the usual mix, the fourth judges it
    assert learning.declared == [], [c.breaches for c in learning.cycles]
    states = [{(r["metric"], r["target"]): r for r in c.rows}[("feature_anomaly", "features")]["state"]
              for c in learning.cycles]
    assert states == ["n/a", "n/a", "n/a", "ok"], learning.cycles[-1].rows
    drill_env.sentry.age(120)  # two minutes go by: the one-minute window holds only what follows
    await usage(drill_env, home=50, profile=0)
    result = await run(cycles=2)
    assert [(d.rule, d.target, d.severity) for d in result.declared] == [("feature_usage_anomaly", "features", "P3")]
    (incident,) = await incidents()
    assert incident.severity is Severity.P3 and incident.fingerprint == "monitor:feature_usage_anomaly:features"
    rows = {(r["metric"], r["target"]): r for r in result.cycles[-1].rows}
    assert rows[("request_rate_per_minute", "app")]["state"] == "ok"  # the total held: no unusual_traffic
    assert rows[("feature_anomaly", "features")]["state"] == "breach"
    assert "/api/auth/profile" in rows[("feature_anomaly", "features")]["detail"]


async def test_outage_raises_no_traffic_or_security_incident(
    drill_env: DrillStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An auth outage fails every login: that is authentication_failing alone, not a security event or a traffic one."""
    use_policy(tmp_path, monkeypatch, monitoring={"auth_failures_per_minute": 5, "traffic_window_minutes": 1,
                                                 "traffic_baseline_min_samples": 3})
    await traffic(drill_env, 40)
    await run(cycles=3)
    inject(drill_env, monkeypatch, "auth-outage")
    await failed_logins(drill_env, 30)
    await traffic(drill_env, 400)
    result = await run(cycles=2)
    assert [d.rule for d in result.declared] == ["authentication_failing"]
