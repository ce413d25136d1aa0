"""PagerDuty stand-in: the Events API v2, the incidents it opens, the REST view, the app's buttons, V3 webhooks.

    POST /v2/enqueue        trigger / acknowledge / resolve with a dedup_key (Events API v2); past about 120 events
                            a minute per routing key (a rolling 60 s window) `429 Request Limit Exceeded`, no
                            Retry-After, the event not ingested (PagerDuty/developer-docs
                            docs/events-API-v2/05-Rate-Limits.md); `events_clock` lets a test drive that window
    GET  /incidents         REST API v2 (`Authorization: Token token=…`, `Accept: application/vnd.pagerduty+json;
                            version=2`): `?incident_key=` and `statuses[]=`; past the limit 429 `{"error": {"message":
                            "Rate Limit Exceeded", "code": 2020}}` with `ratelimit-limit/-remaining/-reset` (seconds),
                            the headers on every answer (PagerDuty/developer-docs docs/REST-API/04-Rate-Limits.md)
    press_acknowledge / press_resolve / press_reassign   what a person does in the PagerDuty app (a call here)
    subscribe(url, secret)  a V3 webhook subscription: every incident change is delivered, signed
                            (`X-PagerDuty-Signature: v1=<hex>`, `X-Webhook-Id`), from a background thread, in order,
                            retried on timeouts, connection errors, 429 and 5xx; dropped on other 4xx

As PagerDuty does: a trigger whose dedup_key matches an open (triggered or acknowledged) alert adds to that alert;
after a resolve the same dedup_key opens a new alert and incident. Each alert has its incident (incident_key = the
dedup_key). An acknowledgement sent through the Events API is made by the integration: its webhook's `agent` and
the REST acknowledger are the service (`service_reference`), never a user. Shapes: PagerDuty/api-schema
reference/REST/openapiv3.json and PagerDuty/developer-docs docs/webhooks (tests/contracts/specs/pagerduty-rest.json).
Injected faults answer as each API does: an Events API 429 like its own limit (no Retry-After), a REST 429 with its
`ratelimit-*` headers (`ratelimit-reset` = the fault's `retry_after`), errors in the Events or the REST shape.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.faults import Fault
from runbook.drill.standin import REQUEST_PATH, StandIn, iso, json_response, opt_in_retry_after, rand_id

SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")
REST_ACCEPT = "application/vnd.pagerduty+json;version=2"
WEB = "https://permit-school.pagerduty.com"
API = "https://api.pagerduty.com"
# The Events API's answer past its limit: "429 - Request Limit Exceeded", the event not ingested
# (PagerDuty/developer-docs docs/events-API-v2/05-Rate-Limits.md); the body is the document's Error object (its
# `status` words are the drill's: PagerDuty documents the message only).
EVENTS_THROTTLED = {"status": "throttle event", "message": "Request Limit Exceeded",
                    "errors": ["Request Limit Exceeded"]}
# The REST API's answer past its limit (docs/REST-API/04-Rate-Limits.md, "Reaching the limit").
REST_THROTTLED = {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
# The drill's on-call in PagerDuty (a user of the account): who presses Acknowledge in the app.
ONCALL_USER = {"id": "PDRILL1", "name": "Dana Drill", "email": "dana.drill@permit.school"}


def user_reference(user: dict[str, Any]) -> dict[str, Any]:
    """Return a user as PagerDuty's `user_reference` (id, summary = the name, self, html_url)."""
    return {"id": user["id"], "type": "user_reference", "summary": user["name"],
            "self": f"{API}/users/{user['id']}", "html_url": f"{WEB}/users/{user['id']}"}


class PagerDutyStandIn(StandIn):
    """One PagerDuty account with one service and its Events v2 integration (routing key)."""

    name = "pagerduty"

    def __init__(self, *, routing_key: str, api_token: str = "", rest_limit: int = 960, events_limit: int = 120,
                 retry_for: float = 120.0) -> None:
        super().__init__()
        self._changed = threading.Condition(self._lock)  # deliveries and state changes, waited for by tests
        self.routing_key = routing_key
        self.api_token = api_token
        self.rest_limit = self._rest_limit = rest_limit  # requests per minute per key, as the REST API allows
        self.events_limit = self._events_limit = events_limit  # Events API v2: ~120 a minute per routing key
        self.events_clock: Callable[[], float] = time.monotonic
        self._events_window: dict[str, list[float]] = {}
        self.retry_for = retry_for    # PagerDuty retries a webhook for 48 hours; the drill for two minutes
        self.service = {"id": "PSVC001", "type": "service_reference", "summary": "Permit School",
                        "self": f"{API}/services/PSVC001", "html_url": f"{WEB}/service-directory/PSVC001"}
        self.users = {ONCALL_USER["id"]: dict(ONCALL_USER)}
        self.alerts: list[dict[str, Any]] = []
        self.incidents: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.subscription: dict[str, Any] | None = None
        self._rest_window: list[float] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # -- state ------------------------------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget every alert, incident, event and delivery (the subscription stays, as in an account)."""
        with self._changed:
            self.alerts, self.incidents, self.events, self.deliveries = [], [], [], []
            self._rest_window, self.rest_limit = [], self._rest_limit  # a test's lowered limit ends with it
            self._events_window, self.events_limit, self.events_clock = {}, self._events_limit, time.monotonic
            self.users = {ONCALL_USER["id"]: dict(ONCALL_USER)}
            if self.subscription is not None:
                self.subscription["generation"] += 1  # queued deliveries of before the reset are dropped
            self._changed.notify_all()

    def open_alerts(self) -> list[dict[str, Any]]:
        """Return copies of the alerts that are triggered or acknowledged."""
        with self._lock:
            return [copy.deepcopy(a) for a in self.alerts if a["status"] != "resolved"]

    def alert(self, dedup_key: str) -> dict[str, Any] | None:
        """Return a copy of the newest alert with this dedup_key."""
        with self._lock:
            found = [a for a in self.alerts if a["dedup_key"] == dedup_key]
            return copy.deepcopy(found[-1]) if found else None

    def incident(self, dedup_key: str) -> dict[str, Any] | None:
        """Return a copy of the newest incident of this dedup_key (its incident_key), as the REST API shows it."""
        with self._lock:
            found = [i for i in self.incidents if i["incident_key"] == dedup_key]
            return copy.deepcopy(found[-1]) if found else None

    def add_user(self, name: str, email: str) -> dict[str, Any]:
        """Add a user to the account (e.g. the engineering lead) and return it."""
        user = {"id": rand_id("P", 6).upper(), "name": name, "email": email}
        with self._lock:
            self.users[user["id"]] = user
        return dict(user)

    # -- the app's buttons (what a person does in PagerDuty) --------------------------------------------------
    def _open_incident(self, dedup_key: str) -> dict[str, Any]:
        found = [i for i in self.incidents if i["incident_key"] == dedup_key and i["status"] != "resolved"]
        if not found:
            raise LookupError(f"no open PagerDuty incident for {dedup_key!r}")
        return found[-1]

    def press_acknowledge(self, dedup_key: str, user_id: str = ONCALL_USER["id"]) -> dict[str, Any]:
        """Acknowledge the open incident of a dedup key as a user does in the app; return the incident."""
        with self._changed:
            incident = self._open_incident(dedup_key)
            self._change(incident, "acknowledged", user_reference(self.users[user_id]))
            return copy.deepcopy(incident)

    def press_resolve(self, dedup_key: str, user_id: str = ONCALL_USER["id"]) -> dict[str, Any]:
        """Resolve the open incident of a dedup key as a user does in the app; return the incident."""
        with self._changed:
            incident = self._open_incident(dedup_key)
            self._change(incident, "resolved", user_reference(self.users[user_id]))
            return copy.deepcopy(incident)

    def press_reassign(self, dedup_key: str, to_user_id: str, by_user_id: str = ONCALL_USER["id"]
                       ) -> dict[str, Any]:
        """Reassign the open incident to another user (it goes back to triggered, as in PagerDuty)."""
        with self._changed:
            incident = self._open_incident(dedup_key)
            incident["assignments"] = [{"at": iso(time.time()), "assignee": user_reference(self.users[to_user_id])}]
            incident["acknowledgements"] = []
            self._change(incident, "triggered", user_reference(self.users[by_user_id]), event="incident.reassigned")
            return copy.deepcopy(incident)

    def _change(self, incident: dict[str, Any], status: str, agent: dict[str, Any], event: str | None = None) -> None:
        """Move an incident (under the lock), keep its alert in step and queue the webhook."""
        now = time.time()
        previous = incident["status"]
        incident["status"] = status
        incident["updated_at"] = incident["last_status_change_at"] = iso(now)
        incident["last_status_change_by"] = agent
        if status == "acknowledged" and previous != "acknowledged":
            incident["acknowledgements"] = [{"at": iso(now), "acknowledger": agent}]
        if status == "resolved":
            incident["resolved_at"], incident["acknowledgements"], incident["assignments"] = iso(now), [], []
        for alert in self.alerts:
            if alert["incident_id"] == incident["id"] and alert["status"] != "resolved" and status != "triggered":
                alert["status"], alert["updated_at"] = status, now
        if event is not None or previous != status:
            self._emit(event or f"incident.{status}", incident, agent, now)

    # -- webhooks ---------------------------------------------------------------------------------------------
    def subscribe(self, url: str, secret: str, events: list[str] | None = None) -> None:
        """Create the account's V3 webhook subscription (account_reference filter): deliveries go to `url`."""
        with self._changed:
            generation = self.subscription["generation"] + 1 if self.subscription else 0
            self.subscription = {"url": url, "secret": secret, "events": events, "generation": generation}
        if self._worker is None:
            self._worker = threading.Thread(target=self._deliver_forever, name="pagerduty-webhooks", daemon=True)
            self._worker.start()

    def unsubscribe(self) -> None:
        """Delete the subscription: nothing more is delivered (the polling alternative)."""
        with self._changed:
            if self.subscription is not None:
                self.subscription = None

    def _emit(self, event_type: str, incident: dict[str, Any], agent: dict[str, Any] | None, now: float) -> None:
        sub = self.subscription
        if sub is None or (sub["events"] is not None and event_type not in sub["events"]):
            return
        data = {k: copy.deepcopy(incident[k]) for k in (
            "id", "type", "self", "html_url", "status", "incident_key", "created_at", "title", "service",
            "urgency", "resolve_reason")}
        data["number"] = incident["incident_number"]  # the webhook's name for it; REST says incident_number
        data["assignees"] = [a["assignee"] for a in incident["assignments"]]
        data["escalation_policy"] = {"id": "PESC001", "type": "escalation_policy_reference", "summary": "Default",
                                     "self": f"{API}/escalation_policies/PESC001",
                                     "html_url": f"{WEB}/escalation_policies/PESC001"}
        data["teams"], data["priority"], data["conference_bridge"] = [], None, None
        body = {"event": {"id": str(uuid.uuid4()), "event_type": event_type, "resource_type": "incident",
                          "occurred_at": iso(now), "agent": agent,
                          "client": {"name": "PagerDuty"} if agent and agent["type"] == "user_reference" else None,
                          "data": data}}
        delivery = {"webhook_id": str(uuid.uuid4()), "event_type": event_type, "incident_key": incident["incident_key"],
                    "body": body, "attempts": 0, "statuses": [], "delivered": False, "dropped": False,
                    "generation": sub["generation"]}
        self.deliveries.append(delivery)
        self._queue.put(delivery)

    def redeliver(self, webhook_id: str) -> None:
        """Send a delivered webhook again with the same X-Webhook-Id (PagerDuty's at-least-once delivery)."""
        with self._lock:
            delivery = next(d for d in self.deliveries if d["webhook_id"] == webhook_id)
            delivery["delivered"] = False
        self._queue.put(delivery)

    def wait_delivered(self, event_type: str, dedup_key: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until a webhook of `event_type` for a dedup key was answered 2xx; return its delivery record."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for d in self.deliveries:
                    if d["event_type"] == event_type and d["incident_key"] == dedup_key and d["delivered"]:
                        return copy.deepcopy(d)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {event_type} webhook for {dedup_key} delivered within {timeout:g}s")
                self._changed.wait(min(left, 0.5))

    def _deliver_forever(self) -> None:
        with httpx.Client(timeout=5.0) as http:  # PagerDuty expects an answer within 5 seconds
            while not self._stopping:
                try:
                    delivery = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if delivery is not None:
                    self._deliver(http, delivery)

    def _deliver(self, http: httpx.Client, delivery: dict[str, Any]) -> None:
        """Deliver one webhook, retrying until a 2xx, a permanent 4xx, or `retry_for` seconds (in order)."""
        began, delay = time.monotonic(), 0.1
        while not self._stopping:
            sub = self.subscription
            if sub is None or sub["generation"] != delivery["generation"]:
                return
            raw = _dumps(delivery["body"])
            signature = "v1=" + hmac.new(sub["secret"].encode(), raw, hashlib.sha256).hexdigest()
            headers = {"Content-Type": "application/json", "X-PagerDuty-Signature": signature,
                       "X-Webhook-Id": delivery["webhook_id"], "X-Webhook-Subscription": "PSUB001",
                       "User-Agent": "PagerDuty-Webhook/V3.0"}
            try:
                status: int | None = http.post(sub["url"], content=raw, headers=headers).status_code
            except httpx.HTTPError:
                status = None
            with self._changed:
                delivery["attempts"] += 1
                delivery["statuses"].append(status)
                if status is not None and 200 <= status < 300:
                    delivery["delivered"] = True
                elif status is not None and 400 <= status < 500 and status != 429:
                    delivery["dropped"] = True
                self._changed.notify_all()
                if delivery["delivered"] or delivery["dropped"]:
                    return
            if time.monotonic() - began > self.retry_for:
                with self._changed:
                    delivery["dropped"] = True
                    self._changed.notify_all()
                return
            time.sleep(delay)  # the sender's back-off between attempts (PagerDuty's own timing is minutes)
            delay = min(delay * 2, 2.0)

    # -- HTTP -------------------------------------------------------------------------------------------------
    def error_body(self, status: int, message: str) -> Any:
        """Return PagerDuty's error: the Events API's `{"status", "message", "errors"}`, the REST API's
        `{"error": {"message", "code"}}` (2001, its generic code, for what the drill injects)."""
        if _is_rest(REQUEST_PATH.get()):
            return {"error": {"message": message, "code": 2001}}
        return {"status": "error" if status >= 500 else "invalid event", "message": message, "errors": [message]}

    def rate_limited(self, fault: Fault) -> Response:
        """An injected rate limit answers as PagerDuty's own: the Events API's 429 without any header, the REST
        API's with its `ratelimit-*` headers, reset in `retry_after` seconds (a Retry-After only if opted in)."""
        if not _is_rest(REQUEST_PATH.get()):
            return json_response(dict(EVENTS_THROTTLED), fault.status, opt_in_retry_after(fault) or None)
        reset = max(1, math.ceil(fault.retry_after if fault.retry_after is not None else 1))
        headers = {"ratelimit-limit": str(self.rest_limit), "ratelimit-remaining": "0", "ratelimit-reset": str(reset),
                   **opt_in_retry_after(fault)}
        return json_response(copy.deepcopy(REST_THROTTLED), fault.status, headers)

    def routes(self) -> list[BaseRoute]:
        """Return the Events API and REST routes."""
        return [Route("/v2/enqueue", self._enqueue, methods=["POST"]),
                Route("/incidents", self._list_incidents, methods=["GET"]),
                Route("/users/{id}", self._get_user, methods=["GET"])]

    @staticmethod
    def _rest_error(status: int, message: str, code: int, headers: dict[str, str] | None = None) -> Response:
        return json_response({"error": {"message": message, "code": code}}, status, headers)

    def _rest_refusal(self, request: Request) -> tuple[Response | None, dict[str, str]]:
        """Check the REST API's auth, Accept header and per-minute limit; return (refusal or None, rate headers)."""
        auth = request.headers.get("authorization", "")
        if not self.api_token or auth != f"Token token={self.api_token}":
            return self._rest_error(401, "Authentication Required" if not auth else "Unauthorized", 2006), {}
        if request.headers.get("accept", "") != REST_ACCEPT:
            return self._rest_error(400, "Invalid Accept header: use " + REST_ACCEPT, 2001), {}
        now = time.time()
        with self._lock:
            self._rest_window = [t for t in self._rest_window if now - t < 60] + [now]
            used = len(self._rest_window)
            reset = int(60 - (now - self._rest_window[0])) + 1
        limit_headers = {"ratelimit-limit": str(self.rest_limit),
                         "ratelimit-remaining": str(max(0, self.rest_limit - used)), "ratelimit-reset": str(reset)}
        if used > self.rest_limit:
            return json_response(copy.deepcopy(REST_THROTTLED), 429, limit_headers), limit_headers
        return None, limit_headers

    async def _get_user(self, request: Request) -> Response:
        """GET /users/{id}: the documented user object (id, type user, summary, name, email, self, html_url…)."""
        refusal, limit_headers = self._rest_refusal(request)
        if refusal is not None:
            return refusal
        with self._lock:
            user = copy.deepcopy(self.users.get(request.path_params["id"]))
        if user is None:
            return self._rest_error(404, "Not Found", 2100, limit_headers)
        body = {**user_reference(user), "type": "user", "name": user["name"], "email": user["email"],
                "time_zone": "Etc/UTC", "color": "green", "role": "user", "description": None,
                "job_title": user.get("job_title", "On-call engineer"), "invitation_sent": False}
        return json_response({"user": body}, 200, limit_headers)

    async def _list_incidents(self, request: Request) -> Response:
        refusal, limit_headers = self._rest_refusal(request)
        if refusal is not None:
            return refusal
        key = request.query_params.get("incident_key")
        statuses = request.query_params.getlist("statuses[]")
        with self._lock:
            found = [copy.deepcopy(i) for i in self.incidents
                     if (key is None or i["incident_key"] == key) and (not statuses or i["status"] in statuses)]
        limit = int(request.query_params.get("limit") or 25)
        return json_response({"incidents": found[:limit], "limit": limit, "offset": 0, "more": len(found) > limit,
                              "total": None}, 200, limit_headers)

    @staticmethod
    def _invalid(*errors: str) -> Response:
        return json_response({"status": "invalid event", "message": "Event object is invalid",
                              "errors": list(errors)}, 400)

    def _problems(self, event: dict[str, Any]) -> list[str]:
        problems = []
        if event.get("routing_key") != self.routing_key:
            problems.append("'routing_key' is invalid" if event.get("routing_key") else "'routing_key' is missing")
        action = event.get("event_action")
        if action not in ACTIONS:
            problems.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
        if action in ("acknowledge", "resolve") and not event.get("dedup_key"):
            problems.append("'dedup_key' is missing")
        if action == "trigger":
            payload = event.get("payload")
            if not isinstance(payload, dict):
                problems.append("'payload' is missing or not an object")
            else:
                if not payload.get("summary"):
                    problems.append("'payload.summary' is missing")
                elif len(str(payload["summary"])) > 1024:
                    problems.append("'payload.summary' is longer than 1024 characters")
                if not payload.get("source"):
                    problems.append("'payload.source' is missing")
                if payload.get("severity") not in SEVERITIES:
                    problems.append("'payload.severity' is invalid (critical, error, warning, info)")
        return problems

    def _new_incident(self, dedup_key: str, payload: dict[str, Any], now: float) -> dict[str, Any]:
        number = len(self.incidents) + 1
        incident_id = rand_id("Q", 13).upper()
        oncall = user_reference(self.users[ONCALL_USER["id"]])
        incident = {
            "id": incident_id, "type": "incident", "summary": f"[#{number}] {payload['summary']}",
            "self": f"{API}/incidents/{incident_id}", "html_url": f"{WEB}/incidents/{incident_id}",
            "incident_number": number, "title": payload["summary"], "status": "triggered",
            "incident_key": dedup_key, "created_at": iso(now), "updated_at": iso(now), "service": self.service,
            "assignments": [{"at": iso(now), "assignee": oncall}], "acknowledgements": [],
            "last_status_change_at": iso(now), "last_status_change_by": self.service, "resolved_at": None,
            "urgency": "high" if payload["severity"] in ("critical", "error") else "low", "resolve_reason": None,
        }
        self.incidents.append(incident)
        self._emit("incident.triggered", incident, self.service, now)
        return incident

    def _throttled(self, routing_key: str) -> bool:
        """Count an event against its routing key's rolling minute; True when past the limit (not ingested)."""
        now = self.events_clock()
        with self._lock:
            window = [t for t in self._events_window.get(routing_key, []) if now - t < 60.0]
            throttled = len(window) >= self.events_limit
            if not throttled:
                window.append(now)
            self._events_window[routing_key] = window
            return throttled

    async def _enqueue(self, request: Request) -> Response:
        try:
            event = await request.json()
        except ValueError:
            return self._invalid("Invalid JSON")
        if not isinstance(event, dict):
            return self._invalid("Event must be a JSON object")
        if problems := self._problems(event):
            return self._invalid(*problems)
        if self._throttled(str(event["routing_key"])):
            return json_response(dict(EVENTS_THROTTLED), 429)
        action = event["event_action"]
        dedup_key = str(event.get("dedup_key") or uuid.uuid4().hex)
        now = time.time()
        with self._changed:
            self.events.append({"time": now, "dedup_key": dedup_key, **copy.deepcopy(event)})
            open_alert = next((a for a in reversed(self.alerts)
                               if a["dedup_key"] == dedup_key and a["status"] != "resolved"), None)
            if action == "trigger":
                payload = event["payload"]
                if open_alert is None:
                    incident = self._new_incident(dedup_key, payload, now)
                    self.alerts.append({
                        "dedup_key": dedup_key, "status": "triggered", "summary": payload["summary"],
                        "source": payload["source"], "severity": payload["severity"],
                        "custom_details": payload.get("custom_details"), "created_at": now, "updated_at": now,
                        "trigger_count": 1, "links": event.get("links", []), "incident_id": incident["id"],
                    })
                else:
                    open_alert["trigger_count"] += 1
                    open_alert["updated_at"] = now
            elif open_alert is not None:
                incident = next(i for i in self.incidents if i["id"] == open_alert["incident_id"])
                if action == "resolve":
                    open_alert["status"] = "resolved"
                    if incident["status"] != "resolved":
                        self._change(incident, "resolved", self.service)
                elif open_alert["status"] == "triggered":
                    open_alert["status"] = "acknowledged"
                    if incident["status"] == "triggered":
                        self._change(incident, "acknowledged", self.service)  # the integration, not a person
                open_alert["updated_at"] = now
        return json_response({"status": "success", "message": "Event processed", "dedup_key": dedup_key}, 202)


def _dumps(body: Any) -> bytes:
    import json

    return json.dumps(body, separators=(",", ":")).encode()


def acknowledge_as_oncall(standin: PagerDutyStandIn, dedup_key: str, user_id: str = ONCALL_USER["id"]
                          ) -> dict[str, Any] | None:
    """The drill's on-call, paged: press Acknowledge in the PagerDuty app; None when no page is waiting there."""
    current = standin.incident(dedup_key)
    if current is None or current["status"] != "triggered":
        return None
    try:
        return standin.press_acknowledge(dedup_key, user_id)
    except LookupError:  # resolved or acknowledged meanwhile
        return None


def _is_rest(path: str) -> bool:
    """Say whether a path is the REST API's (not the Events API's `/v2/enqueue`)."""
    return not path.startswith("/v2/")
