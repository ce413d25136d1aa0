"""The one retry and error-translation implementation every client uses.

`RetryPolicy` holds the numbers (attempts, backoff, total wait, timeouts); `retry_call` runs any coroutine
factory under it (HTTP requests, SDK calls, database connects); `HttpClient` is the async request helper: one
attempt translates transport errors and HTTP statuses into the runbook's `IntegrationError` family;
the retry loop repeats what is worth repeating.

Retried: transport errors, timeouts, 429 and Statuspage's 420 (honouring `Retry-After`, seconds or HTTP date;
without it the documented window reset: `ratelimit-reset`, Sentry's and Vercel's epoch resets, Supabase's
`X-RateLimit-Reset` seconds; with neither, an exponential backoff that never drops to zero), 5xx.
How long a rate limit is waited out depends on the use, as an on-call engineer would decide it: a read (a monitor
cycle's) gives up at once when the reset is more than `max_retry_after` away, with `RateLimited` saying "rate limited
until <time>" (the monitor records a gap, the next cycle reads again); an action, run inside `acting(name, timeout)`,
waits for the reset as long as its timeout allows, and otherwise gives up at once saying its timeout ends first.
Every write to a vendor's HTTP API is an action: Vercel's rollback, promote and redeploy (their polls included) and
env var writes, PagerDuty's events (the page's minutes), Statuspage's incident and component writes (its rolling
minute), Stripe's resend (with its confirming re-reads), Slack's Web API calls and webhook posts. The time left is
the action's deadline on its clock, and never more than its timeout less what this call has already waited (so a
test's recorded sleeps are bounded too).
Never retried: 401/403 (`AuthError`) and any other 4xx (`RequestRejected`).
Non-idempotent calls (create an incident, post a message, create a deployment) are retried only when the
request surely did not reach the vendor (connect errors) or the vendor said "slow down" (429/420).

Error messages are built from the vendor's error code and message, never from the request, and every message
is passed through `Redactor`, which removes each configured secret (tokens, keys, webhook URLs, whsec values).
Transport exceptions are raised `from None`: their request object carries the URL, and a Slack webhook URL is
itself a secret.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import certifi
import httpx
from pydantic import SecretStr

from runbook.errors import (
    AuthError,
    IntegrationError,
    NotConfigured,
    RateLimited,
    RequestRejected,
    TransientError,
)
from runbook.settings import ENV_PREFIX

log = logging.getLogger("runbook.clients")

T = TypeVar("T")
Sleeper = Callable[[float], Awaitable[None]]
RetryHook = Callable[[int, IntegrationError, float], Awaitable[None]]

RATE_LIMIT_STATUSES = frozenset({420, 429})
# vendor → the header that gives its rate-limit window's reset in UTC epoch seconds (waited for when a 429 has no
# Retry-After). Per vendor: other APIs send the same `X-RateLimit-Reset` name as a number of seconds.
#   vercel: X-RateLimit-Reset, "the time at which the current rate limit window resets in UTC epoch seconds" (the
#           REST API's Rate Limits section; runbook/drill/vercel.py models it)
EPOCH_RESET_HEADERS: dict[str, str] = {"vercel": "x-ratelimit-reset"}
# vendor → the header that gives the seconds until its rate-limit window resets (when a 429 has no Retry-After):
#   supabase api: X-RateLimit-Reset, "the number of seconds remaining until your rate limit resets" (the Management
#                 API's rate limits, supabase/supabase apps/docs/content/_partials/api_rate_limits.mdx; no
#                 Retry-After is documented; runbook/drill/supabase_api.py models it)
# (PagerDuty's REST API sends the standard-draft `ratelimit-reset` in seconds, read for every vendor.)
SECONDS_RESET_HEADERS: dict[str, str] = {"supabase api": "x-ratelimit-reset"}
MAX_MESSAGE = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a client retries, and the timeouts of each attempt (seconds)."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_total_wait: float = 30.0
    max_retry_after: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    write_timeout: float = 15.0
    pool_timeout: float = 5.0

    def timeout(self) -> httpx.Timeout:
        """Return the httpx timeout of one attempt."""
        return httpx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.write_timeout,
            pool=self.pool_timeout,
        )

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the full-jitter delay before retry number `attempt` (1-based)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return (rng or random).uniform(0, cap)

    def throttled_backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the delay after a rate limit that said not how long: the same exponential cap, but at least
        half of it (equal jitter), so a throttled retry really slows down instead of coming straight back."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return (rng or random).uniform(cap / 2, cap)

    def with_(self, **changes: Any) -> RetryPolicy:
        """Return a copy with some fields changed."""
        return replace(self, **changes)


DEFAULT_POLICY = RetryPolicy()


class Redactor:
    """Remove known secret values from text before it leaves a client."""

    def __init__(self, secrets: Iterable[str | SecretStr | None] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | SecretStr | None) -> None:
        """Register a secret; a URL also registers its path, query and password parts."""
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not raw or len(raw) < 6:
            return
        parts = {raw}
        if "://" in raw:
            split = urlsplit(raw)
            parts.update(p for p in (split.path, split.query, split.password or "") if len(p) >= 6)
        self._secrets.extend(p for p in parts if p not in self._secrets)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """Return `text` with every registered secret replaced by `[redacted]`."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


@lru_cache(maxsize=1)
def ssl_context() -> ssl.SSLContext:
    """Return one shared verifying SSL context (building one per client costs tens of milliseconds)."""
    return ssl.create_default_context(cafile=certifi.where())


def settings_secrets(settings: Any) -> list[str]:
    """Return every secret value held by a Settings object (for a Redactor)."""
    out: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr) and value.get_secret_value():
            out.append(value.get_secret_value())
    return out


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


def epoch_wait(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds until a reset given in UTC epoch seconds, or None when absent or malformed."""
    try:
        reset = float(value) if value else None
    except ValueError:
        return None
    return None if reset is None else max(0.0, reset - (now if now is not None else time.time()))


def vendor_message(response: httpx.Response) -> str:
    """Extract the vendor's error code/message from a response body (JSON shapes of every vendor, or text)."""
    text = response.text.strip() if response.content else ""
    if not text:
        return response.reason_phrase or ""
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:MAX_MESSAGE]
    return _message_from_json(body) or response.reason_phrase or ""


def _message_from_json(body: Any) -> str:
    if isinstance(body, list):
        return "; ".join(filter(None, (_message_from_json(item) for item in body[:3])))
    if isinstance(body, str):
        return body
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        code, message = error.get("code") or error.get("type"), error.get("message")
        return ": ".join(str(p) for p in (code, message) if p)
    parts: list[str] = []
    for key in ("error", "code", "message", "detail", "error_description"):
        value = body.get(key)
        if isinstance(value, str | int) and str(value) not in parts:
            parts.append(str(value))
    errors = body.get("errors")
    if isinstance(errors, list):
        parts.extend(str(e) if not isinstance(e, dict) else _message_from_json(e) for e in errors[:3])
    return ": ".join(parts)


def error_for_status(
    vendor: str, operation: str, response: httpx.Response, redact: Callable[[str], str] | None = None
) -> IntegrationError:
    """Translate a non-success response into the runbook's error hierarchy."""
    status = response.status_code
    message = (redact or (lambda s: s))(vendor_message(response))[:MAX_MESSAGE]
    if status in RATE_LIMIT_STATUSES:
        # Retry-After, else the RateLimit headers' reset (seconds; PagerDuty's REST API sends `ratelimit-reset`),
        # else the vendor's reset in UTC epoch seconds (EPOCH_RESET_HEADERS: Sentry's, Vercel's) or in seconds
        # (SECONDS_RESET_HEADERS: Supabase's Management API)
        wait = parse_retry_after(response.headers.get("retry-after") or response.headers.get("ratelimit-reset"))
        if wait is None:
            wait = epoch_wait(response.headers.get("x-sentry-rate-limit-reset"))
        if wait is None and (header := EPOCH_RESET_HEADERS.get(vendor)) is not None:
            wait = epoch_wait(response.headers.get(header))
        if wait is None and (header := SECONDS_RESET_HEADERS.get(vendor)) is not None:
            wait = parse_retry_after(response.headers.get(header))
        return rate_limited(vendor, operation, wait, status, message)
    if status in (401, 403):
        return AuthError(vendor, operation, message or "not authorised", status)
    if status >= 500:
        return TransientError(vendor, operation, message, status)
    return RequestRejected(vendor, operation, message, status)


def rate_limited(vendor: str, operation: str, wait: float | None, status: int = 429, detail: str = "") -> RateLimited:
    """Return the RateLimited error of a throttled answer: its wait, the wall-clock time it ends, the vendor's own
    error code/message (already redacted)."""
    until = utcnow() + timedelta(seconds=wait) if wait is not None else None
    return RateLimited(vendor, operation, wait, status, detail=detail, until=until)


def error_for_transport(
    vendor: str,
    operation: str,
    exc: httpx.TransportError,
    policy: RetryPolicy,
    redact: Callable[[str], str] | None = None,
) -> TransientError:
    """Translate an httpx transport error into a TransientError that names no URL."""
    if isinstance(exc, httpx.ConnectTimeout):
        message = f"connect timed out after {policy.connect_timeout:g}s"
    elif isinstance(exc, httpx.ReadTimeout):
        message = f"no response within {policy.read_timeout:g}s (read timeout)"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"timed out ({type(exc).__name__})"
    else:
        detail = (redact or (lambda s: s))(str(exc))[:120]
        message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    error = TransientError(vendor, operation, message)
    error.sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)  # type: ignore[attr-defined]
    return error


def is_retryable(exc: BaseException, idempotent: bool = True) -> bool:
    """Say whether an error is worth another attempt (non-idempotent: only if it surely never landed)."""
    if isinstance(exc, RateLimited):
        return True
    if not isinstance(exc, TransientError):
        return False
    return idempotent or getattr(exc, "sent", True) is False


@dataclass(frozen=True)
class Action:
    """An action in progress (rollback, promote, redeploy): rate limits are waited out until its deadline."""

    name: str
    timeout: float
    deadline: float
    clock: Callable[[], float]

    def remaining(self) -> float:
        """Return the seconds left before the action's timeout."""
        return max(0.0, self.deadline - self.clock())


_ACTION: ContextVar[Action | None] = ContextVar("runbook_action", default=None)


@contextmanager
def acting(name: str, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> Iterator[Action]:
    """Run the calls inside as one action of `timeout` seconds: a rate limit whose reset comes before the deadline
    is waited out, whatever the policy's `max_retry_after`. Nested: the outer action's deadline holds."""
    outer = _ACTION.get()
    if outer is not None:
        yield outer
        return
    action = Action(name, timeout, clock() + timeout, clock)
    token = _ACTION.set(action)
    try:
        yield action
    finally:
        _ACTION.reset(token)


def _rate_limit_delay(
    exc: RateLimited, policy: RetryPolicy, number: int, waited: float, read: bool, rng: random.Random | None
) -> float:
    """Return how long to wait before retrying a rate-limited call, or raise it given up (saying read or action)."""
    delay = exc.retry_after if exc.retry_after is not None else policy.throttled_backoff(number, rng)
    action = _ACTION.get()
    if action is not None:
        left = min(action.remaining(), action.timeout - waited)
        if delay > left:
            raise exc.gave_up("action", f"the {action.name} has {left:.0f} s left of its {action.timeout:g} s "
                                        "timeout") from None
        return delay
    use = "read" if read else "action"
    if exc.retry_after is not None and exc.retry_after > policy.max_retry_after:
        bound = "a read gives up at once" if read else "this call waits at most"
        raise exc.gave_up(use, f"{bound} when the reset is more than {policy.max_retry_after:g} s away") from None
    if waited + delay > policy.max_total_wait:
        raise exc.gave_up(use, f"the call has waited {waited:.0f} s of its {policy.max_total_wait:g} s") from None
    return delay


async def retry_call(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Sleeper = asyncio.sleep,
    retryable: Callable[[BaseException], bool] = is_retryable,
    rng: random.Random | None = None,
    label: str = "call",
    on_retry: RetryHook | None = None,
    read: bool = True,
) -> T:
    """Run `attempt` until it succeeds, the error is not retryable, or the attempt/wait budget is spent.

    A rate limit is waited out within the policy's bounds, or, inside `acting(...)`, until the action's deadline;
    past them it is raised at once, given up as a `read` or an action (see the module docstring).
    `on_retry(attempt, error, delay)` is awaited before each wait (e.g. to say on a timeline that a page is pending).
    """
    waited = 0.0
    number = 1
    while True:
        try:
            return await attempt()
        except IntegrationError as exc:
            if not retryable(exc):
                raise
            if number >= policy.max_attempts:
                if isinstance(exc, RateLimited):
                    use = "action" if _ACTION.get() is not None or not read else "read"
                    raise exc.gave_up(use, f"still limited after {number} attempts in {waited:.0f} s") from None
                raise
            if isinstance(exc, RateLimited):
                delay = _rate_limit_delay(exc, policy, number, waited, read, rng)
            else:
                delay = policy.backoff(number, rng)
                if waited + delay > policy.max_total_wait:
                    raise
            log.info("%s: attempt %d failed (%s); retrying in %.2fs", label, number, exc, delay)
            if on_retry is not None:
                await on_retry(number, exc, delay)
            await sleep(delay)
            waited += delay
            number += 1


class Pacer:
    """Space requests at least `interval` seconds apart (a vendor's per-key rate limit), across tasks and threads.

    Each request reserves the next free slot under a thread lock and sleeps until it: no asyncio lock, so one
    pacer can be shared by clients living in different event loops (Prefect runs tasks in worker threads).
    """

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next slot and return the seconds to wait for it (0 when the slot is now)."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
            return slot - now

    def delay(self, seconds: float) -> None:
        """Push the next free slot `seconds` into the future (a rate-limited request waits that long)."""
        with self._lock:
            self._next = max(self._next, self.clock() + seconds)


_PACERS: dict[str, Pacer] = {}
_PACERS_LOCK = threading.Lock()


def shared_pacer(key: str, interval: float) -> Pacer:
    """Return the process-wide pacer of one credential (by its fingerprint), creating it with `interval`."""
    with _PACERS_LOCK:
        pacer = _PACERS.get(key)
        if pacer is None:
            pacer = _PACERS[key] = Pacer(interval)
        return pacer


@dataclass
class CallStats:
    """What the last call through a client did: attempts and seconds waited between them."""

    attempts: int = 0
    waited: float = 0.0
    paced: float = 0.0
    statuses: list[int | None] = field(default_factory=list)


class HttpClient:
    """Async HTTP helper of one vendor: timeouts, retries and error translation on every request."""

    def __init__(
        self,
        vendor: str,
        base_url: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        secrets: Iterable[str | SecretStr | None] = (),
        sleep: Sleeper = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.vendor = vendor
        self.policy = policy
        self.redact = Redactor(secrets)
        self.sleep = sleep
        self.pacer = pacer
        self.last = CallStats()
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            params=dict(params or {}),
            timeout=policy.timeout(),
            verify=ssl_context(),
            transport=transport,
            follow_redirects=False,
        )

    def add_event_hook(self, event: Literal["request", "response"], hook: Callable[[Any], Awaitable[None]]) -> None:
        """Register an httpx event hook: it sees every request or response (the contract tests record them)."""
        hooks = self._client.event_hooks
        hooks.setdefault(event, []).append(hook)
        self._client.event_hooks = hooks

    async def request(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        idempotent: bool | None = None,
        accept: Iterable[int] = (),
        on_retry: RetryHook | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request with retries; return the response (2xx or an accepted status) or raise our error."""
        if idempotent is None:
            idempotent = method.upper() in {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
        accepted = frozenset(accept)
        stats = CallStats()
        self.last = stats

        async def once() -> httpx.Response:
            stats.attempts += 1
            if self.pacer is not None and (wait := self.pacer.reserve()) > 0:
                stats.paced += wait
                await self.sleep(wait)
            try:
                response = await self._client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                stats.statuses.append(None)
                raise error_for_transport(self.vendor, operation, exc, self.policy, self.redact) from None
            stats.statuses.append(response.status_code)
            if response.is_success or response.status_code in accepted:
                return response
            raise error_for_status(self.vendor, operation, response, self.redact)

        async def sleep(delay: float) -> None:
            stats.waited += delay
            await self.sleep(delay)

        async def before_retry(number: int, exc: IntegrationError, delay: float) -> None:
            if self.pacer is not None and isinstance(exc, RateLimited):
                self.pacer.delay(delay)  # every request with this key holds back while this one waits
            if on_retry is not None:
                await on_retry(number, exc, delay)

        return await retry_call(
            once,
            policy=self.policy,
            sleep=sleep,
            retryable=lambda exc: is_retryable(exc, idempotent),
            label=f"{self.vendor} {operation}",
            on_retry=before_retry,
            read=method.upper() in {"GET", "HEAD"},
        )

    async def json(self, method: str, url: str, *, operation: str, **kwargs: Any) -> Any:
        """Send a request with retries and return its JSON body (RequestRejected when it is not JSON)."""
        response = await self.request(method, url, operation=operation, **kwargs)
        return parse_json(self.vendor, operation, response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def parse_json(vendor: str, operation: str, response: httpx.Response) -> Any:
    """Return a response's JSON body or raise RequestRejected naming the vendor and operation."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise RequestRejected(vendor, operation, "response is not JSON", response.status_code) from None


class BaseClient:
    """Base of the vendor clients: owns one HttpClient and is an async context manager."""

    vendor = "vendor"

    def __init__(self, http: HttpClient) -> None:
        self.http = http

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def elapsed_ms(started: float) -> float:
    """Return milliseconds since a `time.perf_counter()` reading, rounded to 0.1 ms."""
    return round((time.perf_counter() - started) * 1000, 1)


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def require(vendor: str, settings: Any, *names: str) -> None:
    """Raise NotConfigured naming every RUNBOOK_ variable among `names` that is unset."""
    missing = [name for name in names if not _is_set(getattr(settings, name, None))]
    if missing:
        raise NotConfigured(vendor, ", ".join(ENV_PREFIX + name.upper() for name in missing))


def _is_set(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    return bool(value)


def secret_value(value: SecretStr | str | None) -> str:
    """Return the plain value of a secret (or '')."""
    if value is None:
        return ""
    return value.get_secret_value() if isinstance(value, SecretStr) else value
