"""The traffic baselines: the request rate against the median of earlier cycles' rates (unusual_traffic), failed
logins per minute (security_event), each route's share of the requests against its usual share
(feature_usage_anomaly), and which of this cycle's values join the baselines (`monitor_rates`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

from runbook.clients.sentry import RouteCounts, Traffic
from runbook.monitoring.probes import Measurement, ProbeFailure
from runbook.monitoring.probes import measurement as _m
from runbook.monitoring.rules import Finding
from runbook.policy import Monitoring

REQUEST_RATE = "request_rate_per_minute"  # the metric kept per cycle in `monitor_rates` for the traffic baseline


def traffic_baseline(history: Sequence[float], mon: Monitoring) -> float | None:
    """Return the median of earlier request rates, or None while there are fewer than the policy's minimum."""
    if len(history) < mon.traffic_baseline_min_samples:
        return None
    return float(statistics.median(history))


def traffic_anomaly(rate: float, history: Sequence[float], mon: Monitoring) -> tuple[float | None, str]:
    """Return (1 anomalous / 0 normal / None not judged yet, detail) for a request rate against its baseline.

    A rate above factor x the baseline, or below baseline / factor, is anomalous; the baseline is raised to the
    policy's minimum rate (so a quiet baseline neither makes a few requests a spike nor zero a drop of note).
    """
    baseline = traffic_baseline(history, mon)
    if baseline is None:
        return None, (f"{rate:g} requests/min; learning the baseline "
                      f"({len(history)}/{mon.traffic_baseline_min_samples} samples)")
    base = max(baseline, mon.traffic_min_rate_per_minute)
    k = mon.traffic_anomaly_factor
    detail = f"{rate:g} requests/min, baseline {baseline:g} (median of {len(history)})"
    if base > 0 and rate > k * base:
        return 1.0, f"{detail}: above {k:g}x"
    if baseline >= mon.traffic_min_rate_per_minute and baseline > 0 and rate < baseline / k:
        return 1.0, f"{detail}: below 1/{k:g}"
    return 0.0, detail


def traffic_measurements(traffic: Traffic | ProbeFailure, mon: Monitoring, history: Sequence[float],
                         cause: str | None) -> list[Measurement]:
    """Return request_rate_per_minute, traffic_anomaly and security_events (failed logins per minute).

    An uncountable value (the probe failed, Sentry rejected the query) is a gap of the `sentry` source;
    while `cause` (an outage or maintenance) holds, the anomaly and the failed logins are masked.
    """
    source = "sentry"
    if isinstance(traffic, ProbeFailure):
        return [_m(metric, "app" if metric != "security_events" else "auth", None, source, traffic.message,
                   state="gap") for metric in (REQUEST_RATE, "traffic_anomaly", "security_events")]
    out: list[Measurement] = []
    rate = traffic.requests_per_minute
    if rate is None:
        out.append(_m(REQUEST_RATE, "app", None, source, "request count unavailable", state="gap"))
        out.append(_m("traffic_anomaly", "app", None, source, "request count unavailable", state="gap"))
    else:
        out.append(_m(REQUEST_RATE, "app", rate, source,
                      f"{traffic.requests} requests in {traffic.window_s / 60:g} min"))
        anomaly, detail = traffic_anomaly(rate, history, mon)
        if cause is not None:
            out.append(_m("traffic_anomaly", "app", None, source, f"{detail} ({cause})", state="masked"))
        else:
            out.append(_m("traffic_anomaly", "app", anomaly, source, detail,
                          state="measured" if anomaly is not None else "unknown", scenario="performance"))
    failures = traffic.auth_failures_per_minute
    if failures is None:
        out.append(_m("security_events", "auth", None, source, "failed-login count unavailable", state="gap"))
    else:
        detail = (f"{traffic.auth_failures} failed logins in {traffic.auth_window_s / 60:g} min "
                  f"({failures:g}/min, brute force above {mon.auth_failures_per_minute:g}/min)")
        if cause is not None:
            out.append(_m("security_events", "auth", None, source, f"{detail} ({cause})", state="masked"))
        else:
            value = float(traffic.auth_failures or 0) if failures > mon.auth_failures_per_minute else 0.0
            out.append(_m("security_events", "auth", value, source, detail, scenario="authentication"))
    return out


FEATURE_SHARE = "feature_share:"  # `monitor_rates` metric prefix: a route's share of the requests (%) per cycle

FEATURE_METRIC = "feature_anomaly"

FEATURE_TARGET = "features"

MAX_ROUTE_NAME = 280  # longer transaction names are no route of ours (and would not fit the rates table's key)


def feature_shares(routes: RouteCounts, mon: Monitoring, history: Mapping[str, Sequence[float]]
                   ) -> tuple[dict[str, float], int]:
    """Return each tracked route's share of the requests (%) this window, and the requests of all feature routes.

    Tracked are the policy's `feature_max_routes` busiest routes, by their share now or their usual (median)
    share, so a route that stopped being used stays tracked while its baseline lasts: when Sentry listed every
    route, its share is 0; when the page was full, a route not on it is not known and not tracked this cycle.
    Excluded routes (the probes') and over-long names are no feature.
    """
    excluded = set(mon.feature_exclude_routes)
    counts = {r: n for r, n in routes.counts.items() if r not in excluded and len(r) <= MAX_ROUTE_NAME}
    total = sum(counts.values())
    if total <= 0:
        return {}, 0
    usual = {r: float(statistics.median(v)) for r, v in history.items() if v and r not in excluded}
    candidates = set(counts) | (set(usual) if routes.complete else set())

    def share(route: str) -> float:
        return round(100.0 * counts.get(route, 0) / total, 3)

    ranked = sorted(candidates, key=lambda r: (-max(share(r), usual.get(r, 0.0)), r))
    return {r: share(r) for r in ranked[:mon.feature_max_routes]}, total


def feature_anomaly(shares: Mapping[str, float], total: int, history: Mapping[str, Sequence[float]],
                    mon: Monitoring) -> tuple[float | None, str]:
    """Return (routes off their usual share / None not judged, detail) for this window's route mix.

    Judged from `feature_min_requests` requests, per route once its baseline has the policy's minimum of samples
    and a usual share of at least `feature_min_share_pct`: a share above factor x or below 1/factor of the usual
    one is anomalous (the most deviating routes are named first).
    """
    if total < mon.feature_min_requests:
        return None, f"{total} feature requests in the window; the mix is judged from {mon.feature_min_requests}"
    k = mon.feature_anomaly_factor
    judged, learning = 0, 0
    found: list[tuple[float, str]] = []
    for route, now in shares.items():
        past = history.get(route, ())
        if len(past) < mon.traffic_baseline_min_samples:
            learning += 1
            continue
        usual = float(statistics.median(past))
        if usual < mon.feature_min_share_pct or usual <= 0:
            continue
        judged += 1
        text = f"{route} {now:.3g} % of requests (usually {usual:.3g} %)"
        if now > k * usual:
            found.append((now / usual, f"{text}: above {k:g}x"))
        elif now < usual / k:
            found.append((usual / max(now, usual / 1000), f"{text}: below 1/{k:g}"))
    if not judged:
        if learning:
            return None, (f"learning the usual route mix ({learning} route(s) with fewer than "
                          f"{mon.traffic_baseline_min_samples} samples)")
        return 0.0, f"no route has a usual share of {mon.feature_min_share_pct:g} % or more of {total} requests"
    if not found:
        return 0.0, f"{judged} route(s) at their usual share of {total} requests"
    found.sort(key=lambda item: -item[0])
    return float(len(found)), (f"{len(found)} of {judged} route(s) off their usual share of {total} requests: "
                               + "; ".join(text for _, text in found[:3]))


def feature_measurement(traffic: Traffic | ProbeFailure, mon: Monitoring, history: Mapping[str, Sequence[float]],
                        cause: str | None) -> Measurement:
    """Return the feature_anomaly measurement: a gap when Sentry cannot group by route, masked while `cause` holds."""
    if isinstance(traffic, ProbeFailure):
        return _m(FEATURE_METRIC, FEATURE_TARGET, None, "sentry", traffic.message, state="gap")
    if traffic.routes is None:
        return _m(FEATURE_METRIC, FEATURE_TARGET, None, "sentry", "requests per route unavailable", state="gap")
    shares, total = feature_shares(traffic.routes, mon, history)
    value, detail = feature_anomaly(shares, total, history, mon)
    if cause is not None:
        return _m(FEATURE_METRIC, FEATURE_TARGET, None, "sentry", f"{detail} ({cause})", state="masked")
    m = _m(FEATURE_METRIC, FEATURE_TARGET, value, "sentry", detail,
           state="measured" if value is not None else "unknown", scenario="performance")
    if total >= mon.feature_min_requests:  # a thin window's mix is noise, not a baseline
        m.samples = {FEATURE_SHARE + route: share for route, share in shares.items()}
    return m


def baseline_samples(measurements: Iterable[Measurement], findings: Iterable[Finding]) -> dict[str, float]:
    """Return the values this cycle adds to the traffic baselines (`monitor_rates` metric → value).

    The request rate joins unless its judgement was masked (an outage's traffic is no normal); a spike does join,
    so that a lasting change becomes the new normal once it fills half the baseline window. The route shares
    (the feature measurement's samples) join likewise, when their judgement was not masked.
    """
    masked = {f.metric for f in findings if f.state == "masked"}
    out: dict[str, float] = {}
    for m in measurements:
        if m.metric == REQUEST_RATE and m.state == "measured" and m.value is not None and (
                "traffic_anomaly" not in masked):
            out[REQUEST_RATE] = m.value
        elif m.metric == FEATURE_METRIC and m.state in ("measured", "unknown") and FEATURE_METRIC not in masked:
            out.update(m.samples)
    return out
