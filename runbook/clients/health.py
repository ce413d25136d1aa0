"""Endpoint probes with a `curl -w`-like timing breakdown, and vendor status pages in one normalized model.

What is measured (httpcore trace hooks on a fresh connection per probe, `time.perf_counter`):
- `connect_s`: name resolution + TCP connect together (httpcore resolves inside its connect step, so DNS time
  cannot be separated; on 127.0.0.1 it is ~0);
- `tls_s`: the TLS handshake (None for plain http);
- `first_byte_s`: from the start until the response headers were received (≈ curl's time_starttransfer);
- `total_s`: until the whole body was read.
A probe is an observation: it is never retried, and every failure is reported in the result, not raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel

from runbook.clients._http import (
    DEFAULT_POLICY,
    HttpClient,
    Redactor,
    RetryPolicy,
    Sleeper,
    error_for_transport,
    parse_json,
    settings_secrets,
    ssl_context,
)
from runbook.errors import IntegrationError
from runbook.settings import Settings

Level = Literal["operational", "degraded", "major_outage", "critical", "unknown"]
INDICATOR_LEVEL: dict[str, Level] = {
    "none": "operational",
    "minor": "degraded",
    "major": "major_outage",
    "critical": "critical",
}
STRIPE_LEVEL: dict[str, Level] = {"up": "operational", "degraded": "degraded", "down": "major_outage"}


class ProbeResult(BaseModel):
    """One probe: status, timing breakdown in seconds, parsed JSON body when any, or the error."""

    url: str
    method: str = "GET"
    ok: bool
    status: int | None = None
    connect_s: float | None = None
    tls_s: float | None = None
    first_byte_s: float | None = None
    total_s: float
    body: Any = None
    error: str | None = None


class VendorStatus(BaseModel):
    """A vendor's public status page, normalized: Statuspage `indicator`, Stripe `largestatus`."""

    vendor: str
    url: str
    level: Level
    indicator: str | None = None  # the raw value: none|minor|major|critical, or up|degraded|down
    description: str | None = None
    error: str | None = None

    @property
    def operational(self) -> bool:
        """Return True when the vendor reports no problem."""
        return self.level == "operational"


def _safe_url(url: str) -> str:
    """Drop userinfo and query from a URL before it goes into a result."""
    split = urlsplit(url)
    host = split.hostname or ""
    netloc = f"{host}:{split.port}" if split.port else host
    return urlunsplit((split.scheme, netloc, split.path, "", ""))


async def probe(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    expect: Iterable[int] | None = None,
    timeout: float = 10.0,
    connect_timeout: float = 5.0,
) -> ProbeResult:
    """Probe a URL once on a fresh connection: status, timings, JSON body (never raises)."""
    marks: dict[str, float] = {}

    async def trace(event: str, info: dict[str, Any]) -> None:
        marks.setdefault(event, time.perf_counter())

    expected = set(expect) if expect is not None else None
    started = time.perf_counter()
    shown = _safe_url(url)
    limits = httpx.Timeout(timeout, connect=connect_timeout)
    try:
        async with httpx.AsyncClient(timeout=limits, verify=ssl_context(), follow_redirects=False) as client:
            async with client.stream(
                method, url, headers=dict(headers or {}), json=json, extensions={"trace": trace}
            ) as response:
                content = await response.aread()
            total = time.perf_counter() - started
    except httpx.TransportError as exc:
        policy = RetryPolicy(connect_timeout=connect_timeout, read_timeout=timeout)
        error = error_for_transport("probe", shown, exc, policy, Redactor([url]))
        return ProbeResult(
            url=shown, method=method, ok=False, total_s=_r(time.perf_counter() - started), error=error.detail
        )
    body: Any = None
    if content:
        try:
            body = response.json()
        except ValueError:
            body = None
    status = response.status_code
    ok = status in expected if expected is not None else response.is_success
    return ProbeResult(
        url=shown,
        method=method,
        ok=ok,
        status=status,
        connect_s=_span(marks, "connection.connect_tcp", started),
        tls_s=_span(marks, "connection.start_tls", started),
        first_byte_s=_since(marks, "http11.receive_response_headers.complete", started)
        or _since(marks, "http2.receive_response_headers.complete", started),
        total_s=_r(total),
        body=body,
    )


async def probe_many(urls: Iterable[str], **kwargs: Any) -> list[ProbeResult]:
    """Probe several URLs concurrently (same options for each); results in input order."""
    return list(await asyncio.gather(*(probe(u, **kwargs) for u in urls)))


def _span(marks: dict[str, float], name: str, started: float) -> float | None:
    begin, end = marks.get(f"{name}.started"), marks.get(f"{name}.complete")
    return _r(end - begin) if begin is not None and end is not None else None


def _since(marks: dict[str, float], name: str, started: float) -> float | None:
    mark = marks.get(name)
    return _r(mark - started) if mark is not None else None


def _r(seconds: float) -> float:
    return round(seconds, 6)


def normalize_status(vendor: str, url: str, body: Any) -> VendorStatus:
    """Normalize a Statuspage `status.json` or Stripe `/current` body into a VendorStatus."""
    if isinstance(body, dict) and "largestatus" in body:
        raw = str(body.get("largestatus") or "")
        message = body.get("message")
        return VendorStatus(
            vendor=vendor,
            url=url,
            level=STRIPE_LEVEL.get(raw, "unknown"),
            indicator=raw,
            description=message if isinstance(message, str) else None,
        )
    status = body.get("status") if isinstance(body, dict) else None
    if isinstance(status, dict):
        raw = str(status.get("indicator") or "")
        return VendorStatus(
            vendor=vendor,
            url=url,
            level=INDICATOR_LEVEL.get(raw, "unknown"),
            indicator=raw,
            description=status.get("description"),
        )
    return VendorStatus(vendor=vendor, url=url, level="unknown", error="unrecognised status page format")


def status_path(vendor: str) -> str:
    """Return the status endpoint path of a vendor's page (Stripe: /current, others: /api/v2/status.json)."""
    return "/current" if vendor == "stripe" else "/api/v2/status.json"


class HealthClient:
    """Probes endpoints and reads the vendor status pages named in settings."""

    def __init__(self, status_pages: Mapping[str, str], http: HttpClient) -> None:
        self.status_pages = dict(status_pages)
        self.http = http

    @classmethod
    def from_settings(
        cls, settings: Settings, *, policy: RetryPolicy = DEFAULT_POLICY, sleep: Sleeper = asyncio.sleep
    ) -> HealthClient:
        """Build from settings (status pages have public defaults: always configured)."""
        http = HttpClient("status page", policy=policy, secrets=settings_secrets(settings), sleep=sleep)
        return cls(settings.status_pages, http)

    probe = staticmethod(probe)
    probe_many = staticmethod(probe_many)

    async def vendor_status(self, vendor: str, base_url: str | None = None) -> VendorStatus:
        """Read one vendor's status page; a failure to read becomes level 'unknown' with the error."""
        base = (base_url or self.status_pages.get(vendor) or "").rstrip("/")
        if not base:
            return VendorStatus(vendor=vendor, url="", level="unknown", error="no status page configured")
        url = base + status_path(vendor)
        try:
            response = await self.http.request("GET", url, operation=f"{vendor} status")
            body = parse_json("status page", f"{vendor} status", response)
        except IntegrationError as exc:
            return VendorStatus(vendor=vendor, url=_safe_url(url), level="unknown", error=str(exc))
        return normalize_status(vendor, _safe_url(url), body)

    async def vendor_statuses(self, vendors: Iterable[str] | None = None) -> list[VendorStatus]:
        """Read several vendors' status pages concurrently (default: all configured)."""
        names = list(vendors) if vendors is not None else list(self.status_pages)
        return list(await asyncio.gather(*(self.vendor_status(v) for v in names)))

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def __aenter__(self) -> HealthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
