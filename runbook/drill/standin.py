"""The base of every stand-in: a Starlette app that records requests and injects faults, plus small helpers.

A stand-in is an ASGI app served by uvicorn on its own 127.0.0.1 port (see host.py). Every request is recorded
(`.requests`), then the first matching fault (`.inject(Fault…)`) is applied before the vendor routes run.
Vendor error bodies come from `error_body()`, overridden per vendor, so faults answer in the vendor's shape; an
injected rate limit answers `rate_limited(fault)`, by default that body with `Retry-After`, overridden by a vendor
whose documented throttling answer differs (Vercel, Sentry, Stripe, Statuspage, PagerDuty, Supabase's Management
API send no Retry-After; `opt_in_retry_after(fault)` adds one when a test asks for it). `REQUEST_PATH` holds the
path of the request being answered, for a vendor whose APIs answer in different shapes (PagerDuty's Events and REST).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from runbook.drill.faults import Fault, RecordedRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

_ALNUM = string.ascii_letters + string.digits
# The path of the request a stand-in is answering (set per request: each runs in its own task).
REQUEST_PATH: ContextVar[str] = ContextVar("standin_request_path", default="")
_LOWER = string.ascii_lowercase + string.digits


def rand_id(prefix: str = "", length: int = 24, *, lower: bool = False) -> str:
    """Return `prefix` + random alphanumerics, the way vendors shape their ids."""
    alphabet = _LOWER if lower else _ALNUM
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def now_ms() -> int:
    """Return the current time in epoch milliseconds."""
    return int(time.time() * 1000)


def iso(ts: float | None) -> str | None:
    """Return an epoch timestamp as ISO 8601 UTC with milliseconds ('…Z'), or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def opt_in_retry_after(fault: Fault) -> dict[str, str]:
    """Return `{"Retry-After": …}` when a test asked an injected rate limit for one its vendor does not document."""
    if not fault.undocumented_retry_after:
        return {}
    return {"Retry-After": f"{fault.retry_after if fault.retry_after is not None else 1:g}"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """Return a JSON response."""
    return JSONResponse(data, status_code=status, headers=headers)


def bearer(request: Request, scheme: str = "Bearer") -> str | None:
    """Return the credential of an `Authorization: <scheme> <credential>` header, or None."""
    value = request.headers.get("authorization", "")
    prefix = scheme.lower() + " "
    if value.lower().startswith(prefix):
        return value[len(prefix) :].strip()
    return None


async def read_params(request: Request) -> dict[str, Any]:
    """Return a request's body parameters: JSON object or form fields (flat keys like 'created[gte]')."""
    raw = await request.body()
    if not raw:
        return {}
    ctype = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in ctype:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {"_": data}


class Host(Protocol):
    """What a stand-in needs of the host serving it (host.py's ServerHost): its event loop, its listening socket."""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run a coroutine on the host's loop from another thread and return its result."""
        ...

    def refuse(self, standin: StandIn) -> None: ...

    def accept(self, standin: StandIn) -> None: ...


class StandIn:
    """A recorded, fault-injectable HTTP service on its own port; subclasses supply routes and error shapes."""

    name = "standin"
    # set by a subclass that rate-limits its routes (count_in_window)
    rate_limit: int
    rate_window: float
    rate_clock: Callable[[], float]
    _windows: dict[tuple[str, str], tuple[int, int]]

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._hang_generation = 0
        self._stopping = False
        self.host: Host | None = None
        self.port = 0
        self.refusing = False
        self._app = Starlette(routes=self.routes())

    # -- subclass hooks ---------------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """Return the vendor routes."""
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> Any:
        """Return the vendor's error body for `status`."""
        return {"error": {"message": message, "status": status}}

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Return an error response in the vendor's shape."""
        body = self.error_body(status, message)
        if isinstance(body, str):
            return Response(body, status_code=status, headers=headers, media_type="text/plain")
        return JSONResponse(body, status_code=status, headers=headers)

    def rate_limited(self, fault: Fault) -> Response:
        """Return the answer of an injected rate limit: the vendor's error body with `Retry-After: <seconds>`."""
        wait = fault.retry_after if fault.retry_after is not None else 1
        return self.error_response(fault.status, "Too many requests (drill: rate limit fault)",
                                   {"Retry-After": f"{wait:g}"})

    def reset_state(self) -> None:
        """Return the vendor state to its baseline (subclasses)."""

    def count_in_window(self, request: Any, endpoint: str) -> tuple[int, int]:
        """Count a request in its caller's fixed rate-limit window for the endpoint; return (requests in the
        window so far, this one included; the window's number). A subclass that limits sets `rate_limit`,
        `rate_window` (seconds), `rate_clock` and `_windows` ((caller, endpoint) → (window number, used))."""
        number = int(self.rate_clock() // self.rate_window)
        key = (request.headers.get("authorization", ""), endpoint)
        with self._lock:
            seen, used = self._windows.get(key, (number, 0))
            used = (used if seen == number else 0) + 1
            self._windows[key] = (number, used)
        return used, number

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """Return http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a copy of every request received since the last reset, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RecordedRequest]:
        """Return the recorded requests whose path starts with `path_prefix` (and method, if given)."""
        return [
            r for r in self.requests if r.path.startswith(path_prefix) and (method is None or r.method == method)
        ]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    @property
    def faults(self) -> list[Fault]:
        """Return the active faults."""
        with self._lock:
            return list(self._faults)

    def inject(self, fault: Fault) -> Fault:
        """Inject a fault; returns it (its `used` counter shows how many requests it hit)."""
        if fault.kind == "refuse":
            if self.host is None:
                raise RuntimeError(f"{self.name} is not served")
            self.host.refuse(self)
            return fault
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault, release hanging requests and listen again if connections were refused."""
        with self._lock:
            self._faults.clear()
            self._hang_generation += 1
        if self.refusing and self.host is not None:
            self.host.accept(self)

    def reset(self) -> None:
        """Clear faults and records and return the vendor state to its baseline."""
        self.clear_faults()
        self.clear_requests()
        with self._lock:
            self.reset_state()

    def release_all(self) -> None:
        """Release every hanging request now (used at shutdown)."""
        with self._lock:
            self._stopping = True
            self._hang_generation += 1

    # -- ASGI -------------------------------------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path):
                    fault.used += 1
                    return fault
        return None

    async def _hang(self, seconds: float) -> None:
        generation = self._hang_generation
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and generation == self._hang_generation and not self._stopping:
            await asyncio.sleep(0.05)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        query_string = scope.get("query_string", b"").decode("latin-1")
        items = parse_qsl(query_string, keep_blank_values=True)
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=dict(items),
            query_items=items,
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            raw=raw,
            time=time.time(),
        )
        with self._lock:
            self._requests.append(record)

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        REQUEST_PATH.set(scope["path"])
        fault = self._take_fault(scope["path"])
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "latency":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "hang":
                await self._hang(fault.seconds)
                response = self.error_response(504, "Gateway timeout (drill: hang fault)")
                await response(scope, replay, capture)
                return
            elif fault.kind == "rate_limit":
                await self.rate_limited(fault)(scope, replay, capture)
                return
            elif fault.kind == "error":
                response = self.error_response(fault.status, "Service unavailable (drill: error fault)")
                await response(scope, replay, capture)
                return
        await self._app(scope, replay, capture)
