"""PagerDuty's REST read and V3 webhooks: what the client asks and the stand-in sends match PagerDuty's documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runbook.clients.pagerduty import PagerDutyClient, PagerDutyRestClient
from runbook.drill import DrillStack
from runbook.intake.pagerduty import EVENTS
from runbook.intake.signatures import sign_pagerduty, verify_pagerduty
from tests.contracts.contract import Recorder

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
