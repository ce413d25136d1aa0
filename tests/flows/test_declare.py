"""declare-incident: validation before anything runs, classification, deduplication, the raw alert kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.declare_incident import DeclareParams, declare_incident
from runbook.errors import InputError
from runbook.models import Alert, Severity
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _alert(**kw: object) -> Alert:
    base: dict[str, object] = {"source": "monitor", "fingerprint": "monitor:application_down:app",
                               "summary": "/api/health returns 503", "rule": "application_down"}
    return Alert.model_validate({**base, **kw})


async def test_alert_rule_classifies_and_records(state_dir: Path) -> None:
    """An application_down alert becomes a P0 incident with a declared event holding the alert."""
    out = await declare_incident(DeclareParams(alert=_alert(), respond="none"))
    assert out.created and out.severity is Severity.P0
    async with open_store() as store:
        inc = await store.get(out.incident_id)
        timeline = await store.timeline(out.incident_id)
    assert inc.fingerprint == "monitor:application_down:app" and inc.scenario == "performance"
    assert timeline[0].kind == "declared" and timeline[0].details["alert"]["rule"] == "application_down"


async def test_duplicate_alert_attaches_to_open_incident(state_dir: Path) -> None:
    """A second alert with the same fingerprint attaches to the first incident."""
    first = await declare_incident(DeclareParams(alert=_alert(), respond="none"))
    second = await declare_incident(DeclareParams(alert=_alert(summary="still 503"), respond="none"))
    assert not second.created and second.incident_id == first.incident_id
    async with open_store() as store:
        assert len(await store.list()) == 1
        assert [e.kind for e in await store.timeline(first.incident_id)][-1] == "duplicate_alert"


async def test_manual_declaration_by_impact(state_dir: Path) -> None:
    """A manual declaration with high user and business impact is a P0."""
    out = await declare_incident(DeclareParams(title="Site completely down", user_impact="high",
                                               business_impact="high", declared_by="alice", respond="none"))
    assert out.severity is Severity.P0 and "impact" in out.reason


async def test_manual_declaration_by_words(state_dir: Path) -> None:
    """Without severity or impact, the runbook's example words classify ("billing broken" → P1)."""
    out = await declare_incident(DeclareParams(title="Billing broken for TX students", respond="none"))
    assert out.severity is Severity.P1


def test_unknown_severity_is_rejected_before_anything_runs() -> None:
    """Severity P7 fails validation of the parameters."""
    with pytest.raises(ValidationError, match="severity"):
        DeclareParams(title="x", severity="P7")  # type: ignore[arg-type]


def test_missing_title_and_alert_is_rejected() -> None:
    """A declaration with neither title nor alert fails validation."""
    with pytest.raises(ValidationError, match="title"):
        DeclareParams()


async def test_malformed_raw_alert_is_stored_and_fails(state_dir: Path) -> None:
    """A raw alert without a summary fails with the reason and is still kept in the store."""
    raw = {"source": "sentry", "fingerprint": "sentry:123"}
    with pytest.raises(InputError, match="summary"):
        await declare_incident(DeclareParams(raw_alert=raw, respond="none"))
    async with open_store() as store:
        kept = await store.alerts(valid=False)
        assert kept[0]["raw"] == raw and await store.list() == []
