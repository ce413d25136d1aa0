"""Fixtures of the drill tests: one drill stack for the session, reset to its baseline before each test.

`drill_stack_session` is self-contained (it only imports runbook.drill) so it can move to tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from runbook.drill import DrillStack


@pytest.fixture(scope="session")
def drill_stack_session(drill_stack: DrillStack) -> DrillStack:
    """Return the session's shared drill stack (tests/conftest.py starts it once for every suite)."""
    return drill_stack


@pytest.fixture
def stack(drill_stack_session: DrillStack) -> DrillStack:
    """Return the session's drill stack reset to the seeded baseline."""
    drill_stack_session.reset()
    return drill_stack_session


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """Return an httpx client with a short timeout."""
    with httpx.Client(timeout=10) as client:
        yield client
