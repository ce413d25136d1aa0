"""The run forms a person fills at 3 a.m.: every deployment's parameters have titles and descriptions, and no closed
set is wrapped in a union (the Prefect UI renders `X | None` as type tabs to click before the dropdown appears)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
# Filled by other automation (the intake, the monitor), never typed into the form by a person.

def _schema(entrypoint: str) -> dict[str, Any]:
    module, name = entrypoint.split(":")
    fn = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
    return parameter_schema(fn).model_dump_for_openapi()


def _fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The form's fields: the flow's own parameters, or the fields of its one `params` model."""
    defs = schema.get("definitions", {})
    fields: dict[str, dict[str, Any]] = {}
    for name, prop in schema.get("properties", {}).items():
        ref = prop.get("$ref") or next((o.get("$ref") for o in prop.get("allOf", []) if "$ref" in o), None)
        model = defs.get(ref.split("/")[-1], {}) if ref else {}
        if model.get("type") == "object" and "properties" in model:
            fields.update({f"{name}.{k}": v for k, v in model["properties"].items()})
        else:
            fields[name] = prop
    return fields  # automation's fields too (alert, raw_alert): the form shows them to a person


def _is_enum(option: dict[str, Any], defs: dict[str, Any]) -> bool:
    target = defs.get(option["$ref"].split("/")[-1], {}) if "$ref" in option else option
    return "enum" in target or "const" in target


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_every_form_field_is_titled_described_and_plain(deployment: dict[str, Any]) -> None:
    """Titles and descriptions on every field a person fills; closed sets are plain dropdowns."""
    schema = _schema(deployment["entrypoint"])
    defs = schema.get("definitions", {})
    for name, prop in _fields(schema).items():
        assert prop.get("title"), f"{deployment['name']}: {name} has no title"
        assert prop.get("description"), f"{deployment['name']}: {name} has no description"
        for union in ("anyOf", "oneOf"):
            options = prop.get(union, [])
            assert not any(_is_enum(o, defs) for o in options), (
                f"{deployment['name']}: {name} wraps a closed set in a union ({options}); use an explicit choice "
                "such as 'auto' instead of None")


def test_the_declare_form_defaults_mean_not_given() -> None:
    """declare-incident's dropdowns start at 'auto'/'unknown', and null from automation still means the same."""
    from flows.declare_incident import DeclareParams, build_incident

    given_null = DeclareParams.model_validate({"title": "Checkout fails", "severity": None, "user_impact": None,
                                               "business_impact": None, "scenario": None})
    assert (given_null.severity, given_null.user_impact, given_null.scenario) == ("auto", "unknown", "auto")
    picked = DeclareParams(title="Site completely down", user_impact="high", business_impact="high")
    incident, reason = build_incident(picked, None)
    assert incident.severity == "P0" and "impact" in reason
    set_by_hand = DeclareParams(title="x", severity="P3", declared_by="ana")
    assert build_incident(set_by_hand, None)[0].severity == "P3"
