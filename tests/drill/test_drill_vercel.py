"""The Vercel stand-in through httpx: deployments, pagination, rollback polling, promote, env vars, redeploy."""

from __future__ import annotations

import time

import httpx
import pytest

from runbook.drill import DrillStack


@pytest.fixture
def vercel(stack: DrillStack) -> httpx.Client:
    """Return an httpx client authenticated against the Vercel stand-in with teamId set."""
    with httpx.Client(base_url=stack.urls["vercel"], timeout=10, params={"teamId": stack.vercel.team_id},
                      headers={"Authorization": f"Bearer {stack.vercel.token}"}) as client:
        yield client


def test_wrong_token_is_401_in_vercels_shape(stack: DrillStack, http: httpx.Client) -> None:
    """A wrong token answers 401 with {"error": {"code", "message"}}."""
    resp = http.get(f"{stack.urls['vercel']}/v6/deployments", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and set(resp.json()["error"]) >= {"code", "message"}


def test_other_team_is_403(stack: DrillStack, http: httpx.Client) -> None:
    """A teamId that is not the project's team answers 403."""
    resp = http.get(f"{stack.urls['vercel']}/v6/deployments?teamId=team_other",
                    headers={"Authorization": f"Bearer {stack.vercel.token}"})
    assert resp.status_code == 403


def test_list_production_deployments_marks_rollback_candidates(stack: DrillStack, vercel: httpx.Client) -> None:
    """Production READY deployments list newest first; only the non-current ones are rollback candidates."""
    resp = vercel.get("/v6/deployments", params={"projectId": stack.vercel.project_id, "target": "production",
                                                 "state": "READY"})
    deployments = resp.json()["deployments"]
    assert deployments[0]["uid"] == stack.vercel.production().id
    assert [d["isRollbackCandidate"] for d in deployments] == [False] + [True] * (len(deployments) - 1)
    assert all(d["target"] == "production" and d["state"] == "READY" for d in deployments)


def test_pagination_walks_every_deployment(stack: DrillStack, vercel: httpx.Client) -> None:
    """Passing pagination.next as until walks all deployments one page at a time."""
    seen, until = [], None
    while True:
        params = {"projectId": stack.vercel.project_id, "limit": 1, **({"until": until} if until else {})}
        body = vercel.get("/v6/deployments", params=params).json()
        seen += [d["uid"] for d in body["deployments"]]
        until = body["pagination"]["next"]
        if until is None:
            break
    assert seen == [d.id for d in stack.vercel.deployments]


def test_get_deployment_v13(stack: DrillStack, vercel: httpx.Client) -> None:
    """GET /v13/deployments/{id} returns id, readyState, target and meta."""
    prod = stack.vercel.production()
    body = vercel.get(f"/v13/deployments/{prod.id}").json()
    assert (body["id"], body["readyState"], body["target"]) == (prod.id, "READY", "production")
    assert body["meta"]["githubCommitSha"] == prod.meta["githubCommitSha"]


def test_rollback_goes_pending_in_progress_succeeded(stack: DrillStack, vercel: httpx.Client) -> None:
    """A rollback's lastAliasRequest moves pending → in-progress → succeeded, then production switches."""
    target = stack.vercel.rollback_candidates()[0].id
    pid = stack.vercel.project_id
    posted = time.monotonic()
    assert vercel.post(f"/v9/projects/{pid}/rollback/{target}", json={}).status_code == 201
    statuses, first_read = [], None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = vercel.get(f"/v9/projects/{pid}", params={"rollbackInfo": "true"}).json()["lastAliasRequest"]
        first_read = first_read or time.monotonic()
        if not statuses or statuses[-1] != info["jobStatus"]:
            statuses.append(info["jobStatus"])
        if info["jobStatus"] == "succeeded":
            break
        time.sleep(0.02)
    order = ["pending", "in-progress", "succeeded"]  # a busy machine may poll past a short phase: order, not each
    assert statuses[-1] == "succeeded" and statuses == sorted(statuses, key=order.index)
    # the job is asynchronous: seen unfinished, unless our first read came after the whole delay had passed
    assert statuses[0] != "succeeded" or first_read - posted >= stack.vercel.alias_delay
    assert info["toDeploymentId"] == target and info["type"] == "rollback"
    assert stack.vercel.production().id == target


def test_promote_answers_201_and_switches_production(stack: DrillStack, vercel: httpx.Client) -> None:
    """Promote answers 201 and production becomes that deployment when the job succeeds."""
    target = stack.vercel.rollback_candidates()[0].id
    assert vercel.post(f"/v10/projects/{stack.vercel.project_id}/promote/{target}", json={}).status_code == 201
    stack.vercel.wait_idle()
    assert stack.vercel.production().id == target


def test_rollback_to_current_production_is_409(stack: DrillStack, vercel: httpx.Client) -> None:
    """Rolling back to the deployment already in production is a conflict."""
    resp = vercel.post(f"/v9/projects/{stack.vercel.project_id}/rollback/{stack.vercel.production().id}", json={})
    assert resp.status_code == 409


def test_env_list_never_shows_values(stack: DrillStack, vercel: httpx.Client) -> None:
    """The env list does not return any decrypted value."""
    envs = vercel.get(f"/v10/projects/{stack.vercel.project_id}/env").json()["envs"]
    plain = {e.key: e.value for e in stack.vercel.env_vars}
    assert envs and all(e["decrypted"] is False and e.get("value") != plain[e["key"]] for e in envs)


def test_sensitive_env_is_write_only(stack: DrillStack, vercel: httpx.Client) -> None:
    """Reading one sensitive env var returns no value; an encrypted one returns its value."""
    pid = stack.vercel.project_id
    secret, service = stack.vercel.env_var("STRIPE_WEBHOOK_SECRET"), stack.vercel.env_var("SUPABASE_SERVICE_ROLE_KEY")
    sensitive = vercel.get(f"/v1/projects/{pid}/env/{secret.id}").json()
    encrypted = vercel.get(f"/v1/projects/{pid}/env/{service.id}").json()
    assert sensitive["type"] == "sensitive" and "value" not in sensitive
    assert encrypted["value"] == stack.project.service_role_key and encrypted["decrypted"] is True


def test_env_upsert_answers_created_and_failed(stack: DrillStack, vercel: httpx.Client) -> None:
    """POST env?upsert=true answers 201 {created, failed: []} and updates the value."""
    resp = vercel.post(f"/v10/projects/{stack.vercel.project_id}/env", params={"upsert": "true"},
                       json={"key": "OPENAI_API_KEY", "value": "sk-new", "type": "encrypted",
                             "target": ["production"]})
    assert resp.status_code == 201 and resp.json()["failed"] == []
    assert resp.json()["created"]["key"] == "OPENAI_API_KEY"
    assert stack.vercel.env_var("OPENAI_API_KEY").value == "sk-new"


def test_env_create_without_upsert_reports_the_clash(stack: DrillStack, vercel: httpx.Client) -> None:
    """Creating an existing key without upsert lists it in failed and changes nothing."""
    before = stack.vercel.env_var("OPENAI_API_KEY").value
    resp = vercel.post(f"/v10/projects/{stack.vercel.project_id}/env",
                       json=[{"key": "OPENAI_API_KEY", "value": "x", "type": "encrypted", "target": ["production"]}])
    assert resp.status_code == 201 and resp.json()["failed"][0]["error"]["key"] == "OPENAI_API_KEY"
    assert stack.vercel.env_var("OPENAI_API_KEY").value == before


def test_env_patch_and_delete(stack: DrillStack, vercel: httpx.Client) -> None:
    """PATCH v9 edits a value and DELETE v9 removes the variable."""
    pid, env = stack.vercel.project_id, stack.vercel.env_var("OPENAI_BASE_URL")
    assert vercel.patch(f"/v9/projects/{pid}/env/{env.id}", json={"value": "http://x"}).status_code == 200
    assert stack.vercel.env_var("OPENAI_BASE_URL").value == "http://x"
    assert vercel.delete(f"/v9/projects/{pid}/env/{env.id}").status_code == 200
    assert stack.vercel.env_var("OPENAI_BASE_URL") is None


def test_redeploy_builds_from_the_current_env(stack: DrillStack, vercel: httpx.Client) -> None:
    """POST /v13/deployments rebuilds with the current env: BUILDING, then READY and production."""
    stack.vercel.set_env("OPENAI_API_KEY", "sk-rotated")
    source = stack.vercel.production().id
    body = vercel.post("/v13/deployments", json={"name": stack.vercel.project_name, "deploymentId": source,
                                                  "target": "production"}).json()
    assert body["readyState"] == "BUILDING"
    stack.vercel.wait_idle()
    prod = stack.vercel.production()
    assert prod.id == body["id"] and prod.env["OPENAI_API_KEY"] == "sk-rotated"
    assert vercel.get(f"/v13/deployments/{body['id']}").json()["readyState"] == "READY"
