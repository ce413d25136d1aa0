"""`runbook check`: one harmless call per configured integration, against the drill stack."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from runbook.cli.preflight import format_table, register, run_preflight
from runbook.drill import DrillStack
from runbook.settings import Settings

WRONG_VERCEL = "vcp_wrong_preflight_token_0123456789"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbook")
    register(parser.add_subparsers(dest="command"))
    return parser


async def test_every_integration_is_ok_against_the_drill_stack(settings: Settings) -> None:
    """All eleven integrations are configured by the stack and every check passes."""
    results = await run_preflight(settings)
    assert len(results) == 11
    assert [r.integration for r in results if r.state != "ok"] == [], format_table(results)


async def test_pagerduty_and_slack_say_they_sent_nothing(settings: Settings) -> None:
    """The two integrations without a harmless call validate shape only and say so."""
    results = {r.integration: r for r in await run_preflight(settings)}
    assert "not sent" in results["pagerduty"].detail and "no message posted" in results["slack"].detail


async def test_a_wrong_vercel_token_fails_only_that_row(drill: DrillStack, settings: Settings) -> None:
    """With a wrong Vercel token the vercel row fails with 401, the others stay ok, the token is never shown."""
    bad = settings.model_copy(update={"vercel_token": SecretStr(WRONG_VERCEL)})
    results = await run_preflight(bad)
    states = {r.integration: r.state for r in results}
    assert states.pop("vercel") == "failed" and set(states.values()) == {"ok"}
    table = format_table(results)
    dumped = json.dumps([r.model_dump() for r in results])
    assert "HTTP 401" in table and WRONG_VERCEL not in table and WRONG_VERCEL not in dumped
    assert not drill.slack.messages() and not drill.pagerduty.events


async def test_unconfigured_integrations_are_not_failures() -> None:
    """With no settings at all every row is unconfigured, naming the variable to set."""
    results = await run_preflight(Settings(_env_file=None))  # type: ignore[call-arg]
    assert {r.state for r in results} == {"unconfigured"}
    vercel = next(r for r in results if r.integration == "vercel")
    assert "RUNBOOK_VERCEL_TOKEN" in vercel.detail


def test_check_command_returns_non_zero_when_a_check_fails(
    stack: DrillStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runbook check` prints the table and exits 1 when the Vercel token is wrong (never printing it)."""
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RUNBOOK_VERCEL_TOKEN", WRONG_VERCEL)
    args = _parser().parse_args(["check"])
    code = args.func(args)
    out = capsys.readouterr().out
    assert code == 1 and "vercel" in out and "failed" in out and WRONG_VERCEL not in out


def test_check_command_json_exits_zero_when_all_ok(
    stack: DrillStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runbook check --json` prints one JSON object per integration and exits 0 on a healthy stack."""
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    args = _parser().parse_args(["check", "--json"])
    code = args.func(args)
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and {r["state"] for r in rows} == {"ok"} and len(rows) == 11


def test_check_with_nothing_configured_exits_non_zero_and_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A fresh install with no RUNBOOK_* settings is not "all fine": exit 2 and name the settings to set."""
    monkeypatch.chdir(tmp_path)  # no .env here
    args = _parser().parse_args(["check"])
    code = args.func(args)
    captured = capsys.readouterr()
    assert code == 2 and "unconfigured" in captured.out
    assert "nothing is configured" in captured.err and "RUNBOOK_PAGERDUTY_ROUTING_KEY" in captured.err


async def test_slack_says_when_messages_have_no_buttons(drill: DrillStack, settings: Settings) -> None:
    """Webhooks only: the slack row says there are no buttons; a bot token without signing secret fails."""
    results = {r.integration: r for r in await run_preflight(settings)}
    assert results["slack"].state == "ok" and "no Approve / Reject / Acknowledge buttons" in results["slack"].detail
    app = drill.slack
    with_app = settings.model_copy(update={"slack_bot_token": SecretStr(app.bot_token),
                                           "slack_signing_secret": SecretStr(app.signing_secret)})
    row = {r.integration: r for r in await run_preflight(with_app)}["slack"]
    assert row.state == "ok" and "messages carry buttons" in row.detail
    unsigned = settings.model_copy(update={"slack_bot_token": SecretStr(app.bot_token)})
    row = {r.integration: r for r in await run_preflight(unsigned)}["slack"]
    assert row.state == "failed" and "SIGNING_SECRET" in row.detail and app.bot_token not in row.detail


async def test_pagerduty_row_says_how_pager_acknowledgements_are_seen(settings: Settings) -> None:
    """With the REST token the check reads PagerDuty's REST API once; with neither token nor webhook secret it
    warns that acknowledgements made in PagerDuty will not be seen."""
    both = {r.integration: r for r in await run_preflight(settings)}["pagerduty"]
    assert both.state == "ok" and "REST API token works" in both.detail and "V3 webhooks" in both.detail
    bare = settings.model_copy(update={"pagerduty_api_token": None, "pagerduty_webhook_secret": None})
    neither = {r.integration: r for r in await run_preflight(bare)}["pagerduty"]
    assert "WARNING" in neither.detail and "will not be seen" in neither.detail
    assert "RUNBOOK_PAGERDUTY_WEBHOOK_SECRET" in neither.detail and "RUNBOOK_PAGERDUTY_API_TOKEN" in neither.detail
    wrong = settings.model_copy(update={"pagerduty_api_token": SecretStr("u+wrong-pagerduty-token-000")})
    failed = {r.integration: r for r in await run_preflight(wrong)}["pagerduty"]
    assert failed.state == "failed" and "401" in failed.detail and "wrong-pagerduty" not in failed.detail
