"""Fixtures of the contract tests: the session's drill stack, clean per test, and a recorder of exchanges."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runbook.clients._http import RetryPolicy
from runbook.drill import DrillStack
from tests.contracts.contract import Recorder

# Short backoff keeps retried paths quick; Retry-After values are still honoured as sent.
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, connect_timeout=2.0, read_timeout=5.0)


@pytest.fixture
def drill(drill_stack: DrillStack) -> Iterator[DrillStack]:
    """Give a test the stack without faults or records, and put it back at its baseline afterwards."""
    for standin in drill_stack.standins:
        standin.clear_faults()
        standin.clear_requests()
    yield drill_stack
    drill_stack.reset()


@pytest.fixture
def recorder() -> Recorder:
    """Return an empty exchange recorder."""
    return Recorder()


@pytest.fixture
def fast() -> RetryPolicy:
    """Return the quick retry policy."""
    return FAST
