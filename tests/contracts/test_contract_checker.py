"""The checker itself: it finds what departs from a document, every extract has its provenance, and every allow-list
entry covers something its vendor's document really leaves out (an entry the document made redundant fails)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.contracts import extract
from tests.contracts.allowlist import ALLOWED, READINGS, Allowed
from tests.contracts.contract import READS, Exchange, Spec, check_all
from tests.contracts.rate_limits import rate_limit_problems

VENDORS = sorted(extract.SOURCES)


def _ex(method: str, url: str, status: int, body: Any, *, request: Any = None,
        headers: dict[str, str] | None = None) -> Exchange:
    raw = b"" if request is None else json.dumps(request).encode()
    sent = {"authorization": "Bearer t", **({"content-type": "application/json"} if request is not None else {})}
    return Exchange(method, httpx.URL(url), headers if headers is not None else sent, raw, status, {},
                    json.dumps(body).encode())


EVENTS = "http://h/api/0/organizations/o/events/"


@pytest.mark.parametrize(("vendor", "exchange", "expected"), [
    ("sentry", _ex("GET", EVENTS + "?dataset=transactions&field=count()", 200, {"data": [], "meta": {}}),
     "query dataset"),
    ("sentry", _ex("GET", EVENTS + "?dataset=spans&field=count()&colour=red", 200, {"data": [], "meta": {}}),
     "'colour' is not documented"),
    ("sentry", _ex("GET", EVENTS + "?dataset=spans", 200, {"data": [], "meta": {}}),
     "required query parameter 'field' missing"),
    ("sentry", _ex("GET", EVENTS + "?dataset=spans&field=count()", 200, {"data": [], "meta": {"extra": 1}}),
     "response field 'meta.extra' is not documented"),
    ("sentry", _ex("GET", EVENTS + "?dataset=spans&field=count()", 200, {"meta": {}}),
     "'data' is a required property"),
    ("sentry", _ex("GET", "http://h/api/0/organizations/o/nothing/", 200, {}), "not a documented operation"),
    ("statuspage", _ex("PATCH", "http://h/v1/pages/p/incidents/i", 200, {"id": "i"},
                       request={"incident": {"status": "investigating"}}), "Authorization scheme 'Bearer'"),
    ("statuspage", _ex("PATCH", "http://h/v1/pages/p/incidents/i", 200, {"id": "i", "status": "on_fire"},
                       request={"incident": {"status": "investigating"}},
                       headers={"authorization": "OAuth k", "content-type": "application/json"}),
     "response: status: 'on_fire' is not one of"),
    ("statuspage", _ex("PATCH", "http://h/v1/pages/p/incidents/i", 200, {"id": "i"},
                       request={"incident": {"status": "investigating", "colour": "red"}},
                       headers={"authorization": "OAuth k", "content-type": "application/json"}),
     "request field 'incident.colour' is not documented"),
    ("statuspage", _ex("PATCH", "http://h/v1/pages/p/incidents/i", 404, {"error": "nope"},
                       request={"incident": {}}, headers={"authorization": "OAuth k",
                                                          "content-type": "application/json"}),
     "error body: (root): 'message' is a required property"),
    ("pagerduty-events", _ex("POST", "http://h/v2/enqueue", 202, {"status": "success"},
                             request={"routing_key": "r", "event_action": "trigger"}),
     "sends Authorization where the operation documents none"),
    ("supabase", _ex("GET", "http://h/v1/projects/drill12345/health?services=db", 200, []), "path ref"),
    ("stripe", _ex("GET", "http://h/v1/events?created[gte]=soon", 200,
                   {"object": "list", "data": [], "has_more": False, "url": "/v1/events"}), "query created"),
    ("vercel", _ex("POST", "http://h/v10/projects/p/promote/d", 201, {}, request={}),
     "sends a body where none is documented"),
    ("vercel", _ex("GET", "http://h/v6/deployments", 418, {}), "status 418 is not documented"),
])
def test_departures_are_found(vendor: str, exchange: Exchange, expected: str) -> None:
    """Each kind of departure from the document is reported, naming what departs."""
    problems = check_all(vendor, [exchange])
    assert any(expected in p for p in problems), problems


HEALTH = "http://h/v1/projects/abcdefghijklmnopqrst/health?services=db"
SUPABASE_LIMITS = {"x-ratelimit-limit": "120", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "5"}


@pytest.mark.parametrize(("vendor", "status", "headers", "expected"), [
    ("statuspage", 429, {"retry-after": "1"}, "'retry-after' is not one statuspage documents"),
    ("pagerduty-events", 429, {"retry-after": "120"}, "'retry-after' is not one pagerduty-events documents"),
    ("stripe", 429, {"retry-after": "1"}, "'retry-after' is not one stripe documents"),
    ("vercel", 429, {"retry-after": "1", "x-ratelimit-reset": "1"}, "'retry-after' is not one vercel documents"),
    ("vercel", 429, {}, "no 'x-ratelimit-reset' header"),
    ("sentry", 429, {"x-ratelimit-reset": "1"}, "'x-ratelimit-reset' is not one sentry documents"),
    ("pagerduty-rest", 429, {"ratelimit-limit": "960", "ratelimit-remaining": "0"}, "no 'ratelimit-reset' header"),
    ("supabase", 200, {}, "no 'x-ratelimit-remaining' header"),
    ("supabase", 429, {**SUPABASE_LIMITS, "retry-after": "5"}, "'retry-after' is not one supabase documents"),
    ("slack", 429, {}, "no 'retry-after' header"),
])
def test_rate_limit_headers_are_the_documented_ones(vendor: str, status: int, headers: dict[str, str],
                                                     expected: str) -> None:
    """A rate-limit header the vendor does not document, or a documented one missing, is a departure."""
    assert any(expected in p for p in rate_limit_problems(vendor, status, headers, "x")), expected


def test_the_supabase_health_answer_needs_its_rate_limit_headers() -> None:
    """Spec.check applies the header rule: the same health answer conforms with X-RateLimit-* and not without."""
    ok = _ex("GET", HEALTH, 200, [{"name": "db", "healthy": True, "status": "ACTIVE_HEALTHY"}])
    assert any("x-ratelimit-limit" in p for p in check_all("supabase", [ok]))
    ok.response_headers = {**SUPABASE_LIMITS, "x-ratelimit-remaining": "119"}
    assert check_all("supabase", [ok]) == []


def test_an_allow_listed_operation_is_checked_by_its_entry() -> None:
    """An undocumented operation with an entry is checked against the entry's shape (here: a bad status)."""
    ok = _ex("POST", "http://h/v9/projects/p/rollback/d", 201, {}, request={})
    odd = _ex("POST", "http://h/v9/projects/p/rollback/d", 418, {}, request={})
    assert check_all("vercel", [ok]) == []
    assert any("not among the allow-listed" in p for p in check_all("vercel", [odd]))


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_extract_has_its_provenance_and_operations(vendor: str) -> None:
    """Repository, path, full commit, dates, the script; and every operation our clients call is in the extract."""
    spec = Spec.load(vendor)
    prov = spec.provenance
    assert prov["repository"] == extract.SOURCES[vendor]["repository"]
    assert prov["path"] == extract.SOURCES[vendor]["path"] and re.fullmatch(r"[0-9a-f]{40}", prov["commit"])
    assert prov["committed"][:4].isdigit() and prov["extracted"][:4].isdigit()
    assert prov["script"] == "tests/contracts/extract.py"
    for method, path in extract.OPERATIONS[vendor]:
        assert method in spec.doc["paths"][path]


def test_every_read_field_list_names_an_extracted_operation() -> None:
    """READS (the response fields the clients read) only names operations the extracts hold."""
    for vendor, method, template in READS:
        assert (method.lower(), template) in extract.OPERATIONS[vendor]


def test_extraction_keeps_the_referenced_components() -> None:
    """The extract holds every schema its operations reference (no dangling local $ref)."""
    for vendor in VENDORS:
        spec = Spec.load(vendor)
        for ref in extract.refs(spec.doc["paths"]) | extract.refs(spec.doc.get("components", {})):
            extract.pointer(spec.doc, ref)  # raises KeyError when the extract lost it


def _documented_statuses(spec: Spec, method: str, template: str) -> list[set[str]]:
    ops = [op for op in spec.operations() if method in ("*", op.method.upper()) and template in ("*", op.template)]
    return [set(op.spec.get("responses", {})) for op in ops]


def _needed(entry: Allowed) -> bool:
    """Say whether the entry's vendor document indeed leaves out what the entry allows."""
    spec = Spec.load(entry.vendor)
    ops = [op for op in spec.operations()
           if entry.method in ("*", op.method.upper()) and entry.path in ("*", op.template)]
    if entry.kind == "operation":
        return spec.match(entry.method, spec.base_path + entry.path) is None and not ops
    if entry.kind == "query":
        return bool(ops) and all(entry.name not in {p["name"] for p in op.parameters} for op in ops)
    if entry.kind == "status":
        return any(entry.name not in codes and f"{entry.name[0]}XX" not in codes and "default" not in codes
                   for codes in _documented_statuses(spec, entry.method, entry.path))
    if entry.kind == "auth":
        return entry.name not in ((spec.doc.get("components") or {}).get("securitySchemes") or {})
    if entry.kind == "error-body":
        if not ops:  # the error body of an allow-listed (undocumented) operation
            return spec.match(entry.method, spec.base_path + entry.path) is None
        if any(e.vendor == entry.vendor and e.kind == "status" for e in ALLOWED):
            return True  # an allow-listed status has no documented body
        return any(not ((spec.resolve(r).get("content") or {}).get("application/json"))
                   for op in ops for code, r in op.spec.get("responses", {}).items() if not code.startswith("2"))
    if entry.kind == "nullable":
        text = json.dumps(spec.doc)
        return f'"{entry.name}": {{' in text and '"nullable": true' not in text.split(f'"{entry.name}": {{', 1)[1][:200]
    if entry.kind in ("request-field", "response-field"):
        return bool(ops) or entry.path == "*"
    return False


@pytest.mark.parametrize("entry", ALLOWED, ids=lambda e: f"{e.vendor}-{e.kind}-{e.method}-{e.path}-{e.name}")
def test_every_allow_list_entry_is_needed_and_sourced(entry: Allowed) -> None:
    """An entry says why and who shows it, and its vendor's document really leaves that out (else: delete it)."""
    assert len(entry.why) > 20 and len(entry.source) > 10
    assert _needed(entry), f"the {entry.vendor} document now covers {entry.kind} {entry.name}: drop the entry"


def test_every_document_reading_is_explained() -> None:
    """A non-literal reading of a document names why and the vendor source that reads it the same way."""
    for vendor, readings in READINGS.items():
        assert vendor in extract.SOURCES
        for why, source in readings.values():
            assert len(why) > 20 and len(source) > 10
