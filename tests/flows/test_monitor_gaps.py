"""Blind monitoring pages a human (issue 19): a source the monitor cannot measure for `monitoring.gap_cycles` cycles
becomes one P2 monitoring_gap incident naming the blind rules, resolved by the monitor once it measures again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.monitor import MonitorParams, MonitorResult, monitor
from runbook.drill import DrillStack
from runbook.models import Severity, Status
from runbook.monitoring import GAP_RULE
from runbook.policy import Policy
from runbook.store import open_store
from tests.paging import paged_roles

pytestmark = pytest.mark.usefixtures("prefect_harness")

# A loaded machine's slow profiles query is database_degradation (a P1 whose inline response would run here); the
# subject is the gap, so the thresholds that measure the machine's speed are out of reach.
SLOWNESS = {"database_degradation": 60_000.0, "slow_response_time": 60.0}


@pytest.fixture(name="policy")
def policy_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the default policy with the machine-speed thresholds raised."""
    rules = [r.model_dump(mode="json") for r in Policy().alert_rules]
    for rule in rules:
        rule["threshold"] = SLOWNESS.get(rule["name"], rule["threshold"])
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"alert_rules": rules}))
    monkeypatch.setenv("RUNBOOK_POLICY_FILE", str(path))


async def run(cycles: int) -> MonitorResult:
    """Run the monitor's cycles back to back; a declared incident's response runs inline (pages, Slack)."""
    return await monitor(MonitorParams(respond="inline", cycles=cycles, interval_seconds=0))


def gap_declarations(result: MonitorResult) -> list[str]:
    """Return the monitoring_gap incidents a run declared or attached to."""
    return [d.incident_id for d in result.declared if d.rule == GAP_RULE]


async def test_a_revoked_sentry_token_pages_once_and_resolves_when_it_works_again(
        drill_env: DrillStack, policy: None) -> None:
    """Sentry refusing the token for 5 cycles declares one P2 monitoring_gap incident that names the 401 and the
    blind rules and pages on-call once; a sixth cycle adds nothing; the first cycle that measures resolves it."""
    token = drill_env.sentry.token
    drill_env.sentry.token = "rotated-elsewhere"  # the runbook's token is no longer valid: Sentry answers 401
    try:
        early = await run(cycles=4)
        assert gap_declarations(early) == [] and paged_roles(drill_env) == []
        assert [c.gaps.get("sentry", "") for c in early.cycles][-1].find("401") >= 0
        held = await run(cycles=2)
        [incident_id] = gap_declarations(held)
    finally:
        drill_env.sentry.token = token
    async with open_store() as store:
        [incident] = await store.list()
    assert incident.id == incident_id and incident.severity is Severity.P2
    assert incident.fingerprint == f"monitor:{GAP_RULE}:sentry"
    assert incident.title.startswith("the monitor cannot measure Sentry: 401 Unauthorized")
    for rule in ("high_error_rate", "unusual_traffic", "security_event", "feature_usage_anomaly"):
        assert rule in incident.summary, incident.summary
    assert len(paged_roles(drill_env)) == 1
    healed = await run(cycles=1)
    assert healed.cycles[0].recovered == [incident_id] and healed.cycles[0].gaps == {}
    async with open_store() as store:
        assert (await store.get(incident_id)).status is Status.RESOLVED
        assert len(await store.list()) == 1
    assert len(paged_roles(drill_env)) == 1
    drill_env.sentry.token = "rotated-elsewhere"  # blind again within the reopen window: the same incident
    try:
        again = await run(cycles=5)
    finally:
        drill_env.sentry.token = token
    assert gap_declarations(again) == [incident_id]
    async with open_store() as store:
        assert (await store.get(incident_id)).status.is_open and len(await store.list()) == 1
    assert len(paged_roles(drill_env)) == 2  # paged again on the reopen
