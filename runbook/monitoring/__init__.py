"""The monitor's plain-Python core: measurements from probe results, rule evaluation, consecutive breaches, uptime.

One monitor cycle is: probe everything (the flow, concurrently) → `measure()` turns the probe results into
measurements, deciding what app_up / database_up / auth_up mean → `evaluate()` compares them with the policy's
alerting rules → `advance()` keeps the consecutive-breach state per rule and target and says what to do
(declare, nothing yet, note a recovery) → the flow acts.

Attribution (which rule a symptom belongs to), so that one cause opens one incident:
- database_up = 0 when the app's health says its database check is unhealthy, REST cannot count profiles, or the
  direct database connection fails;
- app_up = 0 when /api/health is unreachable, times out, or answers 5xx for a cause that is not the database or
  auth (a broken build, bad configuration, no body at all); a 5xx explained by the database or auth checks, or by
  maintenance mode, or a timeout while database queries wait on a lock, leaves app_up "masked" (neither down nor
  up);
- auth_up = 0 when the app's auth check fails (and the database check does not) or the auth endpoint does not
  answer like an auth endpoint; masked while the app or the database is down;
- slow responses while the app is down, or while the database is degraded, are masked likewise, and so are failed
  Stripe deliveries while the app or the database is down;
- the error rate (Sentry's errors as % of its transactions, the requests served) is masked while the app, the
  database or auth is down or in maintenance, while another cause rule (`ERROR_RATE_CAUSES`) breaches, and while a
  monitor incident of such a cause is still open (the window still holds that outage's errors after it recovered);
- unusual_traffic (traffic_anomaly): the request rate (Sentry's transactions per minute over the policy's traffic
  window) against the median of the rates of earlier cycles (`monitor_rates`, once there are enough of them); and
  security_event (security_events): failed logins per minute (401/403 transactions of the auth endpoint). Both are
  masked while the app, the database or auth is down or in maintenance (an outage changes the traffic and fails
  logins), while a cause rule breaches, and while such a cause's monitor incident is open; a request rate taken
  while masked is not kept for the baseline;
- feature_usage_anomaly (feature_anomaly, target `features`): each busy route's share of the requests (Sentry's
  transactions grouped by name) against the median of its earlier shares (`monitor_rates`, `feature_share:<route>`);
  a route whose share rose above factor x or fell below 1/factor of its usual share counts, the value being how
  many did. Judged from the policy's minimum of requests in the window and for routes with a usual share worth
  judging; masked like the traffic rules, and also while unusual_traffic, security_event or high_error_rate
  breaches or has its incident open (a flood on one route or users retrying a failing one shift the mix too).
  Shares are proportions, so a change of the total traffic alone does not move them;
- third_party_down per vendor from our own OpenAI liveness probe and the vendors' status pages (the app's own
  OpenAI check only when our probe cannot run).
A probe that itself fails (NotConfigured, the monitor cannot reach Sentry / Stripe / a status page) is a GAP: the
metric is unknown, never an outage of the app. Gaps and masked measurements neither advance nor clear a breach.

State between runs (the monitor runs every minute as separate flow runs) lives in small tables created by store.py on
the incident store's engine (SQLite file by default, Postgres in production, so several workers share it):
`monitor_breaches` (the breach state per rule and target), `monitor_samples` (availability per cycle, for uptime
over the policy's rolling window; older samples are pruned) and `monitor_rates` (a measured value per cycle, such as
the request rate and the route shares the traffic baselines are learned from; pruned after the policy's baseline
window).

    probes.py        probe results (ProbeFailure, CycleProbes) and the Measurement they become
    measurements.py  measure(): probe results → measurements, each symptom attributed to one cause
    baselines.py     traffic and feature-usage baselines (`monitor_rates`) and what joins them
    rules.py         rules against measurements (findings), attribution, consecutive breaches and gaps
    gaps.py          blind monitoring: a source gapped for N cycles → a P2 monitoring_gap incident, its words
    uptime.py        availability per cycle and uptime over the window
    table.py         the cycle's table (the `monitor-cycle` artifact)
    store.py         MonitorStore: breach states, availability samples and rates between runs
`from runbook.monitoring import …` names the parts the monitor flow uses.
"""

from runbook.monitoring.baselines import (
    FEATURE_SHARE,
    REQUEST_RATE,
    baseline_samples,
    feature_anomaly,
    feature_shares,
    traffic_anomaly,
)
from runbook.monitoring.measurements import measure
from runbook.monitoring.probes import CycleProbes, Measurement, ProbeFailure, probe_failure
from runbook.monitoring.rules import (
    ERROR_RATE_CAUSES,
    FEATURE_CAUSES,
    GAP_RULE,
    SYMPTOM_RULES,
    BreachState,
    Finding,
    Step,
    advance,
    advance_all,
    advance_gaps,
    attribute_to_open,
    evaluate,
    gap_sources,
)
from runbook.monitoring.store import MonitorStore, open_monitor_store
from runbook.monitoring.table import cycle_rows
from runbook.monitoring.uptime import available, uptime_pct

__all__ = [
    "BreachState",
    "CycleProbes",
    "ERROR_RATE_CAUSES",
    "FEATURE_CAUSES",
    "FEATURE_SHARE",
    "Finding",
    "GAP_RULE",
    "Measurement",
    "MonitorStore",
    "ProbeFailure",
    "REQUEST_RATE",
    "SYMPTOM_RULES",
    "Step",
    "advance",
    "advance_all",
    "advance_gaps",
    "attribute_to_open",
    "available",
    "baseline_samples",
    "cycle_rows",
    "evaluate",
    "feature_anomaly",
    "feature_shares",
    "gap_sources",
    "measure",
    "open_monitor_store",
    "probe_failure",
    "traffic_anomaly",
    "uptime_pct",
]
