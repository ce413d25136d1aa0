"""PagerDuty Events API v2 stand-in: `POST /v2/enqueue` with trigger / acknowledge / resolve and dedup_key.

A trigger whose dedup_key matches an open (triggered or acknowledged) alert adds to that alert instead of opening a
second one; after a resolve, the same dedup_key opens a new alert, as PagerDuty does.
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.standin import StandIn, json_response

SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


class PagerDutyStandIn(StandIn):
    """The Events API v2 for one integration (routing key)."""

    name = "pagerduty"

    def __init__(self, *, routing_key: str) -> None:
        self.routing_key = routing_key
        self.alerts: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        super().__init__()

    def reset_state(self) -> None:
        """Forget every alert and event."""
        self.alerts, self.events = [], []

    def open_alerts(self) -> list[dict[str, Any]]:
        """Return copies of the alerts that are triggered or acknowledged."""
        with self._lock:
            return [copy.deepcopy(a) for a in self.alerts if a["status"] != "resolved"]

    def alert(self, dedup_key: str) -> dict[str, Any] | None:
        """Return a copy of the newest alert with this dedup_key."""
        with self._lock:
            found = [a for a in self.alerts if a["dedup_key"] == dedup_key]
            return copy.deepcopy(found[-1]) if found else None

    def error_body(self, status: int, message: str) -> Any:
        """Return PagerDuty's `{"status", "message", "errors"}`."""
        return {"status": "error" if status >= 500 else "throttled", "message": message, "errors": [message]}

    def routes(self) -> list[BaseRoute]:
        """Return the Events API route."""
        return [Route("/v2/enqueue", self._enqueue, methods=["POST"])]

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

    async def _enqueue(self, request: Request) -> Response:
        try:
            event = await request.json()
        except ValueError:
            return self._invalid("Invalid JSON")
        if not isinstance(event, dict):
            return self._invalid("Event must be a JSON object")
        if problems := self._problems(event):
            return self._invalid(*problems)
        action = event["event_action"]
        dedup_key = str(event.get("dedup_key") or uuid.uuid4().hex)
        now = time.time()
        with self._lock:
            self.events.append({"time": now, "dedup_key": dedup_key, **copy.deepcopy(event)})
            open_alert = next((a for a in reversed(self.alerts)
                               if a["dedup_key"] == dedup_key and a["status"] != "resolved"), None)
            if action == "trigger":
                payload = event["payload"]
                if open_alert is None:
                    self.alerts.append({
                        "dedup_key": dedup_key, "status": "triggered", "summary": payload["summary"],
                        "source": payload["source"], "severity": payload["severity"],
                        "custom_details": payload.get("custom_details"), "created_at": now, "updated_at": now,
                        "trigger_count": 1, "links": event.get("links", []),
                    })
                else:
                    open_alert["trigger_count"] += 1
                    open_alert["updated_at"] = now
            elif open_alert is not None:
                if action == "resolve":
                    open_alert["status"] = "resolved"
                elif open_alert["status"] == "triggered":
                    open_alert["status"] = "acknowledged"
                open_alert["updated_at"] = now
        return json_response({"status": "success", "message": "Event processed", "dedup_key": dedup_key}, 202)
