"""Provenance (issue 19): every timeline event records the code version and the Prefect deployment and run that
wrote it; the report lists the versions that acted; a store of schema 1 is migrated in place and stays readable."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from sqlalchemy import text

from runbook.models import Incident, Severity
from runbook.provenance import PACKAGE, code_version
from runbook.report.incident import load_report, render_markdown
from runbook.store import SCHEMA_VERSION, IncidentStore, open_store

ROOT = Path(__file__).resolve().parents[2]


def _is_commit(sha: str) -> bool:
    """Return True when sha names a commit of this repository."""
    found = subprocess.run(["git", "cat-file", "-t", sha], cwd=ROOT, capture_output=True, text=True, check=False)
    return found.stdout.strip() == "commit"


def test_the_code_version_is_the_package_version_and_the_checkouts_commit() -> None:
    """The code version names the installed package's version and a commit of this checkout, once per process."""
    version = code_version()
    assert version["version"] == metadata.version(PACKAGE)
    assert re.fullmatch(r"[0-9a-f]{40}", version["commit"]) and _is_commit(version["commit"])
    assert code_version() is version  # computed once


@pytest.mark.usefixtures("prefect_harness")
async def test_an_event_written_in_a_deployment_run_carries_its_deployment(state_dir: Path) -> None:
    """A note written by a deployment run records the deployment's id and version, the run and the code version;
    the report lists that version beside the one outside any run (the declaration)."""
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.runner import Runner

    from flows.lifecycle import note_incident

    async with open_store() as store:
        incident, _ = await store.declare(Incident(title="Checkout returns 500", severity=Severity.P1))
    runner = Runner(name=f"provenance-{incident.id}", query_seconds=1)
    deployment_id = await runner.aadd_flow(note_incident, name="provenance-note", version="v-provenance-test")
    run = await arun_deployment("note-incident/provenance-note", timeout=0, as_subflow=False, parameters={
        "params": {"incident_id": incident.id, "text": "checked the webhook secret", "by": "ana"}})
    await runner.start(run_once=True)
    async with open_store() as store:
        declared, note = await store.timeline(incident.id)
        markdown = render_markdown(await load_report(store, incident.id))
    assert note.kind == "note" and note.flow_run_id == str(run.id)
    prov = note.provenance
    assert prov["deployment_id"] == str(deployment_id) and prov["deployment_version"] == "v-provenance-test"
    assert prov["flow_run_id"] == str(run.id) and prov["flow"] == "note-incident"
    assert prov["version"] == metadata.version(PACKAGE) and _is_commit(prov["commit"])
    assert declared.provenance == code_version()  # outside any run: the code version only
    versions = markdown.split("## Versions", 1)[1]
    assert f"deployment note-incident ({deployment_id}, version v-provenance-test): 1 event(s)" in versions
    assert "outside any Prefect run: 1 event(s)" in versions and prov["commit"][:12] in versions


async def test_a_schema_1_store_gains_the_column_and_stays_readable(tmp_path: Path) -> None:
    """A store written before provenance (schema 1, no column) is migrated at open: old events read back with no
    provenance, new ones carry it, and the report says the old ones were not recorded."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = IncidentStore(url)
    await store.init()
    incident, _ = await store.declare(Incident(title="Old outage", severity=Severity.P2))
    async with store.engine.begin() as conn:  # what a runbook of schema 1 left behind
        await conn.execute(text("ALTER TABLE timeline_events DROP COLUMN provenance"))
        await conn.execute(text("UPDATE runbook_meta SET value = '1' WHERE key = 'schema_version'"))
    await store.close()
    async with open_store(url) as reopened:
        assert await reopened.schema_version() == SCHEMA_VERSION == 2
        await reopened.acknowledge(incident.id, "ana")
        old, new = await reopened.timeline(incident.id)
        markdown = render_markdown(await load_report(reopened, incident.id))
    assert old.kind == "declared" and old.provenance == {} and new.provenance == code_version()
    assert "not recorded (older store): 1 event(s)" in markdown
