"""The stand-ins accept exactly the enum values the vendors' documents list (no fewer: the real API takes them)."""

from __future__ import annotations

from typing import Any

import pytest

from runbook.drill import pagerduty, sentry, statuspage, supabase_api, vercel
from tests.contracts.contract import Spec


def _enum(vendor: str, *pointer: str) -> list[Any]:
    node: Any = Spec.load(vendor).doc
    for part in pointer:
        node = Spec.load(vendor).resolve(node[int(part)] if isinstance(node, list) else node[part])
    return list(node["enum"])


def _param(vendor: str, path: str, method: str, name: str) -> dict[str, Any]:
    op = Spec.load(vendor).doc["paths"][path][method]
    return next(p for p in op["parameters"] if p["name"] == name)


INCIDENT = ("components", "schemas", "postPagesPageIdIncidents", "properties", "incident", "properties")


@pytest.mark.parametrize(("ours", "theirs"), [
    (statuspage.INCIDENT_STATUSES, lambda: _enum("statuspage", *INCIDENT, "status")),
    (statuspage.IMPACTS, lambda: _enum("statuspage", *INCIDENT, "impact_override")),
    (statuspage.COMPONENT_STATUSES, lambda: _enum("statuspage", "components", "schemas", "Component",
                                                  "properties", "status")),
    (supabase_api.SupabaseManagementStandIn.SERVICES,
     lambda: _param("supabase", "/v1/projects/{ref}/health", "get", "services")["schema"]["items"]["enum"]),
    (sentry.DATASETS, lambda: _param("sentry", "/api/0/organizations/{organization_id_or_slug}/events/", "get",
                                     "dataset")["schema"]["enum"]),
    (pagerduty.ACTIONS, lambda: _enum("pagerduty-events", "paths", "/enqueue", "post", "requestBody", "content",
                                      "application/json", "schema", "properties", "event_action")),
    (pagerduty.SEVERITIES, lambda: _enum("pagerduty-events", "components", "schemas", "Payload", "properties",
                                         "severity")),
    (vercel.ENV_TYPES, lambda: _enum("vercel", "paths", "/v1/projects/{idOrName}/env/{id}", "get", "responses",
                                     "200", "content", "application/json", "schema", "oneOf", "0", "properties",
                                     "type")),
])
def test_stand_in_enums_are_the_documented_ones(ours: tuple[str, ...], theirs: Any) -> None:
    """Same set of values as the document: a value the real API accepts is not refused by the stand-in."""
    assert sorted(ours) == sorted(theirs())
