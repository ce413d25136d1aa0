"""End-to-end fixtures: prefect.yaml's deployments registered on the session's Prefect test harness, and one real
Prefect server started as `runbook up` starts it, with every deployment deployed to runbook-pool, shared by the
deployment, UI, lifecycle and topology tests (the xdist group POOL_SERVER: it starts once, on one worker)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from deployments.local_server import LocalPrefectServer, new_api_auth_string, prefect_on_postgres
from deployments.serve import PROJECT_DIR
from tests.e2e.deploy_support import prefect_settings, register_all

# A run of the pool server silent this long is set Crashed (production: 90 s, three 30 s heartbeats missed); the
# killed-worker test waits for it. Two heartbeats: a loaded machine's late beat is not taken for a death.
CRASHED_AFTER_SECONDS = 60.0


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` marker (tests that start their own Prefect server)."""
    config.addinivalue_line("markers", "slow: starts its own Prefect server or worker (tens of seconds)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test marked xdist_group its group as the nodeid suffix `@<group>`, as pytest-xdist's loadgroup does.

    pytest-xdist 3.8 sets `item._nodeid`, which pytest 9 no longer reads (its nodeid is `item._id`): the groups were
    silently ignored and the pool server started on both workers. Does nothing once xdist's own suffix is there.
    """
    if not getattr(config.option, "loadgroup", False):  # an xdist worker of `--dist loadgroup` only
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.fixture(scope="session")
async def registered_deployments(prefect_harness: None) -> dict[str, UUID]:
    """Register every prefect.yaml deployment on the harness server once; return name → deployment id."""
    return await register_all()


@pytest.fixture(scope="session")
def pool_server() -> Iterator[LocalPrefectServer]:
    """A Prefect server as `runbook up` starts it (embedded PostgreSQL, a free port, the UI pointed at its own
    API, API authentication: its clients pass `srv.auth_string`, in `srv.env()`, `srv.client_settings()` or
    `srv.api_headers`), without the scheduler (the monitor's every-minute runs would queue up for the tests'
    workers), with runbook-pool created and prefect.yaml deployed to it through the API as `runbook up --workers`
    deploys it, and its crash detection answering within CRASHED_AFTER_SECONDS (every worker here beats every 30 s).

    `prefect deploy --all` itself, what users run, is proven once by test_prefect_deploy_all_registers_every_deployment
    on this same server.
    """

    from deployments.workers import deploy_to_pool

    # Not under pytest's 0700 temporary root: as root, the wheel runs postgres as its own user, which must reach it.
    home = Path(tempfile.mkdtemp(prefix="runbook-pool-server-"))
    try:
        with prefect_on_postgres(home, server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
                                 auth_string=new_api_auth_string()) as srv:
            with prefect_settings(srv.client_settings()):
                asyncio.run(deploy_to_pool(crashed_after=CRASHED_AFTER_SECONDS))
            yield srv
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def deployed(pool_server: LocalPrefectServer) -> tuple[LocalPrefectServer, dict[str, str]]:
    """The pool server and an environment for Prefect CLI subprocesses talking to it (its API credential in
    PREFECT_API_AUTH_STRING; workers poll every second)."""
    env = pool_server.env(PWD=str(PROJECT_DIR), RUNBOOK_STATE_DIR=str(pool_server.home / "state"),
                          PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="2",
                          PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")  # as the Topology's workers: see above
    return pool_server, env
