"""config-snapshot and config-rollback against the drill: flag and env restores, diff, secrets kept out of files,
a re-run after a run killed before its redeploy."""

import asyncio
import contextlib
import json

import pytest
from prefect.flow_runs import aresume_flow_run

from flows.config_rollback import ConfigRollbackParams, config_rollback
from flows.config_snapshot import ConfigSnapshotParams, config_snapshot, list_snapshots
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from tests.flows.remediation_support import (  # noqa: F401 - drill_fixture is a fixture
    decide,
    drill_fixture,
    new_incident,
    paused_run,
    plan_hash_of,
)


def flags(stack: DrillStack) -> dict[str, str]:
    """Return jurisdiction → features JSON."""
    return {r["jurisdiction"]: r["features"] for r in stack.query(
        "select jurisdiction, features::text as features from public.jurisdiction_configs")}


def env_writes(stack: DrillStack) -> list[str]:
    """Return the env write requests the Vercel stand-in received."""
    return [f"{r.method} {r.path}" for r in stack.vercel.requests
            if "/env" in r.path and r.method in ("POST", "PATCH", "DELETE")]


async def test_bad_flag_is_restored_from_the_snapshot(drill: DrillStack) -> None:
    """A flag broken after the snapshot is restored in the database and the config check recovers."""
    await config_snapshot(ConfigSnapshotParams())
    drill.inject("config-flag")
    assert not drill.healthy("config-flag")
    incident = await new_incident()
    result = await decide(config_rollback(ConfigRollbackParams(incident_id=incident, verify_within_seconds=20)),
                          incident)
    assert result.outcome == "verified", result.detail
    assert any("jurisdiction_configs.CA.features.exam_engine" in step for step in result.plan.steps)
    assert drill.healthy("config-flag")


async def test_wrong_env_var_is_restored_and_redeployed(drill: DrillStack) -> None:
    """A wrong anon key set after the snapshot is restored on Vercel, redeployed, and auth recovers."""
    await config_snapshot(ConfigSnapshotParams())
    drill.inject("auth-outage")
    assert not drill.healthy("auth-outage")
    incident = await new_incident()
    result = await decide(config_rollback(ConfigRollbackParams(
        incident_id=incident, verify_scenario="authentication", verify_within_seconds=20)), incident)
    assert result.outcome == "verified", result.detail
    assert result.plan.state["env_diff"][0]["key"] == "NEXT_PUBLIC_SUPABASE_ANON_KEY"
    assert drill.healthy("auth-outage")


async def test_snapshot_file_holds_no_secret_values(drill: DrillStack) -> None:
    """The snapshot file names env keys and fingerprints but never a value."""
    snapshot = await config_snapshot(ConfigSnapshotParams(reason="test"))
    [saved] = [s for s in list_snapshots() if s.id == snapshot.id]
    text = json.dumps(saved.model_dump(mode="json"))
    assert "NEXT_PUBLIC_SUPABASE_ANON_KEY" in text and saved.secret_block
    for value in (drill.project.anon_key, drill.project.service_role_key, drill.openai.api_key):
        assert value not in text


async def test_rejection_changes_nothing(drill: DrillStack) -> None:
    """A rejected config rollback writes neither the flags nor the env."""
    await config_snapshot(ConfigSnapshotParams())
    drill.inject("config-flag")
    broken = flags(drill)
    incident = await new_incident()
    result = await decide(config_rollback(ConfigRollbackParams(incident_id=incident)), incident,
                          decision="reject")
    assert result.outcome == "rejected"
    assert flags(drill) == broken and env_writes(drill) == []


async def test_dry_run_shows_the_diff_and_changes_nothing(drill: DrillStack) -> None:
    """A dry run names the changed flag path and changes nothing."""
    await config_snapshot(ConfigSnapshotParams())
    drill.inject("config-flag")
    broken = flags(drill)
    result = await config_rollback(ConfigRollbackParams(dry_run=True))
    assert result.outcome == "dry_run"
    assert [d["path"] for d in result.plan.state["flag_diff"]] == ["jurisdiction_configs.CA.features.exam_engine"]
    assert flags(drill) == broken and env_writes(drill) == []


async def test_flag_changed_during_approval_aborts(drill: DrillStack) -> None:
    """A flag changed by someone else while the approval waits makes the plan stale: nothing is restored."""
    await config_snapshot(ConfigSnapshotParams())
    drill.inject("config-flag")
    incident = await new_incident()

    def someone_else_edits() -> None:
        drill.execute("update public.jurisdiction_configs set enabled = false where jurisdiction = 'TX'")

    result = await decide(config_rollback(ConfigRollbackParams(incident_id=incident)), incident,
                          meanwhile=someone_else_edits)
    assert result.outcome == "plan_changed"
    assert "quantum_v9" in flags(drill)["CA"]


async def test_no_snapshot_before_the_incident_is_refused(drill: DrillStack) -> None:
    """Without a snapshot older than the incident the rollback refuses to guess."""
    incident = await new_incident()
    await config_snapshot(ConfigSnapshotParams(reason="after the incident"))
    with pytest.raises(Exception, match="no config snapshot"):
        await config_rollback(ConfigRollbackParams(incident_id=incident))


async def test_rerun_after_a_run_killed_before_its_redeploy_redeploys(drill: DrillStack) -> None:
    """A run killed after restoring the env and before its redeploy leaves production on the wrong key: the re-run
    plans the redeploy it missed (not 'nothing to do'), and auth recovers with the env restored once."""
    await config_snapshot(ConfigSnapshotParams())
    drill.inject("auth-outage")
    incident = await new_incident()
    params = ConfigRollbackParams(incident_id=incident, verify_scenario="authentication", verify_within_seconds=20,
                                  approval_timeout_minutes=1)
    # The kill lands between the env restore and the redeploy: its lookup of the production deployment hangs.
    lookup = f"/v13/deployments/{drill.vercel.production().id}"
    drill.vercel.inject(Fault.hang(60, times=1, path=lookup))
    first = asyncio.ensure_future(config_rollback(params))
    try:
        run = None
        while run is None and not first.done():
            run = await paused_run(incident, timeout=0.5)
        assert run is not None, "the first run never asked for approval"
        await aresume_flow_run(run.id, run_input={"decision": "approve", "approver": "bob", "reason": "go",
                                                  "plan_hash": await plan_hash_of(run)})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not [r for r in drill.vercel.requests if r.path == lookup and r.fault == "hang"]:
            assert loop.time() < deadline and not first.done(), "the approved rollback never started its redeploy"
            await asyncio.sleep(0.1)
    finally:
        first.cancel()  # the process dies before its redeploy request: Vercel builds nothing
        with contextlib.suppress(BaseException):
            await first
        drill.vercel.clear_faults()
    written = env_writes(drill)
    assert written and redeploys(drill) == [] and not drill.healthy("auth-outage")
    again = await decide(config_rollback(params), incident)
    assert again.outcome == "verified", again.detail
    assert again.plan is not None and again.plan.state["redeploy_pending_from"] == str(run.id)
    assert again.plan.state["env_diff"] == []
    assert env_writes(drill) == written  # the env is not restored twice
    assert len(redeploys(drill)) == 1 and drill.healthy("auth-outage")
    third = await config_rollback(params)
    assert third.outcome == "nothing_to_do", third.detail
    assert len(redeploys(drill)) == 1


def redeploys(stack: DrillStack) -> list[str]:
    """Return the redeploy requests the Vercel stand-in received."""
    return [r.path for r in stack.vercel.requests if r.method == "POST" and r.path == "/v13/deployments"]
