"""POST /slack/interactions: Approve / Reject / Acknowledge clicks from Slack, with the clicking user verified.

Order on every POST: the body limit → Slack's signature (`v0=` HMAC-SHA256 over `v0:{timestamp}:{raw body}` with
RUNBOOK_SLACK_SIGNING_SECRET; a timestamp outside 5 minutes is a replay; 401, nothing parsed) → the form's
`payload=` JSON (400 when malformed) → an answer within Slack's 3 seconds. The work happens after the answer:

    block_actions  Approve      verify the person (policy `approvers`: Slack user id → name, may_approve), the
                                request (same run, same plan hash, still pending, the run still paused), the
                                two-person rule; claim the decision in the store (compare-and-set: one decision,
                                however many clicks) and resume the run with the same ApprovalInput as the UI
                   Reject       the same checks, then a modal asks for the reason (views.open)
                   Acknowledge  store.acknowledge(via="slack", identity=<user id>) — the escalation stops paging
                   Request      (on a dry run's plan) verify the person (may_approve the action), then start the
                                remediation's deployment for real with the dry run's parameters, requested by the
                                verified person (requested_by = their approvers-map name, requester_identity = their
                                Slack id, requested_via = slack): the two-person rule then needs someone else
    view_submission (the reason) the same checks; refusals are shown in the modal; then claim and resume

Every refusal is an ephemeral message to the clicking user (response_url) and changes nothing; a decision replaces
the message (buttons removed). The flow re-checks the hash, the two-person rule and the timeout itself, and updates
the message again with what it recorded (chat.update).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runbook import clock
from runbook.clients._http import HttpClient, settings_secrets
from runbook.clients.slack import (
    ACKNOWLEDGE,
    APPROVE,
    REASON_BLOCK,
    REASON_INPUT,
    REJECT,
    REJECT_MODAL,
    REQUEST,
    SlackClient,
    decided_blocks,
    parse_approval_value,
    reject_modal,
)
from runbook.errors import IncidentNotFound, IntegrationError
from runbook.intake.common import MAX_BODY_BYTES, Respond, Starter, log, read_body, rejected, strict_json
from runbook.intake.signatures import REPLAY_WINDOW_SECONDS, verify_slack
from runbook.models import Approval, ApprovalRequest
from runbook.policy import Approver, get_policy, two_person_violation
from runbook.settings import ENV_PREFIX, Settings
from runbook.store import open_store


class Refused(Exception):
    """A click that changes nothing; the message is shown to the clicking user."""


@dataclass
class Ready:
    """A checked decision: who, on which request."""

    person: Approver
    user_id: str
    request: ApprovalRequest


def _at(value: Any) -> str:
    return f"{value:%H:%M} UTC" if value is not None else "an earlier time"


def entitled(user_id: str, action: str, may: str, unchanged: str) -> Approver:
    """Return the person a Slack user id maps to when they may act on `action`; Refused (saying `unchanged`) else."""
    person = get_policy().approver(user_id)
    if person is None:
        raise Refused(f"<@{user_id}> is not in the runbook's approvers (policy `approvers`); {unchanged}.")
    if not person.allowed(action):
        raise Refused(f"{person.name} may not {may} {action} (policy approvers.{user_id}.may_approve); {unchanged}.")
    return person


async def check_decision(user_id: str, value: str, decision: str) -> Ready:
    """Check a click on Approve / Reject; raise Refused with the reason when it must change nothing."""
    try:
        run_id, action, plan_hash = parse_approval_value(value)
    except ValueError:
        raise Refused("This button is not a runbook approval; nothing was changed.") from None
    person = entitled(user_id, action, "approve or reject", "nothing was changed")
    async with open_store() as store:
        latest = await store.approval_request(run_id, action=action)
    if latest is None:
        raise Refused(f"No approval request of {action} is known for run {run_id}; nothing was changed.")
    newest = latest
    if latest.incident_id:  # a newer plan of the same remediation for the same incident (another run) wins
        async with open_store() as store:
            newest = await store.newest_approval_request(action, latest.incident_id) or latest
    if plan_hash not in (latest.plan_hash, newest.plan_hash) or latest.plan_hash != newest.plan_hash:
        raise Refused(f"The plan changed (now {newest.plan_hash}), see the new message; nothing was changed.")
    if latest.status in ("claimed", "decided") and latest.claim is not None:
        claim = latest.claim
        raise Refused(f"Already decided by {claim.approver} at {_at(claim.at)} ({claim.decision}, via {claim.via}); "
                      "nothing was changed.")
    if latest.status != "pending":
        raise Refused(f"{action} is no longer waiting for a decision ({latest.status}); nothing was changed.")
    if decision == "approve" and latest.two_person:
        refusal = two_person_violation(person.name, user_id, latest.requested_by, latest.requester_identity)
        if refusal:
            raise Refused(f"Refused by the {refusal}; nothing was changed.")
    state = await _run_paused(run_id)
    if state != "PAUSED":
        raise Refused(f"The run of {action} is no longer waiting for a decision (it is {state or 'unknown'}); "
                      "nothing was changed.")
    return Ready(person=person, user_id=user_id, request=latest)


async def _run_paused(run_id: str, wait: float = 15.0) -> str | None:
    """Return the run's state type; a RUNNING run with a pending request is about to pause: wait for it a little."""
    import asyncio
    import time

    deadline = time.monotonic() + wait
    state = await _run_state(run_id)
    while state == "RUNNING" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        state = await _run_state(run_id)
    return state


async def _run_state(run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
    except Exception as exc:  # unknown run or Prefect unreachable: say so, change nothing
        log.warning("slack: could not read flow run %s: %s", run_id, exc)
        return None
    return run.state.type.value if run.state else None


async def decide(ready: Ready, decision: str, reason: str) -> Approval:
    """Claim the decision (one per request) and resume the run with the UI's ApprovalInput; Refused otherwise."""
    from prefect.flow_runs import aresume_flow_run

    request = ready.request
    claim = Approval(decision=decision, approver=ready.person.name, reason=reason, plan_hash=request.plan_hash,  # type: ignore[arg-type]
                     action=request.action, requested_by=request.requested_by, requested_at=request.requested_at,
                     via="slack", identity=ready.user_id)
    async with open_store() as store:
        current, won = await store.claim_approval(request.flow_run_id, request.plan_hash, claim)
    if not won:
        other = current.claim if current is not None else None
        who = f"{other.approver} at {_at(other.at)} ({other.decision})" if other else "someone else"
        raise Refused(f"Already decided by {who}; nothing was changed.")
    run_input = {"decision": decision, "approver": ready.person.name, "reason": reason,
                 "plan_hash": request.plan_hash}
    try:
        await aresume_flow_run(UUID(request.flow_run_id), run_input=run_input)
    except Exception as exc:  # not paused any more (timed out, decided in the UI) or refused by the server
        async with open_store() as store:
            await store.release_approval(request.flow_run_id, request.plan_hash, claim, status="pending")
        log.info("slack: resume of %s refused: %s", request.flow_run_id, exc)
        raise Refused(f"The run of {request.action} could not be resumed ({type(exc).__name__}: {exc}); "
                      "nothing was changed.") from None
    log.info("slack: %s %s by %s (%s), run %s", request.action, decision, ready.person.name, ready.user_id,
             request.flow_run_id)
    return claim


REQUESTED_TAG = "requested-from:"  # tag of a run started from a dry run's Request button: which dry run


async def request_remediation(user_id: str, value: str) -> str:
    """Start the remediation a dry run planned, requested by the verified clicker; return the message's new text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.deployments.flow_runs import arun_deployment

    try:
        dry_run_id, action, plan_hash = parse_approval_value(value)
        dry_run = UUID(dry_run_id)
    except ValueError:
        raise Refused("This button is not a runbook remediation offer; nothing was started.") from None
    person = entitled(user_id, action, "request", "nothing was started")
    tag = f"{REQUESTED_TAG}{dry_run_id}"
    try:
        async with get_client() as client:
            planned = await client.read_flow_run(dry_run)
            earlier = await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
                                                  limit=1)
    except Exception as exc:  # unknown run or Prefect unreachable: say so, start nothing
        log.warning("slack: could not read the dry run %s: %s", dry_run_id, exc)
        raise Refused(f"The dry run of {action} could not be read ({type(exc).__name__}); nothing was started.") \
            from None
    params = dict((planned.parameters or {}).get("params") or {})
    if params.get("dry_run") is not True:
        raise Refused(f"Run {dry_run_id} is not a dry run of {action}; nothing was started.")
    if earlier:
        before = dict((earlier[0].parameters or {}).get("params") or {})
        raise Refused(f"Already requested by {before.get('requested_by') or 'someone'} (run {earlier[0].name}); "
                      "nothing was started.")
    params.update(dry_run=False, requested_by=person.name, requester_identity=user_id, requested_via="slack",
                  requester_os_user=None)
    incident = params.get("incident_id")
    try:
        run = await arun_deployment(f"{action}/{action}", parameters={"params": params}, timeout=0,
                                    as_subflow=False, flow_run_name=f"{action} {incident or 'adhoc'}",
                                    tags=["slack", tag])
    except Exception as exc:  # no such deployment, or the server refused the parameters
        log.warning("slack: could not start %s: %s", action, exc)
        raise Refused(f"{action} could not be started ({type(exc).__name__}: {exc}); nothing was started.") \
            from None
    log.info("slack: %s requested by %s (%s) from dry run %s: run %s", action, person.name, user_id, dry_run_id,
             run.id)
    return (f"*{action}*: Requested by {person.name} at {_at(clock.now())} via slack (dry-run plan "
            f"{plan_hash[:8]}…) — run {run.name} started; it asks for approval before acting")


def _decided_text(approval: Approval) -> str:
    verb = "Approved" if approval.decision == "approve" else "Rejected"
    why = f": {approval.reason}" if approval.reason and approval.decision != "approve" else ""
    return (f"*{approval.action}*: {verb} by {approval.approver} at {_at(approval.at)} via slack "
            f"(plan {approval.plan_hash[:8]}…){why} — the run resumes")


class Interactions:
    """The work behind POST /slack/interactions (after Slack got its answer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def _slack(self, call: Any) -> None:
        try:
            async with SlackClient(self._http(), self.settings) as slack:
                await call(slack)
        except IntegrationError as exc:
            log.warning("slack: could not answer the interaction: %s", exc)

    def _http(self) -> HttpClient:
        return HttpClient("slack", secrets=settings_secrets(self.settings))

    async def say(self, response_url: str | None, text: str) -> None:
        """Answer the clicking user only (ephemeral); the original message stays."""
        if response_url:
            await self._slack(lambda s: s.respond(response_url, {"response_type": "ephemeral", "text": text,
                                                                 "replace_original": False}))

    async def replace(self, response_url: str | None, text: str) -> None:
        """Replace the original message: what was decided, buttons removed."""
        if response_url:
            await self._slack(lambda s: s.respond(response_url, {"replace_original": True, "text": text,
                                                                 "blocks": decided_blocks(text)}))

    async def on_action(self, payload: dict[str, Any]) -> None:
        """Handle one block_actions payload (a button click)."""
        user_id = str((payload.get("user") or {}).get("id") or "")
        response_url = payload.get("response_url")
        for action in payload.get("actions") or []:
            action_id, value = action.get("action_id"), str(action.get("value") or "")
            try:
                if action_id == ACKNOWLEDGE:
                    await self.acknowledge(user_id, value, response_url)
                elif action_id == REQUEST:
                    text = await request_remediation(user_id, value)
                    await self.replace(response_url, text)
                elif action_id == APPROVE:
                    ready = await check_decision(user_id, value, "approve")
                    approval = await decide(ready, "approve", "approved in Slack")
                    await self.replace(response_url, _decided_text(approval))
                elif action_id == REJECT:
                    await check_decision(user_id, value, "reject")
                    message = {"response_url": response_url or ""}
                    _, action_name, plan_hash = parse_approval_value(value)
                    view = reject_modal(value, action=action_name, plan_hash=plan_hash, message=message)
                    trigger = str(payload.get("trigger_id") or "")
                    await self._slack(lambda s, t=trigger, v=view: s.open_view(t, v))
            except Refused as refusal:
                log.info("slack: %s by %s refused: %s", action_id, user_id, refusal)
                await self.say(response_url, str(refusal))

    async def acknowledge(self, user_id: str, incident_id: str, response_url: str | None) -> None:
        """Acknowledge an incident for a verified person (the store's one acknowledgement path)."""
        person = get_policy().approver(user_id)
        if person is None or not person.may_acknowledge:
            raise Refused(f"<@{user_id}> may not acknowledge incidents (policy `approvers`); nothing was changed.")
        try:
            async with open_store() as store:
                incident, newly = await store.acknowledge(incident_id, person.name, via="slack", identity=user_id,
                                                          details={"slack_user": user_id})
        except IncidentNotFound:
            raise Refused(f"No incident {incident_id}; nothing was changed.") from None
        if newly:
            await self.replace(response_url, f"*{incident_id}*: Acknowledged by {person.name} at "
                                             f"{_at(incident.acknowledged_at)} via slack — paging stops")
        else:
            raise Refused(f"{incident_id} was already acknowledged by {incident.acknowledged_by} at "
                          f"{_at(incident.acknowledged_at)}; nothing was changed.")

    async def on_view(self, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, BackgroundTask | None]:
        """Check a submitted reject modal; return (Slack's answer body or None, the work to do after)."""
        view = payload.get("view") or {}
        if view.get("callback_id") != REJECT_MODAL:
            return None, None
        user_id = str((payload.get("user") or {}).get("id") or "")
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            meta = {}
        values = ((view.get("state") or {}).get("values") or {}).get(REASON_BLOCK) or {}
        reason = str((values.get(REASON_INPUT) or {}).get("value") or "").strip()[:500]
        if not reason:
            return {"response_action": "errors", "errors": {REASON_BLOCK: "Say why (recorded on the incident)."}}, None
        try:
            ready = await check_decision(user_id, str(meta.get("value") or ""), "reject")
        except Refused as refusal:
            return {"response_action": "errors", "errors": {REASON_BLOCK: str(refusal)[:150]}}, None

        async def work() -> None:
            try:
                approval = await decide(ready, "reject", reason)
            except Refused as refusal:
                await self.say(meta.get("response_url"), str(refusal))
                return
            await self.replace(meta.get("response_url"), _decided_text(approval))

        return None, BackgroundTask(work)


def parse_payload(body: bytes) -> dict[str, Any]:
    """Return the interaction payload of a form body `payload=<json>`; ValueError names the problem."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("body is not application/x-www-form-urlencoded") from None
    raw = form.get("payload")
    if not raw:
        raise ValueError("no payload field")
    try:
        payload = strict_json(raw[0].encode("utf-8", "surrogatepass"))  # deep nesting: 400, not a 500
    except ValueError:
        raise ValueError("payload is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise ValueError("payload has no type")
    return payload


def routes(settings: Settings, *, open_access: bool, respond: Respond, start: Starter | None = None
           ) -> list[Route]:
    """Return POST /slack/interactions (always signature-checked, whatever `open_access` says)."""
    work = Interactions(settings)

    async def interactions(request: Request) -> Response:
        body = await read_body(request)  # in chunks: a chunked upload with no length stops at the limit
        if body is None:
            return rejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
        verdict = verify_slack(request.headers, body, settings.slack_signing_secret, clock.now().timestamp())
        if verdict == "unconfigured":
            return rejected(503, f"Slack interactions are not configured: set {ENV_PREFIX}SLACK_SIGNING_SECRET")
        if verdict == "stale":
            log.warning("slack: refused a request whose timestamp is outside %d s (replay?)", REPLAY_WINDOW_SECONDS)
            return rejected(401, f"timestamp missing or older than {REPLAY_WINDOW_SECONDS // 60} minutes")
        if verdict != "ok":
            log.warning("slack: refused a request with a bad signature from %s",
                        request.client.host if request.client else "?")
            return rejected(401, "bad signature")
        try:
            payload = parse_payload(body)
        except ValueError as exc:
            return rejected(400, f"malformed Slack interaction: {exc}")
        if payload["type"] == "block_actions":
            return Response(status_code=200, background=BackgroundTask(work.on_action, payload))
        if payload["type"] == "view_submission":
            answer, after = await work.on_view(payload)
            if answer is not None:
                return JSONResponse(answer)
            return Response(status_code=200, background=after)
        return Response(status_code=200)  # other interaction types: nothing to do

    return [Route("/slack/interactions", interactions, methods=["POST"])]
