"""`runbook drill`: every scenario runs end to end on the drill stack and restores health."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.drill import DRILL_POLICY, DrillResult, register_deployments, run_one, shared_store_url
from runbook.drill import DrillStack
from runbook.drill.scenarios import SCENARIOS
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")

# The rule of the runbook's alerting rules that must fire for each fault (its severity is the scenario's).
EXPECTED_RULES = {
    "database-migration": {"database_unavailable"},
    "bad-deploy": {"application_down"},
    "config-flag": {"application_down"},
    "stripe-webhook-secret": {"payment_processing_failed"},
    "auth-outage": {"authentication_failing"},
    "slow-database": {"database_degradation", "slow_response_time"},
    "third-party-outage": {"third_party_degraded"},
}
EXPECTED_REMEDIATION = {
    "database-migration": "database-rollback",
    "bad-deploy": "code-rollback",
    "config-flag": "config-rollback",
    "stripe-webhook-secret": "webhook-check",
    "auth-outage": "config-rollback",
    "slow-database": "cancel-query",
    "third-party-outage": None,
}


@pytest.fixture(scope="module")
async def registered(prefect_harness: None) -> None:
    """Register the prefect.yaml deployments once (follow-ups are scheduled against them)."""
    await register_deployments()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_drill_scenario_end_to_end(scenario: str, drill_stack: DrillStack, registered: None,
                                         tmp_path: Path) -> None:
    """The fault is detected, declared, paged, diagnosed, remediated with approval, verified, resolved, reported."""
    # slow-database with a 2 s lock wait instead of 6 s: the database_degradation rule (> 500 ms) fires the same.
    params = {"delay": 2.0} if scenario == "slow-database" else None
    result: DrillResult = await run_one(drill_stack, scenario, "auto", tmp_path, params)
    assert result.error is None, result.error
    assert result.health_restored and result.resolved
    assert result.detected_after_cycles is not None and result.detected_after_cycles <= 3
    assert result.severity == SCENARIOS[scenario].severity and result.rule in EXPECTED_RULES[scenario]
    assert result.statuspage_statuses[0] == "investigating" and result.statuspage_statuses[-1] == "resolved"
    assert result.report_path and Path(result.report_path).is_file()
    assert {f["kind"] for f in result.follow_ups} == {"review-24h", "follow-up-1w"}
    assert result.mttr_s is not None and result.mttr_s > 0
    expected = EXPECTED_REMEDIATION[scenario]
    if expected:
        assert result.remediation and result.remediation.startswith(expected)
        assert [a["decision"] for a in result.approvals] == ["approve"]
    if result.severity in {"P0", "P1"}:
        assert result.pages_sent >= 1 and result.mtta_s is not None
        # on-call acknowledged in PagerDuty (the stand-in's app), and its V3 webhook reached the stack's intake
        assert any("acknowledged: Acknowledged by Dana Drill via pagerduty" in a for a in result.actions), \
            result.actions
    # The incident is in the one store the other commands read (the state dir above drills/), marked a drill.
    async with open_store(shared_store_url(tmp_path, {})) as store:
        recorded = await store.get(result.incident_id or "")
        assert recorded.drill and recorded.status.value == "resolved"
        assert recorded.id not in {i.id for i in await store.list(include_drill=False)}


@pytest.mark.slow
def test_runbook_drill_from_a_terminal_is_clean(tmp_path: Path) -> None:
    """`runbook drill` as a person runs it (no PREFECT_API_URL: its own Prefect server on an embedded PostgreSQL):
    it passes, shows its stages while it starts, prints no traceback, and names the log that has the details."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOK_"))}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("runbook")), "drill", "database-migration", "--json",
         "--state-dir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is the JSON alone; progress went to stderr
    assert result["scenario"] == "database-migration" and result["health_restored"] and result["ok"]
    for stage in ("starting a temporary Prefect server on an embedded PostgreSQL", "Prefect server ready",
                  "injecting the fault", "declared after", "passed in"):
        assert stage in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    logs = list((tmp_path / "drills").glob("drill-*.log"))
    assert len(logs) == 1 and str(logs[0]) in done.stderr and logs[0].stat().st_size > 0


async def test_drill_approves_through_slack(drill_stack: DrillStack, registered: None, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`runbook drill --approve slack`: the fix is approved by clicking Approve in Slack (signed, via the intake),
    also when the person running the drill has a policy file of their own (with approvers of their own)."""
    own = tmp_path / "my-policy.yaml"
    own.write_text(DRILL_POLICY + "approvers:\n  U0BEN: {name: Ben, may_approve: [code-rollback]}\n")
    monkeypatch.setenv("RUNBOOK_POLICY_FILE", str(own))
    result: DrillResult = await run_one(drill_stack, "bad-deploy", "slack", tmp_path)
    assert result.error is None, result.error
    assert result.health_restored and result.resolved
    assert [(a["decision"], a["approver"], a["via"], a["identity"]) for a in result.approvals] == [
        ("approve", "drill-approver", "slack", "U0DRILLAPPROVER")]
