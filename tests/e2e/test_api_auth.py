"""The Prefect API of `runbook up` needs its credential: real servers, real HTTP.

Without PREFECT_SERVER_API_AUTH_STRING anyone who reaches the port reads the config snapshot's Secret block (the
Supabase service-role key, the OpenAI key) and approves a paused remediation. Here: the pool server (started as
`runbook up` starts it, tests/e2e/conftest.py) refuses both without the credential and allows them with it; and a
real `runbook up` generates the credential into its state dir (0600, reused across restarts), binds to 127.0.0.1,
gives it to what it starts and to the `runbook` commands of its state dir, and never prints or logs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.local_server import LocalPrefectServer, api_auth_string, api_headers
from runbook.errors import RunbookError
from runbook.models import Incident, Severity
from runbook.store import open_store
from tests.e2e.deploy_support import POOL_SERVER, prefect_settings

RUNBOOK = Path(sys.executable).with_name("runbook")
WRONG = "runbook:not-the-key"


# -- the credential file (no server) --------------------------------------------------------------------------


def test_the_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    """The first call writes `runbook:<random>` with mode 0600; the next returns the same; a file opened up to others
    is made 0600 again; a file without a credential is refused, naming the file but no content."""
    path = tmp_path / "state" / "api-auth"
    key = api_auth_string(path)
    assert re.fullmatch(r"runbook:[A-Za-z0-9_-]{43}", key), "not user:<256 bits, URL-safe>"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_auth_string(path) == key and api_auth_string(tmp_path / "other" / "api-auth") != key
    path.chmod(0o644)
    assert api_auth_string(path) == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("no-colon-here\n")
    with pytest.raises(RunbookError) as refused:
        api_auth_string(path)
    assert str(path) in str(refused.value) and "no-colon-here" not in str(refused.value)


def test_runbook_config_shows_the_key_masked(tmp_path: Path) -> None:
    """`runbook config` says the credential is set, with a fingerprint and where it is, never the value."""
    state = tmp_path / "state"
    key = api_auth_string(state / "api-auth")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOK_"))}
    env.update(RUNBOOK_STATE_DIR=str(state), PREFECT_API_URL="http://127.0.0.1:9/api")
    done = subprocess.run([str(RUNBOOK), "config", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["prefect_api_auth"]
    assert re.fullmatch(rf"set \(sha256:[0-9a-f]{{8}}, {re.escape(str(state / 'api-auth'))}\)", shown), shown
    assert key not in done.stdout + done.stderr and key.split(":")[1] not in done.stdout + done.stderr
    # a server elsewhere does not get this machine's key
    env["PREFECT_API_URL"] = "https://prefect.example.com/api"
    done = subprocess.run([str(RUNBOOK), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert re.search(r"^prefect_api_auth +unset", done.stdout, re.MULTILINE), done.stdout
    assert key.split(":")[1] not in done.stdout + done.stderr


# -- the pool server: started as `runbook up` starts it --------------------------------------------------------

SERVICE_ROLE = "sb-service-role-" + "x" * 24  # the shape of what the config snapshot keeps (not a real key)


@pytest.mark.slow
@pytest.mark.xdist_group(POOL_SERVER)
async def test_the_secret_block_is_unreadable_without_the_key(pool_server: LocalPrefectServer) -> None:
    """The config snapshot's kind of Secret block: 401 without the credential or with a wrong one (body without the
    value), read back with it, through Prefect's client and through plain HTTP."""
    from prefect.blocks.system import Secret

    server = pool_server
    name = "config-production-snap-auth-probe"
    values = json.dumps({"SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE})
    with prefect_settings(server.client_settings()):
        await Secret(value=values).save(name, overwrite=True)  # type: ignore[call-arg]
        block: Any = await Secret.aload(name)  # type: ignore[attr-defined]
        read = block.get()  # Secret gives JSON text back parsed
        assert (read if isinstance(read, dict) else json.loads(read))["SUPABASE_SERVICE_ROLE_KEY"] == SERVICE_ROLE
    async with httpx.AsyncClient(base_url=server.api_url, timeout=10) as http:
        found = await http.post("/block_documents/filter", json={"include_secrets": True,
                                                                 "block_documents": {"name": {"any_": [name]}}},
                                headers=server.api_headers)
        assert found.status_code == 200 and SERVICE_ROLE in found.text
        block_id = found.json()[0]["id"]
        for headers in ({}, api_headers(WRONG), {"Authorization": "Bearer " + (server.auth_string or "")}):
            for answer in (await http.get(f"/block_documents/{block_id}", params={"include_secrets": "true"},
                                          headers=headers),
                           await http.post("/block_documents/filter", json={"include_secrets": True},
                                           headers=headers),
                           await http.get(f"/block_documents/name/{name}", headers=headers)):
                assert answer.status_code == 401, (headers.keys(), answer.status_code)
                assert SERVICE_ROLE not in answer.text and answer.json() == {"exception_message": "Unauthorized"}
        assert (await http.get("/health")).status_code == 200  # the health probe stays open (load balancers)
    with prefect_settings({**server.client_settings(), **_no_key()}):
        from prefect.exceptions import PrefectHTTPStatusError

        with pytest.raises(PrefectHTTPStatusError, match="401"):
            await Secret.aload(name)  # type: ignore[attr-defined]


def _no_key() -> dict[Any, Any]:
    from prefect.settings import PREFECT_API_AUTH_STRING

    return {PREFECT_API_AUTH_STRING: None}


@pytest.mark.slow
@pytest.mark.xdist_group(POOL_SERVER)
async def test_a_paused_run_cannot_be_resumed_without_the_key(pool_server: LocalPrefectServer) -> None:
    """An approval pause: resuming it without the credential (Prefect's client, plain HTTP) is refused with 401 and
    the run stays Paused; with the credential the same resume is accepted."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.flow_runs import aresume_flow_run
    from prefect.states import Paused

    @flow(name="auth-probe-approval")
    def approval() -> None:  # never executed: its run is created paused, as a remediation waiting for a person
        return None

    server = pool_server
    with prefect_settings(server.client_settings()):
        async with get_client() as client:
            run = await client.create_flow_run(approval, state=Paused(timeout_seconds=600, pause_key="approval"))
    try:
        with prefect_settings({**server.client_settings(), **_no_key()}):
            with pytest.raises(PrefectHTTPStatusError, match="401"):
                await aresume_flow_run(run.id)
        async with httpx.AsyncClient(base_url=server.api_url, timeout=10) as http:
            for headers in ({}, api_headers(WRONG)):
                refused = await http.post(f"/flow_runs/{run.id}/resume", json={}, headers=headers)
                assert refused.status_code == 401, refused.text
            now = (await http.get(f"/flow_runs/{run.id}", headers=server.api_headers)).json()
            assert now["state_type"] == "PAUSED", now["state_type"]
            with prefect_settings(server.client_settings()):
                await aresume_flow_run(run.id)
            now = (await http.get(f"/flow_runs/{run.id}", headers=server.api_headers)).json()
            assert now["state_type"] != "PAUSED", now["state"]
    finally:
        with prefect_settings(server.client_settings()):
            async with get_client() as client:
                await client.delete_flow_run(run.id)


# -- a real `runbook up` ---------------------------------------------------------------------------------------


def _start_up(state: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOK_"))}
    env["RUNBOOK_STATE_DIR"] = str(state)
    return subprocess.Popen([str(RUNBOOK), "up", "--no-drill"], cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _until_ready(proc: subprocess.Popen[str]) -> str:
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return "".join(lines)


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return rest or ""


def _listening(port: int) -> set[str]:
    """Return the local addresses (hex, as /proc/net/tcp* writes them) on which something listens on this port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


async def _declare(state: Path, title: str) -> str:
    async with open_store(f"sqlite+aiosqlite:///{state / 'incidents.db'}") as store:
        incident, _ = await store.declare(Incident(title=title, severity=Severity.P3), actor="ana")
    return incident.id


@pytest.mark.slow
def test_runbook_up_runs_its_server_with_a_private_key_on_loopback(tmp_path: Path) -> None:
    """`runbook up`: its server binds to 127.0.0.1 and answers 401 without the key it generated into the state dir
    (0600); its banner says where the key is, never the key; `runbook resolve` from the same state dir reaches it
    with only PREFECT_API_URL set; no output or log holds it."""
    state = tmp_path / "state"
    outputs: list[str] = []
    proc = _start_up(state)
    try:
        outputs.append(_until_ready(proc))
        ui = re.search(r"Prefect UI: +http://127\.0\.0\.1:(\d+)", outputs[0])
        assert ui, outputs[0]
        port, key_file = int(ui[1]), state / "api-auth"
        key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and re.fullmatch(r"runbook:\S{40,}", key)
        assert f"log in with the key in {key_file}" in outputs[0], outputs[0]
        assert _listening(port) == {"0100007F"}, _listening(port)  # 127.0.0.1 only, not 0.0.0.0 / ::
        api = f"http://127.0.0.1:{port}/api"
        assert httpx.post(f"{api}/block_documents/filter", json={}, timeout=10).status_code == 401
        assert httpx.post(f"{api}/block_documents/filter", json={}, timeout=10,
                          headers=api_headers(key)).status_code == 200
        # a `runbook` command of this state dir, pointed at the server, takes the key from there itself
        incident_id = asyncio.run(_declare(state, "Checkout returns 500 (auth probe)"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOK_"))}
        env.update(RUNBOOK_STATE_DIR=str(state), PREFECT_API_URL=api)
        done = subprocess.run([str(RUNBOOK), "resolve", incident_id, "--reason", "probe", "--by", "ana"], env=env,
                              capture_output=True, text=True, timeout=120)
        outputs += [done.stdout, done.stderr]
        assert re.search(r"^started resolve-incident run [0-9a-f-]{36} ", done.stdout, re.MULTILINE), \
            done.stdout + done.stderr
        outputs.append(_stop(proc))
        assert proc.returncode == 0, outputs[-1][-2000:]
        # a restart on the same state dir keeps the key: test_deployments' `runbook up` starts on a state dir whose
        # key exists and is served with it (one start fewer here)
    finally:
        outputs.append(_stop(proc))
    token = key.split(":", 1)[1]
    assert all(token not in text for text in outputs)
    logs = [p for p in state.rglob("*") if p.is_file() and p != key_file and "postgres" not in p.parts]
    assert logs and [p for p in logs if token in p.read_text(errors="replace")] == []
