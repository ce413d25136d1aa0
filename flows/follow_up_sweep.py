"""The follow-up sweep (scheduled): every resolved incident gets its review and follow-up runs, exactly once; every
open incident's pending page whose sender died goes out.

A run is missing when there is no FollowUp row, a row without a flow run, or a row whose run no longer exists;
the sweep creates it (at its due time, or now when that has passed). A run that exists is left alone, so running
the sweep twice creates nothing the second time. It also escalates a review whose input deadline passed with
nothing recorded (a suspended review that expired on the server cannot escalate by itself). A page is durable (pending
on the timeline before it is sent): a pending page of an open, unacknowledged incident whose sender's flow run is
over (crashed, cancelled, ended: read through Prefect's API) or whose retries gave up is sent by the next sweep,
once (dedup key); one still being retried by a live run is left to it. An open, unacknowledged incident whose
escalation run died (Crashed, Cancelled, Failed, missing in Prefect, or its process's run over: its worker killed,
the Prefect server restarted under it) has its escalation re-run, once: the re-run counts the steps already taken
from the timeline, so no contact is paged twice (flows/escalate_incident.py).
"""


from datetime import datetime, timedelta

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.escalate_incident import dead_escalation, rerun_escalation
from flows.post_incident import FollowUpRun, ensure_follow_up_run, escalate_missed_review, review_overdue
from runbook.models import FollowUpKind, Incident, Status, utcnow
from runbook.policy import get_policy
from runbook.store import open_store
from tasks.pagerduty import pending_pages, resend_pending_pages


class FollowUpSweepParams(BaseModel):
    """Parameters of the follow-up sweep."""

    lookback_days: int = Field(
        60, ge=1, le=3650, description="Look at resolved incidents declared within this many days (drills included)"
    )


class SweepOutcome(BaseModel):
    """What the sweep did."""

    incidents: int = 0
    created: list[FollowUpRun] = Field(default_factory=list)
    escalated_reviews: list[str] = Field(default_factory=list)
    pages_sent: list[str] = Field(default_factory=list, description="Dedup keys of pending pages sent by the sweep")
    escalations_rerun: list[str] = Field(default_factory=list,
                                         description="Incidents whose dead escalation run the sweep started again")

    @property
    def nothing_to_do(self) -> bool:
        return not self.created and not self.escalated_reviews and not self.pages_sent and not self.escalations_rerun


@task(name="list_resolved_incidents", retries=0, cache_policy=NO_CACHE)
async def list_resolved_incidents(since: datetime) -> list[Incident]:
    """Return resolved incidents (drills included) declared since a time."""
    async with open_store() as store:
        items = await store.list(include_drill=True, since=since, limit=100_000)
    return [i for i in items if i.status is Status.RESOLVED and i.resolved_at is not None]


@task(name="list_open_incidents", retries=0, cache_policy=NO_CACHE)
async def list_open_incidents(since: datetime) -> list[Incident]:
    """Return open incidents (drills included) declared since a time."""
    async with open_store() as store:
        return await store.list(include_drill=True, since=since, open_only=True, limit=100_000)


@task(name="rerun_dead_escalation", retries=0, cache_policy=NO_CACHE, timeout_seconds=120)
async def rerun_dead_escalation(incident: Incident) -> bool:
    """Start the incident's escalation again when its run died while it was not finished; True when started."""
    why = await dead_escalation(incident)
    if why is None:
        return False
    get_run_logger().warning("escalation of %s is dead (%s): re-running it", incident.id, why)
    return await rerun_escalation(incident, why) is not None


@task(name="ensure_follow_up_runs", retries=0, cache_policy=NO_CACHE, timeout_seconds=300)
async def ensure_follow_up_runs(incident: Incident, now: datetime) -> list[FollowUpRun]:
    """Create the incident's missing follow-up runs; return the ones created or attached."""
    policy = get_policy()
    out = []
    async with open_store() as store:
        for kind in FollowUpKind:
            result = await ensure_follow_up_run(store, incident, kind, now=now, policy=policy)
            if result.status in ("created", "attached"):
                out.append(result)
    return out


@task(name="find_overdue_review", retries=0, cache_policy=NO_CACHE)
async def find_overdue_review(incident: Incident, now: datetime) -> bool:
    """Return True when the incident's review deadline passed with nothing recorded and no escalation yet."""
    async with open_store() as store:
        timeline = await store.timeline(incident.id)
        follow_ups = await store.follow_ups(incident.id)
    return review_overdue(incident, timeline, follow_ups, get_policy(), now)


@flow(name="follow-up-sweep", description="Create any missing post-incident run; escalate reviews past deadline.")
async def follow_up_sweep(params: FollowUpSweepParams = FollowUpSweepParams()) -> SweepOutcome:
    """Create every missing post-incident review/follow-up run and escalate reviews past their deadline."""
    logger = get_run_logger()
    now = utcnow()
    policy = get_policy()
    out = SweepOutcome()
    for incident in await list_resolved_incidents(now - timedelta(days=params.lookback_days)):
        out.incidents += 1
        out.created.extend(await ensure_follow_up_runs(incident, now))
        if await find_overdue_review(incident, now):
            await escalate_missed_review(incident, policy.post_incident.review_input_deadline_hours, policy)
            out.escalated_reviews.append(incident.id)
        if await pending_pages(incident.id):  # resolved first: its pending pages are closed with the reason, not sent
            await resend_pending_pages(incident)
    for incident in await list_open_incidents(now - timedelta(days=params.lookback_days)):
        if await pending_pages(incident.id):
            out.pages_sent.extend(await resend_pending_pages(incident))
        if await rerun_dead_escalation(incident):
            out.escalations_rerun.append(incident.id)
    if out.nothing_to_do:
        logger.info("Nothing to do: %d resolved incident(s), every follow-up run exists", out.incidents)
    else:
        logger.info("Created %d follow-up run(s); escalated %d review(s); sent %d pending page(s); re-ran %d "
                    "escalation(s)", len(out.created), len(out.escalated_reviews), len(out.pages_sent),
                    len(out.escalations_rerun))
    return out
