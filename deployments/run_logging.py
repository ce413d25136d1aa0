"""The console logging of flow-run processes that `runbook up` starts: a run stopped at Ctrl-C says so in one line.

Runs in flight are cancelled at Ctrl-C: Prefect sends each run's process SIGTERM, the engine raises TerminationSignal
and, on its way out, asyncio logs "unhandled exception during asyncio.run() shutdown" with the whole chained
traceback into the terminal of `runbook up` (the served runs share it), and every task run cut short logs "Crash
detected! Execution was cancelled by the runtime environment." at ERROR. The flow's "Flow run was cancelled." and the
engine's "Execution of flow run … was terminated." already say what happened, so the console drops records whose
exception is (or was caused by) TerminationSignal and those echoes; the API log and Prefect's UI keep every record.

`logging_config(path)` writes Prefect's own logging.yml with that filter on its console handler; `runbook up` points
its flow-run processes at it with PREFECT_LOGGING_SETTINGS_PATH.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


# What the engine says of the task runs a cancellation cut short, and of the cancelled flow run on its way out
# ("Finished in state Running()"): one line per task run, at ERROR, about a stop that was asked for.
ECHOES = ("Execution was cancelled by the runtime environment", "Finished in state Running()")


class QuietTermination(logging.Filter):
    """Drop console records of a run stopped on purpose: its TerminationSignal traceback and their echoes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import TerminationSignal

        exc = record.exc_info[1] if record.exc_info else None
        if any(isinstance(e, TerminationSignal) for e in _chain(exc)):
            return False
        message = record.getMessage()
        return not any(echo in message for echo in ECHOES)


def logging_config(path: Path) -> Path:
    """Write Prefect's default logging configuration, with QuietTermination on the console, to path."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH

    config: dict[str, Any] = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    config.setdefault("filters", {})["quiet_termination"] = {"()": f"{__name__}.QuietTermination"}
    console = config["handlers"]["console"]
    console["filters"] = [*console.get("filters", []), "quiet_termination"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
