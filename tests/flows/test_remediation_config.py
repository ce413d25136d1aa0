"""config-snapshot and config-rollback against the drill: flag and env restores, diff, secrets kept out of files."""

import json

import pytest

from flows.config_rollback import ConfigRollbackParams, config_rollback
from flows.config_snapshot import ConfigSnapshotParams, config_snapshot, list_snapshots
from runbook.drill import DrillStack
from tests.flows.remediation_support import decide, drill_fixture, new_incident  # noqa: F401 - a fixture


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
