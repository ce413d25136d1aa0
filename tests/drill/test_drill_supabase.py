"""The Supabase stand-ins: PostgREST subset (through supabase-py and httpx) and the Management API health."""

from __future__ import annotations

import httpx
from supabase import create_client

from runbook.drill import DrillStack


def _rest(stack: DrillStack, key: str | None = None) -> dict[str, str]:
    key = key or stack.project.anon_key
    return {"apikey": key, "Authorization": f"Bearer {key}"}


def test_supabase_py_counts_profiles(stack: DrillStack) -> None:
    """supabase-py's exact head count works against the REST stand-in."""
    client = create_client(stack.urls["supabase"], stack.project.anon_key)
    result = client.table("profiles").select("*", count="exact", head=True).execute()
    assert result.count == 300


def test_supabase_py_filters_and_limits(stack: DrillStack) -> None:
    """supabase-py eq filters, limit and exact count agree with the database."""
    expected = stack.query("select count(*) as n from public.profiles where jurisdiction = 'CA'")[0]["n"]
    client = create_client(stack.urls["supabase"], stack.settings().supabase_service_role_key.get_secret_value())
    result = client.table("profiles").select("id,email", count="exact").eq("jurisdiction", "CA").limit(5).execute()
    assert result.count == expected
    assert len(result.data) == 5 and set(result.data[0]) == {"id", "email"}


def test_rest_requires_an_apikey(stack: DrillStack, http: httpx.Client) -> None:
    """A REST request without apikey is refused with 401."""
    assert http.get(f"{stack.urls['supabase']}/rest/v1/profiles?select=*").status_code == 401


def test_rest_content_range_with_count(stack: DrillStack, http: httpx.Client) -> None:
    """Prefer: count=exact with limit/offset gives Content-Range start-end/total."""
    resp = http.get(f"{stack.urls['supabase']}/rest/v1/profiles?select=id&limit=25&offset=10",
                    headers={**_rest(stack), "Prefer": "count=exact"})
    assert resp.headers["content-range"] == "10-34/300"
    assert len(resp.json()) == 25


def test_rest_head_count_has_no_range(stack: DrillStack, http: httpx.Client) -> None:
    """HEAD with count=exact answers Content-Range */total and no body."""
    resp = http.head(f"{stack.urls['supabase']}/rest/v1/profiles?select=*",
                     headers={**_rest(stack), "Prefer": "count=exact"})
    assert resp.headers["content-range"] == "*/300" and resp.content == b""


def test_rest_select_count_aggregate(stack: DrillStack, http: httpx.Client) -> None:
    """The runbook's `?select=count` answers [{"count": N}]."""
    resp = http.get(f"{stack.urls['supabase']}/rest/v1/profiles?select=count", headers=_rest(stack))
    assert resp.status_code == 200 and resp.json() == [{"count": 300}]


def test_rest_unknown_column_is_400(stack: DrillStack, http: httpx.Client) -> None:
    """Selecting a column that does not exist answers 400 with the Postgres error code."""
    resp = http.get(f"{stack.urls['supabase']}/rest/v1/profiles?select=nope", headers=_rest(stack))
    assert resp.status_code == 400 and resp.json()["code"] == "42703"


def test_rest_unknown_table_is_404(stack: DrillStack, http: httpx.Client) -> None:
    """An unknown table answers 404 PGRST205."""
    resp = http.get(f"{stack.urls['supabase']}/rest/v1/nope?select=*", headers=_rest(stack))
    assert resp.status_code == 404 and resp.json()["code"] == "PGRST205"


def test_management_health_reports_services(stack: DrillStack, http: httpx.Client) -> None:
    """GET /v1/projects/{ref}/health answers one ACTIVE_HEALTHY entry per requested service."""
    resp = http.get(f"{stack.urls['supabase_api']}/v1/projects/{stack.project.ref}/health",
                    params=[("services", "auth"), ("services", "db"), ("services", "rest"), ("timeout_ms", "2000")],
                    headers={"Authorization": f"Bearer {stack.project.access_token}"})
    assert resp.status_code == 200
    assert [(s["name"], s["status"]) for s in resp.json()] == [
        ("auth", "ACTIVE_HEALTHY"), ("db", "ACTIVE_HEALTHY"), ("rest", "ACTIVE_HEALTHY")]


def test_management_health_wrong_token_is_401(stack: DrillStack, http: httpx.Client) -> None:
    """The Management API refuses a wrong token with 401."""
    resp = http.get(f"{stack.urls['supabase_api']}/v1/projects/{stack.project.ref}/health?services=db",
                    headers={"Authorization": "Bearer sbp_wrong"})
    assert resp.status_code == 401
