"""What several benchmarks share: a throw-away home directory, and waiting for a Prefect run to end."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def in_temp_home(prefix: str, run: Callable[[Path], None], *, keep: bool = False) -> None:
    """Call `run(home)` with a new temporary directory, deleted afterwards (kept, and its path printed, if `keep`)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run(home)
    finally:
        if keep:
            print(f"kept {home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)


async def until(condition: Callable[[], Any], timeout: float, poll: float = 0.02) -> Any:
    """Return the first truthy value of `condition()` (a function or a coroutine function) within `timeout` seconds,
    polled every `poll` seconds; None after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition() if asyncio.iscoroutinefunction(condition) else condition()
        if value:
            return value
        await asyncio.sleep(poll)
    return None


async def final_run(read: Callable[[uuid.UUID], Awaitable[Any]], run_id: uuid.UUID, timeout: float) -> Any:
    """Return the task or flow run (`read`: the client's read_task_run / read_flow_run) once its state is final;
    None when it is not within `timeout` seconds."""

    async def done() -> Any:
        run = await read(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return await until(done, timeout)


def cpu_seconds(pids: set[int], marker: str | None = None) -> float:
    """Return the CPU time (user + system) used so far by the processes `pids`, the processes whose command line
    contains `marker`, and all their descendants (Linux /proc; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}  # pid → (ppid, cpu)
    roots = set(pids)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if marker and marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                roots.add(int(entry.name))
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, frontier, seen = 0.0, set(roots), set()
    while frontier:
        pid = frontier.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        frontier.update(child for child, (parent, _) in stats.items() if parent == pid)
    return total
