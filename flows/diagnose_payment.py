"""The runbook's "Payment/Billing Issues" scenario as a diagnosis.

Symptoms: Stripe webhook failures, subscription errors. Response: Stripe → Events → Webhooks (the endpoint is
registered, enabled and subscribed to the right events; deliveries that failed in the policy's window), then
"verify webhook secret": Stripe's signing secret and the app's STRIPE_WEBHOOK_SECRET in Vercel are compared BY
FINGERPRINT (the runbook's `echo $STRIPE_WEBHOOK_SECRET` is exactly what we never do). Verification: the live probe
(unsigned → 400, correctly signed harmless event → 2xx).

Causes: secret mismatch; the app rejects correctly signed events; the endpoint is missing, disabled or not
subscribed; deliveries failed. Each suggests webhook-check with repair.
"""

from prefect import flow
from pydantic import BaseModel, Field

from flows._diagnosis import (
    INCIDENT_ID_DESCRIPTION,
    Investigation,
    publish,
    run_name,
)
from runbook.models import Diagnosis, IncidentId, Suggestion
from runbook.policy import get_policy
from tasks.stripe import check_webhook_endpoint, check_webhook_secret, list_failed_events, probe_webhook


class DiagnosePaymentParams(BaseModel):
    """Parameters of diagnose-payment."""

    incident_id: IncidentId | None = Field(default=None, description=INCIDENT_ID_DESCRIPTION)
    window_minutes: float | None = Field(default=None, gt=0, le=30 * 24 * 60,
        description="Look for failed deliveries this far back (default: the policy's monitoring.stripe_window)")


SIGNATURE_REJECTED = {400, 401, 403}
REPAIR_SECRET = "set the app's STRIPE_WEBHOOK_SECRET to the endpoint's secret, redeploy, replay the failed events"


def repair(why: str) -> Suggestion:
    """Return the webhook-check suggestion with repair on (fix the app's secret if it differs, replay)."""
    return Suggestion(flow="webhook-check", parameters={"repair_secret": True, "replay": True}, why=why)


@flow(name="diagnose-payment", flow_run_name=run_name("payment"))
async def diagnose_payment(params: DiagnosePaymentParams) -> Diagnosis:
    """Diagnose the runbook's payment scenario: webhook endpoint, failed deliveries, secret, live probe."""
    inv = Investigation("payment")
    window = params.window_minutes or get_policy().monitoring.stripe_window_minutes

    # Response 1: Stripe → Webhooks
    endpoint = await inv.probe("webhook endpoint", check_webhook_endpoint())
    if endpoint is not None:
        inv.note("webhook endpoint", endpoint.ok, endpoint.endpoint_id or "not registered",
                 f"{endpoint.url}: {endpoint.detail}")
    failed = await inv.probe("failed deliveries", list_failed_events(window))
    if failed is not None:
        shown = ", ".join(f"{e.id} ({e.type})" for e in failed[:5]) + (" …" if len(failed) > 5 else "")
        inv.note("failed deliveries", not failed, str(len(failed)), f"last {window:g} min: {shown or 'none'}")
    # Response 3: verify webhook secret (fingerprints only)
    secret = await inv.probe("webhook secret", check_webhook_secret())
    if secret is not None:
        inv.note("webhook secret", secret.ok, secret.app_state, secret.detail)
    # Verification: the live probe
    probe = await inv.probe("webhook probe", probe_webhook())
    if probe is not None:
        inv.note("webhook probe", probe.ok, f"unsigned {probe.unsigned_status}, signed {probe.signed_status}",
                 probe.detail)

    # Causes
    signature_rejected = (probe is not None and probe.unsigned_status == 400
                          and probe.signed_status in SIGNATURE_REJECTED)
    if secret is not None and secret.app_state in {"mismatch", "missing"}:
        rejected = (f" The app rejects correctly signed events (HTTP {probe.signed_status})."
                    if probe is not None and not probe.ok else "")
        inv.cause(f"Stripe webhook secret mismatch: {secret.detail}.{rejected}", repair(REPAIR_SECRET))
    elif signature_rejected and probe is not None:
        why = (f"Vercel does not return the app's STRIPE_WEBHOOK_SECRET ({secret.app_state}), so the fingerprints "
               "cannot be compared" if secret is not None and secret.app_state != "match"
               else "the fingerprints matched, so the deployment was likely built with an older value")
        shown = f" ({secret.fingerprint})" if secret is not None and secret.fingerprint else ""
        inv.cause(f"Stripe webhook secret mismatch: the app rejects events signed with the endpoint's current "
                  f"secret{shown} (HTTP {probe.signed_status}: signature verification failed); {why}.",
                  repair(REPAIR_SECRET))
    elif probe is not None and probe.signed_status is not None and not 200 <= probe.signed_status < 300:
        inv.cause(f"The app's webhook handler fails on correctly signed Stripe events (HTTP {probe.signed_status}): "
                  f"{probe.detail}.", repair("fix the handler, then replay the failed events"))
    if secret is not None and not secret.shaped and secret.present:
        inv.cause("The runbook's webhook secret is not whsec_-shaped.", repair("re-read the endpoint's secret"))
    if endpoint is not None and not endpoint.ok:
        inv.cause(f"Stripe webhook endpoint problem: {endpoint.detail}.",
                  repair("re-enable the endpoint and subscribe it to the required events"))
    if probe is not None and probe.unsigned_status is not None and probe.unsigned_status != 400:
        inv.cause(f"The webhook accepts or fails unsigned requests (HTTP {probe.unsigned_status}, expected 400).",
                  repair("the handler must verify Stripe-Signature"))
    if failed:
        inv.cause(f"{len(failed)} Stripe event deliveries failed in the last {window:g} min.",
                  repair("replay the failed events once the endpoint accepts them"))
    nothing = "Billing webhook healthy: endpoint enabled, secrets match, no failed deliveries, probe passed."
    return await publish(inv.diagnosis(nothing, all_clear=True), params.incident_id)
