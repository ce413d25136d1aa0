"""The freeze (kill switch) from the command line, the Prefect flows, `runbook check` and the monitor (issue 19)."""

from __future__ import annotations

import pytest

from flows.freeze import FreezeParams, UnfreezeParams, freeze_remediations, unfreeze_remediations
from flows.monitor import MonitorParams, monitor
from runbook.cli.main import main
from runbook.drill import DrillStack
from runbook.settings import get_settings
from runbook.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def freezes() -> list[dict[str, object]]:
    """Return the freezes in force."""
    async with open_store() as store:
        return await store.freezes()


def test_freeze_and_unfreeze_from_the_command_line(drill_env: DrillStack, capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook freeze` holds every environment by default, a second freeze says 'already', `runbook check` shows
    it, and `runbook unfreeze` lifts it."""
    assert main(["freeze", "--reason", "exam week", "--by", "ana"]) == 0
    out = capsys.readouterr().out
    assert "frozen (every environment) by ana" in out and "exam week" in out
    assert main(["freeze", "--reason", "again", "--by", "ben"]) == 0
    assert capsys.readouterr().out.startswith("already: remediations frozen (every environment) by ana")
    main(["check"])
    assert "FROZEN: remediations are frozen (every environment) by ana" in capsys.readouterr().out
    assert main(["unfreeze", "--by", "ana"]) == 0
    assert "lifted: frozen (every environment) by ana" in capsys.readouterr().out
    main(["check"])
    assert "FROZEN" not in capsys.readouterr().out
    assert main(["unfreeze", "--by", "ana"]) == 0
    assert "nothing to lift" in capsys.readouterr().out


def test_bad_freeze_input_is_refused_before_anything_changes(drill_env: DrillStack,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A blank reason or an environment that is no name is a clear error and freezes nothing."""
    assert main(["freeze", "--reason", "  ", "--by", "ana"]) == 1
    assert "--reason must say why" in capsys.readouterr().err
    assert main(["freeze", "--reason", "x", "--by", "ana", "--environment", "prod;rm"]) == 1
    assert "not an environment name" in capsys.readouterr().err


async def test_freeze_flows_and_the_monitor_artifact(drill_env: DrillStack) -> None:
    """The freeze-remediations flow freezes one environment, the monitor's cycle shows it (summary and table), and
    unfreeze-remediations lifts it."""
    environment = get_settings().environment
    out = await freeze_remediations(FreezeParams(reason="database migration window", by="ana",
                                                 environment=environment))
    assert out.frozen and f"({environment})" in out.frozen[0]
    result = await monitor(MonitorParams(respond="none", cycles=1, interval_seconds=0))
    cycle = result.cycles[-1]
    assert cycle.frozen and "database migration window" in cycle.frozen
    [row] = [r for r in cycle.rows if r["metric"] == "remediations"]
    assert row["state"] == "frozen" and "ana" in row["detail"]
    lifted = await unfreeze_remediations(UnfreezeParams(by="ana"))
    assert lifted.summary.startswith("lifted:") and lifted.frozen == [] and await freezes() == []
    again = await monitor(MonitorParams(respond="none", cycles=1, interval_seconds=0))
    assert again.cycles[-1].frozen is None
