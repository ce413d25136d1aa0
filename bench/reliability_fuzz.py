"""Hostile input to the intake: `python -m bench.reliability_fuzz [--rounds 4] [--seed 21]`.

Issue 21's intake figures: 5xx answers under hostile input (must be 0) and secret values in what the intake says
(answers and log lines; must be 0). One real Prefect server (Prefect's test harness: SQLite, a real server
subprocess) with declare-incident registered, so the outbox's hand-offs reach a real API that validates
parameters; the intake app served in this process with every sender's secret configured; the store a SQLite file.

Each round posts, to POST /alerts, /slack/interactions and /pagerduty/webhooks: every case of `CASES` (deep JSON
nesting, numbers of 5,000 digits, NaN / Infinity, lone surrogates in keys and values, malformed Sentry tags and
Vercel payloads, parameters past Prefect's 512 KiB, a body past 1 MB, invalid UTF-8, wrong content types, empty
bodies, JSON that is not an object, cross-site form posts) with the bearer token, with a valid signature (each
route its sender's way: our HMAC, Slack's v0, PagerDuty's v1), with a wrong one and with none, and seeded random
mutations (byte flips, truncation, splices, junk inserted) of valid payloads.
Prints the answers' status counts per route, the 5xx (which cases), the secret hits and the alerts kept. Exit 1
on any 5xx or secret hit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "fuzz-intake-token-0123456789abcdef"
HMAC = "fuzz-intake-hmac-secret-0123456789"
SLACK = "fuzz-slack-signing-secret-0123456789"
PAGERDUTY = "fuzz-pagerduty-webhook-secret-0123456789"
SECRETS = (TOKEN, HMAC, SLACK, PAGERDUTY)

VALID = {"source": "uptime-robot", "fingerprint": "fuzz:app", "summary": "permit.school is down",
         "rule": "application_down", "labels": {"region": "us-east"}}
SENTRY = {"action": "triggered", "data": {"event": {"issue_id": "4711", "title": "TypeError", "culprit": "app/x",
                                                    "tags": [["environment", "production"]]},
                                          "triggered_rule": "Errors"}}
VERCEL = {"id": "evt_1", "type": "deployment.error", "payload": {"deployment": {"id": "dpl", "name": "ps"},
                                                                 "project": {"id": "prj"}}}


def _deep(levels: int) -> bytes:
    return ("[" * levels + "]" * levels).encode()


def cases() -> dict[str, tuple[bytes, str]]:
    """Return the hostile bodies by name: (body, content type)."""
    js = "application/json"
    big = json.dumps({**VALID, "labels": {"blob": "x" * 600_000}})
    sentry_big = json.loads(json.dumps(SENTRY))
    sentry_big["data"]["event"]["exception"] = {"values": [{"stacktrace": "frame\n" * 100_000}]}
    return {
        "valid": (json.dumps(VALID).encode(), js),
        "valid-sentry": (json.dumps(SENTRY).encode(), js),
        "valid-vercel": (json.dumps(VERCEL).encode(), js),
        "deep-nesting-100": (_deep(100), js),
        "deep-nesting-10000": (_deep(10_000), js),
        "deep-in-labels": (json.dumps({**VALID, "raw": None}).replace('"raw": null', '"raw": ' + "[" * 300
                                                                        + "]" * 300).encode(), js),
        "number-5000-digits": (('{"source": "x", "fingerprint": "f", "summary": "s", "values": {"v": '
                                + "9" * 5000 + "}}").encode(), js),
        "number-in-raw": (('{"source": "x", "fingerprint": "f", "summary": "s", "n": ' + "1" * 4400 + "}").encode(),
                          js),
        "nan": (b'{"source": "x", "fingerprint": "f", "summary": "s", "values": {"v": NaN}}', js),
        "infinity": (b'{"source": "x", "fingerprint": "f", "summary": "s", "values": {"v": -Infinity}}', js),
        "lone-surrogate-key": (b'{"source": "x", "fingerprint": "f", "summary": "s", "labels": {"\\ud800": "v"}}', js),
        "lone-surrogate-value": (b'{"source": "x", "fingerprint": "f\\udfff", "summary": "s"}', js),
        "sentry-bad-tags": (json.dumps({"data": {"event": {"issue_id": "1", "tags": [1, [2], "x", None,
                                                                                   [[], {}]]}}}).encode(), js),
        "sentry-tags-object": (json.dumps({"data": {"event": {"issue_id": "1", "tags": {"a": "b"}}}}).encode(), js),
        "sentry-data-list": (json.dumps({"data": [1, 2]}).encode(), js),
        "vercel-payload-list": (json.dumps({"type": "deployment.error", "payload": []}).encode(), js),
        "vercel-project-number": (json.dumps({"type": "x", "payload": {"project": {"id": 5}}}).encode(), js),
        "params-over-512k": (big.encode(), js),
        "sentry-over-512k": (json.dumps(sentry_big).encode(), js),
        "body-over-1mb": (b'{"a": "' + b"x" * 1_100_000 + b'"}', js),
        "invalid-utf8": (b'{"source": "\xff\xfe", "fingerprint": "f", "summary": "s"}', js),
        "empty": (b"", js),
        "null": (b"null", js),
        "list": (b"[1, 2, 3]", js),
        "string": (b'"alert"', js),
        "trailing-garbage": (json.dumps(VALID).encode() + b"}}}", js),
        "fingerprint-newline": (json.dumps({**VALID, "fingerprint": "fuzz:app\n"}).encode(), js),
        "fingerprint-blank": (json.dumps({**VALID, "fingerprint": "   "}).encode(), js),
        "fields-wrong-types": (json.dumps({"source": 1, "fingerprint": [], "summary": {}, "labels": "x"}).encode(),
                               js),
        "unknown-rule": (json.dumps({**VALID, "rule": "no_such_rule"}).encode(), js),
        "severity-bogus": (json.dumps({**VALID, "severity": "P9"}).encode(), js),
        "received-at-bogus": (json.dumps({**VALID, "received_at": "yesterday"}).encode(), js),
        "text-plain": (json.dumps(VALID).encode(), "text/plain"),
        "form": (b"payload=%7B%7D", "application/x-www-form-urlencoded"),
        "slack-payload-junk": (b"payload=%7Bnot-json", "application/x-www-form-urlencoded"),
        "slack-payload-deep": (b"payload=" + _deep(5000), "application/x-www-form-urlencoded"),
        "pagerduty-event-junk": (json.dumps({"event": {"event_type": 5, "data": []}}).encode(), js),
    }


def mutations(rng: random.Random, count: int) -> dict[str, tuple[bytes, str]]:
    """Return `count` seeded random mutations of valid payloads (byte flips, truncation, splices)."""
    out = {}
    seeds = [json.dumps(p).encode() for p in (VALID, SENTRY, VERCEL)]
    for i in range(count):
        body = bytearray(rng.choice(seeds))
        how = rng.choice(("flip", "truncate", "splice", "insert"))
        if how == "flip":
            for _ in range(rng.randint(1, 5)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        elif how == "truncate":
            body = body[:rng.randrange(len(body))]
        elif how == "splice":
            other = rng.choice(seeds)
            cut = rng.randrange(len(body))
            body = body[:cut] + other[rng.randrange(len(other)):]
        else:
            cut = rng.randrange(len(body))
            junk = rng.choice([b"NaN", b"\\ud800", b"[" * 50, b"1e999999", b"\x00", b'"', b","])
            body = body[:cut] + junk + body[cut:]
        out[f"mutation-{i}-{how}"] = (bytes(body), "application/json")
    return out


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is still counted as said
            self.lines.append(str(record.msg))


async def fuzz(rounds: int, seed: int) -> int:
    """Post every case with every credential to every route; print the figures; return the exit code."""
    import httpx

    from runbook.intake import create_app, sign
    from runbook.intake.signatures import sign_pagerduty, sign_slack
    from runbook.store import open_store

    rng = random.Random(seed)
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    logging.getLogger().setLevel(logging.INFO)
    async with open_store():
        pass
    app = create_app()
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    fivexx: list[str] = []
    hits = 0
    total = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=120) as http:
        for _ in range(rounds):  # from the second round on, every signed body is a replay
            bodies = {**cases(), **mutations(rng, 60)}
            for name, (body, content_type) in bodies.items():
                for route in ("/alerts", "/slack/interactions", "/pagerduty/webhooks"):
                    for auth in ("bearer", "hmac", "wrong", "none"):
                        headers = {"Content-Type": content_type}
                        if auth == "bearer":
                            headers["Authorization"] = f"Bearer {TOKEN}"
                        elif auth == "hmac" and route == "/slack/interactions":  # each route's sender's own scheme
                            stamp = str(int(time.time()))
                            headers.update({"X-Slack-Request-Timestamp": stamp,
                                            "X-Slack-Signature": sign_slack(body, SLACK, stamp)})
                        elif auth == "hmac" and route == "/pagerduty/webhooks":
                            headers["X-PagerDuty-Signature"] = sign_pagerduty(body, PAGERDUTY)
                        elif auth == "hmac":
                            headers["X-Runbook-Signature"] = f"sha256={sign(body, HMAC)}"
                        elif auth == "wrong":
                            headers["X-Runbook-Signature"] = "sha256=" + "0" * 64
                            headers["Authorization"] = "Bearer wrong-token-0123456789"
                        try:
                            answer = await http.post(route, content=body, headers=headers)
                        except Exception as exc:  # the app raised through the transport: a 500 to a real client
                            statuses[route][500] += 1
                            fivexx.append(f"{route} {name} {auth}: raised {type(exc).__name__}")
                            total += 1
                            continue
                        total += 1
                        statuses[route][answer.status_code] += 1
                        if answer.status_code >= 500:
                            fivexx.append(f"{route} {name} {auth}: {answer.status_code} {answer.text[:120]}")
                        hits += sum(s in answer.text for s in SECRETS)
    await app.state.outbox.aclose()
    logging.getLogger().removeHandler(lines)
    said = "\n".join(lines.lines)
    hits += sum(said.count(s) for s in SECRETS)
    async with open_store() as store:
        kept = await store.alerts(limit=100_000)
    from runbook.intake.outbox import read_outbox

    queued = await read_outbox()
    print(f"{total} requests in {rounds} round(s) (seed {seed}); 5xx: {len(fivexx)}; secret hits in answers and "
          f"{len(lines.lines)} log lines: {hits}")
    for route, counter in statuses.items():
        print(f"  {route}: {dict(sorted(counter.items()))}")
    print(f"kept: {len(kept)} alerts rows (refused payloads with their reason), {len(queued)} accepted alerts in the "
          "outbox")
    for line in fivexx[:20]:
        print(f"  5xx: {line}")
    return 1 if fivexx or hits else 0


def main() -> int:
    """Run the fuzz against the intake with a real Prefect server (the test harness)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every case (later rounds replay the first)")
    parser.add_argument("--seed", type=int, default=21, help="seed of the random mutations")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="runbook-bench-fuzz-"))
    os.environ.update({"RUNBOOK_STATE_DIR": str(home / "state"), "RUNBOOK_INTAKE_TOKEN": TOKEN,
                       "RUNBOOK_INTAKE_HMAC_SECRET": HMAC, "RUNBOOK_SLACK_SIGNING_SECRET": SLACK,
                       "RUNBOOK_PAGERDUTY_WEBHOOK_SECRET": PAGERDUTY, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    (home / "state").mkdir(parents=True)
    try:
        from prefect.testing.utilities import prefect_test_harness

        from deployments.serve import load_deployments

        with prefect_test_harness(server_startup_timeout=120):
            async def run() -> int:
                for deployment in load_deployments(schedules=False):
                    if deployment.name == "declare-incident":
                        await deployment.apply()
                return await fuzz(args.rounds, args.seed)

            return asyncio.run(run())
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
