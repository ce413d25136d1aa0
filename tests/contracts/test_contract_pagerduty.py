"""PagerDuty Events API v2: what the client sends and the stand-in answers matches PagerDuty's published document."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.pagerduty import PagerDutyClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RequestRejected
from tests.contracts.contract import Recorder, assert_conforms

VENDOR = "pagerduty-events"


async def test_trigger_acknowledge_resolve_conform(drill: DrillStack, recorder: Recorder) -> None:
    """A page, its acknowledgement and its resolution are documented requests with documented answers."""
    async with PagerDutyClient.from_settings(drill.settings()) as pd:
        recorder.watch(pd.http)
        await pd.trigger("inc-contract-1", "Health check failing", custom_details={"rule": "health"})
        await pd.acknowledge("inc-contract-1")
        await pd.resolve("inc-contract-1")
    assert [e.status for e in recorder.exchanges] == [202, 202, 202]
    assert_conforms(VENDOR, recorder.exchanges)


async def test_rejected_and_throttled_answers_conform(drill: DrillStack, recorder: Recorder,
                                                      fast: RetryPolicy) -> None:
    """A 400 (bad routing key), a 429 and a 5xx are answered in PagerDuty's documented error shape."""
    drill.pagerduty.inject(Fault.rate_limit(retry_after=0, times=1))
    drill.pagerduty.inject(Fault.error(503, times=1))
    settings = drill.settings()
    async with PagerDutyClient.from_settings(settings, policy=fast) as pd:
        recorder.watch(pd.http)
        await pd.trigger("inc-contract-2", "Throttled first")
    bad = settings.model_copy(update={"pagerduty_routing_key": SecretStr("R0000000000000000000000000000000")})
    async with PagerDutyClient.from_settings(bad, policy=fast) as pd:
        recorder.watch(pd.http)
        with pytest.raises(RequestRejected):
            await pd.trigger("inc-contract-3", "Wrong key")
    assert [e.status for e in recorder.exchanges] == [429, 503, 202, 400]
    assert_conforms(VENDOR, recorder.exchanges)
