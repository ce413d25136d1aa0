"""What our clients rely on that the vendors' published OpenAPI documents do not say, and who says it instead.

Every entry names the vendor, the operation (METHOD + path template as the extract spells it, or as the client
calls it for an undocumented operation; '*' = every operation of the vendor), what is relied on (`kind` + `name`),
why, and the official SDK/CLI source (repository, path, commit) or vendor page that shows the behaviour. `schema`
is the shape relied on (validated in place of a documented one). The contract tests fail on anything outside the
documents that has no entry here, and on an entry no recorded exchange needed.

kinds: operation (an undocumented endpoint; schema: auth, query, request, statuses, response), query, status,
request-field, response-field (dotted, '[]' = items, '*' = any key), error-body (schema of an error body the
document leaves unspecified), auth (a security scheme the document names but does not define), nullable (a
response field, by name, that the API answers null although the document gives it a type only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["operation", "query", "status", "request-field", "response-field", "error-body", "auth", "nullable"]


@dataclass(frozen=True, eq=True)
class Allowed:
    """One thing relied on beyond the published document."""

    vendor: str
    kind: Kind
    method: str
    path: str
    name: str
    why: str
    source: str
    schema: Any = field(default=None, compare=False, hash=False)


# vendor → how its document is read where JSON Schema's reading would misjudge it: reading → (why, source).
READINGS: dict[str, dict[str, tuple[str, str]]] = {
    "vercel": {
        "oneOf-as-anyOf": (
            "Vercel's document writes unions as `oneOf` with overlapping branches (an env var matches several), "
            "which strict oneOf rejects; Vercel's own SDK, generated from this document, parses them as unions "
            "(the first branch that fits).",
            "vercel/sdk src/models/filterprojectenvsop.ts @ 29b9d74a (z.union([...]) for every oneOf)"),
    },
}

VERCEL_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
VERCEL_ERROR_SOURCE = ("vercel/vercel packages/cli/src/util/error.ts @ 04aa0770 (responseError reads "
                       "body.error.message and copies body.error.code; Retry-After on 429)")
MESSAGE_ONLY = {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}

ALLOWED: list[Allowed] = [
    # -- Stripe ---------------------------------------------------------------------------------------------
    Allowed(
        "stripe", "operation", "POST", "/v1/events/{id}/retry", "resend",
        why="Stripe's redelivery of an event to one webhook endpoint (what `stripe events resend` does) is not "
            "in the public spec. It answers the event; delivery happens after the answer, so the client "
            "confirms by re-reading the event (GET /v1/events/{id}, documented).",
        source="stripe/stripe-cli pkg/cmd/resource/events_resend.go @ 04d5065a "
               "(NewOperationCmd \"resend\", \"/v1/events/{event}/retry\", POST, params account, webhook_endpoint)",
        schema={"auth": "Bearer", "query": [],
                "request": {"type": "object", "additionalProperties": False,
                            "properties": {"webhook_endpoint": {"type": "string"}, "account": {"type": "string"}}},
                "statuses": [200, 400, 401, 404, 429, 500, 503],
                "response": {"$ref": "#/components/schemas/event"}}),
    Allowed(
        "stripe", "error-body", "POST", "/v1/events/{id}/retry", "*",
        why="The resend endpoint answers errors like every Stripe endpoint: the documented `error` object.",
        source="stripe/openapi openapi/spec3.yaml (every operation's `default` response is #/components/schemas/"
               "error)",
        schema={"$ref": "#/components/schemas/error"}),
    # -- Vercel ---------------------------------------------------------------------------------------------
    Allowed(
        "vercel", "operation", "POST", "/v9/projects/{projectId}/rollback/{deploymentId}", "rollback",
        why="Instant Rollback is not in Vercel's OpenAPI. Promote (documented) of an older deployment would "
            "re-point production too, but only a rollback leaves the project rolled back (production stops "
            "following new pushes until promoted again): after a bad deploy the next git push must not undo the "
            "remediation. The body is `{}` (required).",
        source="vercel/vercel packages/cli/src/util/rollback/request-rollback.ts @ 05503833 "
               "(client.fetch(`/v9/projects/${project.id}/rollback/${deployment.uid}`, {body: {}, method: POST}))",
        schema={"auth": "Bearer", "query": ["teamId"],
                "request": {"type": "object", "maxProperties": 0},
                "statuses": [200, 201, 202, 400, 401, 403, 404, 409, 429, 500, 503]}),
    Allowed(
        "vercel", "error-body", "POST", "/v9/projects/{projectId}/rollback/{deploymentId}", "*",
        why="Vercel's error envelope, as the CLI parses it.", source=VERCEL_ERROR_SOURCE, schema=VERCEL_ERROR),
    Allowed(
        "vercel", "query", "GET", "/v9/projects/{idOrName}", "rollbackInfo",
        why="`rollbackInfo=true` makes the project carry `lastAliasRequest` (the rollback/promote job we poll); "
            "the document lists the field but not the parameter.",
        source="vercel/vercel packages/cli/src/util/rollback/status.ts @ 080dda8a "
               "(`/v9/projects/${project.id}?rollbackInfo=true`); promote/status.ts reads lastAliasRequest"),
    Allowed(
        "vercel", "error-body", "*", "*", "*",
        why="The document gives most error statuses a description but no body; Vercel answers "
            "{\"error\": {\"code\", \"message\"}}.",
        source=VERCEL_ERROR_SOURCE, schema=VERCEL_ERROR),
    Allowed(
        "vercel", "status", "*", "*", "429",
        why="Every Vercel endpoint is rate limited; the document lists 429 on few. Every answer carries "
            "X-RateLimit-Limit/-Remaining/-Reset (reset in UTC epoch seconds) and past the limit the answer is 429 "
            "{\"error\": {\"code\": \"too_many_requests\", \"message\": \"Rate limit exceeded\"}}, which the client "
            "waits out until X-RateLimit-Reset when no Retry-After is sent (the CLI honours Retry-After).",
        source="Vercel REST API docs, section 'Rate Limits' (from ZEIT's API docs; read in copies of that text, "
               "not on vercel.com itself); vercel/sdk docs/models/toomanyrequestscode.md @ 50d0bb66 "
               "('too_many_requests'); " + VERCEL_ERROR_SOURCE),
    # -- PagerDuty Events API v2 ----------------------------------------------------------------------------
    Allowed(
        "pagerduty-events", "error-body", "POST", "/enqueue", "*",
        why="The document's 400 and 429 responses are descriptions naming components that do not exist "
            "('#/components/responses/ArgumentError', 'TooManyRequests'); the body is the documented Error.",
        source="PagerDuty/api-schema reference/events-v2/openapiv3.json @ 91a06fb3 (components.responses.Error)",
        schema={"$ref": "#/components/responses/Error/content/application~1json/schema"}),
    # -- Sentry ---------------------------------------------------------------------------------------------
    Allowed(
        "sentry", "error-body", "*", "*", "*",
        why="The document describes 400/403/404 without a body; Sentry answers {\"detail\": …}.",
        source="getsentry/sentry-cli src/api/errors/sentry_error.rs @ 594c7716 (SentryError.detail)",
        schema={"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}),
    Allowed(
        "sentry", "status", "*", "*", "401",
        why="A missing or invalid token is a 401 on every endpoint (not listed per operation).",
        source="getsentry/sentry-cli src/api/errors/sentry_error.rs @ 594c7716 (401 => \"unauthorized\")"),
    Allowed(
        "sentry", "status", "*", "*", "429",
        why="Sentry rate limits every API request per caller and endpoint (fixed windows, and concurrent requests) "
            "and rejects past the limit with 429; every answer carries X-Sentry-Rate-Limit-Limit/-Remaining/-Reset "
            "(UTC epoch seconds) and -ConcurrentLimit/-ConcurrentRemaining, which the client waits on.",
        source="getsentry/sentry-docs docs/api/ratelimits.mdx @ 74c8ef61 (source of docs.sentry.io/api/ratelimits)"),
    # -- Statuspage -----------------------------------------------------------------------------------------
    Allowed(
        "statuspage", "request-field", "*", "*", "incident.components.*",
        why="`incident.components` is a map of component id → status; the document writes it as an object with "
            "a placeholder property `component_id`, so real ids look undeclared.",
        source="Statuspage API document (developer.statuspage.io) postPagesPageIdIncidents: 'Map of status "
               "changes to apply to affected components'"),
    *[Allowed(
        "statuspage", "nullable", "*", "*", name,
        why="The document marks no field nullable, but an unset description, group, timestamp or postmortem is "
            "null in Statuspage's answers (the client treats every field it reads as optional).",
        source="Statuspage's own API documentation, sample responses (https://doers.statuspage.io/api/v1/incidents/"
               ": \"impact_override\": null, \"twitter_updated_at\": null)")
      for name in ("description", "group_id", "monitoring_at", "resolved_at", "postmortem_body", "impact_override")],
    Allowed(
        "statuspage", "error-body", "*", "*", "*",
        why="Errors the document leaves without a body (PATCH incident documents only 200; 420/429) use the "
            "same ErrorEntity {\"message\"} as the documented ones.",
        source="Statuspage API document (developer.statuspage.io) #/components/schemas/ErrorEntity",
        schema=MESSAGE_ONLY),
    Allowed(
        "statuspage", "status", "*", "*", "429",
        why="'Each API token is limited to 1 request / second … Error codes 420 or 429 indicate that you have "
            "exceeded the rate limit and the request has been rejected.'",
        source="Statuspage API document, section Rate Limiting (rendered in alissonlinneker/statuspage-php-sdk "
               "README.md)"),
    Allowed(
        "statuspage", "status", "*", "*", "420",
        why="The older of the two rate-limit statuses the document names.",
        source="Statuspage API document, section Rate Limiting"),
    Allowed(
        "statuspage", "status", "PATCH", "/pages/{page_id}/incidents/{incident_id}", "404",
        why="PATCH incident documents only 200; an unknown incident is the 404 the other incident operations "
            "document.",
        source="Statuspage API document (GET /pages/{page_id}/incidents/{incident_id} documents 404)"),
    # -- Supabase Management API ----------------------------------------------------------------------------
    Allowed(
        "supabase", "auth", "GET", "/v1/projects/{ref}/health", "bearer",
        why="The CLI's generated document names the `bearer` scheme but defines no securitySchemes; the "
            "Management API takes `Authorization: Bearer <personal access token>`.",
        source="supabase/cli apps/cli-go/internal/utils/api.go @ 1d1e7191 (req.Header.Set(\"Authorization\", "
               "\"Bearer \"+token))",
        schema={"type": "http", "scheme": "bearer"}),
    Allowed(
        "supabase", "error-body", "*", "*", "*",
        why="The document gives 401/403/429/500 a description only; the API answers {\"message\": …}.",
        source="supabase/cli apps/cli-go/internal/hostnames/common_test.go @ 1d1e7191 (Management API errors "
               "modelled as {\"message\": …})",
        schema=MESSAGE_ONLY),
]
