"""The alert intake: authenticated alerts start declare-incident; bad auth is 401, bad payloads 400 and kept."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import uvicorn

from deployments.local_server import free_port
from runbook.cli import main
from runbook.intake import MAX_BODY_BYTES, create_app, sign
from runbook.intake.common import PARAMETERS_LIMIT_BYTES
from runbook.store import open_store
from tests.e2e.deploy_support import delete_runs, read_run, runs_of
from tests.waiting import eventually

TOKEN = "intake-token-0123456789abcdef"
SECRET = "intake-hmac-secret-0123456789"
GENERIC = {"source": "uptime-robot", "fingerprint": "uptime:app", "summary": "permit.school is down",
           "rule": "application_down", "labels": {"region": "us-east"}}
SENTRY_EVENT = {"action": "triggered", "data": {
    "event": {"issue_id": "4711", "title": "TypeError: cannot read 'id' of null", "culprit": "app/checkout",
              "level": "error", "tags": [["environment", "production"]]},
    "triggered_rule": "Errors in checkout"}}
SENTRY_ISSUE = {"action": "created", "data": {
    "issue": {"id": "4712", "title": "Auth session lost", "culprit": "app/login", "level": "fatal",
              "project": {"slug": "permit-school-web"}}}}
VERCEL = {"id": "evt_1", "type": "deployment.error", "payload": {
    "deployment": {"id": "dpl_abc", "url": "permit-school-abc.vercel.app", "name": "permit-school"},
    "project": {"id": "prj_123"}, "target": "production"}}

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def intake_env(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Configure the intake's bearer token and HMAC secret (and a fresh store)."""
    monkeypatch.setenv("RUNBOOK_INTAKE_TOKEN", TOKEN)
    monkeypatch.setenv("RUNBOOK_INTAKE_HMAC_SECRET", SECRET)
    return state_dir


@pytest.fixture
async def client(intake_env: Path, registered_deployments: dict[str, UUID]) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the intake app (ASGI); the declare runs it causes are deleted afterwards."""
    before = {r.id for r in await runs_of(registered_deployments["declare-incident"])}
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as c:
        yield c
    await app.state.outbox.aclose()
    after = {r.id for r in await runs_of(registered_deployments["declare-incident"])}
    await delete_runs(list(after - before))


async def declare_runs(registered: dict[str, UUID]) -> set[UUID]:
    """Return the ids of every declare-incident run."""
    return {r.id for r in await runs_of(registered["declare-incident"])}


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
async def live_intake(client: httpx.AsyncClient) -> AsyncIterator[str]:
    """Serve the intake with uvicorn on a free 127.0.0.1 port; return its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_alert_over_http_starts_declare_incident(live_intake: str,
                                                      registered_deployments: dict[str, UUID]) -> None:
    """A bearer-authenticated alert over real HTTP answers 202 and creates a declare-incident run of the alert."""
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{live_intake}/alerts", json=GENERIC, headers=bearer())
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted" and body["fingerprint"] == "uptime:app"
    run = await read_run(body["incident_flow_run_id"])
    assert run.deployment_id == registered_deployments["declare-incident"]
    params = run.parameters["params"]
    assert params["respond"] == "deployment" and params["alert"]["rule"] == "application_down"
    assert params["alert"]["summary"] == "permit.school is down" and params["alert"]["raw"] == GENERIC


async def test_readme_curl_examples_are_accepted(live_intake: str) -> None:
    """The README's curl commands (bearer token, then an openssl HMAC signature) are both accepted."""
    script = """
body='{"source": "uptime-robot", "fingerprint": "uptime:app", "summary": "permit.school is down"}'
curl -sS -X POST "$INTAKE/alerts" -H "Authorization: Bearer $RUNBOOK_INTAKE_TOKEN" \\
     -H 'Content-Type: application/json' -d "$body"; echo
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$RUNBOOK_INTAKE_HMAC_SECRET" -r | cut -d' ' -f1)
curl -sS -X POST "$INTAKE/alerts" -H "X-Runbook-Signature: sha256=$sig" \\
     -H 'Content-Type: application/json' -d "$body"; echo
"""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-ec", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "INTAKE": live_intake, "RUNBOOK_INTAKE_TOKEN": TOKEN,
             "RUNBOOK_INTAKE_HMAC_SECRET": SECRET})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    answers = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert [(a["status"], a["fingerprint"]) for a in answers] == [("accepted", "uptime:app")] * 2


@pytest.mark.parametrize(("payload", "header", "algorithm", "fingerprint"), [
    (GENERIC, "X-Runbook-Signature", "sha256", "uptime:app"),
    (SENTRY_EVENT, "Sentry-Hook-Signature", "sha256", "sentry:4711"),
    (SENTRY_ISSUE, "Sentry-Hook-Signature", "sha256", "sentry:4712"),
    (VERCEL, "x-vercel-signature", "sha1", "vercel:deployment.error:prj_123"),
], ids=["generic-hmac", "sentry-issue-alert", "sentry-issue", "vercel"])
async def test_signed_sender_shapes_become_alerts(client: httpx.AsyncClient, payload: dict[str, Any], header: str,
                                                  algorithm: Any, fingerprint: str) -> None:
    """Each sender's shape, signed its sender's way, starts declare-incident with the mapped alert."""
    body = json.dumps(payload).encode()
    value = sign(body, SECRET, algorithm)
    headers = {header: f"sha256={value}" if header == "X-Runbook-Signature" else value}
    response = await client.post("/alerts", content=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    assert response.json()["fingerprint"] == fingerprint
    alert = (await read_run(response.json()["incident_flow_run_id"])).parameters["params"]["alert"]
    assert alert["fingerprint"] == fingerprint and alert["summary"] and alert["raw"] == payload


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"X-Runbook-Signature": "sha256=" + "0" * 64},
    {"x-vercel-signature": sign(json.dumps(GENERIC).encode(), SECRET, "sha256")},  # right key, wrong algorithm
], ids=["missing", "wrong-token", "bad-signature", "wrong-algorithm"])
async def test_unauthenticated_alert_is_401_and_starts_nothing(
        client: httpx.AsyncClient, registered_deployments: dict[str, UUID], headers: dict[str, str]) -> None:
    """Missing or wrong credentials answer 401, keep nothing and create no run."""
    before = await declare_runs(registered_deployments)
    response = await client.post("/alerts", content=json.dumps(GENERIC), headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert await declare_runs(registered_deployments) == before
    async with open_store() as store:
        assert await store.alerts() == []


@pytest.mark.parametrize(("body", "reason"), [
    (json.dumps({"source": "uptime-robot", "fingerprint": "uptime:app"}), "summary"),
    (json.dumps({**GENERIC, "rule": "site_on_fire"}), "unknown alert rule 'site_on_fire'"),
    (json.dumps({"type": "deployment.error", "payload": {}}), "payload.project.id"),
    (json.dumps({"data": {"event": {"title": "x"}}}), "no issue id"),
    ("this is not json", "not JSON"),
    # what Python's json accepts and Prefect would refuse later (the sender saw 500 or an endless 503 "retry")
    ('{"source": "x", "fingerprint": "x:1", "summary": "s", "labels": {"load": NaN}}', "NaN is not a JSON number"),
    ('{"source": "x", "fingerprint": "x:1", "summary": "s", "score": -Infinity}', "Infinity is not a JSON number"),
    ('{"source": "x", "fingerprint": "x:1", "summary": "s", "n": ' + "9" * 5000 + "}", "digits"),
    ('{"source": "x", "fingerprint": "x:1", "summary": "s", "d": ' + "[" * 100 + "]" * 100 + "}", "nested deeper"),
    ('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested deeper"),
    ('{"source": "x", "fingerprint": "x:1", "summary": "s", "labels": {"\\ud800k": "v"}}', "lone surrogate"),
    (json.dumps({"data": {"event": {"issue_id": "1", "title": "t", "tags": [[["env"], "prod"]]}}}), "malformed sentry"),
    (json.dumps({"data": {"event": {"issue_id": "1", "title": "t", "tags": 7}}}), "malformed sentry"),
], ids=["no-summary", "unknown-rule", "vercel-no-project", "sentry-no-issue", "not-json", "nan", "infinity",
        "huge-number", "deep-100", "deep-50000", "lone-surrogate", "sentry-tag-list-key", "sentry-tags-number"])
async def test_malformed_alert_is_400_kept_and_starts_nothing(
        client: httpx.AsyncClient, registered_deployments: dict[str, UUID], body: str, reason: str) -> None:
    """A malformed payload answers 400 with the reason, is kept in the store as received, and starts no run."""
    before = await declare_runs(registered_deployments)
    response = await client.post("/alerts", content=body, headers=bearer())
    assert response.status_code == 400 and reason in response.json()["error"]
    assert await declare_runs(registered_deployments) == before
    async with open_store() as store:
        kept: Any = await store.alerts(valid=False)  # (IncidentStore.list shadows the builtin for mypy)
    assert len(kept) == 1 and reason in kept[0]["error"]
    unparsed = any(word in reason for word in ("not JSON", "not a JSON number", "digits", "nested", "surrogate"))
    assert kept[0]["raw"] == ({"body": body[:20_000]} if unparsed else json.loads(body))
    assert kept[0]["id"] == response.json()["kept_alert_id"]


async def test_secrets_never_logged_nor_echoed(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the token nor the HMAC secret appears in the intake's log or answers, accepted or rejected."""
    caplog.set_level(logging.DEBUG)
    # not the store driver's own chatter: its worker thread logs each operation, late ones onto the terminal
    caplog.set_level(logging.INFO, logger="aiosqlite")
    answers = [await client.post("/alerts", json=GENERIC, headers=bearer()),
               await client.post("/alerts", json=GENERIC, headers={"Authorization": f"Bearer {TOKEN}x"}),
               await client.post("/alerts", json={"source": "x"}, headers=bearer())]
    assert [a.status_code for a in answers] == [202, 401, 400]
    seen = caplog.text + "".join(a.text for a in answers)
    assert TOKEN not in seen and SECRET not in seen


async def test_healthz_answers_without_auth(client: httpx.AsyncClient) -> None:
    """GET /healthz answers ok without credentials."""
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_intake_refuses_to_start_without_credentials(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`runbook intake` without token or secret exits 2 naming the variables; --insecure-local only on loopback."""
    assert main(["intake"]) == 2
    assert "RUNBOOK_INTAKE_TOKEN" in capsys.readouterr().err
    assert main(["intake", "--insecure-local", "--host", "0.0.0.0"]) == 2
    assert "only binds to 127.0.0.1" in capsys.readouterr().err


class CountingBody:
    """A streamed request body (no Content-Length) that counts the chunks the server pulled from it."""

    def __init__(self, chunks: int, size: int = 64 * 1024) -> None:
        self.chunks, self.size, self.pulled = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b" " * self.size


async def test_no_credentials_is_refused_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    """Without a token or a signature header the intake answers 401 without reading the (huge, chunked) body; with
    credentials a chunked body is read only up to the limit, then 413; nothing is kept either way."""
    unauthenticated = CountingBody(chunks=3200)  # 200 MB if it were all read
    response = await client.post("/alerts", content=unauthenticated, headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and unauthenticated.pulled <= 1
    oversized = CountingBody(chunks=3200)
    response = await client.post("/alerts", content=oversized, headers=bearer())
    assert response.status_code == 413
    assert oversized.pulled == MAX_BODY_BYTES // oversized.size + 1  # read up to the limit, not one chunk more
    async with open_store() as store:
        assert await store.alerts() == []


async def test_an_alert_over_prefects_parameter_limit_is_trimmed_and_kept_in_full(
        client: httpx.AsyncClient) -> None:
    """A 600 kB Sentry alert (Prefect refuses parameters over 512 KiB) starts declare-incident with a trimmed raw
    payload that names where the full one is kept; the store holds it byte for byte."""
    payload = json.loads(json.dumps(SENTRY_EVENT))
    payload["data"]["event"]["exception"] = {"values": [{"stacktrace": "frame\n" * 100_000}]}
    body = json.dumps(payload).encode()
    assert PARAMETERS_LIMIT_BYTES < len(body) < MAX_BODY_BYTES
    response = await client.post("/alerts", content=body, headers={
        "Sentry-Hook-Signature": sign(body, SECRET), "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    run = await read_run(response.json()["incident_flow_run_id"])
    alert = run.parameters["params"]["alert"]
    assert alert["fingerprint"] == "sentry:4711" and alert["raw"]["trimmed"] is True
    assert len(json.dumps(run.parameters)) < PARAMETERS_LIMIT_BYTES
    async with open_store() as store:
        kept = {a["id"]: a for a in await store.alerts(valid=False)}
    assert kept[alert["raw"]["kept_alert_id"]]["raw"] == payload


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},  # what an HTML form or fetch(no-cors) may send cross-site without a preflight
    {"Content-Type": "application/json", "Origin": "https://evil.example"},
    {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
], ids=["text-plain", "foreign-origin", "sec-fetch-cross-site"])
async def test_the_open_local_intake_refuses_browser_cross_site_posts(
        state_dir: Path, registered_deployments: dict[str, UUID], headers: dict[str, str]) -> None:
    """--insecure-local (no credentials, loopback) answers 403 to what a web page could post to 127.0.0.1, and
    takes a JSON post from a local script."""
    before = await declare_runs(registered_deployments)
    transport = httpx.ASGITransport(app=create_app(insecure_local=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        refused = await http.post("/alerts", content=json.dumps(GENERIC), headers=headers)
        assert refused.status_code == 403 and "refused" in refused.json()["error"]
        assert await declare_runs(registered_deployments) == before
        local = await http.post("/alerts", json=GENERIC, headers={"Origin": "http://127.0.0.1:4200"})
        assert local.status_code == 202, local.text
    await delete_runs([local.json()["incident_flow_run_id"]])


async def test_a_replayed_signed_alert_starts_nothing_even_after_resolution(
        intake_env: Path, registered_deployments: dict[str, UUID]) -> None:
    """The same signed bytes again are a replay: answered 200 "duplicate" at once (same process) and after the
    first incident was declared and resolved (a new intake process: the store remembers), never a second incident;
    a new delivery of the same issue (other bytes) is taken."""
    from flows.declare_incident import DeclareParams, declare_incident
    from runbook import lifecycle

    body = json.dumps(SENTRY_EVENT).encode()
    signed = {"Sentry-Hook-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    started: list[str] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url="http://intake") as http:
        first = await http.post("/alerts", content=body, headers=signed)
        assert first.status_code == 202, first.text
        started.append(first.json()["incident_flow_run_id"])
        again = await http.post("/alerts", content=body, headers=signed)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # the declare run, with the parameters the intake gave it (its response not started), then resolved by a person
    params = (await read_run(started[0])).parameters["params"]
    declared = await declare_incident(DeclareParams.model_validate({**params, "respond": "none"}))
    async with open_store() as store:
        await lifecycle.resolve(store, declared.incident_id, reason="fixed", by="alex")
    before = await declare_runs(registered_deployments)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url="http://intake") as http:
        replay = await http.post("/alerts", content=body, headers=signed)
        assert replay.status_code == 200 and replay.json()["status"] == "duplicate", replay.text
        assert await declare_runs(registered_deployments) == before
        later = json.loads(body)
        later["data"]["event"]["event_id"] = "a second occurrence"
        fresh = json.dumps(later).encode()
        taken = await http.post("/alerts", content=fresh,
                                headers={**signed, "Sentry-Hook-Signature": sign(fresh, SECRET)})
        assert taken.status_code == 202, taken.text
        started.append(taken.json()["incident_flow_run_id"])
    await delete_runs(started)


async def test_a_signed_alert_during_a_prefect_outage_is_kept_and_handed_off_when_prefect_is_back(
        intake_env: Path, registered_deployments: dict[str, UUID]) -> None:
    """Prefect unreachable: the signed alert is answered 202 at once, kept in the outbox as queued with the reason;
    the sender's retry of the same bytes is a duplicate (it is kept already); once Prefect answers, the outbox's retry
    loop starts its declare-incident run, once."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    body = json.dumps(VERCEL).encode()
    signed = {"x-vercel-signature": sign(body, SECRET, "sha1"), "Content-Type": "application/json"}
    before = await declare_runs(registered_deployments)
    app = create_app()
    outbox = app.state.outbox
    outbox.ensure_running()  # as at the app's startup: the retry loop talks to the real server
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as http:
            with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
                kept = await http.post("/alerts", content=body, headers=signed)
            assert kept.status_code == 202 and kept.json()["queued"] is True, kept.text
            again = await http.post("/alerts", content=body, headers=signed)
        assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text

        async def failed_once() -> bool:
            return any(r["error"] and r["attempts"] >= 1 for r in await outbox.rows())

        await eventually(failed_once, "the first hand-off to fail (Prefect unreachable)", timeout=60)

        async def started() -> list[dict[str, Any]]:
            return await outbox.rows("started")

        [row] = await eventually(started, "the retry loop to hand the alert to Prefect", timeout=60)
    finally:
        await outbox.aclose()
    new_runs = await declare_runs(registered_deployments) - before
    assert [str(r) for r in new_runs] == [row["started"]["incident_flow_run_id"]]
    run = await read_run(row["started"]["incident_flow_run_id"])
    assert run.parameters["params"]["alert"]["raw"] == VERCEL
    await delete_runs(list(new_runs))
