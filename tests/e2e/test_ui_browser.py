"""The UI that `runbook up` prints works in a real browser: headless Chromium (Debian's, installed by `make install`)
loads the printed pages of a server started as `runbook up` starts it (API authentication included: the person
logs in on the UI's login page with the key from the file the banner names), and they show that server's
deployments; a person's Custom run form (dropdowns set) creates the run it shows."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.local_server import LocalPrefectServer
from deployments.serve import read_specs
from deployments.up import ready_banner
from tests.e2e.deploy_support import POOL_SERVER

CHROMIUM = Path("/usr/bin/chromium")
# What the machine needs: no sandbox as root, and no background traffic into a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NO_API = "Can't connect to Server API"
NAMES = sorted(s.name for s in read_specs())

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(POOL_SERVER)]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium, headless, with a fresh profile, driven by Playwright."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make install` installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # a persistent context is the only way to give Chromium its own --user-data-dir
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900})
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


class PageWatch:
    """What a page did: errors thrown in it, and every API call it made (URL, status, request body)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.api_calls: list[tuple[str, int, str]] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("requestfailed", lambda req: self.errors.append(f"{req.method} {req.url}: {req.failure}"))
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        if "/api/" in response.url:
            self.api_calls.append((response.url, response.status, response.request.post_data or ""))


def printed_links(server: LocalPrefectServer) -> dict[str, str]:
    """Return the links `runbook up` prints for this server's UI, by label."""
    banner = ready_banner(server.url, NAMES, KEY_FILE)
    return {m[1]: m[2] for m in re.finditer(r"^ +([a-z ()]+): +(http://\S+)", banner, re.MULTILINE)}


KEY_FILE = Path("/state/api-auth")  # where the banner says the key is (`runbook up` keeps it in its state dir)
WRONG_KEY = "runbook:not-the-key"


@pytest.fixture(scope="module")
def logged_in(deployed: tuple[LocalPrefectServer, dict[str, str]], browser: Any) -> Any:
    """The browser, logged in to the pool server's UI as a person does: the printed deployments link shows the login
    page, a wrong key is refused there, the key (the banner's file holds it) lets the UI in (both UIs: one login)."""
    server, _ = deployed
    banner = ready_banner(server.url, NAMES, KEY_FILE)
    assert server.auth_string and server.auth_string not in banner and f"log in with the key in {KEY_FILE}" in banner
    assert httpx.get(f"{server.url}/ui-settings", timeout=10).json()["auth"] == "BASIC"
    page = browser.new_page()
    page.goto(printed_links(server)["deployments"], wait_until="domcontentloaded")
    page.wait_for_url(re.compile(r"/login\?redirect=/deployments"), timeout=30_000)  # nothing shown without the key
    key_field = page.get_by_placeholder("admin:pass")
    key_field.fill(WRONG_KEY)
    wrong = "Basic " + base64.b64encode(WRONG_KEY.encode()).decode()
    with page.expect_response(lambda r: r.request.headers.get("authorization") == wrong, timeout=30_000) as tried:
        page.get_by_role("button", name="Login", exact=True).click()
    assert tried.value.status == 401
    page.wait_for_function("localStorage.getItem('prefect-password') === null", timeout=30_000)  # forgotten
    assert "/login" in page.url
    key_field.fill(server.auth_string)
    page.get_by_role("button", name="Login", exact=True).click()
    page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)
    page.get_by_role("link", name=NAMES[0], exact=True).first.wait_for(timeout=60_000)
    page.close()
    return browser


def paused_only(body: dict[str, Any]) -> bool:
    """Whether a flow-runs filter body asks only for paused runs (by state name Paused or state type PAUSED)."""
    state = (body.get("flow_runs") or {}).get("state") or {}
    names = set((state.get("name") or {}).get("any_") or [])
    types = set((state.get("type") or {}).get("any_") or [])
    return (bool(names) and names <= {"Paused", "Suspended"}) or types == {"PAUSED"}


def test_the_printed_ui_lists_the_servers_deployments_in_a_browser(
        deployed: tuple[LocalPrefectServer, dict[str, str]], logged_in: Any, tmp_path: Path) -> None:
    """The printed deployments page, loaded in Chromium, shows this server's deployments, and no API error."""
    server, _ = deployed
    assert httpx.get(f"{server.url}/ui-settings", timeout=10).json()["api_url"] == server.api_url
    page = logged_in.new_page()
    watch = PageWatch(page)
    page.goto(printed_links(server)["deployments"], wait_until="domcontentloaded")
    # the UI fetched the list from the API it was given, and drew it: the first page (10 a page, by name) and
    # as many pages as this server holds deployments
    for name in NAMES[:3]:
        page.get_by_role("link", name=name, exact=True).first.wait_for(timeout=30_000)
    page.get_by_text(f"Page 1 of {math.ceil(len(NAMES) / 10)}", exact=True).wait_for(timeout=10_000)
    page.get_by_text(f"{len(NAMES)} Deployments", exact=True).wait_for(timeout=10_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(tmp_path / "deployments.png"), full_page=True)
    assert page.get_by_text(NO_API).count() == 0
    assert watch.errors == []
    called = {url.split("?")[0] for url, _, _ in watch.api_calls}
    assert {f"{server.api_url}/deployments/filter", f"{server.api_url}/deployments/paginate"} & called, called
    assert all(url.startswith(server.api_url) and status < 400 for url, status, _ in watch.api_calls), watch.api_calls
    page.close()


def test_the_printed_paused_runs_link_loads_filtered_to_paused(
        deployed: tuple[LocalPrefectServer, dict[str, str]], logged_in: Any, tmp_path: Path) -> None:
    """The printed "waiting for you" link opens the flow runs page with the Paused filter applied, without error."""
    server, _ = deployed
    link = printed_links(server)["waiting for you"]
    page = logged_in.new_page()
    watch = PageWatch(page)
    page.goto(link, wait_until="domcontentloaded")
    page.wait_for_load_state("networkidle")
    # the UI asked this server for the paused flow runs: the link's filter was understood, not silently dropped
    # (the Runs page reads `state=<state name>` from the address; other parameters leave every run listed)
    page.screenshot(path=str(tmp_path / "paused-runs.png"), full_page=True)
    asked = [json.loads(body) for url, _, body in watch.api_calls if url.endswith("/flow_runs/paginate") and body]
    assert asked and all(paused_only(body) for body in asked), (link, asked)
    assert page.get_by_text(NO_API).count() == 0
    assert watch.errors == []
    assert all(url.startswith(server.api_url) and status < 400 for url, status, _ in watch.api_calls), watch.api_calls
    page.close()


# What Prefect's server answers when its database cannot serve a request it may retry (SQLite "database is locked":
# prefect.server.api.server.custom_internal_exception_handler); the UI's run form was seen failing with it.
SERVICE_UNAVAILABLE = {"exception_message": "Service Unavailable"}
UNKNOWN_ERROR = "Unknown error while creating flow run"


def test_a_custom_run_with_a_dropdown_set_is_created_from_the_form(
        deployed: tuple[LocalPrefectServer, dict[str, str]], logged_in: Any, tmp_path: Path) -> None:
    """The default (v2) UI's Custom run form of declare-incident, with a title and a severity picked in its dropdown,
    creates the run with those parameters (201, no "Unknown error" toast); the toast people saw is what the form
    shows when the server answers 503 (SQLite's "database is locked"), which this Postgres-backed server does not."""
    server, _ = deployed
    deployment = next(d for d in httpx.post(f"{server.api_url}/deployments/filter", json={}, timeout=10,
                                            headers=server.api_headers).json()
                      if d["name"] == "declare-incident")
    title = "Checkout returns 500 (submitted from the browser)"
    page = logged_in.new_page()
    watch = PageWatch(page)
    created: list[Any] = []
    page.on("response", lambda r: created.append(r) if r.url.endswith("/create_flow_run") else None)
    page.route("**/create_flow_run", lambda route: route.fulfill(status=503, json=SERVICE_UNAVAILABLE))
    run_ids: list[str] = []
    try:
        page.goto(f"{server.url}/v2/deployments/deployment/{deployment['id']}/run", wait_until="domcontentloaded")
        title_field = page.locator("div.group").filter(has=page.get_by_text("Title (Optional)", exact=True)).last
        title_field.get_by_role("tab", name="str", exact=True).click(timeout=60_000)
        title_field.locator("textarea").first.fill(title)
        page.get_by_role("button", name="Select Severity", exact=True).click()
        p1 = page.get_by_role("option", name="P1", exact=True)
        p1.wait_for(timeout=30_000)  # the dropdown is open: a plain list of the choices, no type tabs
        assert page.get_by_role("option").all_inner_texts() == ["auto", "P0", "P1", "P2", "P3"]
        p1.click()
        submit = page.get_by_role("button", name="Submit", exact=True)
        # 1. the sighting, replayed: a 503 from the server is "Unknown error while creating flow run." in the form
        submit.click()
        page.get_by_text(UNKNOWN_ERROR).first.wait_for(timeout=30_000)
        assert [r.status for r in created] == [503]
        # 2. the same form against the server itself: created, with the values picked
        page.unroute("**/create_flow_run")
        page.get_by_text(UNKNOWN_ERROR).first.wait_for(state="detached", timeout=30_000)
        with page.expect_response(lambda r: r.url.endswith("/create_flow_run")) as answer:
            submit.click()
        assert answer.value.status == 201, answer.value.text()
        run_ids.append(answer.value.json()["id"])
        page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment['id']}(\?|$)"), timeout=30_000)
        page.screenshot(path=str(tmp_path / "custom-run.png"), full_page=True)
        assert page.get_by_text(UNKNOWN_ERROR).count() == 0
        run = httpx.get(f"{server.api_url}/flow_runs/{run_ids[0]}", timeout=10, headers=server.api_headers).json()
        assert run["deployment_id"] == deployment["id"] and run["state_type"] == "SCHEDULED"
        assert run["parameters"]["params"]["severity"] == "P1" and run["parameters"]["params"]["title"] == title
        # the v2 UI also fetches from the web (fonts), which this closed network refuses: only those may fail
        elsewhere = re.compile(rf"^[A-Z]+ https?://(?!{re.escape(server.url.split('//')[1])}/)")
        assert [e for e in watch.errors if not elsewhere.match(e)] == [], watch.errors
    finally:
        for run_id in run_ids:  # nobody executes it here; the worker test of this server must not meet it
            httpx.delete(f"{server.api_url}/flow_runs/{run_id}", timeout=10, headers=server.api_headers)
        page.close()
