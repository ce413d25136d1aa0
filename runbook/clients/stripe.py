"""Stripe billing webhooks: endpoint registration, failed deliveries, the webhook secret, live probe, replay.

Stripe calls go through the official SDK (`stripe.StripeClient` with its async methods over httpx) under the
shared retry policy; SDK errors are translated into the runbook's hierarchy. Calls to the app's webhook
endpoint go through the shared HTTP helper. No secret value ever leaves this module: the webhook secret is
compared by fingerprint (`runbook.settings.fingerprint`) only.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr

from runbook.clients._http import (
    DEFAULT_POLICY,
    HttpClient,
    Redactor,
    RetryPolicy,
    Sleeper,
    acting,
    parse_retry_after,
    rate_limited,
    require,
    retry_call,
    secret_value,
    settings_secrets,
)
from runbook.clients.vercel import VercelClient
from runbook.errors import (
    AuthError,
    InputError,
    IntegrationError,
    NotConfigured,
    RequestRejected,
    TransientError,
)
from runbook.settings import Settings, fingerprint

if TYPE_CHECKING:  # the SDK is imported where it is used: an entrypoint that never calls Stripe skips it
    import stripe as stripe_sdk

VENDOR = "stripe"
APP = "app webhook"
T = TypeVar("T")

# The events the Permit School billing webhook handles (checkout and subscription lifecycle, invoices).
DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


class WebhookEndpoint(BaseModel):
    """A webhook endpoint registered in Stripe."""

    id: str
    url: str
    status: str
    enabled_events: list[str] = Field(default_factory=list)


class EndpointCheck(BaseModel):
    """Is the app's URL registered, enabled, and subscribed to the events it needs?"""

    url: str
    ok: bool
    endpoint_id: str | None = None
    enabled: bool = False
    missing_events: list[str] = Field(default_factory=list)
    detail: str


class FailedEvent(BaseModel):
    """An event whose delivery has not succeeded (still pending or failed) for at least one endpoint."""

    id: str
    type: str
    created: datetime
    pending_webhooks: int = 0


AppSecretState = Literal["match", "mismatch", "write-only", "missing", "not-checked"]


class SecretCheck(BaseModel):
    """The webhook secret: present and whsec_-shaped, and does the app's copy match (fingerprints only)."""

    ok: bool
    present: bool
    shaped: bool
    fingerprint: str = ""
    app_state: AppSecretState = "not-checked"
    app_fingerprint: str = ""
    live_probe: Literal["accepted", "rejected", "not-run"] = Field(
        default="not-run", description="A signed harmless event sent to the app when the values cannot be compared"
    )
    detail: str

    @property
    def mismatch(self) -> bool:
        """Return True when the app's secret differs: by fingerprint, or inferred from a rejected signed probe."""
        return self.app_state == "mismatch" or self.live_probe == "rejected"


class WebhookProbe(BaseModel):
    """Live probe of the app's webhook: unsigned must be rejected (400), a signed harmless event accepted."""

    url: str
    ok: bool
    unsigned_status: int | None = None
    signed_status: int | None = None
    event_id: str
    detail: str


class ReplayResult(BaseModel):
    """One event re-sent to the app with a fresh signature."""

    event_id: str
    ok: bool
    status: int | None = None
    detail: str = ""


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == name:
            return str(value)
    return None


def translate_stripe_error(exc: stripe_sdk.StripeError, operation: str, redact: Redactor) -> IntegrationError:
    """Translate an SDK error into the runbook's hierarchy (message from Stripe's code/message, redacted)."""
    import stripe as stripe_sdk

    status = exc.http_status
    kind = getattr(exc.error, "type", None) if exc.error else None
    code = exc.code or kind
    message = redact(": ".join(str(p) for p in (code, exc.user_message) if p))[:300]
    if isinstance(exc, stripe_sdk.RateLimitError) or status == 429:
        # Stripe's own error object, kept: code (`rate_limit`, or `lock_timeout` for contention on one object), type
        # and message; Stripe sends no Retry-After (docs.stripe.com/rate-limits), so there is usually no wait
        own = exc.code or (getattr(exc.error, "code", None) if exc.error else None)
        said = f"{own} ({kind})" if own and kind else own or kind
        detail = redact(": ".join(str(p) for p in (said, exc.user_message) if p))[:300]
        wait = parse_retry_after(_header(exc.headers, "retry-after"))
        return rate_limited(VENDOR, operation, wait, 429, detail)
    if isinstance(exc, stripe_sdk.AuthenticationError | stripe_sdk.PermissionError) or status in (401, 403):
        return AuthError(VENDOR, operation, message or "not authorised", status)
    if isinstance(exc, stripe_sdk.APIConnectionError):
        cause = exc.__cause__
        error = TransientError(VENDOR, operation, f"connection failed ({type(cause).__name__ if cause else 'network'})")
        error.sent = not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout)  # type: ignore[attr-defined]
        return error
    if (status or 0) >= 500 or (status is None and isinstance(exc, stripe_sdk.APIError)):
        return TransientError(VENDOR, operation, message, status)
    return RequestRejected(VENDOR, operation, message, status)


class StripeClient:
    """Stripe checks and repairs for the app's billing webhook."""

    vendor = VENDOR

    def __init__(
        self,
        sdk: stripe_sdk.StripeClient,
        sdk_http: stripe_sdk.HTTPXClient,
        app_http: HttpClient,
        *,
        webhook_url: str | None,
        webhook_secret: SecretStr | None,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Sleeper = asyncio.sleep,
    ) -> None:
        self._sdk = sdk
        self._sdk_http = sdk_http
        self.app_http = app_http
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self.policy = policy
        self.sleep = sleep
        self.clock: Callable[[], float] = time.monotonic
        self.redact = app_http.redact

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> StripeClient:
        """Build from settings; NotConfigured names RUNBOOK_STRIPE_SECRET_KEY when unset."""
        require(VENDOR, settings, "stripe_secret_key")
        import stripe as stripe_sdk

        sdk_http = stripe_sdk.HTTPXClient(timeout=policy.timeout())
        sdk = stripe_sdk.StripeClient(
            secret_value(settings.stripe_secret_key),
            base_addresses={"api": settings.stripe_api_url.rstrip("/")},
            max_network_retries=0,  # retries are ours (runbook.clients._http)
            http_client=sdk_http,
        )
        app_http = HttpClient(APP, policy=policy, secrets=settings_secrets(settings), sleep=sleep)
        return cls(
            sdk,
            sdk_http,
            app_http,
            webhook_url=settings.webhook_url,
            webhook_secret=settings.stripe_webhook_secret,
            policy=policy,
            sleep=sleep,
        )

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], *, read: bool = True) -> T:
        import stripe as stripe_sdk

        async def once() -> T:
            try:
                return await call()
            except stripe_sdk.StripeError as exc:
                raise translate_stripe_error(exc, operation, self.redact) from None

        return await retry_call(once, policy=self.policy, sleep=self.sleep, label=f"{VENDOR} {operation}",
                                read=read)

    # Registration and deliveries

    async def list_webhook_endpoints(self, limit: int = 100) -> list[WebhookEndpoint]:
        """List the account's webhook endpoints."""
        result = await self._call(
            "list webhook endpoints", lambda: self._sdk.v1.webhook_endpoints.list_async({"limit": limit})
        )
        return [
            WebhookEndpoint(
                id=e.get("id", ""),
                url=e.get("url", ""),
                status=e.get("status", ""),
                enabled_events=list(e.get("enabled_events") or []),
            )
            for e in (item.to_dict() for item in result.data)
        ]

    async def check_webhook_endpoint(
        self, url: str | None = None, required_events: Iterable[str] = DEFAULT_WEBHOOK_EVENTS
    ) -> EndpointCheck:
        """Check that the app's webhook URL is registered, enabled and subscribed to `required_events`."""
        target = (url or self.webhook_url or "").rstrip("/")
        if not target:
            raise NotConfigured(VENDOR, "RUNBOOK_STRIPE_WEBHOOK_URL or RUNBOOK_APP_URL")
        endpoints = [e for e in await self.list_webhook_endpoints() if e.url.rstrip("/") == target]
        if not endpoints:
            return EndpointCheck(url=target, ok=False, detail="no webhook endpoint registered for the app's URL")
        best = next((e for e in endpoints if e.status == "enabled"), endpoints[0])
        events = set(best.enabled_events)
        missing = [] if "*" in events else [e for e in required_events if e not in events]
        enabled = best.status == "enabled"
        problems = ([] if enabled else [f"endpoint is {best.status}"]) + (
            [f"missing events: {', '.join(missing)}"] if missing else []
        )
        return EndpointCheck(
            url=target,
            ok=not problems,
            endpoint_id=best.id,
            enabled=enabled,
            missing_events=missing,
            detail="; ".join(problems) or "registered, enabled, subscribed to the required events",
        )

    async def failed_events(
        self, since: datetime | timedelta = timedelta(hours=24), *, limit: int = 100, max_pages: int = 5
    ) -> list[FailedEvent]:
        """List events not yet delivered (`delivery_success=false`) since a time (Stripe keeps 30 days)."""
        start = datetime.now(UTC) - since if isinstance(since, timedelta) else since
        params: dict[str, Any] = {
            "delivery_success": False,
            "created": {"gte": int(start.timestamp())},
            "limit": min(limit, 100),
        }
        out: list[FailedEvent] = []
        for _ in range(max_pages):
            page = await self._list_events(dict(params))
            events = [item.to_dict() for item in page.data]
            for event in events:
                out.append(
                    FailedEvent(
                        id=event.get("id", ""),
                        type=event.get("type", ""),
                        created=datetime.fromtimestamp(int(event.get("created") or 0), UTC),
                        pending_webhooks=int(event.get("pending_webhooks") or 0),
                    )
                )
            if not page.has_more or not events or len(out) >= limit:
                break
            params["starting_after"] = events[-1].get("id")
        return out[:limit]

    async def _list_events(self, params: dict[str, Any]) -> Any:
        return await self._call("list failed events", lambda: self._sdk.v1.events.list_async(params))  # type: ignore[arg-type]

    # The webhook secret

    async def check_webhook_secret(
        self,
        vercel: VercelClient | None = None,
        *,
        env_key: str = "STRIPE_WEBHOOK_SECRET",
        live_probe: bool = True,
    ) -> SecretCheck:
        """Check the whsec_ secret is present and shaped and (given Vercel) that the app's copy matches.

        The app's value is read from the project's env var one by one and compared by fingerprint. When it cannot
        be compared (type sensitive: write-only; or missing) and `live_probe` is set, a correctly signed harmless
        event is sent to the app: a rejection means the app's secret differs.
        """
        ours = secret_value(self._webhook_secret)
        present, shaped = bool(ours), ours.startswith("whsec_")
        fp = fingerprint(ours)
        if not present:
            return SecretCheck(ok=False, present=False, shaped=False, detail="RUNBOOK_STRIPE_WEBHOOK_SECRET unset")
        if vercel is None:
            detail = "present and whsec_-shaped" if shaped else "present but not whsec_-shaped"
            return SecretCheck(
                ok=shaped, present=True, shaped=shaped, fingerprint=fp, detail=detail + "; app not checked"
            )
        env = await vercel.find_env(env_key)
        state: AppSecretState
        app_fp = ""
        if env is None:
            state, detail = "missing", f"the app has no {env_key} in production"
        elif env.write_only or env.value is None:
            state, detail = "write-only", f"cannot compare: {env_key} is write-only (sensitive)"
        else:
            app_fp = fingerprint(env.value)
            if app_fp == fp:
                state, detail = "match", f"the app's {env_key} matches ({fp})"
            else:
                state, detail = "mismatch", f"the app's {env_key} ({app_fp}) differs from Stripe's secret ({fp})"
        probe: Literal["accepted", "rejected", "not-run"] = "not-run"
        if state in ("write-only", "missing") and live_probe and self.webhook_url:
            result = await self.probe_webhook()
            probe = "accepted" if result.signed_status is not None and 200 <= result.signed_status < 300 else "rejected"
            verdict = "accepts" if probe == "accepted" else f"rejects (HTTP {result.signed_status})"
            detail += f"; live probe: the app {verdict} an event signed with Stripe's secret ({fp})"
        ok = shaped and (state == "match" or (state == "write-only" and probe != "rejected"))
        return SecretCheck(
            ok=ok,
            present=True,
            shaped=shaped,
            fingerprint=fp,
            app_state=state,
            app_fingerprint=app_fp,
            live_probe=probe,
            detail=detail,
        )

    # Talking to the app's endpoint

    def _sign(self, payload: str) -> str:
        secret = secret_value(self._webhook_secret)
        if not secret:
            raise NotConfigured(VENDOR, "RUNBOOK_STRIPE_WEBHOOK_SECRET")
        import stripe as stripe_sdk

        return stripe_sdk.WebhookSignature.generate_signature_header(payload, secret)

    def _target(self, url: str | None) -> str:
        target = url or self.webhook_url
        if not target:
            raise NotConfigured(VENDOR, "RUNBOOK_STRIPE_WEBHOOK_URL or RUNBOOK_APP_URL")
        return target

    async def _post_to_app(self, url: str, payload: str, signature: str | None, operation: str) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        # 4xx are answers here (the probe expects a 400); 5xx and transport errors are retried.
        return await self.app_http.request(
            "POST",
            url,
            operation=operation,
            idempotent=True,
            accept=range(400, 500),
            content=payload,
            headers=headers,
        )

    async def probe_webhook(self, url: str | None = None) -> WebhookProbe:
        """POST unsigned (expect 400), then a signed `runbook.probe` event (expect 2xx), to the app."""
        target = self._target(url)
        event_id = f"evt_runbook_probe_{secrets.token_hex(8)}"
        unsigned = await self._post_to_app(target, json.dumps({"type": "runbook.probe"}), None, "unsigned probe")
        payload = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "type": "runbook.probe",
                "created": int(time.time()),
                "livemode": False,
                "data": {"object": {"object": "runbook.probe", "id": event_id}},
            }
        )
        signed = await self._post_to_app(target, payload, self._sign(payload), "signed probe")
        rejects_unsigned = unsigned.status_code == 400
        accepts_signed = signed.is_success
        problems = []
        if not rejects_unsigned:
            problems.append(f"unsigned request got HTTP {unsigned.status_code}, expected 400")
        if not accepts_signed:
            problems.append(f"signed event got HTTP {signed.status_code}: the app rejects Stripe's signature")
        return WebhookProbe(
            url=_shown(target),
            ok=not problems,
            unsigned_status=unsigned.status_code,
            signed_status=signed.status_code,
            event_id=event_id,
            detail="; ".join(problems) or "unsigned rejected (400), signed accepted",
        )

    async def get_event_payload(self, event_id: str) -> str:
        """Return an event's JSON exactly as Stripe serves it."""
        if not event_id.startswith("evt_") or any(c in event_id for c in "/?#& "):
            raise InputError(f"not a Stripe event id: {event_id[:40]!r}")
        event = await self._call("retrieve event", lambda: self._sdk.v1.events.retrieve_async(event_id))
        raw = getattr(event.last_response, "body", None) if event.last_response else None
        return raw if isinstance(raw, str) and raw else json.dumps(event.to_dict())

    async def replay_events(self, event_ids: Iterable[str], url: str | None = None) -> list[ReplayResult]:
        """Re-send events to the app, each with a fresh signature; one result per event (errors captured)."""
        target = self._target(url)
        results: list[ReplayResult] = []
        for event_id in event_ids:
            try:
                payload = await self.get_event_payload(event_id)
                response = await self._post_to_app(target, payload, self._sign(payload), "replay event")
            except (IntegrationError, InputError) as exc:
                results.append(ReplayResult(event_id=event_id, ok=False, detail=str(exc)))
                continue
            ok = response.is_success
            results.append(
                ReplayResult(
                    event_id=event_id,
                    ok=ok,
                    status=response.status_code,
                    detail="delivered" if ok else f"app answered HTTP {response.status_code}",
                )
            )
        return results

    async def resend_events(self, event_ids: Iterable[str], endpoint_id: str | None = None, *,
                            confirm_timeout: float = 60.0, poll_interval: float = 2.0) -> list[ReplayResult]:
        """Ask Stripe to redeliver events to an endpoint (`POST /v1/events/{id}/retry`, what `stripe events resend`
        calls; Stripe signs with its own secret) and confirm each delivery by re-reading the event.

        Stripe answers the resend before it delivers: an event is delivered only once a re-read shows
        `pending_webhooks == 0`, polled after 0.25 s, then twice as long each time up to `poll_interval`, for up to
        `confirm_timeout` seconds; one still pending then is reported as not delivered. Default endpoint: the app's.
        Each event's resend is an action (`acting`) of `confirm_timeout` seconds, its re-reads included: a rate
        limit is waited out while that time allows, else given up at once for that event.
        """
        if endpoint_id is None:
            check = await self.check_webhook_endpoint()
            endpoint_id = check.endpoint_id
        results: list[ReplayResult] = []
        for event_id in event_ids:
            if not event_id.startswith("evt_") or any(c in event_id for c in "/?#& "):
                results.append(ReplayResult(event_id=event_id[:40], ok=False, detail="not a Stripe event id"))
                continue
            try:
                with acting("resend event", confirm_timeout, clock=self.clock) as action:
                    await self._call("resend event", self._resend(event_id, endpoint_id), read=False)
                    pending = await self._confirm(event_id, action.remaining(), poll_interval)
            except IntegrationError as exc:
                results.append(ReplayResult(event_id=event_id, ok=False, status=exc.status, detail=str(exc)))
                continue
            ok = pending == 0
            detail = ("delivered (confirmed by re-reading the event)" if ok else
                      f"resend accepted; still pending for {pending} endpoint(s) after {confirm_timeout:g}s")
            results.append(ReplayResult(event_id=event_id, ok=ok, status=200, detail=detail))
        return results

    async def _confirm(self, event_id: str, timeout: float, interval: float) -> int | None:
        """Re-read an event until no webhook is pending or `timeout` passes; return the last pending count."""
        deadline = self.clock() + timeout
        wait = min(interval, 0.25)
        while True:
            event = await self._call("re-read event", lambda: self._sdk.v1.events.retrieve_async(event_id))
            value = event.to_dict().get("pending_webhooks")
            pending = int(value) if isinstance(value, int) else None
            if pending == 0 or self.clock() + wait > deadline:
                return pending
            await self.sleep(wait)
            wait = min(interval, wait * 2)  # a delivery usually lands within a second: look soon, then less often

    def _resend(self, event_id: str, endpoint_id: str | None) -> Callable[[], Awaitable[Any]]:
        params = {"webhook_endpoint": endpoint_id} if endpoint_id else {}

        async def call() -> Any:
            return await self._sdk.raw_request_async("post", f"/v1/events/{event_id}/retry", **params)

        return call

    def add_event_hook(self, event: Literal["request", "response"], hook: Callable[[Any], Awaitable[None]]) -> None:
        """Register an httpx event hook on the SDK's and the app client's connections (tests record exchanges)."""
        client = getattr(self._sdk_http, "_client_async", None)
        if isinstance(client, httpx.AsyncClient):
            hooks = client.event_hooks
            hooks.setdefault(event, []).append(hook)
            client.event_hooks = hooks
        self.app_http.add_event_hook(event, hook)

    async def aclose(self) -> None:
        """Close the SDK's and the app client's connections."""
        await self._sdk_http.close_async()
        await self.app_http.aclose()

    async def __aenter__(self) -> StripeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _shown(url: str) -> str:
    split = httpx.URL(url)
    return str(split.copy_with(query=None, fragment=None, username=None, password=None))
