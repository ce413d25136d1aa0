"""End-to-end fixtures: prefect.yaml's deployments registered on the session's Prefect test harness, and a real
Prefect server started as `runbook up` starts it, with every deployment deployed to it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from uuid import UUID

import pytest

from deployments.local_server import LocalPrefectServer, prefect_command, prefect_on_postgres
from deployments.serve import PROJECT_DIR
from tests.e2e.deploy_support import register_all


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` marker (tests that start their own Prefect server)."""
    config.addinivalue_line("markers", "slow: starts its own Prefect server or worker (tens of seconds)")


@pytest.fixture(scope="session")
async def registered_deployments(prefect_harness: None) -> dict[str, UUID]:
    """Register every prefect.yaml deployment on the harness server once; return name → deployment id."""
    return await register_all()


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPrefectServer, dict[str, str]]]:
    """Start a Prefect server as `runbook up` does (embedded PostgreSQL, a free port, the UI pointed at its own
    API), create runbook-pool and run `prefect --no-prompt deploy --all`; shared by the deployment and UI tests."""
    home = tmp_path_factory.mktemp("prefect-home")
    # No scheduler: the monitor's every-minute runs would otherwise queue up for the worker of test_deployments.
    with prefect_on_postgres(home, server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}) as server:
        env = server.env(PWD=str(PROJECT_DIR), RUNBOOK_STATE_DIR=str(home / "state"),
                         PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="2")
        for args in (["work-pool", "create", "runbook-pool", "--type", "process"], ["--no-prompt", "deploy", "--all"]):
            done = subprocess.run([*prefect_command(), *args], env=env, cwd=PROJECT_DIR, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield server, env
