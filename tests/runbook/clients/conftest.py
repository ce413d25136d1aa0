"""Fixtures of the client tests: one drill stack (real HTTP on 127.0.0.1, real Postgres) for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runbook.clients._http import RetryPolicy
from runbook.drill import DrillStack
from runbook.settings import Settings

# Short backoff and timeouts keep failure paths quick; Retry-After values are still honoured as sent.
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, connect_timeout=2.0, read_timeout=5.0)


@pytest.fixture(scope="session")
def stack() -> Iterator[DrillStack]:
    """Start the drill stack once for the client tests."""
    with DrillStack(users=40) as drill:
        yield drill


@pytest.fixture
def drill(stack: DrillStack) -> Iterator[DrillStack]:
    """Give a test the stack with empty request records, and put it back at its seeded baseline afterwards."""
    for standin in stack.standins:
        standin.clear_faults()
        standin.clear_requests()
    yield stack
    stack.reset()


@pytest.fixture
def settings(stack: DrillStack) -> Settings:
    """Return runbook settings pointing at every stand-in of the stack (read-only tests need no reset)."""
    return stack.settings()


@pytest.fixture
def fast() -> RetryPolicy:
    """Return the quick retry policy."""
    return FAST
