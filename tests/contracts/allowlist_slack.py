"""Slack: what our client relies on that Slack's Web API document (specs/slack.json, 2020) does not say, and who
says it instead. Kept beside Slack's contract tests; `contract.ALLOWED` and `contract.READINGS` include these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.contracts.allowlist import Allowed

SLACK_SDK = "slackapi/python-slack-sdk"


def interactions() -> dict[str, Any]:
    """Return specs/slack-interactions.json (the payloads Slack sends an app, and response_url's body)."""
    return json.loads((Path(__file__).resolve().parent / "specs" / "slack-interactions.json").read_text())


# vendor → how its document is read: reading → (why, source).
SLACK_READINGS: dict[str, dict[str, tuple[str, str]]] = {
    "slack": {
        "errors-with-200": (
            "Slack answers a failed Web API call with HTTP 200 and {\"ok\": false, \"error\": \"<code>\"}; its "
            "document puts that body under `default` (every method's 'Typical error response'), so an answer with "
            "ok: false is checked against `default`, whatever its status.",
            f"{SLACK_SDK} slack_sdk/web/slack_response.py (validate(): a success only when the status is 200 and "
            "the body's ok is true; else SlackApiError carrying the body's error)"),
    },
}

VIEWS_OPEN_ARGUMENTS = {
    "type": "object", "required": ["trigger_id", "view"], "additionalProperties": False,
    "properties": {"trigger_id": {"type": "string"}, "view": {"type": "object", "required": ["type"]}}}
OK_BODY = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"},
                                                                "error": {"type": "string"}}}

SLACK_ALLOWED: list[Allowed] = [
    Allowed(
        "slack", "operation", "POST", "/views.open", "views.open with a JSON body",
        why="The 2020 document lists views.open as GET with trigger_id and view (a JSON-encoded string) in the "
            "query; every Web API method also takes POST, and Slack's SDK sends views.open as a JSON body with "
            "the view as an object (the same two arguments).",
        source=f"{SLACK_SDK} slack_sdk/web/client.py views_open: kwargs.update({{'trigger_id', 'view'}}); "
               "return self.api_call('views.open', json=kwargs) (api_call's http_verb defaults to POST)",
        schema={"auth": "Bearer", "query": [], "request": VIEWS_OPEN_ARGUMENTS, "statuses": [200],
                "response": OK_BODY}),
    Allowed(
        "slack", "operation", "POST", "/actions/{token}", "an interaction's response_url",
        why="response_url (sent in every block_actions payload) is not a Web API method and takes no token: a "
            "JSON post that answers the user (response_type: ephemeral) or replaces the original message "
            "(replace_original). The body's fields are the webhook client's.",
        source=f"{SLACK_SDK} slack_sdk/webhook/client.py WebhookClient.send(text, attachments, blocks, "
               "response_type, replace_original, delete_original, unfurl_links, unfurl_media, metadata); the "
               "shape is specs/slack-interactions.json#/response_url",
        schema={"query": [], "statuses": [200], "request": interactions()["response_url"]}),
]
