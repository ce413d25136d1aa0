"""End-to-end fixtures: prefect.yaml's deployments registered on the session's Prefect test harness."""

from __future__ import annotations

from uuid import UUID

import pytest

from tests.e2e.deploy_support import register_all


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` marker (tests that start their own Prefect server)."""
    config.addinivalue_line("markers", "slow: starts its own Prefect server or worker (tens of seconds)")


@pytest.fixture(scope="session")
async def registered_deployments(prefect_harness: None) -> dict[str, UUID]:
    """Register every prefect.yaml deployment on the harness server once; return name → deployment id."""
    return await register_all()
