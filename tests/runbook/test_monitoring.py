"""The monitor's core without network: measurements and attribution, rule evaluation, consecutive breaches, uptime."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runbook.clients.app import AppHealth, AuthProbe
from runbook.clients.health import VendorStatus
from runbook.clients.openai import OpenAILiveness
from runbook.clients.sentry import ErrorRate, RouteCounts, Traffic
from runbook.clients.stripe import FailedEvent
from runbook.clients.supabase import DatabaseHealth, LongQuery, RowCount
from runbook.errors import AuthError, NotConfigured, RequestRejected, TransientError
from runbook.monitoring import (
    BreachState,
    CycleProbes,
    Finding,
    Measurement,
    ProbeFailure,
    advance,
    advance_gaps,
    attribute_to_open,
    available,
    baseline_samples,
    cycle_rows,
    evaluate,
    feature_anomaly,
    feature_shares,
    gap_sources,
    measure,
    open_monitor_store,
    probe_failure,
    traffic_anomaly,
    uptime_pct,
)
from runbook.policy import Monitoring, Policy, load_policy

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
CHECKS_OK = {name: {"status": "healthy", "latency_ms": 3.0} for name in ("database", "auth", "config", "openai")}


def _health(code: int = 200, latency_ms: float = 40.0, **checks: dict[str, Any]) -> AppHealth:
    merged = {**CHECKS_OK, **checks}
    unhealthy = any(c["status"] == "unhealthy" for c in merged.values())
    body = {"status": "unhealthy" if unhealthy else "healthy", "checks": merged}
    return AppHealth(status_code=code, ok=code < 300, body=body, latency_ms=latency_ms)


def _bad(check: str, error: str = "boom") -> dict[str, Any]:
    return {"status": "unhealthy", "latency_ms": 2.0, "error": error}


def _probes(**over: Any) -> CycleProbes:
    base: dict[str, Any] = {
        "health": _health(),
        "auth": AuthProbe(status_code=401, alive=True, authenticated=False, latency_ms=5.0),
        "rest": RowCount(table="profiles", count=300, latency_ms=8.0),
        "database": DatabaseHealth(active_connections=3, total_connections=8, max_connections=100,
                                   pool_utilisation_pct=8.0, long_running=[], mean_query_ms=1.2,
                                   mean_query_source="pg_stat_activity", latency_ms=4.0),
        "stripe": [],
        "sentry": ErrorRate(count=0, window_s=900, per_minute=0.0),
        "openai": OpenAILiveness(models=3, latency_ms=12.0),
        "vendors": [VendorStatus(vendor=v, url=f"http://s/{v}", level="operational", indicator="none")
                    for v in ("supabase", "vercel", "openai", "stripe")],
    }
    return CycleProbes.model_validate({**base, **over})


def _by_key(measurements: list[Measurement]) -> dict[str, Measurement]:
    return {m.key: m for m in measurements}


def _finding(state: str, rule: str = "application_down", target: str = "app", value: float | None = 0.0) -> Finding:
    return Finding(rule=rule, level="critical", severity="P0", description="Application down", target=target,
                   metric="app_up", operator="==", threshold=0, value=value, state=state)  # type: ignore[arg-type]


def _fail(kind: str, message: str = "x") -> ProbeFailure:
    return ProbeFailure(kind=kind, message=message)  # type: ignore[arg-type]


# -- probe failures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "kind"), [
    (NotConfigured("sentry", "RUNBOOK_SENTRY_TOKEN"), "unconfigured"),
    (TimeoutError(), "timeout"),
    (TransientError("sentry", "count", "Service unavailable", 503), "server_error"),
    (TransientError("sentry", "count", "ConnectError: refused"), "unreachable"),
    (TransientError("sentry", "count", "no response within 15s (read timeout)"), "timeout"),
    (AuthError("sentry", "count", "Invalid token", 401), "auth"),
    (RequestRejected("supabase", "count profiles", "42P01 relation does not exist", 404), "rejected"),
])
def test_probe_failure_classifies_errors(exc: BaseException, kind: str) -> None:
    """Each error a probe can raise maps to one failure kind."""
    assert probe_failure(exc).kind == kind


# -- measurements and attribution -------------------------------------------------------------------------------


def test_healthy_probes_measure_everything_up() -> None:
    """A healthy cycle measures app, database and auth up, no third party down and no gap."""
    m = _by_key(measure(_probes()))
    assert (m["app_up:app"].value, m["database_up:database"].value, m["auth_up:auth"].value) == (1.0, 1.0, 1.0)
    assert all(x.value == 0.0 for x in m.values() if x.metric == "third_party_down")
    assert gap_sources(m.values()) == {}


def test_database_check_failure_is_the_database_not_the_app() -> None:
    """A 503 whose only failing check is the database sets database_up 0 and masks app_up."""
    m = _by_key(measure(_probes(health=_health(503, database=_bad("database", "column does not exist")))))
    assert m["database_up:database"].value == 0.0
    assert m["app_up:app"].state == "masked" and m["app_up:app"].value is None


def test_unreachable_database_masks_cascading_checks() -> None:
    """When the database is unreachable, failing auth and config checks are attributed to it as well."""
    probes = _probes(health=_health(503, database=_bad("database"), auth=_bad("auth"), config=_bad("config")),
                     database=_fail("unreachable"), rest=_fail("server_error"))
    m = _by_key(measure(probes))
    assert m["database_up:database"].value == 0.0
    assert m["app_up:app"].state == "masked" and m["auth_up:auth"].state == "masked"


def test_rest_rejection_is_database_unavailable() -> None:
    """REST refusing to count profiles (a broken table) sets database_up 0 even when /api/health is 200."""
    m = _by_key(measure(_probes(rest=_fail("rejected", "42P01"))))
    assert m["database_up:database"].value == 0.0


def test_broken_build_is_application_down_and_masks_auth() -> None:
    """A 503 from a broken build sets app_up 0; the auth endpoint's 500 is attributed to the app."""
    auth = AuthProbe(status_code=500, alive=False, authenticated=False, latency_ms=3.0)
    m = _by_key(measure(_probes(health=_health(503, app=_bad("app", "TypeError")), auth=auth)))
    assert m["app_up:app"].value == 0.0
    assert m["auth_up:auth"].state == "masked"
    assert m["response_time_s:app"].state == "masked"


def test_config_failure_is_application_down_with_configuration_hint() -> None:
    """A failing config check sets app_up 0 and hints the configuration scenario."""
    m = _by_key(measure(_probes(health=_health(503, config=_bad("config", "CA: unknown exam_engine")))))
    assert m["app_up:app"].value == 0.0 and m["app_up:app"].scenario == "configuration"


def test_auth_check_failure_is_authentication_not_the_app() -> None:
    """A 503 whose only failing check is auth sets auth_up 0 and masks app_up."""
    m = _by_key(measure(_probes(health=_health(503, auth=_bad("auth", "Invalid API key")))))
    assert m["auth_up:auth"].value == 0.0 and m["app_up:app"].state == "masked"


def test_unreachable_health_is_application_down() -> None:
    """/api/health refusing connections sets app_up 0 and counts as unavailable for uptime."""
    probes = _probes(health=_fail("unreachable", "ConnectError"))
    m = _by_key(measure(probes))
    assert m["app_up:app"].value == 0.0
    assert available(probes) is False


def test_plain_5xx_without_checks_is_application_down() -> None:
    """A 503 with no dependency checks in the body (a proxy error page) sets app_up 0."""
    health = AppHealth(status_code=503, ok=False, body={"error": "Service unavailable"}, latency_ms=2.0)
    assert _by_key(measure(_probes(health=health)))["app_up:app"].value == 0.0


def test_maintenance_mode_is_not_an_outage_to_declare() -> None:
    """A 503 in maintenance mode masks app_up (a planned state) but still counts against uptime."""
    health = AppHealth(status_code=503, ok=False, body={"error": "maintenance", "maintenance": True}, latency_ms=2.0)
    probes = _probes(health=health, auth=AuthProbe(status_code=503, alive=False, authenticated=False,
                                                   latency_ms=1.0))
    m = _by_key(measure(probes))
    assert m["app_up:app"].state == "masked" and m["auth_up:auth"].state == "masked"
    assert available(probes) is False


def test_unreachable_sentry_is_a_gap_not_an_outage() -> None:
    """Sentry refusing connections makes the error rate a gap while the app stays up."""
    m = measure(_probes(sentry=_fail("unreachable", "sentry count failed: ConnectError")))
    by = _by_key(m)
    assert by["error_rate_pct:app"].state == "gap" and by["app_up:app"].value == 1.0
    assert set(gap_sources(m)) == {"sentry"}


def test_unconfigured_integrations_are_gaps() -> None:
    """An unconfigured database URL, OpenAI key and unreadable status pages are gaps, never outages."""
    health = AppHealth(status_code=200, ok=True, body={"status": "healthy"}, latency_ms=30.0)
    m = _by_key(measure(_probes(health=health, database=_fail("unconfigured"), openai=_fail("unconfigured"),
                                vendors=_fail("unreachable"))))
    assert m["database_up:database"].value == 1.0  # REST still measures it
    assert m["active_connections:database"].state == "gap"
    assert m["third_party_down:openai"].state == "gap"


def test_error_rate_percent_needs_a_request_count() -> None:
    """Sentry's count alone gives errors per minute; the percentage only with a request count."""
    m = _by_key(measure(_probes(sentry=ErrorRate(count=12, window_s=900, per_minute=0.8, requests=100,
                                                 percent_of_requests=12.0))))
    assert m["error_rate_pct:app"].value == 12.0
    m2 = _by_key(measure(_probes(sentry=ErrorRate(count=12, window_s=900, per_minute=0.8))))
    assert m2["error_rate_pct:app"].state == "unknown" and m2["errors_per_minute:app"].value == 0.8


def _rate(errors: int, requests: int | None) -> ErrorRate:
    percent = round(100.0 * errors / requests, 3) if requests else None
    return ErrorRate(count=errors, window_s=900, per_minute=errors / 15, requests=requests,
                     percent_of_requests=percent)


def _error_rate_findings(**over: Any) -> list[Finding]:
    return [f for f in evaluate(Policy().alert_rules, measure(_probes(**over))) if f.rule == "high_error_rate"]


def test_error_rate_above_the_rule_threshold_breaches() -> None:
    """12 errors in 100 requests breaches high_error_rate (> 5 %), a P1."""
    (finding,) = _error_rate_findings(sentry=_rate(12, 100))
    assert finding.state == "breach" and finding.value == 12.0 and finding.severity == "P1"


def test_error_rate_above_the_key_target_is_off_target_only() -> None:
    """2 % of requests failing misses the < 1 % key metric without breaching the > 5 % rule."""
    policy = Policy()
    m = measure(_probes(sentry=_rate(2, 100)))
    rows = {(r["metric"], r["target"]): r for r in cycle_rows(policy, m, evaluate(policy.alert_rules, m), None, 0)}
    assert rows[("error_rate_pct", "app")]["state"] == "off-target"
    assert "target < 1" in rows[("error_rate_pct", "app")]["threshold"]


def test_error_rate_thresholds_come_from_the_policy(tmp_path: Path) -> None:
    """A policy file's high_error_rate threshold of 20 % lets a 12 % error rate pass."""
    rules = [r.model_dump(mode="json") for r in Policy().alert_rules]
    for rule in rules:
        rule["threshold"] = 20.0 if rule["name"] == "high_error_rate" else rule["threshold"]
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps({"alert_rules": rules}))  # JSON is YAML
    findings = evaluate(load_policy(path).alert_rules, measure(_probes(sentry=_rate(12, 100))))
    assert [f.state for f in findings if f.rule == "high_error_rate"] == ["ok"]


def test_no_requests_leaves_the_error_rate_unknown() -> None:
    """A zero request count gives no percentage: the error rate is unknown, not 0 and not a breach."""
    (finding,) = _error_rate_findings(sentry=_rate(0, 0))
    assert finding.state == "unknown"


def test_error_rate_is_masked_while_the_app_is_down() -> None:
    """A bad deploy's 100 % error rate is the application_down incident's symptom, not a second incident."""
    findings = evaluate(Policy().alert_rules, measure(_probes(health=_health(503, app=_bad("app", "TypeError")),
                                                              sentry=_rate(10, 10))))
    states = {f.rule: f.state for f in findings if f.rule in ("application_down", "high_error_rate")}
    assert states == {"application_down": "breach", "high_error_rate": "masked"}


def test_error_rate_is_masked_while_payments_fail() -> None:
    """Webhook 500s raising the error rate belong to payment_processing_failed while it breaches."""
    findings = evaluate(Policy().alert_rules, measure(_probes(
        stripe=[FailedEvent(id="evt_1", type="invoice.paid", created=NOW)], sentry=_rate(3, 10))))
    states = {f.rule: f.state for f in findings if f.rule in ("payment_processing_failed", "high_error_rate")}
    assert states == {"payment_processing_failed": "breach", "high_error_rate": "masked"}


def test_error_rate_is_masked_while_a_cause_incident_is_open() -> None:
    """After the app recovers, the window's leftover errors stay with the open application_down incident."""
    findings = _error_rate_findings(sentry=_rate(10, 40))
    attribute_to_open(findings, ["monitor:application_down:app", "monitor:high_error_rate:app"])
    assert [f.state for f in findings] == ["masked"] and "application_down" in findings[0].detail


def test_error_rate_is_not_masked_by_an_unrelated_open_incident() -> None:
    """An open third-party incident does not hide a high error rate."""
    findings = _error_rate_findings(sentry=_rate(10, 40))
    attribute_to_open(findings, ["monitor:third_party_degraded:openai"])
    assert [f.state for f in findings] == ["breach"]


def test_vendor_status_page_outage_is_third_party_down() -> None:
    """OpenAI's status page saying major outage makes OpenAI down even when its API answers."""
    vendors = [VendorStatus(vendor="openai", url="u", level="major_outage", indicator="major")]
    m = _by_key(measure(_probes(vendors=vendors)))
    assert m["third_party_down:openai"].value == 1.0


def test_apps_openai_check_counts_only_without_our_own_probe() -> None:
    """The app's short-timeout OpenAI check decides only when the monitor cannot list models itself."""
    health = _health(openai=_bad("openai", "ReadTimeout"))
    assert _by_key(measure(_probes(health=health)))["third_party_down:openai"].value == 0.0
    unconfigured = _by_key(measure(_probes(health=health, openai=_fail("unconfigured"))))
    assert unconfigured["third_party_down:openai"].value == 1.0


def test_failed_deliveries_are_counted_while_the_app_is_up() -> None:
    """Undelivered Stripe events are counted; while the app is down they are masked."""
    events = [FailedEvent(id=f"evt_{n}", type="invoice.paid", created=NOW, pending_webhooks=1) for n in range(3)]
    assert _by_key(measure(_probes(stripe=events)))["stripe_failed_deliveries:stripe"].value == 3.0
    down = _by_key(measure(_probes(stripe=events, health=_fail("unreachable"))))
    assert down["stripe_failed_deliveries:stripe"].state == "masked"


def test_health_timeout_behind_a_lock_is_database_degradation() -> None:
    """/api/health timing out while queries wait on a lock masks app_up and measures the wait as query time."""
    waiting = LongQuery(pid=42, duration_s=12.5, state="active", query="select … from public.profiles",
                        blocking_pids=[7])
    db = _probes().database.model_copy(update={"long_running": [waiting]})  # type: ignore[union-attr]
    m = _by_key(measure(_probes(health=_fail("timeout"), database=db)))
    assert m["app_up:app"].state == "masked"
    assert m["query_time_ms:database"].value == 12500.0


@pytest.mark.parametrize("over", [
    {"rest": "timeout"},
    {"app_check": "QueryCanceledError: canceling statement due to statement timeout"},
    {"rest": "timeout", "app_check": "TimeoutError: timed out"},
])
def test_timeouts_behind_a_lock_are_degradation_not_an_outage(over: dict[str, str]) -> None:
    """REST or the app's database check timing out while queries wait on a lock: P1 degradation, never P0 down.

    On a busy machine the slow-database drill's REST count (6 s behind the lock) crosses the probe's 10 s limit;
    counting that as database_unavailable declared a P0 for a database that answers, only slowly.
    """
    waiting = LongQuery(pid=42, duration_s=8.0, state="active", query="select … from public.profiles",
                        blocking_pids=[7])
    db = _probes().database.model_copy(update={"long_running": [waiting]})  # type: ignore[union-attr]
    probes: dict[str, Any] = {"database": db}
    if "rest" in over:
        probes["rest"] = _fail("timeout", "no response within 10s")
    if "app_check" in over:
        probes["health"] = _health(code=503, database=_bad("database", over["app_check"]))
    findings = {f.key: f for f in evaluate(Policy().alert_rules, measure(_probes(**probes)))}
    assert findings["database_unavailable:database"].state == "ok"
    assert findings["database_degradation:database"].breached


def test_a_rest_timeout_is_slow_while_the_database_answers_and_down_when_it_does_not() -> None:
    """REST timing out while the direct connection answers: degradation (query time at least the REST wait), not
    database_unavailable; with the direct connection failing too, it is an outage."""
    slow = _fail("timeout", "no response within 10s").model_copy(update={"elapsed_s": 10.2})
    findings = {f.key: f for f in evaluate(Policy().alert_rules, measure(_probes(rest=slow)))}
    assert findings["database_unavailable:database"].state == "ok"
    degraded = findings["database_degradation:database"]
    assert degraded.breached and degraded.value == 10200.0
    down = {f.key: f for f in evaluate(Policy().alert_rules,
                                       measure(_probes(rest=slow, database=_fail("timeout"))))}
    assert down["database_unavailable:database"].breached


def test_query_time_comes_from_the_apps_database_check() -> None:
    """query_time_ms is the app's own database query latency when the check reports it."""
    m = _by_key(measure(_probes(health=_health(database={"status": "degraded", "latency_ms": 1500.0}))))
    assert m["query_time_ms:database"].value == 1500.0


# -- rule evaluation --------------------------------------------------------------------------------------------


def test_thresholds_come_from_the_policy(tmp_path: Path) -> None:
    """A response time of 3 s is fine by default and breaches a policy with a 2 s slow_response_time rule."""
    probes = _probes(health=_health(latency_ms=3000.0))
    default = {f.key: f for f in evaluate(Policy().alert_rules, measure(probes))}
    assert default["slow_response_time:app"].state == "ok"
    rules = [r.model_dump(mode="json") for r in Policy().alert_rules]
    for r in rules:
        if r["name"] == "slow_response_time":
            r["threshold"] = 2.0
    path = tmp_path / "policy.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"alert_rules": rules}))
    strict = {f.key: f for f in evaluate(load_policy(path).alert_rules, measure(probes))}
    assert strict["slow_response_time:app"].state == "breach"


def test_every_critical_rule_breaches_on_its_measurement() -> None:
    """app_up 0, database_up 0 and failed deliveries breach the three critical rules."""
    events = [FailedEvent(id="evt_1", type="invoice.paid", created=NOW)]
    app_down = evaluate(Policy().alert_rules, measure(_probes(health=_fail("timeout"))))
    db_down = evaluate(Policy().alert_rules, measure(_probes(rest=_fail("unreachable"))))
    pay = evaluate(Policy().alert_rules, measure(_probes(stripe=events)))
    breached = {f.rule for fs in (app_down, db_down, pay) for f in fs if f.breached}
    assert breached == {"application_down", "database_unavailable", "payment_processing_failed"}


def test_slow_responses_are_attributed_to_database_degradation() -> None:
    """A slow database makes responses slow too: only database_degradation breaches, slow_response_time is masked."""
    probes = _probes(health=_health(latency_ms=6200.0, database={"status": "degraded", "latency_ms": 6000.0}))
    findings = {f.key: f for f in evaluate(Policy().alert_rules, measure(probes))}
    assert findings["database_degradation:database"].breached
    assert findings["slow_response_time:app"].state == "masked"


def test_gap_measurement_neither_breaches_nor_clears() -> None:
    """A gap measurement gives a gap finding for its rule."""
    findings = evaluate(Policy().alert_rules, measure(_probes(sentry=_fail("timeout"))))
    assert {f.state for f in findings if f.rule == "high_error_rate"} == {"gap"}


# -- consecutive breaches ---------------------------------------------------------------------------------------


def _run(states: list[str], n: int = 2) -> list[str]:
    state: BreachState | None = None
    actions: list[str] = []
    for s in states:
        step = advance(state, _finding(s), n, NOW)
        if step.action == "declare":
            step.state.incident_id = "inc-20260105-abcdef"
        state, actions = step.state, [*actions, step.action]
    return actions


def test_one_breach_does_not_declare() -> None:
    """A single breaching cycle below breach_cycles only counts."""
    assert _run(["breach"]) == ["breaching"]


def test_breach_held_for_n_cycles_declares_once() -> None:
    """The Nth consecutive breach declares; later breaches continue the same incident."""
    assert _run(["breach", "breach", "breach"]) == ["breaching", "declare", "continuing"]


def test_alternating_breaches_never_declare() -> None:
    """A flapping metric (breach, ok, breach, ok) never reaches N consecutive cycles."""
    assert "declare" not in _run(["breach", "ok"] * 4)


def test_gap_holds_the_count() -> None:
    """A gap between two breaches neither resets nor advances the count."""
    assert _run(["breach", "gap", "breach"]) == ["breaching", "held", "declare"]


def test_recovery_is_reported_once() -> None:
    """The first clear cycle after a declared breach recovers; later clear cycles do nothing."""
    assert _run(["breach", "breach", "ok", "ok"]) == ["breaching", "declare", "recovered", "none"]


def test_recovered_step_names_the_incident() -> None:
    """The recovered step carries the incident the episode declared, and the state is idle again."""
    declared = BreachState(rule="application_down", target="app", consecutive=3, incident_id="inc-20260105-abcdef")
    step = advance(declared, _finding("ok", value=1.0), 2, NOW)
    assert step.previous_incident_id == "inc-20260105-abcdef" and step.state.idle


def test_gap_counter_per_source() -> None:
    """A source gapped twice counts 2; a source that measured again goes back to 0."""
    first = {s.key: s for s in advance_gaps({}, {"sentry": "refused", "stripe": "refused"})}
    second = {s.target: s.gap_cycles for s in advance_gaps(first, {"sentry": "refused"})}
    assert second == {"sentry": 2, "stripe": 0}


# -- uptime and the table ---------------------------------------------------------------------------------------


def test_uptime_percentage() -> None:
    """999 good cycles of 1000 is 99.9 %, and no samples is unknown."""
    assert uptime_pct(999, 1000) == 99.9 and uptime_pct(0, 0) is None


def test_cycle_rows_states() -> None:
    """The table marks breaches, gaps, off-target key metrics and below-target uptime."""
    policy = Policy()
    probes = _probes(health=_health(latency_ms=3000.0), sentry=_fail("unreachable"), stripe=[
        FailedEvent(id="evt_1", type="invoice.paid", created=NOW)])
    m = measure(probes)
    rows = {(r["metric"], r["target"]): r for r in cycle_rows(policy, m, evaluate(policy.alert_rules, m), 99.0, 100)}
    assert rows[("response_time_s", "app")]["state"] == "off-target"
    assert rows[("stripe_failed_deliveries", "stripe")]["state"] == "breach"
    assert rows[("error_rate_pct", "app")]["state"] == "gap"
    assert rows[("uptime_pct", "app")]["state"] == "off-target"
    assert "slow_response_time > 5" in rows[("response_time_s", "app")]["threshold"]


async def test_monitor_store_keeps_state_and_prunes_old_samples(tmp_path: Path) -> None:
    """Breach states round-trip; uptime counts only samples inside the window (SQLite file, no network)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'incidents.db'}"
    async with open_monitor_store(url) as store:
        await store.save([BreachState(rule="application_down", target="app", consecutive=2),
                          BreachState(rule="database_unavailable", target="database")])
        await store.add_sample("app", False, NOW - timedelta(hours=2))
        await store.add_sample("app", True, NOW - timedelta(minutes=2))
        await store.add_sample("app", True, NOW)
        states = await store.states()
        counts = await store.uptime("app", timedelta(hours=1), NOW)
    assert list(states) == ["application_down:app"] and states["application_down:app"].consecutive == 2
    assert counts == (2, 2)


# -- traffic and failed logins ----------------------------------------------------------------------------------

MON = Monitoring(traffic_baseline_min_samples=3, traffic_anomaly_factor=3, traffic_min_rate_per_minute=1,
                 auth_failures_per_minute=10)


def _traffic(requests: int | None = 50, failures: int | None = 1) -> Traffic:
    return Traffic(requests=requests, window_s=60, auth_failures=failures, auth_window_s=60)


def _rules(*names: str) -> list[Any]:
    return [r for r in Policy().alert_rules if r.name in names]


def test_traffic_anomaly_needs_a_baseline_then_judges_both_ways() -> None:
    """No judgement before the minimum samples; above factor x or below 1/factor of the median is anomalous."""
    assert traffic_anomaly(500, [50, 50], MON)[0] is None
    history = [40, 60, 50]  # median 50
    assert traffic_anomaly(150, history, MON)[0] == 0.0
    assert traffic_anomaly(151, history, MON)[0] == 1.0
    assert traffic_anomaly(17, history, MON)[0] == 0.0
    assert traffic_anomaly(16, history, MON)[0] == 1.0
    # A quiet baseline is raised to the minimum rate: a few requests are no spike, no traffic is no drop.
    assert traffic_anomaly(2, [0.1, 0.2, 0.1], MON)[0] == 0.0
    assert traffic_anomaly(0, [0.1, 0.2, 0.1], MON)[0] == 0.0
    assert traffic_anomaly(4, [0.1, 0.2, 0.1], MON)[0] == 1.0


def test_traffic_spike_breaches_unusual_traffic() -> None:
    """A request rate far above the learned baseline breaches unusual_traffic; a normal rate does not."""
    rules = _rules("unusual_traffic")
    spike = measure(_probes(traffic=_traffic(requests=300)), monitoring=MON, rate_history=[50, 45, 55])
    normal = measure(_probes(traffic=_traffic(requests=60)), monitoring=MON, rate_history=[50, 45, 55])
    assert [f.state for f in evaluate(rules, spike)] == ["breach"]
    assert [f.state for f in evaluate(rules, normal)] == ["ok"]
    learning = _by_key(measure(_probes(traffic=_traffic(requests=300)), monitoring=MON, rate_history=[50]))
    assert learning["traffic_anomaly:app"].state == "unknown"
    assert learning["request_rate_per_minute:app"].value == 300.0


def test_failed_login_burst_breaches_security_event() -> None:
    """Failed logins per minute above the policy's threshold set security_events to their count."""
    rules = _rules("security_event")
    burst = _by_key(measure(_probes(traffic=_traffic(failures=40)), monitoring=MON))
    assert burst["security_events:auth"].value == 40.0
    assert [f.state for f in evaluate(rules, burst.values())] == ["breach"]
    quiet = measure(_probes(traffic=_traffic(failures=10)), monitoring=MON)
    assert [f.state for f in evaluate(rules, quiet)] == ["ok"]


def test_uncountable_traffic_is_a_gap_not_a_failure() -> None:
    """A rejected query (None) or a failed probe is a gap of sentry, never a breach."""
    m = measure(_probes(traffic=_traffic(requests=None, failures=None)), monitoring=MON, rate_history=[1, 2, 3])
    findings = evaluate(_rules("unusual_traffic", "security_event"), m)
    assert {f.state for f in findings} == {"gap"}
    assert set(gap_sources(m)) == {"sentry"}
    failed = measure(_probes(traffic=_fail("unreachable", "refused")), monitoring=MON)
    assert {x.state for x in failed if x.metric in ("traffic_anomaly", "security_events")} == {"gap"}


@pytest.mark.parametrize("over", [
    {"health": _fail("unreachable")},
    {"health": _health(503, database=_bad("database"))},
    {"health": _health(503, auth=_bad("auth"))},
])
def test_outages_mask_traffic_and_security_events(over: dict[str, Any]) -> None:
    """An app, database or auth outage changes the traffic and fails logins: both are masked, not declared."""
    m = measure(_probes(traffic=_traffic(requests=1000, failures=500), **over), monitoring=MON,
                rate_history=[50, 50, 50])
    findings = evaluate(_rules("unusual_traffic", "security_event"), m)
    assert {f.state for f in findings} == {"masked"}, [(f.rule, f.state, f.detail) for f in findings]


def test_traffic_symptoms_are_attributed_to_a_breached_or_open_cause() -> None:
    """unusual_traffic / security_event breaching beside a breached cause, or with its incident open, are masked."""
    m = measure(_probes(traffic=_traffic(requests=1000, failures=500),
                        stripe=[FailedEvent(id="evt_1", type="checkout.session.completed", created=NOW,
                                            pending_webhooks=1)]),
                monitoring=MON, rate_history=[50, 50, 50])
    findings = evaluate(Policy().alert_rules, m)
    states = {f.rule: f.state for f in findings}
    assert states["payment_processing_failed"] == "breach"
    assert states["unusual_traffic"] == states["security_event"] == "masked"
    alone = evaluate(_rules("unusual_traffic", "security_event"),
                     measure(_probes(traffic=_traffic(requests=1000, failures=500)), monitoring=MON,
                             rate_history=[50, 50, 50]))
    assert {f.state for f in alone} == {"breach"}
    attribute_to_open(alone, ["monitor:database_unavailable:database"])
    assert {f.state for f in alone} == {"masked"}


# -- feature usage ----------------------------------------------------------------------------------------------

FMON = Monitoring(traffic_baseline_min_samples=3, feature_min_requests=50, feature_min_share_pct=5,
                  feature_anomaly_factor=3, feature_max_routes=3)
USUAL = {"/": [60.0, 60.0, 60.0], "/exam": [30.0, 30.0, 30.0], "/billing": [10.0, 10.0, 10.0]}


def _routes(complete: bool = True, **counts: int) -> RouteCounts:
    names = {"root": "/", "exam": "/exam", "billing": "/billing", "health": "/api/health", "blog": "/blog"}
    return RouteCounts(counts={names[k]: v for k, v in counts.items()}, complete=complete)


def _mix(history: dict[str, list[float]] | None = None, requests: int = 100, **counts: int) -> list[Measurement]:
    traffic = Traffic(requests=requests, window_s=60, auth_failures=0, auth_window_s=60, routes=_routes(**counts))
    return measure(_probes(traffic=traffic), monitoring=FMON, rate_history=[100, 100, 100],
                   route_history=USUAL if history is None else history)


def test_feature_shares_track_the_busiest_routes_and_a_dropped_one() -> None:
    """Shares are % of the feature requests (probes excluded); a baseline route missing from a full list is 0."""
    shares, total = feature_shares(_routes(root=70, exam=30, health=500), FMON, USUAL)
    assert total == 100 and shares == {"/": 70.0, "/exam": 30.0, "/billing": 0.0}
    # Sentry's page was full: a route not on it is unknown, not unused.
    shares, _ = feature_shares(_routes(complete=False, root=70, exam=30), FMON, USUAL)
    assert shares == {"/": 70.0, "/exam": 30.0}
    # At most feature_max_routes, the busiest by their share now or their usual share.
    shares, _ = feature_shares(_routes(root=50, exam=20, billing=10, blog=20), FMON, USUAL)
    assert list(shares) == ["/", "/exam", "/blog"]
    assert feature_shares(_routes(health=50), FMON, USUAL) == ({}, 0)


def test_feature_anomaly_judges_each_route_against_its_usual_share() -> None:
    """A share below 1/factor or above factor x its median is anomalous; small routes and learning ones are not."""
    assert feature_anomaly({"/": 60, "/exam": 30, "/billing": 10}, 100, USUAL, FMON) == (
        0.0, "3 route(s) at their usual share of 100 requests")
    value, detail = feature_anomaly({"/": 90, "/exam": 9.9, "/billing": 0.1}, 100, USUAL, FMON)
    assert value == 2.0 and detail.startswith("2 of 3 route(s) off their usual share")
    assert detail.index("/billing") < detail.index("/exam")  # the most deviating first
    assert feature_anomaly({"/": 60, "/exam": 10, "/billing": 30}, 100, USUAL, FMON)[0] == 0.0  # x3 is not above
    assert feature_anomaly({"/": 60, "/exam": 9, "/billing": 31}, 100, USUAL, FMON)[0] == 2.0
    # Too few requests to judge a mix; a baseline still learning; a route too small to judge.
    assert feature_anomaly({"/": 100}, 49, USUAL, FMON)[0] is None
    assert feature_anomaly({"/new": 100}, 100, {"/new": [50.0, 50.0]}, FMON)[0] is None
    assert feature_anomaly({"/tiny": 0}, 100, {"/tiny": [4.0, 4.0, 4.0]}, FMON)[0] == 0.0


def test_feature_usage_anomaly_breaches_as_p3_and_ignores_the_total() -> None:
    """A feature that stopped being used breaches feature_usage_anomaly (P3); more traffic in the same mix does not."""
    rules = _rules("feature_usage_anomaly")
    (finding,) = evaluate(rules, _mix(root=100, exam=0, billing=10))
    assert (finding.state, finding.severity, finding.target, finding.value) == ("breach", "P3", "features", 1.0)
    assert "/exam 0 % of requests (usually 30 %): below 1/3" in finding.detail
    (same_mix,) = evaluate(rules, _mix(requests=1000, root=600, exam=300, billing=100))
    assert same_mix.state == "ok"
    (learning,) = evaluate(rules, _mix(history={}, root=100, exam=0, billing=10))
    assert learning.state == "unknown"


def test_unavailable_route_counts_are_a_sentry_gap() -> None:
    """Sentry that cannot group by route leaves feature_anomaly a gap of the sentry source, not a breach."""
    traffic = Traffic(requests=100, window_s=60, auth_failures=0, auth_window_s=60, routes=None)
    m = _by_key(measure(_probes(traffic=traffic), monitoring=FMON, route_history=USUAL))
    assert m["feature_anomaly:features"].state == "gap" and m["feature_anomaly:features"].source == "sentry"


def test_feature_anomaly_is_masked_by_outages_and_by_its_traffic_causes() -> None:
    """An outage, a traffic flood, failed logins or a high error rate shift the mix: the anomaly is theirs."""
    rules = _rules("feature_usage_anomaly", "unusual_traffic", "security_event")
    down = measure(_probes(health=_fail("unreachable"), traffic=Traffic(
        requests=100, window_s=60, auth_failures=0, auth_window_s=60, routes=_routes(root=100, exam=0, billing=0))),
        monitoring=FMON, route_history=USUAL)
    assert {f.state for f in evaluate(rules, down) if f.rule == "feature_usage_anomaly"} == {"masked"}
    flood = evaluate(rules, _mix(requests=1000, root=100, exam=900, billing=0))
    states = {f.rule: f.state for f in flood}
    assert states == {"unusual_traffic": "breach", "security_event": "ok", "feature_usage_anomaly": "masked"}
    assert "attributed to unusual_traffic" in next(f.detail for f in flood if f.rule == "feature_usage_anomaly")
    alone = evaluate(rules, _mix(root=100, exam=0, billing=10))
    assert {f.rule: f.state for f in alone}["feature_usage_anomaly"] == "breach"
    attribute_to_open(alone, ["monitor:high_error_rate:app"])
    assert {f.rule: f.state for f in alone}["feature_usage_anomaly"] == "masked"
    # high_error_rate's own symptoms are not widened: an open unusual_traffic incident does not mask it.
    errors = evaluate(_rules("high_error_rate"), measure(_probes(sentry=ErrorRate(
        count=30, window_s=900, per_minute=2.0, requests=100, percent_of_requests=30.0)), monitoring=FMON))
    attribute_to_open(errors, ["monitor:unusual_traffic:app"])
    assert [f.state for f in errors] == ["breach"]


def test_baseline_samples_keep_what_was_judged_not_what_was_masked() -> None:
    """The request rate and route shares join the baselines; masked or too thin windows do not."""
    def samples(probes: CycleProbes, history: dict[str, list[float]]) -> dict[str, float]:
        m = measure(probes, monitoring=FMON, rate_history=[100, 100, 100], route_history=history)
        return baseline_samples(m, evaluate(Policy().alert_rules, m))

    def traffic(requests: int = 100, **counts: int) -> Traffic:
        return Traffic(requests=requests, window_s=60, auth_failures=0, auth_window_s=60, routes=_routes(**counts))

    assert samples(_probes(traffic=traffic(root=60, exam=40)), USUAL) == {
        "request_rate_per_minute": 100.0, "feature_share:/": 60.0, "feature_share:/exam": 40.0,
        "feature_share:/billing": 0.0}
    assert samples(_probes(traffic=traffic(root=60, exam=40)), {}) == {  # learning: kept
        "request_rate_per_minute": 100.0, "feature_share:/": 60.0, "feature_share:/exam": 40.0}
    assert samples(_probes(traffic=traffic(requests=20, root=10, exam=10)), USUAL) == {
        "request_rate_per_minute": 20.0}  # too few requests for a mix (and a drop of the rate is kept)
    assert samples(_probes(health=_fail("unreachable"), traffic=traffic(root=60, exam=40)), USUAL) == {}
    assert samples(_probes(traffic=traffic(requests=1000, root=100, exam=900)), USUAL) == {
        "request_rate_per_minute": 1000.0}  # a flood joins the rate baseline, its mix is not normal


async def test_monitor_store_keeps_rates_by_prefix(tmp_path: Path) -> None:
    """Route shares round-trip by prefix (route names with LIKE wildcards are literal) and old values are pruned."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'incidents.db'}"
    async with open_monitor_store(url) as store:
        await store.add_rates({"feature_share:/a_b": 10.0, "feature_share:/100%": 5.0, "request_rate_per_minute": 9.0},
                              NOW - timedelta(hours=30))
        await store.add_rates({"feature_share:/a_b": 20.0, "feature_shareX/c": 1.0}, NOW - timedelta(minutes=1))
        await store.add_rates({"feature_share:/a_b": 30.0, "feature_share:/100%": 7.0}, NOW)
        shares = await store.rates_by_prefix("feature_share:", timedelta(hours=24), NOW)
        rates = await store.rates("request_rate_per_minute", timedelta(hours=48), NOW)
        old = await store.rates_by_prefix("feature_share:", timedelta(hours=48), NOW)
    assert shares == {"/a_b": [20.0, 30.0], "/100%": [7.0]}
    assert rates == [9.0]  # another metric's values are not pruned by the prefix read
    assert old == shares  # the 30-hour-old shares were pruned by the first read
