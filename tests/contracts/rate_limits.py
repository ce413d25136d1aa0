"""The rate-limit headers each vendor documents, checked on every recorded answer (the OpenAPI documents say none).

A throttled answer (420/429) must carry what the vendor says it sends and nothing the vendor does not promise: a
stand-in that adds a `Retry-After` its vendor never sends would teach the client to rely on it. `allowed` is every
rate-limit header the vendor documents; `on_throttle` the ones a 420/429 carries; `on_every` the ones every answer
carries. A header counts as a rate-limit header when its name holds `retry-after`, `ratelimit` or `rate-limit`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RATE_LIMIT_HEADER = re.compile(r"retry-after|ratelimit|rate-limit")
THROTTLED = frozenset({420, 429})


@dataclass(frozen=True)
class RateLimitHeaders:
    """What one vendor document's API says of its rate-limit headers, and where it says it."""

    vendor: str
    allowed: frozenset[str]
    source: str
    on_throttle: frozenset[str] = frozenset()
    on_every: frozenset[str] = frozenset()

    def problems(self, status: int, headers: dict[str, str], label: str) -> list[str]:
        """Return how an answer's rate-limit headers depart from the vendor's word (headers: lower-case names)."""
        sent = {name for name in headers if RATE_LIMIT_HEADER.search(name)}
        out = [f"{label}: rate-limit header {name!r} is not one {self.vendor} documents ({self.source})"
               for name in sorted(sent - self.allowed)]
        required = self.on_every | (self.on_throttle if status in THROTTLED else frozenset())
        out += [f"{label}: no {name!r} header, which {self.vendor} documents on this answer ({self.source})"
                for name in sorted(required - sent)]
        return out


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


VERCEL = _names("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
PAGERDUTY_REST = _names("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
SENTRY = _names("x-sentry-rate-limit-limit", "x-sentry-rate-limit-remaining", "x-sentry-rate-limit-reset",
                "x-sentry-rate-limit-concurrentlimit", "x-sentry-rate-limit-concurrentremaining")
SUPABASE = _names("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")

RATE_LIMITS: dict[str, RateLimitHeaders] = {r.vendor: r for r in [
    RateLimitHeaders(
        "stripe", _names(),
        "docs.stripe.com/rate-limits: a 429 with the `rate_limit` error code; no Retry-After or window header"),
    RateLimitHeaders(
        "vercel", VERCEL, on_throttle=_names("x-ratelimit-reset"),
        source="Vercel REST API docs, section 'Rate Limits' (read in copies of ZEIT's text): X-RateLimit-Limit/"
               "-Remaining/-Reset (UTC epoch seconds), no Retry-After"),
    RateLimitHeaders(
        "pagerduty-events", _names(),
        "PagerDuty/developer-docs docs/events-API-v2/05-Rate-Limits.md @ dd5097c1: '429 - Request Limit Exceeded', "
        "no header named"),
    RateLimitHeaders(
        "pagerduty-rest", PAGERDUTY_REST, on_throttle=PAGERDUTY_REST,
        source="PagerDuty/developer-docs docs/REST-API/04-Rate-Limits.md @ 5abe4a1b: 'the HTTP response code will "
               "be 429, the rate limit headers will be present' (ratelimit-reset: seconds)"),
    RateLimitHeaders(
        "sentry", SENTRY, on_throttle=_names("x-sentry-rate-limit-reset"),
        source="getsentry/sentry-docs docs/api/ratelimits.mdx @ 74c8ef61: X-Sentry-Rate-Limit-* headers, no "
               "Retry-After"),
    RateLimitHeaders(
        "statuspage", _names(),
        "Statuspage API document, Rate Limiting: 'Error codes 420 or 429 indicate that you have exceeded the rate "
        "limit and the request has been rejected'; no header promised"),
    RateLimitHeaders(
        "supabase", SUPABASE, on_every=SUPABASE,
        source="supabase/supabase apps/docs/content/_partials/api_rate_limits.mdx @ 0745a3ed: 'Every API response "
               "includes' X-RateLimit-Limit/-Remaining/-Reset (seconds); a 429 past 120 requests a minute"),
    RateLimitHeaders(
        "slack", _names("retry-after"), on_throttle=_names("retry-after"),
        source="Slack API docs, Rate limits: 'HTTP 429 Too Many Requests error, and a Retry-After HTTP header'"),
]}


def rate_limit_problems(vendor: str, status: int, headers: dict[str, str], label: str) -> list[str]:
    """Return how an answer's rate-limit headers depart from what `vendor` documents (none for other documents)."""
    rule = RATE_LIMITS.get(vendor)
    return [] if rule is None else rule.problems(status, headers, label)
