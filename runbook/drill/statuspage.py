"""Atlassian Statuspage stand-in: incidents (investigating → identified → monitoring → resolved) and components.

`Authorization: OAuth <key>`. A PATCH with a `body` (or a new status) appends an entry to `incident_updates`;
`components: {"<id>": "<status>"}` on an incident also sets those components' status. Errors are the document's
ErrorEntity `{"message": …}`. The rate limit is the documented one, "1 request / second as measured on a 60 second
rolling window" (`rolling_limit = (60, 60.0)`, per API key, on `rate_clock`): past it a request gets 429
`{"message": "Rate limit exceeded"}` and nothing more, since the document ("Error codes 420 or 429 indicate that you
have exceeded the rate limit and the request has been rejected") promises no Retry-After or rate-limit header; an
injected rate-limit fault answers the same way. A test can tighten the limit (e.g. `(1, 2.0)`) and drive the window
with its own clock.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.faults import Fault
from runbook.drill.standin import StandIn, iso, json_response, opt_in_retry_after, rand_id

# The enums of the Statuspage document (tests/contracts/specs/statuspage.json): realtime and scheduled statuses.
INCIDENT_STATUSES = ("investigating", "identified", "monitoring", "resolved", "scheduled", "in_progress", "verifying",
                     "completed")
IMPACTS = ("critical", "none", "maintenance", "major", "minor")
COMPONENT_STATUSES = ("operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage", "")
RATE_LIMIT = (60, 60.0)  # requests per rolling window (seconds) per API key
RATE_LIMITED = {"message": "Rate limit exceeded"}
COMPONENTS = {"app": "Web App", "database": "Database", "auth": "Authentication", "payments": "Payments"}


class StatuspageStandIn(StandIn):
    """The Statuspage REST API subset for one page."""

    name = "statuspage"

    def __init__(self, *, api_key: str, page_id: str) -> None:
        self.api_key = api_key
        self.page_id = page_id
        self.component_ids = {logical: rand_id("", 12, lower=True) for logical in COMPONENTS}
        self.components: dict[str, dict[str, Any]] = {}
        self.incidents: list[dict[str, Any]] = []
        self.rolling_limit: tuple[int, float] = RATE_LIMIT
        self.rate_clock: Callable[[], float] = time.monotonic
        self._recent: deque[float] = deque()
        super().__init__()
        self.reset_state()

    def reset_state(self) -> None:
        """Every component operational, no incidents."""
        created = iso(time.time() - 365 * 86400)
        self.components = {
            cid: {"id": cid, "page_id": self.page_id, "group_id": None, "name": COMPONENTS[logical],
                  "description": None, "position": n + 1, "status": "operational", "showcase": True,
                  "only_show_if_degraded": False, "created_at": created, "updated_at": created}
            for n, (logical, cid) in enumerate(self.component_ids.items())
        }
        self.incidents = []
        self.rolling_limit, self.rate_clock = RATE_LIMIT, time.monotonic
        self._recent = deque()

    # -- Python API -------------------------------------------------------------------------------------------
    def component_status(self, logical: str) -> str:
        """Return the status of a logical component (app, database, auth, payments)."""
        with self._lock:
            return str(self.components[self.component_ids[logical]]["status"])

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        """Return a copy of one incident."""
        with self._lock:
            found = next((i for i in self.incidents if i["id"] == incident_id), None)
            return copy.deepcopy(found)

    # -- HTTP -------------------------------------------------------------------------------------------------
    def error_body(self, status: int, message: str) -> Any:
        """Return Statuspage's ErrorEntity `{"message": …}`."""
        return {"message": message}

    def rate_limited(self, fault: Fault) -> Response:
        """An injected rate limit answers like the real one: the ErrorEntity, no Retry-After (unless opted in)."""
        return json_response(dict(RATE_LIMITED), fault.status, opt_in_retry_after(fault) or None)

    def _guard(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        key = auth[6:].strip() if auth.lower().startswith("oauth ") else request.query_params.get("api_key")
        if key != self.api_key:
            return json_response({"message": "Could not authenticate"}, 401)
        if (limited := self._throttle()) is not None:
            return limited
        if request.path_params.get("page") != self.page_id:
            return json_response({"message": "The requested resource could not be found."}, 404)
        return None

    def _throttle(self) -> Response | None:
        """Count the request in the key's rolling window; 429 (the ErrorEntity, no header) when the window is full.
        A rejected request is not counted: it did nothing."""
        limit, window = self.rolling_limit
        now = self.rate_clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - window:
                self._recent.popleft()
            if len(self._recent) >= limit:
                return json_response(dict(RATE_LIMITED), 429)
            self._recent.append(now)
        return None

    def routes(self) -> list[BaseRoute]:
        """Return the Statuspage routes."""
        base = "/v1/pages/{page}"
        return [
            Route(base + "/incidents", self._list_incidents, methods=["GET"]),
            Route(base + "/incidents/unresolved", self._list_unresolved, methods=["GET"]),
            Route(base + "/incidents", self._create_incident, methods=["POST"]),
            Route(base + "/incidents/{incident_id}", self._get_incident, methods=["GET"]),
            Route(base + "/incidents/{incident_id}", self._update_incident, methods=["PATCH", "PUT"]),
            Route(base + "/components", self._list_components, methods=["GET"]),
            Route(base + "/components/{component_id}", self._get_component, methods=["GET"]),
            Route(base + "/components/{component_id}", self._update_component, methods=["PATCH", "PUT"]),
        ]

    def _validate(self, fields: dict[str, Any], *, creating: bool) -> str | None:
        if creating and not fields.get("name"):
            return "Name can't be blank"
        if "status" in fields and fields["status"] not in INCIDENT_STATUSES:
            return f"Status is not included in the list ({', '.join(INCIDENT_STATUSES)})"
        if "impact_override" in fields and fields["impact_override"] not in IMPACTS:
            return "Impact override is not included in the list"
        for cid in fields.get("component_ids") or []:
            if cid not in self.components:
                return f"Component {cid} not found"
        comps = fields.get("components") or {}
        if not isinstance(comps, dict):
            return "components must be an object of component id to status"
        for cid, status in comps.items():
            if cid not in self.components:
                return f"Component {cid} not found"
            if status not in COMPONENT_STATUSES:
                return f"Component status {status} is not valid"
        return None

    def _apply(self, incident: dict[str, Any], fields: dict[str, Any]) -> None:
        now = time.time()
        old_status = incident.get("status")
        for key in ("name", "status", "impact_override", "deliver_notifications"):
            if key in fields:
                incident[key] = fields[key]
        if "impact_override" in fields:
            incident["impact"] = fields["impact_override"]
        affected = []
        comps = dict(fields.get("components") or {})
        for cid in fields.get("component_ids") or []:
            comps.setdefault(cid, self.components[cid]["status"])
        for cid, status in comps.items():
            comp = self.components[cid]
            affected.append({"code": cid, "name": comp["name"], "old_status": comp["status"],
                             "new_status": status})
            comp["status"], comp["updated_at"] = status, iso(now)
        if comps:
            ids = list(dict.fromkeys([c["id"] for c in incident.get("components", [])] + list(comps)))
            incident["components"] = [copy.deepcopy(self.components[c]) for c in ids]
        status = incident["status"]
        if status == "monitoring" and not incident.get("monitoring_at"):
            incident["monitoring_at"] = iso(now)
        if status == "resolved" and not incident.get("resolved_at"):
            incident["resolved_at"] = iso(now)
        if fields.get("body") or status != old_status:
            update = {
                "id": rand_id("", 12, lower=True), "incident_id": incident["id"], "status": status,
                "body": fields.get("body") or "", "created_at": iso(now), "updated_at": iso(now),
                "display_at": iso(now), "deliver_notifications": fields.get("deliver_notifications", True),
            }
            if affected:
                update["affected_components"] = affected
            incident["incident_updates"].insert(0, update)
        incident["updated_at"] = iso(now)

    async def _list_incidents(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            return json_response(copy.deepcopy(self.incidents))

    async def _list_unresolved(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            return json_response([copy.deepcopy(i) for i in self.incidents if i["status"] != "resolved"])

    async def _read_incident(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except ValueError:
            return json_response({"message": "Invalid JSON"}, 400)
        fields = body.get("incident") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return json_response({"message": "incident is missing"}, 400)
        return fields

    async def _create_incident(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        fields = await self._read_incident(request)
        if isinstance(fields, Response):
            return fields
        fields.setdefault("status", "investigating")
        with self._lock:
            if (problem := self._validate(fields, creating=True)) is not None:
                return json_response({"message": problem}, 422)
            incident_id = rand_id("", 12, lower=True)
            now = iso(time.time())
            incident: dict[str, Any] = {
                "id": incident_id, "page_id": self.page_id, "name": "", "status": None, "impact": "none",
                "impact_override": None, "shortlink": f"https://stspg.io/{rand_id('', 6)}",
                "created_at": now, "updated_at": now, "monitoring_at": None,
                "resolved_at": None, "incident_updates": [], "components": [], "postmortem_body": None,
            }
            self._apply(incident, fields)
            self.incidents.insert(0, incident)
            return json_response(copy.deepcopy(incident), 201)

    def _find(self, incident_id: str) -> dict[str, Any] | None:
        return next((i for i in self.incidents if i["id"] == incident_id), None)

    async def _get_incident(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            incident = self._find(request.path_params["incident_id"])
            if incident is None:
                return json_response({"message": "The requested resource could not be found."}, 404)
            return json_response(copy.deepcopy(incident))

    async def _update_incident(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        fields = await self._read_incident(request)
        if isinstance(fields, Response):
            return fields
        with self._lock:
            incident = self._find(request.path_params["incident_id"])
            if incident is None:
                return json_response({"message": "The requested resource could not be found."}, 404)
            if (problem := self._validate(fields, creating=False)) is not None:
                return json_response({"message": problem}, 422)
            self._apply(incident, fields)
            return json_response(copy.deepcopy(incident))

    async def _list_components(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            return json_response(copy.deepcopy(list(self.components.values())))

    async def _get_component(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            comp = self.components.get(request.path_params["component_id"])
            if comp is None:
                return json_response({"message": "The requested resource could not be found."}, 404)
            return json_response(copy.deepcopy(comp))

    async def _update_component(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return json_response({"message": "Invalid JSON"}, 400)
        fields = body.get("component") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return json_response({"message": "component is missing"}, 400)
        with self._lock:
            comp = self.components.get(request.path_params["component_id"])
            if comp is None:
                return json_response({"message": "The requested resource could not be found."}, 404)
            if "status" in fields and fields["status"] not in COMPONENT_STATUSES:
                return json_response({"message": f"Status {fields['status']} is not valid"}, 422)
            for key in ("status", "name", "description"):
                if key in fields:
                    comp[key] = fields[key]
            comp["updated_at"] = iso(time.time())
            return json_response(copy.deepcopy(comp))
