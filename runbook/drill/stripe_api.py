"""Stripe stand-in: webhook endpoints, events, and real signed webhook deliveries to the app.

Every emitted event is POSTed to each enabled endpoint subscribed to its type, signed with the endpoint's secret
(`stripe.WebhookSignature.generate_signature_header`). A non-2xx answer (or no answer) leaves the endpoint pending:
the event's `pending_webhooks` stays > 0 and `GET /v1/events?delivery_success=false` lists it. Failed deliveries
are retried only on request: `POST /v1/events/{id}/retry` (what `stripe events resend` calls) or `retry_failed()`.
A resend is answered at once with the event still pending; the delivery follows `redelivery_delay` seconds later, so
only re-reading the event (`pending_webhooks`) tells whether it landed.

Rate limits as Stripe documents them (https://docs.stripe.com/rate-limits): requests per second per account, and
per endpoint ("each named API operation"; 25 a second unless noted, the sandbox's global limit 25 too). The
stand-in counts a fixed one-second window per key and endpoint (`rate_limit` per `rate_window` on `rate_clock`).
Past it: 429 with the documented error object, `code` `rate_limit` (docs.stripe.com/error-codes; stripe-python's
_api_requestor.py specific_v1_api_error maps 429 to RateLimitError), and no Retry-After or rate-limit header:
Stripe documents none and asks for exponential backoff, which is what the client does.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import stripe
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbook.drill.faults import Fault
from runbook.drill.standin import StandIn, bearer, json_response, opt_in_retry_after, rand_id, read_params

APP_EVENTS = [
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
]
API_VERSION = "2024-06-20"
RATE_LIMIT = (25, 1.0)  # requests per fixed window (seconds) per key and endpoint: the documented sandbox limits
RATE_LIMITED = {"code": "rate_limit", "doc_url": "https://stripe.com/docs/error-codes/rate-limit",
                "message": "Request rate limit exceeded. Learn more about rate limits here "
                           "https://stripe.com/docs/rate-limits.",
                "type": "invalid_request_error"}


@dataclass
class WebhookEndpoint:
    """A webhook endpoint and its signing secret."""

    id: str
    url: str
    secret: str
    enabled_events: list[str]
    status: str = "enabled"
    created: int = field(default_factory=lambda: int(time.time()))

    def wants(self, event_type: str) -> bool:
        """Return True when this endpoint is enabled and subscribed to `event_type`."""
        return self.status == "enabled" and ("*" in self.enabled_events or event_type in self.enabled_events)


@dataclass
class DeliveryAttempt:
    """One delivery of an event to an endpoint."""

    event_id: str
    endpoint_id: str
    status: int | None
    error: str | None
    time: float


@dataclass
class StripeEvent:
    """An event and the endpoints it has not yet been delivered to."""

    id: str
    type: str
    created: int
    data: dict[str, Any]
    pending: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        """Return the Stripe event object."""
        return {
            "id": self.id,
            "object": "event",
            "api_version": API_VERSION,
            "created": self.created,
            "data": {"object": self.data},
            "livemode": False,
            "pending_webhooks": len(self.pending),
            "request": {"id": None, "idempotency_key": None},
            "type": self.type,
        }


def _object_for(event_type: str) -> dict[str, Any]:
    kind = event_type.rsplit(".", 1)[0]
    customer = rand_id("cus_", 14)
    if kind == "invoice":
        return {"id": rand_id("in_", 24), "object": "invoice", "customer": customer, "amount_paid": 4900,
                "currency": "usd", "status": "paid" if event_type.endswith("paid") else "open"}
    if kind == "checkout.session":
        return {"id": rand_id("cs_test_", 24), "object": "checkout.session", "customer": customer,
                "amount_total": 4900, "currency": "usd", "payment_status": "paid", "mode": "payment"}
    if kind == "customer.subscription":
        return {"id": rand_id("sub_", 24), "object": "subscription", "customer": customer, "status": "active"}
    return {"id": rand_id("obj_", 24), "object": kind.replace(".", "_")}


class StripeStandIn(StandIn):
    """The Stripe API subset the runbook uses, plus the webhook sender."""

    name = "stripe"

    def __init__(self, *, secret_key: str, webhook_url: str, webhook_secret: str) -> None:
        self.secret_key = secret_key
        self.webhook_url = webhook_url
        self.endpoints: list[WebhookEndpoint] = []
        self.events: list[StripeEvent] = []
        self.attempts: list[DeliveryAttempt] = []
        self.delivery_timeout = 10.0
        self.redelivery_delay = 0.2  # seconds between answering a resend and delivering it
        self._background: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._initial_secret = webhook_secret
        self._baseline: Any = None
        self.rate_limit, self.rate_window = RATE_LIMIT
        self.rate_clock: Callable[[], float] = time.time
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # (key, endpoint) → (window number, used)
        super().__init__()

    # -- baseline ---------------------------------------------------------------------------------------------
    def seed(self, history: int = 5) -> None:
        """Create the app's endpoint and a few delivered historical events."""
        with self._lock:
            self.endpoints = [WebhookEndpoint(rand_id("we_", 24), self.webhook_url, self._initial_secret,
                                              list(APP_EVENTS), created=int(time.time()) - 200 * 86400)]
            now = int(time.time())
            self.events = []
            for n in range(history):
                kind = APP_EVENTS[n % len(APP_EVENTS)]
                self.events.append(StripeEvent(rand_id("evt_", 24), kind, now - (history - n) * 7200,
                                               _object_for(kind)))
            self.attempts = []
            self._baseline = copy.deepcopy((self.endpoints, self.events))

    def reset_state(self) -> None:
        """Restore the seeded endpoint (and its original secret) and events."""
        if self._baseline is not None:
            self.endpoints, self.events = copy.deepcopy(self._baseline)
        self.attempts = []
        self.rate_limit, self.rate_window = RATE_LIMIT
        self.rate_clock = time.time
        self._windows = {}

    # -- Python API -------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> WebhookEndpoint:
        """Return the app's webhook endpoint."""
        return self.endpoints[0]

    def rotate_secret(self, endpoint_id: str | None = None) -> str:
        """Roll an endpoint's signing secret (like the dashboard's "Roll secret") and return the new one."""
        with self._lock:
            endpoint = self._endpoint(endpoint_id) if endpoint_id else self.endpoint
            if endpoint is None:
                raise LookupError(endpoint_id)
            endpoint.secret = "whsec_" + secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")
            return endpoint.secret

    def failed_events(self) -> list[StripeEvent]:
        """Return events not yet delivered to every endpoint, newest first."""
        with self._lock:
            return [e for e in sorted(self.events, key=lambda e: e.created, reverse=True) if e.pending]

    def emit(self, event_type: str = "invoice.paid", data: dict[str, Any] | None = None, *,
             deliver: bool = True) -> dict[str, Any]:
        """Create an event and deliver it to the subscribed endpoints now (blocks); return the event object."""
        with self._lock:
            created = int(time.time())
            event = StripeEvent(rand_id("evt_", 24), event_type, created, data or _object_for(event_type))
            event.pending = {ep.id for ep in self.endpoints if ep.wants(event_type)}
            self.events.append(event)
        if deliver and event.pending and self.host is not None:
            self.host.run(self.deliver(event))
        with self._lock:
            return event.to_json()

    def retry_failed(self) -> int:
        """Redeliver every pending event to its pending endpoints; return how many are now delivered."""
        failed = self.failed_events()
        if not failed or self.host is None:
            return 0
        self.host.run(self._deliver_many(failed))
        return sum(1 for e in failed if not e.pending)

    async def _deliver_many(self, events: list[StripeEvent]) -> None:
        for event in sorted(events, key=lambda e: e.created):
            await self.deliver(event)

    async def deliver(self, event: StripeEvent, endpoint_ids: set[str] | None = None) -> None:
        """POST the event to its pending endpoints with a real Stripe-Signature; mark successes delivered."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.delivery_timeout)
        targets = [ep for ep in self.endpoints
                   if ep.id in event.pending and (endpoint_ids is None or ep.id in endpoint_ids)]
        for ep in targets:
            payload = json.dumps(event.to_json(), separators=(",", ":"))
            header = stripe.WebhookSignature.generate_signature_header(payload, ep.secret)
            status: int | None = None
            error: str | None = None
            try:
                resp = await self._client.post(
                    ep.url, content=payload.encode(),
                    headers={"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header,
                             "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"},
                )
                status = resp.status_code
                if not 200 <= status < 300:
                    error = resp.text[:200]
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.attempts.append(DeliveryAttempt(event.id, ep.id, status, error, time.time()))
                if status is not None and 200 <= status < 300:
                    event.pending.discard(ep.id)

    async def aclose(self) -> None:
        """Close the delivery client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- HTTP -------------------------------------------------------------------------------------------------
    def error_body(self, status: int, message: str) -> Any:
        """Return Stripe's `{"error": {"message", "type"}}` (a 429: the documented `rate_limit` error)."""
        if status == 429:
            return {"error": dict(RATE_LIMITED)}
        kind = "api_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": kind}}

    def rate_limited(self, fault: Fault) -> Response:
        """An injected rate limit is Stripe's own 429: the `rate_limit` error object, no Retry-After or header."""
        return json_response({"error": dict(RATE_LIMITED)}, fault.status, opt_in_retry_after(fault) or None)

    def _err(self, status: int, message: str, **extra: Any) -> Response:
        kind = "api_error" if status >= 500 else "invalid_request_error"
        return json_response({"error": {"message": message, "type": kind, **extra}}, status)

    def _guard(self, request: Request) -> Response | None:
        key = bearer(request)
        if key is None:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("basic "):
                key = base64.b64decode(auth[6:]).decode(errors="replace").split(":", 1)[0]
        if not key:
            return self._err(401, "You did not provide an API key. You need to provide your API key in the "
                                  "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                                  "YOUR_SECRET_KEY').")
        if key != self.secret_key:
            return self._err(401, f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}")
        return None

    def _endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        return next((e for e in self.endpoints if e.id == endpoint_id), None)

    def _endpoint_json(self, ep: WebhookEndpoint) -> dict[str, Any]:
        return {"id": ep.id, "object": "webhook_endpoint", "api_version": API_VERSION, "application": None,
                "created": ep.created, "description": "Permit School billing", "enabled_events": ep.enabled_events,
                "livemode": False, "metadata": {}, "status": ep.status, "url": ep.url}

    def routes(self) -> list[BaseRoute]:
        """Return the Stripe routes."""
        routes = [
            ("GET", "/v1/webhook_endpoints", self._list_endpoints),
            ("GET", "/v1/webhook_endpoints/{endpoint_id}", self._get_endpoint),
            ("POST", "/v1/webhook_endpoints/{endpoint_id}", self._update_endpoint),
            ("GET", "/v1/events", self._list_events),
            ("GET", "/v1/events/{event_id}", self._get_event),
            ("POST", "/v1/events/{event_id}/retry", self._retry_event),
        ]
        return [Route(path, self._limited(f"{method} {path}", handler), methods=[method])
                for method, path, handler in routes]

    def _limited(self, endpoint: str, handler: Callable[[Request], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Count the request in its key's window for the endpoint; past the limit 429 `rate_limit`, no headers."""

        async def limited(request: Request) -> Response:
            used, _ = self.count_in_window(request, endpoint)
            if used > self.rate_limit:
                return json_response({"error": dict(RATE_LIMITED)}, 429)
            return await handler(request)

        return limited

    @staticmethod
    def _list(data: list[dict[str, Any]], url: str, has_more: bool = False) -> dict[str, Any]:
        return {"object": "list", "data": data, "has_more": has_more, "url": url}

    async def _list_endpoints(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            data = [self._endpoint_json(e) for e in self.endpoints]
        return json_response(self._list(data, "/v1/webhook_endpoints"))

    async def _get_endpoint(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            ep = self._endpoint(request.path_params["endpoint_id"])
            if ep is None:
                return self._err(404, f"No such webhook endpoint: '{request.path_params['endpoint_id']}'",
                                 code="resource_missing", param="id")
            return json_response(self._endpoint_json(ep))

    async def _update_endpoint(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        params = await read_params(request)
        with self._lock:
            ep = self._endpoint(request.path_params["endpoint_id"])
            if ep is None:
                return self._err(404, f"No such webhook endpoint: '{request.path_params['endpoint_id']}'",
                                 code="resource_missing", param="id")
            if "url" in params:
                ep.url = str(params["url"])
            if "disabled" in params:
                ep.status = "disabled" if str(params["disabled"]).lower() == "true" else "enabled"
            events = [v for k, v in params.items() if k.startswith("enabled_events[")]
            if events:
                ep.enabled_events = [str(v) for v in events]
            return json_response(self._endpoint_json(ep))

    async def _list_events(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        q = request.query_params
        try:
            limit = int(q.get("limit", "10"))
            bounds = {op: int(q[f"created[{op}]"]) for op in ("gt", "gte", "lt", "lte") if f"created[{op}]" in q}
            exact = int(q["created"]) if "created" in q else None
        except ValueError:
            return self._err(400, "Invalid integer", param="created")
        if not 1 <= limit <= 100:
            return self._err(400, "Invalid limit: must be between 1 and 100", param="limit")
        success = q.get("delivery_success")
        types = {v for k, v in q.multi_items() if k == "type" or k.startswith("types[")}
        with self._lock:
            events = sorted(self.events, key=lambda e: (e.created, e.id), reverse=True)

            def keep(e: StripeEvent) -> bool:
                if success == "false" and not e.pending:
                    return False
                if success == "true" and e.pending:
                    return False
                if types and not any(e.type == t or (t.endswith("*") and e.type.startswith(t[:-1]))
                                     for t in types):
                    return False
                if exact is not None and e.created != exact:
                    return False
                checks = {"gt": e.created > bounds.get("gt", -1), "gte": e.created >= bounds.get("gte", -1),
                          "lt": e.created < bounds.get("lt", 2**62), "lte": e.created <= bounds.get("lte", 2**62)}
                return all(checks.values())

            events = [e for e in events if keep(e)]
            if after := q.get("starting_after"):
                ids = [e.id for e in events]
                events = events[ids.index(after) + 1:] if after in ids else []
            if before := q.get("ending_before"):
                ids = [e.id for e in events]
                events = events[:ids.index(before)][-limit:] if before in ids else []
            page = events[:limit]
            data = [e.to_json() for e in page]
        return json_response(self._list(data, "/v1/events", has_more=len(events) > limit))

    def _event(self, event_id: str) -> StripeEvent | None:
        return next((e for e in self.events if e.id == event_id), None)

    async def _get_event(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        with self._lock:
            event = self._event(request.path_params["event_id"])
            if event is None:
                return self._err(404, f"No such event: '{request.path_params['event_id']}'",
                                 code="resource_missing", param="id")
            return json_response(event.to_json())

    async def _retry_event(self, request: Request) -> Response:
        if (denied := self._guard(request)) is not None:
            return denied
        params = await read_params(request)
        with self._lock:
            event = self._event(request.path_params["event_id"])
            if event is None:
                return self._err(404, f"No such event: '{request.path_params['event_id']}'",
                                 code="resource_missing", param="id")
            endpoint_id = params.get("webhook_endpoint")
            if endpoint_id is not None and self._endpoint(str(endpoint_id)) is None:
                return self._err(404, f"No such webhook endpoint: '{endpoint_id}'", code="resource_missing",
                                 param="webhook_endpoint")
            if endpoint_id is not None:
                event.pending.add(str(endpoint_id))
            answer = event.to_json()
        # Like Stripe, the redelivery is queued: the answer (still pending) comes first, the delivery after it.
        task = asyncio.get_running_loop().create_task(
            self._deliver_later(event, {str(endpoint_id)} if endpoint_id else None))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return json_response(answer)

    async def _deliver_later(self, event: StripeEvent, endpoint_ids: set[str] | None) -> None:
        await asyncio.sleep(self.redelivery_delay)
        await self.deliver(event, endpoint_ids)
