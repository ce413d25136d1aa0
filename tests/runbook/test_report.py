"""The incident report and the MTTA/MTTR metrics, computed from a real store's timeline."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runbook.cli import main
from runbook.models import Alert, Approval, Incident, Severity, Status, TimelineEvent, new_incident_id
from runbook.report import NOT_RECORDED, TEMPLATE_SECTIONS, compute_metrics, load_report, write_report
from runbook.store import IncidentStore, open_store

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """Return T0 plus some minutes."""
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
async def store(state_dir: Path) -> AsyncIterator[IncidentStore]:
    """Open the store of a fresh state directory."""
    async with open_store() as s:
        yield s


async def realistic_incident(store: IncidentStore, start: datetime = T0, *, severity: Severity = Severity.P0,
                             ack_after: float = 4, resolve_after: float = 30, drill: bool = False) -> Incident:
    """Record a full incident: declared, paged, acknowledged, diagnosed, approved, fixed, verified, resolved."""
    def t(minutes: float) -> datetime:
        return start + timedelta(minutes=minutes)

    incident = Incident(id=new_incident_id(start), title="Site completely down", severity=severity,
                        created_at=start, scenario="database", drill=drill, summary="The app returned 503 for all.")
    alert = Alert(source="monitor", fingerprint=f"app-down-{incident.id}", summary="Application down",
                  received_at=t(-0.5))
    await store.declare(incident, alert)
    await store.append_event(incident.id, TimelineEvent(at=t(1), kind="paged", actor="pagerduty",
                                                        summary="Paged the On-Call Engineer"))
    await store.acknowledge(incident.id, "sam", at=t(ack_after))
    await store.append_event(incident.id, TimelineEvent(at=t(5), kind="status_page", actor="statuspage",
                                                        summary="Status page: investigating"))
    await store.append_event(incident.id, TimelineEvent(at=t(12), kind="diagnosis", actor="diagnose-database",
                                                        summary="Migration 0042 dropped an index",
                                                        details={"found": True}))
    await store.transition(incident.id, Status.IDENTIFIED, at=t(13))
    await store.append_event(incident.id, TimelineEvent(at=t(15), kind="approval_requested", actor="runbook",
                                                        summary="Database rollback waits for approval",
                                                        details={"plan_hash": "abc123"}))
    await store.record_approval(incident.id, Approval(decision="approve", approver="alex", plan_hash="abc123",
                                                      action="database-rollback", at=t(18)))
    await store.append_event(incident.id, TimelineEvent(at=t(20), kind="remediation_applied", actor="runbook",
                                                        summary="Migration 0042 rolled back"))
    await store.append_event(incident.id, TimelineEvent(at=t(21), kind="verification", actor="verify-service",
                                                        summary="Health still failing", details={"passed": False}))
    await store.transition(incident.id, Status.MONITORING, at=t(22))
    await store.append_event(incident.id, TimelineEvent(at=t(24), kind="verification", actor="verify-service",
                                                        summary="Health check passed", details={"passed": True}))
    return await store.transition(incident.id, Status.RESOLVED, at=t(resolve_after))


async def test_report_has_every_template_section_in_order(store: IncidentStore) -> None:
    """The rendered report carries the runbook template's sections in the template's order."""
    incident = await realistic_incident(store)
    files = await write_report(store, incident.id)
    positions = [files.markdown.index(f"\n## {section}\n") for section in TEMPLATE_SECTIONS]
    assert positions == sorted(positions)
    assert files.markdown.startswith(f"# Incident Report: {incident.title}\n")


async def test_timeline_section_takes_its_times_from_the_timeline(store: IncidentStore) -> None:
    """The five key times are the alert, first page, diagnosis, remediation and passing verification, in order."""
    incident = await realistic_incident(store)
    markdown = (await write_report(store, incident.id)).markdown
    timeline = markdown.split("\n## Timeline\n")[1].split("\n## ")[0]
    expected = [
        "2026-11-26 09:59:30 UTC - Incident detected",
        "2026-11-26 10:01:00 UTC (+1m 30s) - Response initiated: Paged the On-Call Engineer",
        "2026-11-26 10:12:00 UTC (+12m 30s) - Root cause identified: Migration 0042 dropped an index",
        "2026-11-26 10:20:00 UTC (+20m 30s) - Resolution implemented: Migration 0042 rolled back",
        "2026-11-26 10:24:00 UTC (+24m 30s) - Service restored: Health check passed",
    ]
    positions = [timeline.index(line) for line in expected]
    assert positions == sorted(positions)


async def test_mtta_mttr_and_time_to_approve_are_computed(store: IncidentStore) -> None:
    """MTTA is declared→acknowledged, MTTR declared→resolved, time to approve request→decision."""
    incident = await realistic_incident(store, ack_after=4, resolve_after=30)
    report = await load_report(store, incident.id)
    assert report.mtta == timedelta(minutes=4)
    assert report.mttr == timedelta(minutes=30)
    assert report.time_to_approve == timedelta(minutes=3)
    markdown = (await write_report(store, incident.id)).markdown
    assert "- MTTA (declared → acknowledged): 4m 00s" in markdown
    assert "- MTTR (declared → resolved): 30m 00s" in markdown
    assert "- Time to approve (database-rollback, approve by alex via api): 3m 00s" in markdown


async def test_missing_sections_say_not_recorded_yet(store: IncidentStore) -> None:
    """Before the review, root cause, lessons, preventive measures and financial impact say _Not recorded yet_."""
    incident = await realistic_incident(store)
    markdown = (await write_report(store, incident.id)).markdown
    for section in ("Root Cause", "Lessons Learned", "Preventive Measures"):
        body = markdown.split(f"\n## {section}\n")[1].split("\n## ")[0]
        assert NOT_RECORDED in body, section
    assert f"- Financial impact: {NOT_RECORDED}" in markdown
    assert "Automated diagnosis, to be confirmed at the review: Migration 0042 dropped an index" in markdown


async def test_recorded_review_fields_replace_the_placeholders(store: IncidentStore) -> None:
    """Root cause, lessons learned and preventive measures come from the incident record once written."""
    incident = await realistic_incident(store)
    await store.update(incident.id, root_cause="A migration without a down script.",
                       lessons_learned="Rollback worked.", preventive_measures="Lint migrations in CI.")
    markdown = (await write_report(store, incident.id)).markdown
    assert "## Root Cause\n\nA migration without a down script.\n" in markdown
    assert "## Lessons Learned\n\nRollback worked.\n" in markdown
    assert "## Preventive Measures\n\nLint migrations in CI.\n" in markdown


async def test_actions_taken_list_side_effects_with_who_and_when(store: IncidentStore) -> None:
    """Actions Taken lists pages, acknowledgements, approvals and the remediation, not the observations."""
    incident = await realistic_incident(store)
    markdown = (await write_report(store, incident.id)).markdown
    actions = markdown.split("\n## Actions Taken\n")[1].split("\n## ")[0]
    assert "- 2026-11-26 10:01:00 UTC - pagerduty - paged: Paged the On-Call Engineer" in actions
    assert "- 2026-11-26 10:04:00 UTC - sam - acknowledged: Acknowledged by sam" in actions
    assert "- 2026-11-26 10:18:00 UTC - alex - approval: database-rollback approved by alex" in actions
    assert "remediation_applied: Migration 0042 rolled back" in actions
    assert "diagnosis" not in actions and "declared" not in actions


async def test_service_restored_falls_back_to_resolution(store: IncidentStore) -> None:
    """Without a passing verification, service restored is the time the incident was resolved."""
    incident = Incident(id=new_incident_id(T0), title="Slow pages", severity=Severity.P2, created_at=T0)
    await store.declare(incident)
    await store.transition(incident.id, Status.RESOLVED, at=at(45))
    report = await load_report(store, incident.id)
    assert report.key_time("service_restored") == at(45)
    assert report.key_time("resolution_implemented") is None


async def test_files_are_written_with_a_linked_timeline_picture(store: IncidentStore, state_dir: Path) -> None:
    """The report is <id>.md in the reports directory and links an SVG of the phases next to it; no artifact."""
    incident = await realistic_incident(store)
    files = await write_report(store, incident.id)
    assert files.markdown_path == state_dir / "reports" / f"{incident.id}.md"
    assert files.markdown_path.read_text() == files.markdown
    assert f"![Incident timeline]({incident.id}-timeline.svg)" in files.markdown
    svg = ET.fromstring(files.picture_path.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    assert len([r for r in svg.iter(f"{ns}rect") if r.get("class") == "phase"]) == 4
    assert len([c for c in svg.iter(f"{ns}circle") if c.get("class") == "key"]) == 5
    assert files.artifact_key == f"report-{incident.id}"
    assert files.artifact_created is False


async def test_metrics_per_severity_exclude_drills(store: IncidentStore) -> None:
    """MTTA and MTTR are averaged per severity over the period; drills count only when asked."""
    await realistic_incident(store, T0, ack_after=4, resolve_after=30)
    await realistic_incident(store, T0 + timedelta(days=1), ack_after=6, resolve_after=50)
    await realistic_incident(store, T0 + timedelta(days=2), severity=Severity.P1, ack_after=10, resolve_after=90)
    await realistic_incident(store, T0 + timedelta(days=3), ack_after=1, resolve_after=31, drill=True)
    await realistic_incident(store, T0 - timedelta(days=30), ack_after=20, resolve_after=200)  # before the period
    period = {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(days=7)}
    m = await compute_metrics(store, **period)
    assert (m.by_severity[Severity.P0].incidents, m.by_severity[Severity.P0].mtta_seconds,
            m.by_severity[Severity.P0].mttr_seconds) == (2, 300.0, 2400.0)
    assert (m.by_severity[Severity.P1].mtta_seconds, m.by_severity[Severity.P1].mttr_seconds) == (600.0, 5400.0)
    assert m.by_severity[Severity.P2].incidents == 0 and m.by_severity[Severity.P2].mtta_seconds is None
    with_drills = await compute_metrics(store, **period, include_drills=True)
    assert (with_drills.by_severity[Severity.P0].incidents, with_drills.by_severity[Severity.P0].mtta_seconds,
            with_drills.by_severity[Severity.P0].mttr_seconds) == (3, 220.0, 2220.0)


async def test_cli_report_prints_the_markdown_and_writes_it(store: IncidentStore, state_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook report ID` prints the report and writes the Markdown and SVG files."""
    incident = await realistic_incident(store)
    # The CLI runs its own event loop: call it from a worker thread, as a shell would from outside.
    code = await asyncio.to_thread(main, ["report", incident.id])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"# Incident Report: {incident.title}")
    assert (state_dir / "reports" / f"{incident.id}.md").is_file()
    assert (state_dir / "reports" / f"{incident.id}-timeline.svg").is_file()


async def test_cli_metrics_json(store: IncidentStore, capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook metrics --since … --json` prints MTTA/MTTR seconds per severity, drills excluded by default."""
    await realistic_incident(store, T0, ack_after=4, resolve_after=30)
    await realistic_incident(store, T0 + timedelta(hours=2), ack_after=1, resolve_after=10, drill=True)
    code = await asyncio.to_thread(main, ["metrics", "--since", "2026-11-26", "--until", "2026-11-27", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["by_severity"]["P0"]["incidents"] == 1
    assert data["by_severity"]["P0"]["mtta_seconds"] == 240.0
    assert data["by_severity"]["P0"]["mttr_seconds"] == 1800.0
