"""Webhook check (runbook "Payment/Billing Issues"): is Stripe reaching the app, and if not, repair and replay.

Checks: the endpoint is registered and enabled, failed deliveries in the window, the webhook secret (by
fingerprint against the app's Vercel STRIPE_WEBHOOK_SECRET — never the value; a write-only one is judged by the
live probe: a correctly signed event the app rejects means the app's secret differs), and the live probe.
Plan (one approval for all): set the app's STRIPE_WEBHOOK_SECRET to the runbook's configured secret and redeploy
(env changes only reach new deployments); ask Stripe to resend the failed events (fresh signatures). Verify: the
probe passes, every resent event is delivered, and the app processed each event exactly once.
"""

from typing import Any

from prefect import flow
from pydantic import Field

from flows._remediation import (
    Checked,
    Plan,
    Remediation,
    RemediationParams,
    RemediationResult,
    run_name,
    run_remediation,
    verify_scenario,
)
from runbook.errors import UnsafeOperation
from runbook.models import Approval
from runbook.settings import fingerprint, get_settings
from tasks.stripe import check_webhook_endpoint, check_webhook_secret, list_failed_events, probe_webhook, resend_events
from tasks.supabase import count_processed_stripe_events
from tasks.vercel import read_env_values, redeploy_with_current_env, upsert_env_var

ACTION = "webhook-check"
ENV_KEY = "STRIPE_WEBHOOK_SECRET"


class WebhookCheckParams(RemediationParams):
    """Check the Stripe billing webhook and repair it (a form in the Prefect UI)."""

    window_minutes: float = Field(24 * 60, gt=0, le=30 * 24 * 60,
                                  description="Look for failed deliveries this far back (Stripe keeps 30 days)")
    repair_secret: bool = Field(True, description="If the app's secret differs, set it to the runbook's and redeploy")
    replay: bool = Field(True, description="Ask Stripe to resend the failed events to the app")
    max_events: int = Field(100, ge=1, le=500, description="Resend at most this many events")


async def plan_webhook(params: WebhookCheckParams) -> Plan:
    """Run the checks and plan the repair."""
    settings = get_settings()
    endpoint = await check_webhook_endpoint()
    failed = await list_failed_events(params.window_minutes)
    secret = await check_webhook_secret()
    probe = await probe_webhook()
    if not secret.present or not secret.shaped:
        raise UnsafeOperation("RUNBOOK_STRIPE_WEBHOOK_SECRET must hold the endpoint's whsec_ secret "
                              "(Stripe Dashboard → Webhooks → Signing secret) before the webhook can be checked")
    signature_rejected = probe.signed_status == 400
    mismatch = secret.app_state in ("mismatch", "missing") or (secret.app_state == "write-only" and
                                                              signature_rejected)
    events = sorted(e.id for e in failed)[: params.max_events]
    findings = [f"endpoint: {endpoint.detail}", f"secret: {secret.detail}", f"probe: {probe.detail}",
                f"failed deliveries in the window: {len(failed)}"]
    state: dict[str, Any] = {"endpoint": endpoint.endpoint_id, "enabled": endpoint.enabled,
                             "app_secret": secret.app_state, "app_fingerprint": secret.app_fingerprint,
                             "secret_fingerprint": secret.fingerprint, "signature_rejected": signature_rejected,
                             "mismatch": mismatch, "events": events, "findings": findings}
    steps: list[str] = []
    warnings: list[str] = []
    if mismatch and params.repair_secret:
        app = secret.app_fingerprint or secret.app_state
        steps += [f"Set the app's {ENV_KEY} (Vercel production) to the runbook's configured secret "
                  f"({secret.fingerprint}; the app has {app})",
                  "Redeploy production (env changes only reach new deployments)"]
    elif mismatch:
        warnings.append(f"the app's {ENV_KEY} differs from the endpoint's; repair_secret is off")
    if events and params.replay:
        if not endpoint.enabled or not endpoint.endpoint_id:
            warnings.append("the endpoint is not enabled: enable it in Stripe before resending events")
        else:
            steps.append(f"Ask Stripe to resend {len(events)} failed event(s) to {endpoint.endpoint_id} "
                         f"(fresh signatures): {', '.join(events[:10])}{' …' if len(events) > 10 else ''}")
    if not endpoint.ok:
        warnings.append(f"endpoint: {endpoint.detail}")
    if not steps:
        healthy = endpoint.ok and probe.ok and not failed and not mismatch
        summary = "webhook healthy: " if healthy else "nothing the runbook can repair: "
        return Plan(action=ACTION, environment=settings.environment, noop=True, state=state, warnings=warnings,
                    summary=summary + "; ".join(findings))
    steps.append("Verify: the probe passes, every resent event is delivered, the app processed each once")
    return Plan(action=ACTION, environment=settings.environment, state=state, steps=steps, warnings=warnings,
                summary="repair the billing webhook: " + "; ".join(findings))


@flow(name=ACTION, flow_run_name=run_name(ACTION))
async def webhook_check(params: WebhookCheckParams) -> RemediationResult:
    """Check the Stripe webhook; plan, approve and apply the secret repair and the event resend; verify."""
    settings = get_settings()

    async def plan() -> Plan:
        return await plan_webhook(params)

    async def act(plan: Plan, approval: Approval) -> dict[str, Any]:
        done: dict[str, Any] = {"secret_repaired": False, "redeployed": None, "resent": []}
        if plan.state["mismatch"] and params.repair_secret:
            assert settings.stripe_webhook_secret is not None
            current = (await read_env_values()).get(ENV_KEY)
            kind = current.type if current and current.type else "encrypted"
            await upsert_env_var(params.incident_id, ENV_KEY, settings.stripe_webhook_secret, kind,
                                 "(the endpoint's secret)")
            done["secret_repaired"] = True
            done["secret_fingerprint"] = fingerprint(settings.stripe_webhook_secret)
            done["redeployed"] = await redeploy_with_current_env(params.incident_id, f"{ACTION}: {ENV_KEY}")
        if plan.state["events"] and params.replay and plan.state["enabled"]:
            results = await resend_events(params.incident_id, plan.state["events"], plan.state["endpoint"])
            done["resent"] = [r.model_dump() for r in results]
        return done

    async def verify(plan: Plan, applied: dict[str, Any]) -> Checked:
        extra: dict[str, Any] = {}
        resent = applied.get("resent") or []
        if resent:
            ids = [r["event_id"] for r in resent]
            counts = await count_processed_stripe_events(ids)
            extra["events_delivered"] = {"ok": all(r["ok"] for r in resent),
                                         "not_delivered": [r["event_id"] for r in resent if not r["ok"]]}
            extra["processed_once"] = {"ok": all(n == 1 for n in counts.values()), "counts": counts}
        return await verify_scenario("payment", params.incident_id, params.verify_within_seconds, extra)

    return await run_remediation(Remediation(ACTION, plan, act, verify), params)
