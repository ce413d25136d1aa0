"""PagerDuty's REST read and V3 webhooks: what the client asks and the stand-in sends match PagerDuty's documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook.clients.pagerduty import PagerDutyClient, PagerDutyRestClient
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import RateLimited
from runbook.intake.pagerduty import EVENTS
from runbook.intake.signatures import sign_pagerduty, verify_pagerduty
from tests.contracts.contract import Exchange, Recorder, Spec
from tests.contracts.rate_limits import rate_limit_problems

WEBHOOKS = json.loads((Path(__file__).parent / "specs" / "pagerduty-webhooks.json").read_text())


REST = json.loads((Path(__file__).parent / "specs" / "pagerduty-rest.json").read_text())


async def test_rest_incidents_read_matches_the_document(drill: DrillStack, recorder: Recorder) -> None:
    """GET /incidents?incident_key= carries the documented auth and Accept; the stand-in answers only documented
    incident fields with documented statuses and acknowledger types.

    (contract.Spec cannot follow this document's references into a list, `Tag/allOf/0`, yet: fields by hand.)"""
    settings = drill.settings()
    async with PagerDutyClient.from_settings(settings) as events:
        await events.trigger("inc-20260101-c0ffee", "[P0] contract")
    drill.pagerduty.press_acknowledge("inc-20260101-c0ffee")
    async with PagerDutyRestClient.from_settings(settings) as rest:
        recorder.watch(rest.http)
        assert [i.status for i in await rest.incidents("inc-20260101-c0ffee")] == ["acknowledged"]
    [ex] = recorder.exchanges
    operation = REST["paths"]["/incidents"]["get"]
    params = {p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]}
    assert {"incident_key", "header_Accept"} <= params
    accept = REST["components"]["parameters"]["header_Accept"]["schema"]["default"]
    assert ex.request_headers["accept"] == accept
    assert REST["components"]["securitySchemes"]["api_key"]["description"].startswith("The API Key with format `Token")
    assert ex.request_headers["authorization"].startswith("Token token=")
    schemas = REST["components"]["schemas"]
    documented = set(schemas["Incident"]["allOf"][1]["properties"]) | {"id", "type", "summary", "self", "html_url"}
    [incident] = json.loads(ex.response_body)["incidents"]
    assert set(incident) <= documented, set(incident) - documented
    assert incident["status"] in schemas["Incident"]["allOf"][1]["properties"]["status"]["enum"]
    acknowledger = incident["acknowledgements"][0]["acknowledger"]
    assert acknowledger["type"] in schemas["AcknowledgerReference"]["allOf"][1]["properties"]["type"]["enum"]


def _keys(node: dict[str, Any]) -> set[str]:
    return set(node)


async def test_the_stand_ins_webhook_has_the_documented_shape(drill: DrillStack) -> None:
    """A delivered webhook has exactly the documented envelope and only documented incident fields, its event
    types are documented with data.type incident, and its signature verifies as the document describes."""
    drill.pagerduty.reset()
    settings = drill.settings()
    async with PagerDutyClient.from_settings(settings) as events:
        await events.trigger("inc-20260101-c0ffee", "[P0] contract")
    drill.pagerduty.press_acknowledge("inc-20260101-c0ffee")
    delivery = drill.pagerduty.wait_delivered("incident.acknowledged", "inc-20260101-c0ffee")
    event, documented = delivery["body"]["event"], WEBHOOKS["example_webhook"]["event"]
    assert _keys(event) == _keys(documented)
    assert _keys(event["data"]) <= _keys(WEBHOOKS["incident_data"]) | _keys(documented["data"])
    assert _keys(event["agent"]) == _keys(documented["agent"])
    assert {d["event_type"] for d in drill.pagerduty.deliveries} <= set(WEBHOOKS["event_types"])
    assert all(WEBHOOKS["event_types"][e] in {"incident", "incident_note"} for e in EVENTS)
    body = json.dumps(delivery["body"]).encode()
    secret = drill.pagerduty_webhook_secret
    assert "comma separation" in WEBHOOKS["signature"] and "X-Webhook-Id" in WEBHOOKS["at_least_once"]
    assert verify_pagerduty({"x-pagerduty-signature": sign_pagerduty(body, "old", secret)}, body,
                            settings.pagerduty_webhook_secret) == "ok"


TOO_MANY = {"$ref": "#/components/responses/TooManyRequests/content/application~1json/schema"}


def _rest_throttle_problems(ex: Exchange) -> list[str]:
    """Return how a REST 429 departs from the document's TooManyRequests body and the documented headers."""
    spec, body = Spec.load("pagerduty-rest"), json.loads(ex.response_body)
    return (spec.errors(body, TOO_MANY, ex.label()) + spec.undeclared(body, TOO_MANY)
            + rate_limit_problems("pagerduty-rest", ex.status, ex.response_headers, ex.label()))


async def test_an_injected_rest_429_is_pagerdutys_own_and_ratelimit_reset_is_waited(drill: DrillStack,
                                                                                     recorder: Recorder) -> None:
    """An injected REST 429 is the documented one ({"error": {message, code 2020}}, ratelimit-limit/-remaining/-reset,
    no Retry-After): the read waits `ratelimit-reset` seconds, then reads."""
    drill.pagerduty.inject(Fault.rate_limit(retry_after=7, times=1, path="/incidents"))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with PagerDutyRestClient.from_settings(drill.settings(), sleep=sleep) as rest:
        recorder.watch(rest.http)
        assert await rest.incidents("inc-20260101-none") == []
    throttled, answered = recorder.exchanges
    assert (throttled.status, answered.status) == (429, 200) and waits == [7.0]
    assert json.loads(throttled.response_body) == {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
    assert "retry-after" not in throttled.response_headers and _rest_throttle_problems(throttled) == []


async def test_past_the_rest_limit_a_read_gives_up_at_once_until_the_reset(drill: DrillStack,
                                                                           recorder: Recorder) -> None:
    """Past the per-minute limit the stand-in's 429 is the documented one, reset up to a minute away: more than the
    poll's 20 s bound, so the read gives up at once as a read, saying until when (the next poll reads again)."""
    drill.pagerduty.rest_limit = 1
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with PagerDutyRestClient.from_settings(drill.settings(), sleep=sleep) as rest:
        recorder.watch(rest.http)
        await rest.incidents("inc-20260101-none")
        with pytest.raises(RateLimited) as caught:
            await rest.incidents("inc-20260101-none")
    assert [e.status for e in recorder.exchanges] == [200, 429] and waits == []
    assert caught.value.use == "read" and caught.value.retry_after is not None and caught.value.retry_after > 20
    assert "Rate Limit Exceeded" in str(caught.value) and _rest_throttle_problems(recorder.exchanges[1]) == []
    assert rate_limit_problems("pagerduty-rest", 200, recorder.exchanges[0].response_headers, "200") == []
