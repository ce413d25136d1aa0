"""Prefect's parameter check and the models agree on every anchored pattern of every deployment's parameters.

Prefect validates a run's parameters against the deployment's JSON schema with Python's `re.search`, where `$` also
matches before a trailing newline; pydantic's own check (Rust regex) does not. So an id pasted with its newline
passed Prefect's check and failed the model once the run had started (issue 21). Each anchored pattern now also
refuses a newline in the schema: by its exact length (ids) or by `not: {pattern: "\\n"}` (runbook.models.ONE_LINE).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate
from pydantic import BaseModel, ValidationError

from runbook.models import IncidentId

PROJECT = Path(__file__).resolve().parents[2]
# A valid value of each anchored pattern the deployments' parameters carry; a new pattern needs its example here.
EXAMPLES = {
    "^inc-[0-9]{8}-[0-9a-f]{6}$": "inc-20261126-1a2b3c",
    "^[A-Za-z0-9_\\-]{1,64}$": "dpl_6HSXrmaLxF4NiMueGhYmiFB1mlNv",
    "^[0-9]{1,20}$": "20261126093000",
    "^snap-[0-9]{8}t[0-9]{6}z-[0-9a-f]{6}$": "snap-20261126t093000z-1a2b3c",
    "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$": "production",
}


def _strings(node: Any, path: str, defs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Return (path, schema) of every string property with an anchored pattern, $refs followed."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        return _strings(defs.get(node["$ref"].rsplit("/", 1)[-1], {}), path, defs)
    found = [(path, node)] if node.get("type") == "string" and str(node.get("pattern", "")).endswith("$") else []
    for name, sub in node.get("properties", {}).items():
        found += _strings(sub, f"{path}.{name}", defs)
    for sub in node.get("anyOf", []) + node.get("allOf", []):
        found += _strings(sub, path, defs)
    if "items" in node:
        found += _strings(node["items"], f"{path}[]", defs)
    return found


def anchored_parameters() -> list[tuple[str, dict[str, Any]]]:
    """Every anchored string parameter of every deployment in prefect.yaml."""
    out = []
    for deployment in yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]:
        module, name = deployment["entrypoint"].split(":")
        fn = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        schema = parameter_schema(fn).model_dump_for_openapi()
        out += _strings(schema, deployment["name"], schema.get("definitions", {}) | schema.get("$defs", {}))
    return out


PARAMETERS = anchored_parameters()


def test_the_deployments_have_anchored_parameters_to_check() -> None:
    """The walk finds the incident ids, the rollback targets and the versions (a walk finding nothing tests nothing)."""
    assert len(PARAMETERS) > 20
    assert {s["pattern"] for _, s in PARAMETERS} >= {"^inc-[0-9]{8}-[0-9a-f]{6}$", "^[0-9]{1,20}$"}


@pytest.mark.parametrize(("path", "schema"), PARAMETERS, ids=[p for p, _ in PARAMETERS])
def test_prefect_refuses_a_trailing_newline_where_the_model_does(path: str, schema: dict[str, Any]) -> None:
    """The valid example passes Prefect's check; with a trailing newline (or CRLF) it is refused before the run."""
    example = EXAMPLES.get(schema["pattern"])
    assert example is not None, f"{path}: add a valid example of {schema['pattern']!r} to EXAMPLES"
    wrapper = {"type": "object", "properties": {"value": schema}}
    assert validate({"value": example}, wrapper) == [], path
    for bad in (example + "\n", example + "\r\n"):
        assert validate({"value": bad}, wrapper) != [], f"{path}: Prefect's check accepts {bad!r}"


def test_the_incident_id_model_refuses_what_the_schema_refuses() -> None:
    """The model side: an id with a newline, one character short or long is refused; the exact id passes."""

    class Params(BaseModel):
        incident_id: IncidentId

    assert Params(incident_id="inc-20261126-1a2b3c").incident_id == "inc-20261126-1a2b3c"
    for bad in ("inc-20261126-1a2b3c\n", "inc-20261126-1a2b3", "inc-20261126-1a2b3cd", " inc-20261126-1a2b3c"):
        with pytest.raises(ValidationError):
            Params(incident_id=bad)
