"""Vercel: deployments, rollback/promote with alias-job polling and env vars, checked against Vercel's OpenAPI."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.vercel import VercelClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import AuthError, RequestRejected
from tests.contracts.contract import Recorder, assert_conforms

VENDOR = "vercel"


async def test_every_vercel_call_conforms(drill: DrillStack, recorder: Recorder) -> None:
    """Listing, reading, rollback, promote, redeploy and the env calls are documented (or allow-listed) exchanges."""
    async with VercelClient.from_settings(drill.settings(), poll_interval=0.05) as vercel:
        recorder.watch(vercel.http)
        current = await vercel.current_production()
        candidate = await vercel.rollback_candidate()
        assert current is not None and candidate is not None
        await vercel.rollback(candidate.id, timeout=30)
        await vercel.promote(current.id, timeout=30)
        env = await vercel.find_env("STRIPE_WEBHOOK_SECRET")
        assert env is not None
        created = await vercel.upsert_env("RUNBOOK_CONTRACT", SecretStr("value-1"), type="encrypted")
        await vercel.delete_env(created[0].id)
        await vercel.redeploy(current.id, timeout=30)
    assert_conforms(VENDOR, recorder.exchanges)


async def test_errors_conform(drill: DrillStack, recorder: Recorder, fast: RetryPolicy) -> None:
    """401, 404, 409 and 429 answers are Vercel's {"error": {"code", "message"}}."""
    settings = drill.settings()
    drill.vercel.inject(Fault.rate_limit(retry_after=0, times=1, path="/v6/deployments"))
    async with VercelClient.from_settings(settings, policy=fast) as vercel:
        recorder.watch(vercel.http)
        await vercel.list_deployments(max_pages=1)
        with pytest.raises(RequestRejected):
            await vercel.get_deployment("dpl_doesnotexist")
        with pytest.raises(RequestRejected):
            await vercel.promote(drill.vercel.production().id, timeout=1)
    bad = settings.model_copy(update={"vercel_token": SecretStr("vcp_wrong_token_00")})
    async with VercelClient.from_settings(bad, policy=fast) as vercel:
        recorder.watch(vercel.http)
        with pytest.raises(AuthError):
            await vercel.project()
    assert {e.status for e in recorder.exchanges} >= {429, 404, 409, 401}
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_retried_rollback_that_meets_409_waits_for_its_own_job(drill: DrillStack, recorder: Recorder,
                                                                      fast: RetryPolicy) -> None:
    """The first answer comes too late (read timeout), the retry gets 409: the client polls the job it started."""
    candidate = drill.vercel.rollback_candidates()[0]
    drill.vercel.answer_delays = [5.0]
    policy = fast.with_(read_timeout=0.5)
    async with VercelClient.from_settings(drill.settings(), policy=policy, poll_interval=0.05) as vercel:
        recorder.watch(vercel.http)
        job = await vercel.rollback(candidate.id, timeout=30)
    assert job.succeeded and job.to_deployment_id == candidate.id and job.type == "rollback"
    assert drill.vercel.production().id == candidate.id
    posts = [e for e in recorder.exchanges if e.method == "POST"]
    assert [e.status for e in posts] == [409]  # the first attempt timed out: no answer was recorded
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_retried_promote_that_meets_409_waits_for_its_own_job(drill: DrillStack, recorder: Recorder,
                                                                     fast: RetryPolicy) -> None:
    """Promote as rollback: its first answer times out, the retry's 409 is our own job in progress, polled to the
    end; production is the promoted deployment."""
    candidate = drill.vercel.rollback_candidates()[0]
    drill.vercel.answer_delays = [5.0]
    policy = fast.with_(read_timeout=0.5)
    async with VercelClient.from_settings(drill.settings(), policy=policy, poll_interval=0.05) as vercel:
        recorder.watch(vercel.http)
        job = await vercel.promote(candidate.id, timeout=30)
    assert job.succeeded and job.to_deployment_id == candidate.id and job.type == "promote"
    assert drill.vercel.production().id == candidate.id
    posts = [e for e in recorder.exchanges if e.method == "POST"]
    assert [e.status for e in posts] == [409] and posts[0].path.startswith("/v10/projects/")
    assert_conforms(VENDOR, recorder.exchanges)


async def test_an_older_job_to_the_same_deployment_is_not_taken_for_ours(drill: DrillStack) -> None:
    """A succeeded job from an earlier rollback to the same deployment is ignored until our own job shows."""
    candidate = drill.vercel.rollback_candidates()[0]
    drill.vercel.rollback(candidate.id)
    drill.vercel.wait_idle()
    assert drill.vercel.alias_job is not None
    drill.vercel.alias_job.requested_at -= 120  # that rollback was two minutes ago
    drill.vercel.deploy(message="feat: newer release")  # production moves on without an alias job
    drill.vercel.job_visible_after = 1.0  # our new job shows in lastAliasRequest only after a second
    async with VercelClient.from_settings(drill.settings(), poll_interval=0.05) as vercel:
        asked = drill.vercel.alias_job
        job = await vercel.rollback(candidate.id, timeout=30)
    assert drill.vercel.production().id == candidate.id  # returned only once production really switched
    assert asked is not None and job.requested_at is not None
    assert job.requested_at > int(asked.requested_at * 1000)


async def test_a_409_for_someone_elses_job_is_refused(drill: DrillStack, fast: RetryPolicy) -> None:
    """While another rollback runs, our promote gets 409 and is refused with Vercel's message, not polled."""
    candidates = drill.vercel.rollback_candidates()
    delay, drill.vercel.alias_delay = drill.vercel.alias_delay, 60.0
    try:
        drill.vercel.rollback(candidates[0].id)
        async with VercelClient.from_settings(drill.settings(), policy=fast, poll_interval=0.05) as vercel:
            with pytest.raises(RequestRejected, match="already in progress"):
                await vercel.promote(candidates[1].id, timeout=5)
    finally:
        drill.vercel.alias_delay = delay


def test_a_job_requested_before_ours_is_not_ours() -> None:
    """A job requested before our request (beyond clock skew) is never ours, even one to our deployment."""
    from runbook.clients.vercel import AliasJob
    vercel = VercelClient.__new__(VercelClient)
    now = 1_800_000_000_000
    old = AliasJob(job_status="succeeded", to_deployment_id="dpl_a", requested_at=now - 2 * 60_000)
    fresh = AliasJob(job_status="pending", to_deployment_id="dpl_a", requested_at=now - 1_000)
    assert not vercel._ours(old, "dpl_a", None, now)
    assert vercel._ours(fresh, "dpl_a", None, now) and not vercel._ours(fresh, "dpl_b", None, now)
    assert not vercel._ours(fresh, "dpl_a", fresh, now)  # the job the project showed before we asked


async def test_past_the_documented_limit_the_client_waits_for_x_ratelimit_reset(drill: DrillStack,
                                                                               recorder: Recorder) -> None:
    """Vercel answers X-RateLimit-Limit/-Remaining/-Reset (UTC epoch seconds) on every response and, past the limit,
    429 {"error": {"code": "too_many_requests"}} without Retry-After: the client waits until the window's reset."""
    reset = (int(time.time() + 15) // 10 + 1) * 10.0  # a window boundary 15-25 s from now (Retry-After's bound: 30)
    now = [reset - 5]
    drill.vercel.rate_limit, drill.vercel.rate_window, drill.vercel.rate_clock = 2, 10.0, lambda: now[0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds  # the stand-in's window rolls while the client waits

    async with VercelClient.from_settings(drill.settings(), sleep=sleep) as vercel:
        recorder.watch(vercel.http)
        for _ in range(3):
            assert (await vercel.project()).id == drill.vercel.project_id
    assert [e.status for e in recorder.exchanges] == [200, 200, 429, 200]
    throttled = recorder.exchanges[2]
    assert "retry-after" not in {k.lower() for k in throttled.response_headers}
    assert throttled.response_json() == {"error": {"code": "too_many_requests", "message": "Rate limit exceeded"}}
    assert int(throttled.response_headers["x-ratelimit-reset"]) == reset
    assert [e.response_headers["x-ratelimit-limit"] for e in recorder.exchanges] == ["2"] * 4
    assert [e.response_headers["x-ratelimit-remaining"] for e in recorder.exchanges] == ["1", "0", "0", "1"]
    assert len(waits) == 1 and 1 < waits[0] <= 25  # until the reset (the backoff would be under 0.5 s)
    assert_conforms(VENDOR, recorder.exchanges)
