"""Slack stand-in: incoming webhooks, the Web API a bot token calls, response_url, and the clicking user.

Incoming webhooks, one URL per runbook channel (#incidents, #engineering, #operations):
`POST /services/T0DRILL/B<CHANNEL>/<token>` with `{"text"}` and/or `{"blocks"}` → 200 `ok` (plain text);
400 `invalid_payload` / `no_text`, 403 `invalid_token`, 404 `no_service`, like Slack.

Web API (`Authorization: Bearer xoxb-…`, JSON or form body; HTTP 200 with `{"ok": false, "error"}` on failure,
as Slack answers — shapes from slackapi/slack-api-specs, tests/contracts/specs/slack.json):
    POST /api/chat.postMessage  {channel (id or #name), text, blocks} → {ok, channel, ts, message}
    POST /api/chat.update       {channel, ts, text, blocks}          → {ok, channel, ts, text, message}
    POST /api/views.open        {trigger_id, view}                   → {ok, view}  (trigger ids live 3 s)
errors: not_authed, invalid_auth, channel_not_found, no_text, message_not_found, invalid_trigger_id,
expired_trigger_id, invalid_arguments. `POST /actions/<token>` is an interaction's response_url
({text, blocks, replace_original, response_type: ephemeral}).

Rate limits, as Slack answers them: past a limit the Web API answers HTTP 429 with `Retry-After: <seconds>` and
the body `{"ok": false, "error": "ratelimited"}` (an injected 5xx answers `{"ok": false, "error":
"service_unavailable"}`); incoming webhooks answer in plain text (`rate_limited`). chat.postMessage is limited per
channel ("1 per second, short bursts allowed"): `post_rate_limit = (30, 30.0)` messages per rolling window; a test
can tighten it (e.g. `(1, 5.0)`).

Slack's side of a click: `click()` builds the block_actions payload of a stored message's button for a user and
sends it, form-encoded and signed (`X-Slack-Signature: v0=…`, `X-Slack-Request-Timestamp`) with the app's signing
secret, to the interactivity request URL (the intake); `submit_view()` does the same for a modal's submission.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import deque
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from runbook.drill.standin import StandIn, bearer, read_params
from runbook.intake.signatures import sign_slack

CHANNELS = ("incidents", "engineering", "operations")
POST_RATE_LIMIT = (30, 30.0)  # chat.postMessage per channel: messages per rolling window (seconds)
BOT_ID = "B0DRILLBOT1"  # Slack's bot ids: B + at least 8 of [A-Z0-9]
_PATH: ContextVar[str] = ContextVar("slack_standin_path", default="")


class SlackStandIn(StandIn):
    """Incoming webhooks for the runbook's channels."""

    name = "slack"

    def __init__(self) -> None:
        self.tokens = {channel: secrets.token_urlsafe(18) for channel in CHANNELS}
        self.bot_token = "xoxb-" + secrets.token_hex(12)
        self.signing_secret = secrets.token_hex(16)
        self.team_id, self.app_id = "T0DRILL", "A0DRILL"
        self.channel_ids = {channel: f"C0{channel.upper()}" for channel in CHANNELS}
        self.interaction_url: str | None = None  # the app's interactivity request URL (the intake)
        self._messages: list[dict[str, Any]] = []
        self._ephemeral: list[dict[str, Any]] = []
        self._views: list[dict[str, Any]] = []
        self._triggers: dict[str, float] = {}
        self._response_urls: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self.post_rate_limit: tuple[int, float] = POST_RATE_LIMIT
        self._posted: dict[str, deque[float]] = {}
        super().__init__()

    def app_env(self, prefix: str = "RUNBOOK_") -> dict[str, str]:
        """Return the settings of the Slack app (bot token, signing secret, API URL, channel ids)."""
        return {f"{prefix}SLACK_BOT_TOKEN": self.bot_token, f"{prefix}SLACK_SIGNING_SECRET": self.signing_secret,
                f"{prefix}SLACK_API_URL": f"{self.base_url}/api",
                f"{prefix}SLACK_CHANNEL_IDS": json.dumps(self.channel_ids)}

    def webhook_url(self, channel: str) -> str:
        """Return the incoming-webhook URL of a channel."""
        channel = channel.lstrip("#")
        return f"{self.base_url}/services/T0DRILL/B{channel.upper()}/{self.tokens[channel]}"

    def reset_state(self) -> None:
        """Forget every message, answer, modal and trigger."""
        self._messages = []
        self._ephemeral, self._views, self._triggers, self._response_urls = [], [], {}, {}
        self.interaction_url = None
        self.post_rate_limit, self._posted = POST_RATE_LIMIT, {}

    def ephemeral(self, user: str | None = None) -> list[dict[str, Any]]:
        """Return the ephemeral answers shown to users (to one user), oldest first."""
        with self._lock:
            return [dict(m) for m in self._ephemeral if user is None or m["user"] == user]

    def views(self) -> list[dict[str, Any]]:
        """Return the modals opened, oldest first."""
        with self._lock:
            return [dict(v) for v in self._views]

    def message(self, ts: str) -> dict[str, Any]:
        """Return one message by its ts (KeyError when there is none)."""
        with self._lock:
            for m in self._messages:
                if m.get("ts") == ts:
                    return dict(m)
        raise KeyError(ts)

    @staticmethod
    def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Return a message's buttons by action id."""
        return {e["action_id"]: {**e, "block_id": b.get("block_id")} for b in message.get("blocks") or []
                if b.get("type") == "actions" for e in b.get("elements") or [] if e.get("type") == "button"}

    def _next_ts(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{int(time.time())}.{self._seq:06d}"

    # -- Slack's side of a click ------------------------------------------------------------------------------
    async def send_interaction(self, payload: dict[str, Any], *, timestamp: int | None = None,
                               secret: str | None = None) -> httpx.Response:
        """POST a payload to the interactivity request URL, form-encoded and signed as Slack signs it."""
        if not self.interaction_url:
            raise RuntimeError("the Slack app has no interactivity request URL (set slack.interaction_url)")
        body, headers = self.signed_request(payload, timestamp=timestamp, secret=secret)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(self.interaction_url, content=body, headers=headers)

    def signed_request(self, payload: dict[str, Any], *, timestamp: int | None = None, secret: str | None = None
                       ) -> tuple[bytes, dict[str, str]]:
        """Return the body (`payload=<json>`, form-encoded) and headers Slack sends, signed with the app's secret."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": sign_slack(body, secret or self.signing_secret, ts)}
        return body, headers

    def click_payload(self, ts: str, action_id: str, user_id: str, user_name: str = "drill-user") -> dict[str, Any]:
        """Return the block_actions payload Slack sends when a user clicks a stored message's button."""
        message = self.message(ts)
        button = self.buttons(message).get(action_id)
        if button is None:
            raise KeyError(f"message {ts} has no {action_id} button")
        trigger = f"{int(time.time())}.{secrets.randbelow(10**9)}.{secrets.token_hex(8)}"
        token = secrets.token_urlsafe(12)
        channel = message["channel"]
        with self._lock:
            self._triggers[trigger] = time.time()
            self._response_urls[token] = {"ts": ts, "channel": channel, "user": user_id}
        user = {"id": user_id, "name": user_name, "team_id": self.team_id}
        return {
            "type": "block_actions", "team": {"id": self.team_id, "domain": "drill"}, "user": user,
            "api_app_id": self.app_id, "token": "legacy-verification-token-unused",
            "container": {"type": "message", "message_ts": ts, "channel_id": self.channel_ids[channel],
                          "is_ephemeral": False},
            "trigger_id": trigger, "channel": {"id": self.channel_ids[channel], "name": channel},
            "message": {"type": "message", "ts": ts, "text": message.get("text") or "", "bot_id": BOT_ID,
                        "blocks": message.get("blocks") or []},
            "response_url": f"{self.base_url}/actions/{token}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": button.get("block_id"),
                         "text": button.get("text"), "value": button.get("value"),
                         "action_ts": f"{time.time():.6f}"}],
        }

    async def click(self, ts: str, action_id: str, user_id: str, user_name: str = "drill-user") -> httpx.Response:
        """Click a button of a stored message as a user: send Slack's signed block_actions payload."""
        return await self.send_interaction(self.click_payload(ts, action_id, user_id, user_name))

    async def submit_view(self, view_id: str, user_id: str, values: dict[str, dict[str, str]]) -> httpx.Response:
        """Submit an opened modal as a user: `values` is {block_id: {action_id: text}} (plain_text_input)."""
        return await self.send_interaction(self.view_submission_payload(view_id, user_id, values))

    def view_submission_payload(self, view_id: str, user_id: str, values: dict[str, dict[str, str]]
                                ) -> dict[str, Any]:
        """Return the view_submission payload Slack sends when a user submits an opened modal."""
        view = next(v for v in self.views() if v["id"] == view_id)
        state = {b: {a: {"type": "plain_text_input", "value": t} for a, t in acts.items()}
                 for b, acts in values.items()}
        user = {"id": user_id, "name": "drill-user", "team_id": self.team_id}
        payload = {"type": "view_submission", "team": {"id": self.team_id, "domain": "drill"}, "user": user,
                   "api_app_id": self.app_id, "token": "legacy-verification-token-unused",
                   "trigger_id": f"{int(time.time())}.{secrets.token_hex(8)}",
                   "view": {**view, "state": {"values": state}}, "response_urls": []}
        return payload

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Return the messages posted (to one channel, or all), oldest first."""
        with self._lock:
            return [dict(m) for m in self._messages if channel is None or m["channel"] == channel.lstrip("#")]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = _PATH.set(str(scope.get("path") or ""))  # error_body answers in the shape of the route hit
        try:
            await super().__call__(scope, receive, send)
        finally:
            _PATH.reset(token)

    def error_body(self, status: int, message: str) -> Any:
        """Return Slack's error: JSON `{"ok": false, "error"}` from the Web API, plain text from webhooks."""
        code = "ratelimited" if status == 429 else "service_unavailable"
        if _PATH.get().startswith("/api/"):
            return {"ok": False, "error": code}
        return "rate_limited" if status == 429 else code

    def _throttle_post(self, channel: str) -> Response | None:
        """Count a chat.postMessage to a channel; 429 + Retry-After + `ratelimited` when its window is full."""
        limit, window = self.post_rate_limit
        now = time.monotonic()
        with self._lock:
            recent = self._posted.setdefault(channel, deque())
            while recent and recent[0] <= now - window:
                recent.popleft()
            if len(recent) >= limit:
                wait = max(1, math.ceil(recent[0] + window - now))
                return JSONResponse({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(wait)})
            recent.append(now)
        return None

    def routes(self) -> list[BaseRoute]:
        """Return the webhook, Web API and response_url routes."""
        return [Route("/services/{team}/{bot}/{token}", self._post, methods=["POST"]),
                Route("/api/{method}", self._api, methods=["POST"]),
                Route("/actions/{token}", self._response_url, methods=["POST"])]

    def _channel(self, ref: Any) -> str | None:
        ref = str(ref or "").strip()
        for channel, cid in self.channel_ids.items():
            if ref in (cid, channel, f"#{channel}"):
                return channel
        return None

    async def _api(self, request: Request) -> Response:
        def fail(error: str) -> JSONResponse:
            return JSONResponse({"ok": False, "error": error})

        token = bearer(request)
        if token is None:
            return fail("not_authed")
        if not secrets.compare_digest(token, self.bot_token):
            return fail("invalid_auth")
        body = await read_params(request)
        if isinstance(body.get("blocks"), str):  # form-encoded calls send blocks as a JSON string
            try:
                body["blocks"] = json.loads(body["blocks"])
            except ValueError:
                return fail("invalid_blocks")
        method = request.path_params["method"]
        if method == "chat.postMessage":
            channel = self._channel(body.get("channel"))
            if channel is None:
                return fail("channel_not_found")
            if not body.get("text") and not body.get("blocks"):
                return fail("no_text")
            throttled = self._throttle_post(channel)
            if throttled is not None:
                return throttled
            ts = self._next_ts()
            message: dict[str, Any] = {"channel": channel, "text": body.get("text"), "blocks": body.get("blocks"),
                                       "ts": ts, "time": time.time(), "payload": body, "via": "api", "updates": []}
            with self._lock:
                self._messages.append(message)
            return JSONResponse({"ok": True, "channel": self.channel_ids[channel], "ts": ts,
                                 "message": {"type": "message", "subtype": "bot_message", "text": body.get("text"),
                                             "ts": ts, "bot_id": BOT_ID}})
        if method == "chat.update":
            channel = self._channel(body.get("channel"))
            if channel is None:
                return fail("channel_not_found")
            if not body.get("ts"):
                return fail("invalid_arguments")
            if not self._update(channel, str(body["ts"]), body.get("text"), body.get("blocks"), "chat.update"):
                return fail("message_not_found")
            return JSONResponse({"ok": True, "channel": self.channel_ids[channel], "ts": body["ts"],
                                 "text": body.get("text") or "", "message": {"text": body.get("text") or ""}})
        if method == "views.open":
            trigger = str(body.get("trigger_id") or "")
            with self._lock:
                issued = self._triggers.pop(trigger, None)
            if issued is None:
                return fail("invalid_trigger_id")
            if time.time() - issued > 3:
                return fail("expired_trigger_id")
            view = body.get("view")
            if isinstance(view, str):
                view = json.loads(view)
            if not isinstance(view, dict) or view.get("type") != "modal":
                return fail("invalid_arguments")
            view_id = "V" + secrets.token_hex(5).upper()
            opened = {"private_metadata": "", "callback_id": "", "external_id": "", "clear_on_close": False,
                      "notify_on_close": False, **view, "id": view_id, "team_id": self.team_id,
                      "app_id": self.app_id, "bot_id": BOT_ID, "root_view_id": view_id, "previous_view_id": None,
                      "state": {"values": {}}, "hash": f"{int(time.time())}.{secrets.token_hex(4)}"}
            with self._lock:
                self._views.append(opened)
            return JSONResponse({"ok": True, "view": opened})
        return fail("unknown_method")

    def _update(self, channel: str, ts: str, text: Any, blocks: Any, how: str) -> bool:
        with self._lock:
            for m in self._messages:
                if m["channel"] == channel and m.get("ts") == ts:
                    m["updates"].append({"how": how, "text": text, "blocks": blocks, "time": time.time()})
                    m["text"], m["blocks"] = (text if text is not None else m["text"]), blocks
                    return True
        return False

    async def _response_url(self, request: Request) -> Response:
        with self._lock:
            target = self._response_urls.get(request.path_params["token"])
        if target is None:
            return PlainTextResponse("invalid_token", 404)
        body = await _json_object(request)
        if body is None:
            return PlainTextResponse("invalid_payload", 400)
        if body.get("replace_original") and body.get("response_type") != "ephemeral":
            self._update(target["channel"], target["ts"], body.get("text"), body.get("blocks") or [],
                         "response_url")
        else:
            with self._lock:
                self._ephemeral.append({"user": target["user"], "ts": target["ts"], "text": body.get("text"),
                                        "time": time.time()})
        return JSONResponse({"ok": True})

    async def _post(self, request: Request) -> Response:
        bot = request.path_params["bot"]
        channel = bot[1:].lower() if bot.startswith("B") else ""
        if request.path_params["team"] != "T0DRILL" or channel not in self.tokens:
            return PlainTextResponse("no_service", 404)
        if not secrets.compare_digest(request.path_params["token"], self.tokens[channel]):
            return PlainTextResponse("invalid_token", 403)
        body = await _json_object(request)
        if body is None:
            return PlainTextResponse("invalid_payload", 400)
        if not body.get("text") and not body.get("blocks"):
            return PlainTextResponse("no_text", 400)
        with self._lock:
            self._messages.append({"channel": channel, "text": body.get("text"), "blocks": body.get("blocks"),
                                   "time": time.time(), "payload": body, "via": "webhook", "updates": []})
        return PlainTextResponse("ok")


async def _json_object(request: Request) -> dict[str, Any] | None:
    """Return the request's JSON object body, or None when it is not one (Slack answers `invalid_payload`)."""
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
