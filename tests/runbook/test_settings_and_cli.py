"""Settings never leak secrets; the CLI reads the store and reports configuration errors clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.cli import main
from runbook.errors import ConfigError
from runbook.settings import fingerprint, load_settings

SECRET = "sk_live_do_not_print_me_123456"
WHSEC = "whsec_very_secret_value_987"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Set secrets in the environment."""
    monkeypatch.setenv("RUNBOOK_STRIPE_SECRET_KEY", SECRET)
    monkeypatch.setenv("RUNBOOK_STRIPE_WEBHOOK_SECRET", WHSEC)
    monkeypatch.setenv("RUNBOOK_VERCEL_TOKEN", SECRET + "v")
    monkeypatch.setenv("RUNBOOK_STATE_DIR", str(tmp_path / "state"))


def test_config_output_hides_secrets(secret_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook config` shows set + fingerprint, never the value."""
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and WHSEC not in out
    assert f"set ({fingerprint(SECRET)})" in out
    assert "supabase_anon_key" in out and "unset" in out


def test_settings_repr_hides_secrets(secret_env: None) -> None:
    """repr() and str() of settings never show a secret."""
    s = load_settings()
    assert SECRET not in repr(s) and SECRET not in str(s) and WHSEC not in repr(s)


def test_invalid_secret_error_hides_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed secret fails naming the variable, without the value."""
    monkeypatch.setenv("RUNBOOK_STRIPE_WEBHOOK_SECRET", "not_whsec_" + SECRET)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "RUNBOOK_STRIPE_WEBHOOK_SECRET" in str(err.value) and SECRET not in str(err.value)


def test_config_invalid_exits_nonzero(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid URL setting makes `runbook config` exit 2 with a clear message."""
    monkeypatch.setenv("RUNBOOK_APP_URL", "permit.school")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "RUNBOOK_APP_URL" in err and "http" in err


def test_fingerprint_is_short_and_stable() -> None:
    """A fingerprint is 'sha256:' + 8 hex, the same for the same value, different for another."""
    assert fingerprint(WHSEC) == fingerprint(WHSEC) != fingerprint(SECRET)
    assert len(fingerprint(WHSEC)) == len("sha256:") + 8


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook --help` lists the commands."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("config", "incidents", "ack"):
        assert cmd in out


async def test_incidents_list_show_and_ack(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A declared incident is listed, shown with its timeline, and acknowledged from the CLI."""
    import asyncio

    from runbook.models import Incident, Severity
    from runbook.store import open_store

    async with open_store() as store:
        inc, _ = await store.declare(Incident(title="Billing broken", severity=Severity.P1, fingerprint="f"))

    def run(argv: list[str]) -> int:
        return asyncio.get_running_loop().run_in_executor(None, main, argv)  # type: ignore[return-value]

    assert await run(["incidents", "list"]) == 0
    assert inc.id in capsys.readouterr().out
    assert await run(["ack", inc.id, "--by", "alice"]) == 0
    assert "acknowledged by alice" in capsys.readouterr().out
    assert await run(["incidents", "show", inc.id]) == 0
    out = capsys.readouterr().out
    assert "declared" in out and "acknowledged" in out
    assert await run(["incidents", "show", "inc-nope"]) == 1


def test_the_readme_links_nothing_outside_the_repository() -> None:
    """A clone has only what is in it: no `../` paths and no web links in the README."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "../" not in text
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", text)


STORE_PASSWORD = "pw_do_not_print_me_42"


@pytest.mark.parametrize("as_json", [False, True])
def test_config_masks_the_store_urls_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """`runbook config` shows the store URLs with the password masked, and a string that is no URL not at all."""
    monkeypatch.setenv("RUNBOOK_STORE_URL", f"postgresql://runbook:{STORE_PASSWORD}@db.internal:5432/incidents")
    monkeypatch.setenv("RUNBOOK_MONITOR_STORE_URL", f"not a url {STORE_PASSWORD}")
    assert main(["config", *(["--json"] if as_json else [])]) == 0
    out = capsys.readouterr().out
    assert STORE_PASSWORD not in out
    assert "postgresql://runbook:***@db.internal:5432/incidents" in out and "<unreadable URL>" in out


@pytest.mark.parametrize(("url", "code", "says"), [
    (f"postgresql://runbook:{STORE_PASSWORD}@127.0.0.1:1/incidents", 1,
     "the incident store at postgresql://runbook:***@127.0.0.1:1/incidents cannot be used: ConnectionRefusedError"),
    (f"mysql://runbook:{STORE_PASSWORD}@db.internal/incidents", 2, "database 'mysql' is not supported"),
    (f"runbook:{STORE_PASSWORD} at db.internal", 2, "is not a database URL"),
])
def test_a_store_that_cannot_be_used_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, code: int,
    says: str,
) -> None:
    """An unreachable store, an unsupported database, a mistyped URL: one line naming it, no traceback, no password."""
    monkeypatch.setenv("RUNBOOK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RUNBOOK_STORE_URL", url)
    assert main(["incidents", "list"]) == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert STORE_PASSWORD not in captured.out + captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(("name", "text", "where"), [
    ("policy.yaml", f'monitoring:\n  interval_seconds: 60\n  token: "{SECRET}\n', "line 4, column 1"),
    ("policy.yaml", f"monitoring:\n\tkey: {SECRET}\n", "line 2, column 1"),
    ("policy.toml", f"[monitoring]\ntoken = = {SECRET}\n", "line 2"),
])
def test_a_malformed_policy_file_is_named_without_quoting_its_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str,
    where: str,
) -> None:
    """A policy file that does not parse: its path, what is wrong and where; none of its text (a value may be secret)"""
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setenv("RUNBOOK_POLICY_FILE", str(path))
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert f"policy file {path} is not valid" in err and where in err, err
    assert SECRET not in err and len(err.strip().splitlines()) == 1, err
