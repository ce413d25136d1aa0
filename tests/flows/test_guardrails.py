"""The guardrails on remediations (issue 19): the circuit breaker and the freeze, against the drill stack."""

from __future__ import annotations

from datetime import timedelta

from flows.maintenance_mode import MaintenanceModeParams, maintenance_mode
from runbook.clock import ManualClock, use_clock
from runbook.drill import DrillStack
from runbook.models import EventKind, utcnow
from runbook.settings import get_settings
from runbook.store import open_store
from tests.flows.remediation_support import decide, drill_fixture, event_details, new_incident  # noqa: F401
from tests.paging import paged_roles


def flag(stack: DrillStack) -> bool:
    """Return the maintenance_mode flag."""
    return bool(stack.query("select enabled from public.app_flags where name = 'maintenance_mode'")[0]["enabled"])


async def toggle(enabled: bool) -> tuple[str, object]:
    """Turn maintenance mode on or off for a fresh incident, approved; return (incident, result)."""
    incident = await new_incident()
    result = await decide(maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=enabled,
                                                                 verify_within_seconds=10)), incident)
    return incident, result


async def test_the_fourth_remediation_in_an_hour_is_refused_and_pages(drill: DrillStack) -> None:
    """Three applied remediations in an hour pass; the fourth is refused with the breaker's reason on its timeline,
    on-call is paged once, and an hour later on the runbook clock the breaker lets one through again."""
    with use_clock(ManualClock(utcnow())) as now:
        assert isinstance(now, ManualClock)
        for enabled in (True, False, True):
            _, result = await toggle(enabled)
            assert result.outcome == "verified", result.detail  # type: ignore[attr-defined]
            now.advance(timedelta(minutes=10))
        incident, fourth = await toggle(False)
        assert fourth.outcome == "refused" and "circuit breaker" in fourth.detail  # type: ignore[attr-defined]
        assert flag(drill), "the refused remediation changed the flag"
        [aborted] = await event_details(incident, EventKind.REMEDIATION_ABORTED)
        assert aborted["reason"] == "circuit_breaker" and aborted["paged"] is True
        assert await event_details(incident, EventKind.APPROVAL_REQUESTED) == []  # refused before anyone is asked
        assert len(paged_roles(drill)) == 1
        _, fifth = await toggle(False)  # still open: refused again, on-call not paged twice
        assert fifth.outcome == "refused" and len(paged_roles(drill)) == 1  # type: ignore[attr-defined]
        async with open_store() as store:
            breaker = await store.get(aborted["breaker_incident"])
        assert breaker.severity.value == "P2" and "circuit breaker" in breaker.title
        now.advance(timedelta(minutes=31))  # the first of the three is more than an hour old
        _, later = await toggle(False)
        assert later.outcome == "verified", later.detail  # type: ignore[attr-defined]
        assert not flag(drill)


async def test_the_same_action_on_the_same_target_runs_once_per_incident(drill: DrillStack) -> None:
    """Maintenance on, off, then on again for one incident: the second 'on' is refused by the breaker."""
    incident = await new_incident()
    for enabled, outcome in ((True, "verified"), (False, "verified"), (True, "refused")):
        result = await decide(maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=enabled,
                                                                     verify_within_seconds=10)), incident)
        assert result.outcome == outcome, result.detail
    assert "already applied 1 time(s)" in result.detail and not flag(drill)


async def test_a_freeze_ends_a_remediation_as_a_plan_only(drill: DrillStack) -> None:
    """While every environment is frozen a remediation publishes its plan, changes nothing and says why; after
    the unfreeze it acts again."""
    async with open_store() as store:
        await store.freeze("*", reason="exam day: no changes", by="ana")
    incident = await new_incident()
    result = await maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=True))
    assert result.outcome == "frozen" and result.plan is not None and not result.plan.noop
    assert "exam day: no changes" in result.detail and "ana" in result.detail and not flag(drill)
    [aborted] = await event_details(incident, EventKind.REMEDIATION_ABORTED)
    assert aborted["reason"] == "frozen"
    assert await event_details(incident, EventKind.APPROVAL_REQUESTED) == []
    assert paged_roles(drill) == []  # a freeze is a person's choice: nobody is paged about it
    async with open_store() as store:
        assert [f["environment"] for f in await store.unfreeze(None, by="ana")] == ["*"]
    _, after = await toggle(True)
    assert after.outcome == "verified" and flag(drill)  # type: ignore[attr-defined]


async def test_a_freeze_during_the_approval_wait_stops_before_acting(drill: DrillStack) -> None:
    """A freeze that comes while the plan waits for approval stops the approved remediation before it acts."""
    incident = await new_incident()

    async def freeze() -> None:
        async with open_store() as store:
            await store.freeze(get_settings().environment, reason="incident review", by="ben")

    result = await decide(maintenance_mode(MaintenanceModeParams(incident_id=incident, enabled=True)), incident,
                          meanwhile=freeze)
    assert result.outcome == "frozen" and result.approval is not None and not flag(drill)
