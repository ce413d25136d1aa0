"""Slack's request signature, the approvers map and the store's one-decision-per-plan claim."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runbook.errors import ConfigError
from runbook.intake.signatures import sign_slack, verify_slack
from runbook.models import Approval, ApprovalRequest, utcnow
from runbook.policy import load_policy, two_person_violation
from runbook.store import IncidentStore

# Slack's own worked example ("Verifying requests from Slack", api.slack.com/authentication/verifying-requests-
# from-slack): this secret, timestamp and body give exactly this signature.
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TS = "1531420618"
BODY = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
        b"channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
        b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
        b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def _headers(signature: str = SIGNATURE, ts: str = TS) -> dict[str, str]:
    return {"x-slack-signature": signature, "x-slack-request-timestamp": ts}


def test_sign_slack_reproduces_slacks_documented_example() -> None:
    """Our signer gives the signature of Slack's documentation for its example request."""
    assert sign_slack(BODY, SECRET, TS) == SIGNATURE


def test_verify_slack_accepts_fresh_and_refuses_forged_or_replayed() -> None:
    """Within 5 minutes the example verifies; a changed body or secret, or an old timestamp, does not."""
    from pydantic import SecretStr

    now = int(TS) + 299
    assert verify_slack(_headers(), BODY, SecretStr(SECRET), now) == "ok"
    assert verify_slack(_headers(), BODY + b"x", SecretStr(SECRET), now) == "bad-signature"
    assert verify_slack(_headers(), BODY, SecretStr("another-secret"), now) == "bad-signature"
    assert verify_slack(_headers(), BODY, SecretStr(SECRET), int(TS) + 301) == "stale"
    assert verify_slack(_headers(ts="not-a-number"), BODY, SecretStr(SECRET), now) == "stale"
    assert verify_slack(_headers(), BODY, None, now) == "unconfigured"


def test_approvers_map_loads_and_rejects_non_slack_ids(tmp_path: Path) -> None:
    """`approvers` maps Slack user ids to people and actions; a key that is no Slack id is a clear error."""
    good = tmp_path / "p.yaml"
    good.write_text("approvers:\n  U012ABC: {name: Ben, may_approve: [database-rollback]}\n")
    ben = load_policy(good).approver("U012ABC")
    assert ben is not None and ben.allowed("database-rollback") and not ben.allowed("code-rollback")
    bad = tmp_path / "bad.yaml"
    bad.write_text("approvers:\n  ben: {name: Ben}\n")
    with pytest.raises(ConfigError, match="not Slack user ids"):
        load_policy(bad)


def test_two_person_rule_compares_identities_when_both_have_one() -> None:
    """Same verified id → refused even under another name; different ids → allowed even with the same name."""
    assert two_person_violation("Ben", "U1", "benjamin", "U1")
    assert two_person_violation("Ben", "U2", "Ben", "U1") is None
    assert two_person_violation("ben", "U2", "Ben", None)  # no requester identity: the names decide


async def test_concurrent_claims_give_one_decision(store: IncidentStore) -> None:  # noqa: F811 - the fixture
    """Ten claims of the same pending request at once: exactly one wins; a newer plan supersedes the old one."""
    request = ApprovalRequest(flow_run_id="run-1", action="code-rollback", plan_hash="aaaa1111")
    assert (await store.open_approval_request(request))[1]
    assert not (await store.open_approval_request(request))[1]  # a re-run of the same plan: the same request

    def claim(n: int) -> Approval:
        return Approval(decision="approve", approver=f"p{n}", plan_hash="aaaa1111", via="slack", identity=f"U{n}")

    results = await asyncio.gather(*(store.claim_approval("run-1", "aaaa1111", claim(n)) for n in range(10)))
    winners = [current for current, won in results if won]
    assert len(winners) == 1
    stored = await store.approval_request("run-1", "aaaa1111")
    assert stored is not None and stored.status == "claimed" and stored.claim is not None
    await store.open_approval_request(request.model_copy(update={"plan_hash": "bbbb2222", "requested_at": utcnow()}))
    latest = await store.approval_request("run-1", action="code-rollback")
    assert latest is not None and latest.plan_hash == "bbbb2222" and latest.status == "pending"


# -- who requested: the other side of the two-person rule -----------------------------------------------------

POLICY = "approvers:\n  U0ALICE: {name: Alice, may_approve: ['*']}\n  U0BEN: {name: Ben, may_approve: ['*']}\n"


def test_automation_requests_as_the_runbook_so_any_person_is_a_second_one() -> None:
    """respond's default 'runbook' becomes 'runbook/<the flow that started it>' with no identity; Ben may approve
    even the two-person database rollback it started, and an identity passed alongside is not kept."""
    from flows._remediation import RemediationParams, requester_of

    auto = requester_of(RemediationParams(requested_by="runbook", requester_identity="U0BEN"),
                        starter="respond-p0", from_deployment=True)
    assert (auto.name, auto.identity, auto.via) == ("runbook/respond-p0", None, "runbook")
    assert two_person_violation("Ben", "U0BEN", auto.name, auto.identity) is None
    unnamed_subflow = requester_of(RemediationParams(), starter="respond-p1", from_deployment=False)
    assert (unnamed_subflow.name, unnamed_subflow.via) == ("runbook/respond-p1", "runbook")


def test_a_person_keeps_their_name_identity_and_channel() -> None:
    """A name typed into the UI form is via prefect-ui; a Slack request keeps the verified id; the same person
    approving is refused by the rule, a different one is not."""
    from flows._remediation import RemediationParams, requester_of

    ui = requester_of(RemediationParams(requested_by="alice"), starter=None, from_deployment=True)
    assert (ui.name, ui.identity, ui.via) == ("alice", None, "prefect-ui")
    assert two_person_violation("Alice", "U0ALICE", ui.name, ui.identity)  # no identity: the names decide
    slack = requester_of(RemediationParams(requested_by="Alice", requester_identity="U0ALICE",
                                           requested_via="slack"), starter=None, from_deployment=True)
    assert (slack.name, slack.identity, slack.via) == ("Alice", "U0ALICE", "slack")
    assert two_person_violation("Alice (phone)", "U0ALICE", slack.name, slack.identity)
    assert two_person_violation("Ben", "U0BEN", slack.name, slack.identity) is None
    nobody = requester_of(RemediationParams(), starter=None, from_deployment=False)
    assert (nobody.name, nobody.via) == (None, "api")


def test_the_cli_records_by_its_approvers_identity_and_the_os_user(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`--by Ben` takes Ben's approvers-map id (so Ben approving in Slack is the requester), `--as` names it
    explicitly, the OS user is recorded and the channel is cli."""
    import getpass

    from runbook.cli.main import build_parser
    from runbook.cli.remediate import build_params
    from tests.conftest import write_policy

    write_policy(tmp_path, monkeypatch, POLICY)
    parser = build_parser()
    params = build_params(parser.parse_args(["remediate", "database-rollback", "--by", "ben",
                                             "--param", "versions=[\"20250127093000\"]"]))
    assert params == {"versions": ["20250127093000"], "incident_id": None, "dry_run": False, "requested_by": "ben",
                      "requester_identity": "U0BEN", "requested_via": "cli", "requester_os_user": getpass.getuser()}
    explicit = build_params(parser.parse_args(["remediate", "code-rollback", "--by", "Ben", "--as", "U0BEN"]))
    assert (explicit["requested_by"], explicit["requester_identity"]) == ("Ben", "U0BEN")
    unknown = build_params(parser.parse_args(["remediate", "code-rollback", "--by", "Carol"]))
    assert unknown["requester_identity"] is None  # not in the map: the names decide


@pytest.mark.parametrize(("argv", "says"), [
    (["--by", "ben", "--as", "U0NOBODY"], "not in the policy's approvers map"),
    # borrowing another approver's identity would let one approve one's own request as "the second person"
    (["--by", "alice", "--as", "U0BEN"], "is Ben in the approvers map, not alice"),
    (["--by", "ben", "--as", "ben"], "not a Slack user id"),
    (["--by", "ben", "--incident", "INC-1"], "not an incident id"),
    (["--by", "ben", "--param", "requested_by=alice"], "with the command's own options"),
    (["--by", "ben", "--param", "no equals sign"], "not KEY=VALUE"),
])
def test_the_cli_refuses_bad_requests_before_anything_starts(argv: list[str], says: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A bad identity, incident id or field is a clear one-line error (exit 1) and no Prefect call is made."""
    from runbook.cli.main import main
    from tests.conftest import write_policy

    write_policy(tmp_path, monkeypatch, POLICY)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: a call would fail loudly
    assert main(["remediate", "code-rollback", *argv]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and "was not started" not in err
