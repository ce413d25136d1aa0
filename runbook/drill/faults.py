"""Faults a stand-in can be told to inject, and the record of every request a stand-in received.

    stack.sentry.inject(Fault.rate_limit(retry_after=1, times=2))   # the next 2 requests get 429 (as Sentry's own)
    stack.vercel.inject(Fault.error(503, path="/v9/projects"))     # the next matching request gets 503
    stack.openai.inject(Fault.hang(seconds=60))                     # every request hangs (until cleared)
    stack.slack.inject(Fault.refuse())                              # nothing listens on the port
    stack.sentry.clear_faults()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

FaultKind = Literal["latency", "rate_limit", "error", "hang", "refuse"]


@dataclass
class Fault:
    """One fault: what happens, to how many requests (None = until cleared), optionally only under a path prefix."""

    kind: FaultKind
    times: int | None = None
    path: str | None = None
    seconds: float = 0.0
    status: int = 503
    retry_after: float | None = None
    undocumented_retry_after: bool = False
    used: int = field(default=0, compare=False)

    @classmethod
    def latency(cls, seconds: float, *, times: int | None = None, path: str | None = None) -> Fault:
        """Delay matching requests by `seconds`, then answer normally."""
        return cls("latency", times=times, path=path, seconds=seconds)

    @classmethod
    def rate_limit(
        cls, retry_after: float = 1, *, times: int | None = 1, path: str | None = None, status: int = 429,
        undocumented_retry_after: bool = False,
    ) -> Fault:
        """Answer 429 (or `status`, e.g. 420) as the vendor throttles: by default its error shape with
        `Retry-After: <seconds>`; a vendor that documents none answers its own rate-limit response instead (Vercel,
        Supabase's Management API, PagerDuty's REST API: their reset header `retry_after` seconds from now; Sentry:
        its epoch reset; Stripe, Statuspage, PagerDuty's Events API: no wait at all).

        `undocumented_retry_after=True` adds `Retry-After: <retry_after>` where the vendor documents none (what a
        proxy in front of it, or a change of the vendor's, could send): for tests of the client honouring it; the
        contract tests fail on such an answer, since the vendor's document does not promise it."""
        return cls("rate_limit", times=times, path=path, status=status, retry_after=retry_after,
                   undocumented_retry_after=undocumented_retry_after)

    @classmethod
    def error(cls, status: int = 503, *, times: int | None = 1, path: str | None = None) -> Fault:
        """Answer `status` (a 5xx by default) in the vendor's error shape."""
        return cls("error", times=times, path=path, status=status)

    @classmethod
    def hang(cls, seconds: float = 60.0, *, times: int | None = None, path: str | None = None) -> Fault:
        """Hold matching requests for `seconds` (released early by clear_faults or shutdown), then answer 504."""
        return cls("hang", times=times, path=path, seconds=seconds, status=504)

    @classmethod
    def refuse(cls) -> Fault:
        """Close the listening socket until the fault is cleared: connections are refused."""
        return cls("refuse")

    def matches(self, path: str) -> bool:
        """Return True when this fault applies to a request for `path` and is not used up."""
        if self.times is not None and self.used >= self.times:
            return False
        return self.path is None or path.startswith(self.path)


@dataclass
class RecordedRequest:
    """What a stand-in received: method, path, query, headers (lower-case names), parsed body, time, outcome."""

    method: str
    path: str
    query: dict[str, str]
    query_items: list[tuple[str, str]]
    headers: dict[str, str]
    raw: bytes
    time: float
    status: int | None = None
    fault: FaultKind | None = None

    @property
    def body(self) -> Any:
        """Return the body parsed as JSON or a form (dict), else as text; None when empty."""
        if not self.raw:
            return None
        ctype = self.headers.get("content-type", "")
        text = self.raw.decode("utf-8", "replace")
        if "application/x-www-form-urlencoded" in ctype:
            return dict(parse_qsl(text, keep_blank_values=True))
        try:
            return json.loads(text)
        except ValueError:
            return text

    @property
    def json(self) -> Any:
        """Return the body parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.raw)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return one request header (case-insensitive)."""
        return self.headers.get(name.lower(), default)
