"""Slack: our Web API client's every exchange with the drill's Slack stand-in, checked against Slack's published
Web API document (specs/slack.json, converted from Swagger 2.0) and allowlist_slack.py; the interaction payloads
the stand-in sends and their signature, checked against Slack's own types and signing rules."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

import jsonschema
import pytest
from pydantic import SecretStr

from runbook.clients._http import RetryPolicy
from runbook.clients.slack import (
    APPROVE,
    REASON_BLOCK,
    REASON_INPUT,
    REJECT,
    SlackClient,
    approval_blocks,
    decided_blocks,
    parse_approval_value,
    reject_modal,
)
from runbook.drill import DrillStack
from runbook.drill.faults import Fault
from runbook.errors import AuthError, RequestRejected
from runbook.settings import Settings
from tests.contracts.allowlist_slack import SLACK_ALLOWED, SLACK_READINGS, interactions
from tests.contracts.contract import Exchange, Recorder, Spec, assert_conforms, check_all

VENDOR = "slack"


def _app(drill: DrillStack, **overrides: Any) -> Settings:
    """Return the drill's settings with the Slack app configured (bot token, signing secret, channel ids)."""
    slack = drill.slack
    return drill.settings().model_copy(update={
        "slack_bot_token": SecretStr(slack.bot_token), "slack_signing_secret": SecretStr(slack.signing_secret),
        "slack_api_url": f"{slack.base_url}/api", "slack_channel_ids": dict(slack.channel_ids), **overrides})


def _request(run: str = "0b7e1c4a-2f7e-4d7a-9a51-5b8a0e8c1d2f") -> list[dict[str, Any]]:
    return approval_blocks(action="code-rollback", summary="Roll back to dpl_prev", steps=["alias → dpl_prev"],
                           warnings=["users on the new build are moved"], plan_hash="db79ac80aa11bb22",
                           flow_run_id=run, url="http://127.0.0.1:4200/runs/flow-run/x", incident_id="inc-1")


def _validate(schema_name: str, value: Any) -> list[str]:
    doc = interactions()
    validator = jsonschema.Draft202012Validator({"$defs": doc["$defs"], **doc[schema_name]})
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(value)]


async def test_approval_request_update_modal_and_response_url_conform(drill: DrillStack, recorder: Recorder) -> None:
    """Post with buttons, update in place, open the reject modal, answer through response_url: all documented."""
    slack = drill.slack
    async with SlackClient.from_settings(_app(drill)) as client:
        recorder.watch(client.http)
        posted = await client.post_message("incidents", "Approval needed: code-rollback", _request())
        assert posted.channel_id == slack.channel_ids["incidents"] and posted.ts
        click = slack.click_payload(posted.ts, REJECT, "U0ALICE", "alice")
        value = click["actions"][0]["value"]
        _, action, plan_hash = parse_approval_value(value)
        await client.open_view(click["trigger_id"],
                               reject_modal(value, action=action, plan_hash=plan_hash,
                                            message={"response_url": click["response_url"]}))
        await client.respond(click["response_url"], {"response_type": "ephemeral", "replace_original": False,
                                                     "text": "Only Ben may approve this."})
        text = "*code-rollback*: Approved by Ben at 03:12 UTC via slack (plan db79ac80…)"
        await client.respond(click["response_url"], {"replace_original": True, "text": text,
                                                     "blocks": decided_blocks(text)})
        await client.update_message(posted.channel_id, posted.ts, text, decided_blocks(text, summary="Roll back"))
    paths = [e.path for e in recorder.exchanges]
    assert paths[:3] == ["/api/chat.postMessage", "/api/views.open", paths[2]] and paths[2].startswith("/actions/")
    assert paths[-1] == "/api/chat.update" and [e.status for e in recorder.exchanges] == [200] * 5
    assert all(e.response_json()["ok"] is True for e in recorder.exchanges)
    for ex in recorder.exchanges:  # the bot token goes to the Web API only, never to a URL a payload named
        assert ("authorization" in ex.request_headers) == ex.path.startswith("/api/"), ex.label()
    assert_conforms(VENDOR, recorder.exchanges)
    assert slack.buttons(slack.message(posted.ts)) == {} and len(slack.views()) == 1


async def test_web_api_errors_are_http_200_with_ok_false(drill: DrillStack, recorder: Recorder,
                                                         fast: RetryPolicy) -> None:
    """Unknown channel, unknown message, a used trigger and a wrong token: HTTP 200, ok false, a documented code,
    translated to RequestRejected / AuthError naming the code, each sent once."""
    slack = drill.slack
    async with SlackClient.from_settings(_app(drill), policy=fast) as client:
        recorder.watch(client.http)
        with pytest.raises(RequestRejected, match="channel_not_found"):
            await client.post_message("nosuch", "hello")
        with pytest.raises(RequestRejected, match="message_not_found"):
            await client.update_message(slack.channel_ids["incidents"], "1700000000.000001", "x")
        with pytest.raises(RequestRejected, match="invalid_trigger_id"):
            await client.open_view("1.2.unissued", reject_modal("r|a|h", action="a", plan_hash="h", message={}))
    async with SlackClient.from_settings(_app(drill, slack_bot_token=SecretStr("xoxb-not-the-token")),
                                         policy=fast) as client:
        recorder.watch(client.http)
        with pytest.raises(AuthError, match="invalid_auth") as raised:
            await client.post_message("incidents", "hello")
        assert "xoxb-not-the-token" not in str(raised.value)
    bodies = [e.response_json() for e in recorder.exchanges]
    assert [e.status for e in recorder.exchanges] == [200] * 4
    assert [b["error"] for b in bodies] == ["channel_not_found", "message_not_found", "invalid_trigger_id",
                                            "invalid_auth"]
    assert all(b["ok"] is False for b in bodies)
    assert_conforms(VENDOR, recorder.exchanges)


async def test_a_rate_limited_post_waits_what_retry_after_says(drill: DrillStack, recorder: Recorder,
                                                               fast: RetryPolicy) -> None:
    """Past chat.postMessage's per-channel limit Slack answers 429, Retry-After and {"ok": false, "error":
    "ratelimited"}; the client waits exactly that long (not its own backoff) and the message goes out once."""
    drill.slack.post_rate_limit = (1, 2.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the client's waits, recorded (and really waited)
        slept.append(seconds)
        await asyncio.sleep(seconds)

    async with SlackClient.from_settings(_app(drill), policy=fast, sleep=sleep) as client:
        recorder.watch(client.http)
        await client.post_message("incidents", "first")
        await client.post_message("incidents", "second")
    throttled = [e for e in recorder.exchanges if e.status == 429]
    assert throttled and [e.status for e in recorder.exchanges][-1] == 200
    assert throttled[0].response_json() == {"ok": False, "error": "ratelimited"}
    wait = float(throttled[0].response_headers["retry-after"])
    assert slept == [wait]  # one wait, exactly what Slack said: no backoff of its own
    assert 0 < wait <= drill.slack.post_rate_limit[1]  # what was left of the channel's window, never more
    assert [m["text"] for m in drill.slack.messages("incidents")] == ["first", "second"]
    assert_conforms(VENDOR, [e for e in recorder.exchanges if e.status != 429])
    # The one departure: the 2020 document spells the code rate_limited; Slack answers (and its SDKs read)
    # ratelimited. Nothing else about the 429 answer departs from the documented error shape.
    assert [p for p in check_all(VENDOR, throttled) if "'ratelimited' is not one of" not in p] == []


async def test_injected_faults_answer_in_slacks_shapes(drill: DrillStack) -> None:
    """A 429 or 5xx from the Web API is JSON ok:false with Retry-After on the 429; a webhook's is plain text."""
    slack = drill.slack
    slack.inject(Fault.rate_limit(retry_after=3, path="/api/chat.update"))
    slack.inject(Fault.error(503, path="/api/chat.postMessage"))
    slack.inject(Fault.rate_limit(retry_after=3, path="/services/"))
    import httpx

    auth = {"Authorization": f"Bearer {slack.bot_token}"}
    async with httpx.AsyncClient(base_url=slack.base_url) as http:
        limited = await http.post("/api/chat.update", json={"channel": "C0INCIDENTS", "ts": "1.1"}, headers=auth)
        down = await http.post("/api/chat.postMessage", json={"channel": "C0INCIDENTS", "text": "x"}, headers=auth)
        hook = await http.post(slack.webhook_url("incidents"), json={"text": "x"})
    assert (limited.status_code, limited.headers["retry-after"], limited.json()) == (
        429, "3", {"ok": False, "error": "ratelimited"})
    assert (down.status_code, down.json()) == (503, {"ok": False, "error": "service_unavailable"})
    assert (hook.status_code, hook.headers["content-type"].split(";")[0], hook.text) == (
        429, "text/plain", "rate_limited")


async def test_clicks_and_submissions_have_slacks_documented_shape(drill: DrillStack) -> None:
    """The stand-in's block_actions and view_submission payloads fit Slack's own types (Bolt's BlockAction,
    ButtonAction, ViewSubmit); response_url bodies fit the webhook client's fields."""
    slack = drill.slack
    async with SlackClient.from_settings(_app(drill)) as client:
        posted = await client.post_message("incidents", "Approval needed", _request())
        assert posted.ts
        approve = slack.click_payload(posted.ts, APPROVE, "U0BEN", "ben")
        reject = slack.click_payload(posted.ts, REJECT, "U0BEN", "ben")
        value = reject["actions"][0]["value"]
        await client.open_view(reject["trigger_id"], reject_modal(value, action="code-rollback",
                                                                  plan_hash="db79ac80aa11bb22", message={}))
    [view] = slack.views()
    submitted = slack.view_submission_payload(view["id"], "U0BEN", {REASON_BLOCK: {REASON_INPUT: "wrong target"}})
    assert _validate("block_actions", approve) == [] and _validate("block_actions", reject) == []
    assert _validate("view_submission", submitted) == []
    assert approve["actions"][0]["value"] == value and approve["container"]["message_ts"] == posted.ts
    assert _validate("response_url", {"response_type": "ephemeral", "text": "x", "replace_original": False}) == []
    assert _validate("response_url", {"text": "x", "colour": "red"}) != []  # the schema is closed: it can fail
    assert _validate("block_actions", {**approve, "actions": []}) != []


def test_interactions_are_signed_as_slack_documents(drill: DrillStack) -> None:
    """The body is form-encoded `payload=<json>`; X-Slack-Signature is v0= HMAC-SHA256 of 'v0:{ts}:{body}' with
    the signing secret, recomputed here from Slack's rules (not with our signer)."""
    slack = drill.slack
    payload = {"type": "block_actions", "user": {"id": "U0BEN", "name": "ben"}}
    body, headers = slack.signed_request(payload, timestamp=1531420618)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["X-Slack-Request-Timestamp"] == "1531420618"
    base = b"v0:1531420618:" + body
    expected = "v0=" + hmac.new(slack.signing_secret.encode(), base, hashlib.sha256).hexdigest()
    assert headers["X-Slack-Signature"] == expected
    form = parse_qs(body.decode(), strict_parsing=True)
    assert list(form) == ["payload"] and json.loads(form["payload"][0]) == payload
    _, other = slack.signed_request(payload, timestamp=1531420618, secret="another-secret")
    assert other["X-Slack-Signature"] != expected


def test_the_slack_allowances_are_needed_and_sourced() -> None:
    """Each Slack entry says why and who shows it, and the document really lacks it; readings are explained."""
    spec = Spec.load(VENDOR)
    for entry in SLACK_ALLOWED:
        assert len(entry.why) > 20 and len(entry.source) > 10
        assert entry.kind == "operation" and spec.match(entry.method, spec.base_path + entry.path) is None
    for why, source in SLACK_READINGS[VENDOR].values():
        assert len(why) > 20 and len(source) > 10
    converted = spec.provenance["converted"]
    assert "Swagger 2.0" in converted and spec.doc["openapi"].startswith("3.")


def test_an_ok_false_answer_is_checked_against_the_documented_errors() -> None:
    """A 200 with ok:false is read as Slack's error answer: an undocumented code or field is still reported."""
    import httpx

    def ex(body: dict[str, Any]) -> Exchange:
        return Exchange("POST", httpx.URL("https://slack.com/api/chat.postMessage"),
                        {"authorization": "Bearer t", "content-type": "application/json"},
                        json.dumps({"channel": "C0INCIDENTS", "text": "x"}).encode(), 200, {},
                        json.dumps(body).encode())

    assert check_all(VENDOR, [ex({"ok": False, "error": "channel_not_found"})]) == []
    assert any("not one of" in p for p in check_all(VENDOR, [ex({"ok": False, "error": "on_fire"})]))
    assert any("'ts' is a required property" in p for p in check_all(VENDOR, [ex({"ok": True, "channel": "C0X"})]))
