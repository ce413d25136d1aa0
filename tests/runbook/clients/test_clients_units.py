"""Pure behaviour of the client layer that needs no server: parsing, redaction, the retry loop's budget."""

from __future__ import annotations

import email.utils
import time

import pytest

from runbook.clients._http import Redactor, RetryPolicy, parse_retry_after, retry_call
from runbook.clients.health import normalize_status
from runbook.clients.pagerduty import routing_key_shape
from runbook.clients.sentry import stats_period
from runbook.clients.slack import webhook_shape
from runbook.clients.supabase import parse_version
from runbook.errors import AuthError, InputError, RateLimited, TransientError


def test_parse_version_accepts_a_timestamp_version() -> None:
    """A 14-digit migration version is returned unchanged."""
    assert parse_version("20250127093000") == "20250127093000"


@pytest.mark.parametrize(
    "bad",
    ["20250127093000; drop table profiles", "../../etc/passwd", "20250127093000_add_flags", "", " 2025", "1e5"],
)
def test_parse_version_rejects_sql_fragments_and_paths(bad: str) -> None:
    """Anything but digits is an InputError."""
    with pytest.raises(InputError):
        parse_version(bad)


def test_retry_after_reads_seconds() -> None:
    """A delta-seconds Retry-After is read as seconds."""
    assert parse_retry_after("2") == 2.0


def test_retry_after_reads_an_http_date() -> None:
    """An HTTP-date Retry-After becomes the seconds until that date."""
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (parse_retry_after(header, now=now) or 0) <= 31


def test_redactor_removes_a_webhook_url_and_its_path() -> None:
    """Both the full webhook URL and its secret path are replaced."""
    hook = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
    redact = Redactor([hook])
    text = redact(f"failed posting to {hook} (path /services/T000/B000/XXXXSECRETXXXX)")
    assert "XXXXSECRETXXXX" not in text and "[redacted]" in text


async def test_retry_loop_stops_at_max_attempts() -> None:
    """A persistent transient error is tried exactly max_attempts times, then raised."""
    calls = 0
    waits: list[float] = []

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise TransientError("vendor", "op", "boom", 503)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    with pytest.raises(TransientError):
        await retry_call(attempt, policy=RetryPolicy(max_attempts=3), sleep=sleep)
    assert calls == 3 and len(waits) == 2


async def test_retry_loop_never_retries_auth_errors() -> None:
    """An AuthError is raised after one attempt."""
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise AuthError("vendor", "op", "bad token", 401)

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(AuthError):
        await retry_call(attempt, sleep=sleep)
    assert calls == 1


async def test_retry_loop_refuses_a_retry_after_beyond_the_bound() -> None:
    """A Retry-After longer than max_retry_after is raised at once instead of waited for."""
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise RateLimited("vendor", "op", 120.0)

    with pytest.raises(RateLimited):
        await retry_call(attempt, policy=RetryPolicy(max_retry_after=30))
    assert calls == 1


def test_backoff_is_full_jitter_under_the_cap() -> None:
    """Every backoff delay lies in [0, min(max_delay, base * 2^(n-1))]."""
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    delays = [policy.backoff(n) for n in (1, 2, 3, 4, 5, 6) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays) and max(policy.backoff(1) for _ in range(50)) <= 0.5


def test_stats_period_from_a_timedelta_in_minutes() -> None:
    """Fifteen minutes in seconds becomes Sentry's '15m'."""
    assert stats_period(900) == ("15m", 900)


def test_statuspage_indicator_is_normalized() -> None:
    """A Statuspage `major` indicator becomes level major_outage."""
    status = normalize_status("openai", "u", {"status": {"indicator": "major", "description": "Major outage"}})
    assert status.level == "major_outage" and not status.operational


def test_stripe_largestatus_is_normalized() -> None:
    """Stripe's `largestatus: up` becomes level operational."""
    assert normalize_status("stripe", "u", {"largestatus": "up", "statuses": {}}).level == "operational"


def test_routing_key_shape_rejects_a_short_key_without_echoing_it() -> None:
    """A malformed routing key is described by its length, never its value."""
    problem = routing_key_shape("R0short-key")
    assert problem is not None and "R0short-key" not in problem


def test_webhook_shape_accepts_a_slack_services_url() -> None:
    """A hooks.slack.com/services/… URL is a well-formed incoming webhook."""
    assert webhook_shape("https://hooks.slack.com/services/T000/B000/abcdefghijkl") is None
