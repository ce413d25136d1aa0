"""PagerDuty, Statuspage, Sentry, Slack, OpenAI and vendor status pages stand-ins through httpx."""

from __future__ import annotations

import httpx
import pytest

from runbook.drill import DrillStack


def _page(stack: DrillStack, **fields: object) -> dict[str, object]:
    return {"routing_key": stack.pagerduty.routing_key, **fields}


def _trigger(stack: DrillStack, dedup_key: str) -> dict[str, object]:
    return _page(stack, event_action="trigger", dedup_key=dedup_key,
                 payload={"summary": "App down", "source": "drill", "severity": "critical"})


# -- PagerDuty ------------------------------------------------------------------------------------------------
def test_pagerduty_dedup_key_makes_trigger_idempotent(stack: DrillStack, http: httpx.Client) -> None:
    """Two triggers with one dedup_key open one alert and both answer 202 with that key."""
    url = stack.env["RUNBOOK_PAGERDUTY_EVENTS_URL"]
    answers = [http.post(url, json=_trigger(stack, "INC-1")) for _ in range(2)]
    assert [(a.status_code, a.json()["dedup_key"]) for a in answers] == [(202, "INC-1"), (202, "INC-1")]
    assert len(stack.pagerduty.alerts) == 1 and stack.pagerduty.alerts[0]["trigger_count"] == 2


def test_pagerduty_acknowledge_then_resolve(stack: DrillStack, http: httpx.Client) -> None:
    """Acknowledge and resolve move the alert through its states."""
    url = stack.env["RUNBOOK_PAGERDUTY_EVENTS_URL"]
    http.post(url, json=_trigger(stack, "INC-2"))
    http.post(url, json=_page(stack, event_action="acknowledge", dedup_key="INC-2"))
    acknowledged = stack.pagerduty.alert("INC-2")["status"]
    http.post(url, json=_page(stack, event_action="resolve", dedup_key="INC-2"))
    assert (acknowledged, stack.pagerduty.alert("INC-2")["status"]) == ("acknowledged", "resolved")


def test_pagerduty_invalid_event_is_400(stack: DrillStack, http: httpx.Client) -> None:
    """A trigger without summary or with a bad severity is rejected with 400 and reasons."""
    body = _page(stack, event_action="trigger", payload={"source": "drill", "severity": "fatal"})
    resp = http.post(stack.env["RUNBOOK_PAGERDUTY_EVENTS_URL"], json=body)
    assert resp.status_code == 400 and len(resp.json()["errors"]) == 2
    assert stack.pagerduty.alerts == []


# -- Statuspage -----------------------------------------------------------------------------------------------
@pytest.fixture
def statuspage(stack: DrillStack) -> httpx.Client:
    """Return an httpx client for the Statuspage stand-in's page."""
    base = f"{stack.env['RUNBOOK_STATUSPAGE_API_URL']}/pages/{stack.statuspage.page_id}"
    with httpx.Client(base_url=base, timeout=10,
                      headers={"Authorization": f"OAuth {stack.statuspage.api_key}"}) as client:
        yield client


def test_statuspage_incident_lifecycle(stack: DrillStack, statuspage: httpx.Client) -> None:
    """An incident goes through the four states, each adding an incident update."""
    app = stack.statuspage.component_ids["app"]
    created = statuspage.post("/incidents", json={"incident": {
        "name": "Site down", "status": "investigating", "impact_override": "critical", "body": "Looking",
        "component_ids": [app], "components": {app: "major_outage"}}})
    assert created.status_code == 201
    incident_id = created.json()["id"]
    for status in ("identified", "monitoring", "resolved"):
        resp = statuspage.patch(f"/incidents/{incident_id}", json={"incident": {"status": status, "body": status}})
        assert resp.status_code == 200
    incident = statuspage.get(f"/incidents/{incident_id}").json()
    assert [u["status"] for u in incident["incident_updates"]] == ["resolved", "monitoring", "identified",
                                                                   "investigating"]
    assert incident["resolved_at"] and incident["shortlink"]


def test_statuspage_incident_sets_component_status(stack: DrillStack, statuspage: httpx.Client) -> None:
    """components on an incident change those components' status."""
    db = stack.statuspage.component_ids["database"]
    statuspage.post("/incidents", json={"incident": {"name": "DB", "status": "investigating",
                                                     "components": {db: "partial_outage"}}})
    assert stack.statuspage.component_status("database") == "partial_outage"


def test_statuspage_component_patch(stack: DrillStack, statuspage: httpx.Client) -> None:
    """PATCH components/{id} sets a valid status and refuses an invalid one with 422."""
    auth = stack.statuspage.component_ids["auth"]
    ok = statuspage.patch(f"/components/{auth}", json={"component": {"status": "degraded_performance"}})
    bad = statuspage.patch(f"/components/{auth}", json={"component": {"status": "on_fire"}})
    assert (ok.status_code, bad.status_code) == (200, 422)
    assert stack.statuspage.component_status("auth") == "degraded_performance"


def test_statuspage_invalid_status_is_422(stack: DrillStack, statuspage: httpx.Client) -> None:
    """An incident status outside the four states is refused."""
    resp = statuspage.post("/incidents", json={"incident": {"name": "x", "status": "panicking"}})
    assert resp.status_code == 422 and stack.statuspage.incidents == []


def test_statuspage_wrong_key_is_401(stack: DrillStack, http: httpx.Client) -> None:
    """A wrong OAuth key answers 401."""
    url = f"{stack.env['RUNBOOK_STATUSPAGE_API_URL']}/pages/{stack.statuspage.page_id}/components"
    assert http.get(url, headers={"Authorization": "OAuth wrong"}).status_code == 401


def test_statuspage_lists_components(stack: DrillStack, statuspage: httpx.Client) -> None:
    """The component list holds the four logical components of RUNBOOK_STATUSPAGE_COMPONENTS."""
    ids = {c["id"] for c in statuspage.get("/components").json()}
    assert ids == set(stack.settings().statuspage_components.values())


# -- Sentry ---------------------------------------------------------------------------------------------------
def _sentry(stack: DrillStack, http: httpx.Client, path: str, **params: str) -> httpx.Response:
    return http.get(f"{stack.urls['sentry']}/api/0/organizations/{stack.sentry.org}/{path}/",
                    params={"dataset": "errors", "project": stack.sentry.project_id, **params},
                    headers={"Authorization": f"Bearer {stack.sentry.token}"})


def test_sentry_counts_errors_in_the_window(stack: DrillStack, http: httpx.Client) -> None:
    """count() over statsPeriod counts only the events inside the window."""
    import time

    stack.sentry.capture("old", timestamp=time.time() - 3600)
    for _ in range(4):
        stack.sentry.capture("TypeError: boom")
    resp = _sentry(stack, http, "events", field="count()", statsPeriod="15m")
    assert resp.json()["data"] == [{"count()": 4}]


def test_sentry_timeseries_buckets_events(stack: DrillStack, http: httpx.Client) -> None:
    """events-timeseries returns one count() series whose values add up to the events."""
    for _ in range(3):
        stack.sentry.capture("TypeError: boom")
    body = _sentry(stack, http, "events-timeseries", yAxis="count()", statsPeriod="30m", interval="60").json()
    series = body["timeSeries"][0]
    assert series["yAxis"] == "count()" and sum(v["value"] for v in series["values"]) == 3
    assert len(series["values"]) in (30, 31)


def test_sentry_counts_segment_spans_like_errors(stack: DrillStack, http: httpx.Client) -> None:
    """dataset=spans with is_transaction:true counts the requests served in the errors dataset's shape."""
    for _ in range(5):
        stack.sentry.capture_transaction("/")
    stack.sentry.capture("TypeError: boom")
    resp = _sentry(stack, http, "events", dataset="spans", field="count()", statsPeriod="15m",
                   query="is_transaction:true")
    assert resp.json()["data"] == [{"count()": 5}]


def test_sentry_spans_without_tracing_is_400(stack: DrillStack, http: httpx.Client) -> None:
    """With tracing off, dataset=spans answers 400 {"detail"}."""
    stack.sentry.performance = False
    resp = _sentry(stack, http, "events", dataset="spans", field="count()", statsPeriod="15m")
    assert resp.status_code == 400 and "detail" in resp.json()


def test_sentry_has_no_transactions_dataset(stack: DrillStack, http: httpx.Client) -> None:
    """dataset=transactions is not among the documented datasets: 400 {"detail"}."""
    resp = _sentry(stack, http, "events", dataset="transactions", field="count()", statsPeriod="15m")
    assert resp.status_code == 400 and "Invalid dataset" in resp.json()["detail"]


def test_sentry_wrong_token_is_401(stack: DrillStack, http: httpx.Client) -> None:
    """A wrong bearer token answers 401 {"detail"}."""
    resp = http.get(f"{stack.urls['sentry']}/api/0/organizations/{stack.sentry.org}/events/",
                    headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401 and "detail" in resp.json()


# -- Slack ----------------------------------------------------------------------------------------------------
def test_slack_has_one_webhook_per_channel(stack: DrillStack, http: httpx.Client) -> None:
    """Each channel's webhook answers `ok` and records the message under that channel."""
    for channel in ("incidents", "engineering", "operations"):
        resp = http.post(stack.env[f"RUNBOOK_SLACK_WEBHOOK_{channel.upper()}"], json={"text": f"hi {channel}"})
        assert (resp.status_code, resp.text) == (200, "ok")
    assert [m["text"] for m in stack.slack.messages("#engineering")] == ["hi engineering"]


def test_slack_rejects_bad_token_and_empty_message(stack: DrillStack, http: httpx.Client) -> None:
    """A wrong token answers 403 invalid_token and a message without text 400 no_text."""
    url = stack.env["RUNBOOK_SLACK_WEBHOOK_INCIDENTS"]
    bad_token = http.post(url.rsplit("/", 1)[0] + "/wrong", json={"text": "x"})
    empty = http.post(url, json={})
    assert (bad_token.status_code, bad_token.text) == (403, "invalid_token")
    assert (empty.status_code, empty.text) == (400, "no_text")


# -- OpenAI and status pages ----------------------------------------------------------------------------------
def test_openai_models_needs_the_key(stack: DrillStack, http: httpx.Client) -> None:
    """/v1/models answers 200 with the key and 401 invalid_api_key without it."""
    url = f"{stack.env['RUNBOOK_OPENAI_API_URL']}/v1/models"
    ok = http.get(url, headers={"Authorization": f"Bearer {stack.openai.api_key}"})
    bad = http.get(url, headers={"Authorization": "Bearer sk-wrong"})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_status_pages_speak_statuspage_and_stripe_formats(stack: DrillStack, http: httpx.Client) -> None:
    """Vendors answer status.json with an indicator; Stripe answers /current with largestatus."""
    pages = stack.settings().status_pages
    stack.status_pages.set("vercel", "minor")
    vercel = http.get(f"{pages['vercel']}/api/v2/status.json").json()
    supabase = http.get(f"{pages['supabase']}/api/v2/status.json").json()
    stripe_status = http.get(f"{pages['stripe']}/current").json()
    assert vercel["status"]["indicator"] == "minor" and supabase["status"]["indicator"] == "none"
    assert stripe_status["largestatus"] == "up" and stripe_status["statuses"]["webhooks"] == "up"


def test_pagerduty_reset_restores_the_rest_limit(stack: DrillStack) -> None:
    """A test that lowers the REST API's per-minute limit (to see a 429) leaves it lowered for no later test: the
    stand-in's reset puts the documented 960 back (the suite's later PagerDuty reads were refused at random)."""
    stack.pagerduty.rest_limit = 1
    stack.reset()
    assert stack.pagerduty.rest_limit == 960
