"""Waiting for the event itself: poll a condition until it holds, with a deadline far from any step size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(condition: Callable[[], T | Awaitable[T]], what: str, timeout: float = 60.0,
                     interval: float = 0.05) -> T:
    """Return the first truthy value of `condition()` (sync or async); fail naming `what` after `timeout` seconds.

    The deadline only bounds a hang: on a loaded machine the event may take many times longer than on an idle one,
    and the test must still pass, so keep `timeout` generous and assert order and counts, not durations.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value  # type: ignore[misc]
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
