"""Check recorded HTTP exchanges against the vendors' published OpenAPI documents (the extracts in specs/).

    recorder = Recorder.attach(client.http)        # every request/response of that client from now on
    ... drive the client against the drill stack ...
    assert check_all("vercel", recorder.exchanges) == []

`Spec.check` validates one exchange: its rate-limit headers are the vendor's documented ones (`rate_limits.py`: none
undocumented, the promised ones present); the operation (method + path) is documented; the auth scheme is one the
operation's security allows; every query parameter is documented and its value fits its schema, required ones are
present; the request body fits the request schema and sends no undeclared field; the status is documented; the
response body fits the documented schema for that status and carries no undeclared field; every response field the
client reads (`READS`) is declared. Anything the documents do not cover must be an entry of `allowlist.ALLOWED`,
which says why and which official SDK or CLI source shows the behaviour; entries used are counted, so a stale entry
can be found.

OpenAPI 3.0 schemas are turned into JSON Schema 2020-12 (`nullable` → a null alternative; `x-*`, `example`,
`discriminator` dropped) and validated with `jsonschema`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jsonschema

from tests.contracts.allowlist import ALLOWED as _ALLOWED
from tests.contracts.allowlist import READINGS as _READINGS
from tests.contracts.allowlist import Allowed
from tests.contracts.allowlist_slack import SLACK_ALLOWED, SLACK_READINGS
from tests.contracts.rate_limits import rate_limit_problems

# Slack's entries and readings live beside its own tests (allowlist_slack.py).
ALLOWED: list[Allowed] = [*_ALLOWED, *SLACK_ALLOWED]
READINGS: dict[str, dict[str, tuple[str, str]]] = {**_READINGS, **SLACK_READINGS}

SPECS = Path(__file__).resolve().parent / "specs"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_DROP = {"example", "examples", "discriminator", "xml", "externalDocs", "deprecated", "readOnly", "writeOnly"}


# -- recording ------------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request a client sent and the response it got."""

    method: str
    url: httpx.URL
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    @property
    def path(self) -> str:
        """Return the URL path."""
        return self.url.path

    def label(self) -> str:
        """Return 'METHOD /path -> status' for messages."""
        return f"{self.method} {self.path} -> {self.status}"

    def response_json(self) -> Any:
        """Return the response body as JSON (None when empty)."""
        return json.loads(self.response_body) if self.response_body.strip() else None


class Recorder:
    """Collect every exchange of an httpx.AsyncClient through its event hooks (no change to what is sent)."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    async def _on_response(self, response: httpx.Response) -> None:
        await response.aread()
        request = response.request
        self.exchanges.append(Exchange(
            method=request.method, url=request.url,
            request_headers={k.lower(): v for k, v in request.headers.items()},
            request_body=bytes(request.content), status=response.status_code,
            response_headers={k.lower(): v for k, v in response.headers.items()},
            response_body=response.content))

    def watch(self, *clients: Any) -> Recorder:
        """Record the exchanges of clients: anything with `add_event_hook` (our clients' HttpClient, StripeClient)."""
        for client in clients:
            client.add_event_hook("response", self._on_response)
        return self

    def clear(self) -> None:
        """Forget the recorded exchanges."""
        self.exchanges.clear()


# -- OpenAPI 3.0 → JSON Schema ---------------------------------------------------------------------------------


def to_json_schema(node: Any, *, one_of_as_any: bool = False) -> Any:
    """Return an OpenAPI 3.0 schema as JSON Schema 2020-12 (`one_of_as_any`: read oneOf as a union, anyOf)."""
    if isinstance(node, list):
        return [to_json_schema(v, one_of_as_any=one_of_as_any) for v in node]
    if not isinstance(node, dict):
        return node
    out = {("anyOf" if one_of_as_any and k == "oneOf" else k): to_json_schema(v, one_of_as_any=one_of_as_any)
           for k, v in node.items() if not k.startswith("x-") and k not in _DROP and k != "nullable"}
    if node.get("nullable") is True:
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


# -- the spec -----------------------------------------------------------------------------------------------------


@dataclass
class Operation:
    """One documented operation."""

    method: str
    template: str
    spec: dict[str, Any]
    path_item: dict[str, Any]

    @property
    def parameters(self) -> list[dict[str, Any]]:
        """Return the path-item and operation parameters."""
        return [*self.path_item.get("parameters", []), *self.spec.get("parameters", [])]


@dataclass
class Spec:
    """One vendor's extract with its resolver."""

    vendor: str
    doc: dict[str, Any]
    base_path: str
    used: set[Allowed] = field(default_factory=set)

    @classmethod
    @cache
    def load(cls, vendor: str) -> Spec:
        """Load specs/<vendor>.json."""
        doc = json.loads((SPECS / f"{vendor}.json").read_text())
        servers = doc.get("servers") or [{"url": ""}]
        return cls(vendor, doc, urlsplit(servers[0]["url"]).path.rstrip("/"))

    @property
    def provenance(self) -> dict[str, Any]:
        """Return the extract's provenance."""
        return dict(self.doc["x-provenance"])

    def operations(self) -> Iterator[Operation]:
        """Yield every operation of the extract."""
        for template, item in self.doc["paths"].items():
            for method in METHODS:
                if method in item:
                    yield Operation(method, template, item[method], item)

    def resolve(self, node: Any) -> Any:
        """Follow a local `$ref` (once per level)."""
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            target: Any = self.doc
            for part in node["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]  # JSON Pointer escapes
            node = target
        return node

    # -- validation helpers ---------------------------------------------------------------------------------
    def validator(self, schema: Any) -> jsonschema.Draft202012Validator:
        """Return a validator of `schema` whose local references resolve in this extract."""
        union = "oneOf-as-anyOf" in READINGS.get(self.vendor, {})
        root = {"components": to_json_schema(self.doc.get("components", {}), one_of_as_any=union),
                "allOf": [to_json_schema(schema, one_of_as_any=union)]}
        return jsonschema.Draft202012Validator(root)

    def errors(self, value: Any, schema: Any, what: str, *, nullable: tuple[str, str] | None = None) -> list[str]:
        """Return schema violations of `value`, one line each; `nullable` (method, template): a null where the
        document says a type is forgiven for the fields allow-listed as `nullable` for that operation."""
        found = [_deepest(e) for e in self.validator(schema).iter_errors(value)]
        found.sort(key=lambda e: [str(p) for p in e.absolute_path])
        out = []
        for e in found:
            key = str(e.absolute_path[-1]) if e.absolute_path else ""
            if (nullable is not None and e.validator == "type" and e.instance is None
                    and self.allowed("nullable", nullable[0], nullable[1], key) is not None):
                continue
            out.append(f"{what}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}")
        return out[:12]

    def declared(self, schema: Any) -> tuple[set[str], bool]:
        """Return the property names a schema declares and whether it admits other names (explicitly)."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return set(), True
        names = set((schema.get("properties") or {}).keys())
        open_ = "additionalProperties" in schema and schema["additionalProperties"] is not False
        open_ = open_ or "patternProperties" in schema or "x-pruned" in schema or schema == {}
        branches = [*schema.get("allOf", []), *schema.get("anyOf", []), *schema.get("oneOf", [])]
        if "properties" not in schema and not branches:
            open_ = True  # a free-form object (no properties listed) admits any key
        for branch in branches:
            sub, sub_open = self.declared(branch)
            names |= sub
            open_ = open_ or sub_open
        return names, open_

    def children(self, schema: Any, key: str | None) -> list[Any]:
        """Return the sub-schemas describing property `key` (None: array items) under every branch."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return []
        out: list[Any] = []
        if key is None:
            if "items" in schema:
                out.append(schema["items"])
        else:
            props = schema.get("properties") or {}
            if key in props:
                out.append(props[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                out.append(schema["additionalProperties"])
        for branch in [*schema.get("allOf", []), *schema.get("anyOf", []), *schema.get("oneOf", [])]:
            out.extend(self.children(branch, key))
        return out

    def undeclared(self, value: Any, schema: Any, where: str = "") -> list[str]:
        """Return the dotted paths of object keys in `value` that `schema` does not declare."""
        out: list[str] = []
        if isinstance(value, dict):
            names, open_ = self.declared(schema)
            for key, item in value.items():
                path = f"{where}.{key}" if where else key
                if key not in names and not open_:
                    out.append(path)
                    continue
                out.extend(self._undeclared_any(item, self.children(schema, key), path))
        elif isinstance(value, list):
            subs = self.children(schema, None)
            for item in value[:20]:
                out.extend(self._undeclared_any(item, subs, f"{where}[]"))
        return sorted(set(out))

    def _undeclared_any(self, value: Any, schemas: list[Any], where: str) -> list[str]:
        """Return the undeclared keys under the branch that declares most of `value` (none when one fits)."""
        if not schemas:
            return []
        results = [self.undeclared(value, s, where) for s in schemas]
        return [] if not all(results) else min(results, key=len)

    def field_declared(self, schema: Any, dotted: str) -> bool:
        """Say whether a dotted field path ('deployments[].uid', 'targets.production.id') is declared."""
        current = [schema]
        for part in dotted.split("."):
            key, arrays = part.rstrip("[]"), part.count("[]")
            current = [c for s in current for c in (self.children(s, key) if key else [s])]
            for _ in range(arrays):
                current = [c for s in current for c in self.children(s, None)]
            if not current:
                return False
        return True

    # -- matching -------------------------------------------------------------------------------------------
    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """Return the documented operation a request is for, with its path parameters."""
        relative = path[len(self.base_path):] if path.startswith(self.base_path) else path
        best: tuple[int, Operation, dict[str, str]] | None = None
        for op in self.operations():
            if op.method != method.lower():
                continue
            found = _template_regex(op.template).fullmatch(relative)
            if found is not None:
                params = len(found.groupdict())
                if best is None or params < best[0]:
                    best = (params, op, found.groupdict())
        return (best[1], best[2]) if best else None

    def allowed(self, kind: str, method: str, template: str, name: str) -> Allowed | None:
        """Return the allow-list entry for something the document does not cover, and count its use."""
        for entry in ALLOWED:
            if (entry.vendor, entry.kind) != (self.vendor, kind) or entry.method not in ("*", method.upper()):
                continue
            if entry.path not in ("*", template) or not fnmatch.fnmatchcase(name, entry.name):
                continue
            self.used.add(entry)
            return entry
        return None

    # -- one exchange -----------------------------------------------------------------------------------------
    def check(self, ex: Exchange) -> list[str]:
        """Return every way an exchange departs from the document (empty: it conforms)."""
        label = ex.label()
        relative = ex.path[len(self.base_path):] if ex.path.startswith(self.base_path) else ex.path
        limits = rate_limit_problems(self.vendor, ex.status, ex.response_headers, label)
        matched = self.match(ex.method, ex.path)
        if matched is None:
            entry = next((e for e in ALLOWED if e.vendor == self.vendor and e.kind == "operation"
                          and e.method == ex.method and _template_regex(e.path).fullmatch(relative)), None)
            if entry is None:
                return [f"{label}: not a documented operation and not allow-listed", *limits]
            self.used.add(entry)
            return limits + self._check_allowed_operation(ex, entry, label)
        op, path_params = matched
        problems = limits + self._check_path(op, path_params, label)
        problems += self._check_auth(ex, op, label)
        problems += self._check_query(ex, op, label)
        problems += self._check_body(ex, op, label)
        problems += self._check_response(ex, op, label)
        problems += self._check_reads(ex, op, label)
        return problems

    def _check_allowed_operation(self, ex: Exchange, entry: Allowed, label: str) -> list[str]:
        """An undocumented operation: the allow-list entry's shapes (from the SDK/CLI source) are the contract."""
        problems: list[str] = []
        shape = entry.schema or {}
        auth = ex.request_headers.get("authorization", "")
        if "auth" in shape and not auth.lower().startswith(shape["auth"].lower() + " "):
            problems.append(f"{label}: auth is not {shape['auth']}")
        query = {k for k, _ in httpx.QueryParams(ex.url.query).multi_items()}
        extra = query - set(shape.get("query", []))
        if extra:
            problems.append(f"{label}: query {sorted(extra)} beyond the allow-listed {shape.get('query', [])}")
        body = _parse_body(ex)
        if body is not None and "request" in shape:
            problems += self.errors(body, shape["request"], f"{label} request body")
        if str(ex.status) not in {str(s) for s in shape.get("statuses", [])}:
            problems.append(f"{label}: status not among the allow-listed {shape.get('statuses')}")
        elif 200 <= ex.status < 300 and "response" in shape:
            problems += self.errors(ex.response_json(), shape["response"], f"{label} response")
        elif ex.status >= 400:
            problems += self._check_error_body(ex, entry.method, entry.path, label)
        return problems

    def _check_path(self, op: Operation, values: dict[str, str], label: str) -> list[str]:
        problems: list[str] = []
        for param in op.parameters:
            if param.get("in") == "path":
                value = values.get(param["name"].replace("-", "_"))
                if value is not None:
                    problems += self.errors(_scalar(value, param.get("schema", {})), param.get("schema", {}),
                                            f"{label} path {param['name']}")
        return problems

    def _check_auth(self, ex: Exchange, op: Operation, label: str) -> list[str]:
        security = op.spec.get("security", self.doc.get("security"))
        auth = ex.request_headers.get("authorization")
        if not security:
            return [] if auth is None else [f"{label}: sends Authorization where the operation documents none"]
        schemes = (self.doc.get("components") or {}).get("securitySchemes") or {}
        accepted: list[str] = []
        for alternative in security:
            for name in alternative:
                scheme = schemes.get(name)
                if scheme is None:
                    entry = self.allowed("auth", op.method, op.template, name)
                    if entry is None or not entry.schema:
                        continue
                    scheme = entry.schema
                accepted.append(_auth_prefix(scheme))
        if auth is None:
            return [f"{label}: no Authorization header (documented: {accepted})"]
        if not any(auth.lower().startswith(p.lower()) for p in accepted if p):
            return [f"{label}: Authorization scheme {auth.split(' ')[0]!r} is not one of {accepted}"]
        return []

    def _check_query(self, ex: Exchange, op: Operation, label: str) -> list[str]:
        problems: list[str] = []
        documented = {p["name"]: p for p in op.parameters if p.get("in") == "query"}
        sent: dict[str, list[str]] = {}
        for key, value in parse_qsl(ex.url.query.decode() if isinstance(ex.url.query, bytes) else ex.url.query,
                                    keep_blank_values=True):
            base = key.split("[", 1)[0]
            sent.setdefault(base if base in documented and "[" in key else key, []).append(f"{key}={value}")
        for name, items in sent.items():
            param = documented.get(name)
            if param is None:
                if self.allowed("query", op.method, op.template, name) is None:
                    problems.append(f"{label}: query parameter {name!r} is not documented")
                continue
            value = _query_value(name, items, param)
            problems += self.errors(value, param.get("schema", {}), f"{label} query {name}")
        for name, param in documented.items():
            if param.get("required") and name not in sent:
                problems.append(f"{label}: required query parameter {name!r} missing")
        return problems

    def _check_body(self, ex: Exchange, op: Operation, label: str) -> list[str]:
        body = _parse_body(ex)
        request = self.resolve(op.spec.get("requestBody"))
        if body is None:
            if request and request.get("required") and ex.method != "GET":
                return [f"{label}: the request body is required"]
            return []
        if not request:
            return [f"{label}: sends a body where none is documented"]
        ctype = ex.request_headers.get("content-type", "").split(";")[0].strip()
        content = request.get("content", {})
        if ctype not in content:
            return [f"{label}: content type {ctype!r} is not one of {sorted(content)}"]
        schema = content[ctype].get("schema", {})
        problems = self.errors(body, schema, f"{label} request body")
        for path in self.undeclared(body, schema):
            if self.allowed("request-field", op.method, op.template, path) is None:
                problems.append(f"{label}: request field {path!r} is not documented")
        return problems

    def _response_spec(self, op: Operation, status: int, body: Any = None) -> dict[str, Any] | None:
        responses = op.spec.get("responses", {})
        if ("errors-with-200" in READINGS.get(self.vendor, {}) and isinstance(body, dict) and body.get("ok") is False
                and "default" in responses):
            return self.resolve(responses["default"])  # Slack: an error is HTTP 200 with ok: false
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                return self.resolve(responses[key])
        return None

    def _check_response(self, ex: Exchange, op: Operation, label: str) -> list[str]:
        response = self._response_spec(op, ex.status, _json_or_none(ex))
        if response is None:
            if self.allowed("status", op.method, op.template, str(ex.status)) is None:
                return [f"{label}: status {ex.status} is not documented for {op.method.upper()} {op.template}"]
            return self._check_error_body(ex, op.method, op.template, label)
        content = response.get("content") or {}
        schema = (content.get("application/json") or {}).get("schema")
        if schema is None:
            if ex.status >= 400:
                return self._check_error_body(ex, op.method, op.template, label)
            return []  # documented without a body: the client reads none
        try:
            body = ex.response_json()
        except ValueError:
            return [f"{label}: response body is not JSON"]
        problems = self.errors(body, schema, f"{label} response", nullable=(op.method, op.template))
        for path in self.undeclared(body, schema):
            if self.allowed("response-field", op.method, op.template, path) is None:
                problems.append(f"{label}: response field {path!r} is not documented")
        return problems

    def _check_error_body(self, ex: Exchange, method: str, template: str, label: str) -> list[str]:
        """An error the document gives no body schema for: the allow-listed error shape must hold."""
        entry = self.allowed("error-body", method, template, "*")
        if entry is None:
            return [f"{label}: error body is not documented and no error shape is allow-listed"]
        try:
            body = ex.response_json()
        except ValueError:
            return [f"{label}: error body is not JSON"]
        return self.errors(body, entry.schema or {}, f"{label} error body")

    def _check_reads(self, ex: Exchange, op: Operation, label: str) -> list[str]:
        if not 200 <= ex.status < 300:
            return []
        body = _json_or_none(ex)
        if isinstance(body, dict) and body.get("ok") is False and "errors-with-200" in READINGS.get(self.vendor, {}):
            return []  # an error answer: the client reads only its error code
        response = self._response_spec(op, ex.status, body) or {}
        schema = ((response.get("content") or {}).get("application/json") or {}).get("schema")
        problems = []
        for dotted in READS.get((self.vendor, op.method.upper(), op.template), []):
            if schema is not None and self.field_declared(schema, dotted):
                continue
            if self.allowed("response-field", op.method, op.template, dotted) is None:
                problems.append(f"{label}: the client reads {dotted!r}, which the document does not declare")
        return problems


def _json_or_none(ex: Exchange) -> Any:
    try:
        return ex.response_json()
    except ValueError:
        return None


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Return the most telling sub-error of an anyOf/oneOf failure (the branch that got furthest)."""
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return error


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    pattern = "".join(f"(?P<{p[1:-1].replace('-', '_')}>[^/]+)" if p.startswith("{") else re.escape(p)
                      for p in parts)
    return re.compile(pattern)


def _auth_prefix(scheme: dict[str, Any]) -> str:
    if scheme.get("type") == "oauth2":  # an OAuth 2 access token is sent as a Bearer credential (RFC 6750)
        return "Bearer "
    if scheme.get("type") == "http":
        return {"bearer": "Bearer ", "basic": "Basic "}.get(str(scheme.get("scheme")).lower(), "")
    if scheme.get("type") == "apiKey" and scheme.get("in") == "header":
        # Statuspage: an apiKey in Authorization, whose description shows "Authorization: OAuth <key>".
        return "OAuth " if "OAuth " in str(scheme.get("description", "")) else ""
    return ""


def _query_value(name: str, items: list[str], param: dict[str, Any]) -> Any:
    """Turn the sent `key=value` strings of one parameter into the value its schema describes."""
    schema = param.get("schema", {})
    if param.get("style") == "deepObject":
        obj: dict[str, Any] = {}
        for item in items:
            key, _, value = item.partition("=")
            sub = key[len(name):].strip("[]")
            if sub:
                branches = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
                sub_schema = next((b["properties"][sub] for b in branches if sub in (b.get("properties") or {})), {})
                obj[sub] = _scalar(value, sub_schema)
            else:
                return _scalar(value, schema)
        return obj
    values = [item.partition("=")[2] for item in items]
    if schema.get("type") == "array":
        return [_scalar(v, schema.get("items", {})) for v in values]
    return _scalar(values[-1], schema)


def _scalar(value: str, schema: dict[str, Any]) -> Any:
    """Coerce a query string to the schema's type (integer, number, boolean), leaving strings alone."""
    types = [schema.get("type")] + [s.get("type") for s in schema.get("anyOf", []) + schema.get("oneOf", [])]
    if "integer" in types and re.fullmatch(r"-?\d+", value):
        return int(value)
    if "number" in types and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return float(value)
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    return value


def _parse_body(ex: Exchange) -> Any:
    if not ex.request_body.strip():
        return None
    ctype = ex.request_headers.get("content-type", "")
    text = ex.request_body.decode("utf-8", "replace")
    if "application/x-www-form-urlencoded" in ctype:
        return dict(parse_qsl(text, keep_blank_values=True))
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_all(vendor: str, exchanges: Iterable[Exchange]) -> list[str]:
    """Return every problem of every exchange against one vendor's document."""
    spec = Spec.load(vendor)
    return [problem for ex in exchanges for problem in spec.check(ex)]


def unused_allowances(vendor: str) -> list[Allowed]:
    """Return the vendor's allow-list entries no checked exchange has needed so far."""
    spec = Spec.load(vendor)
    return [e for e in ALLOWED if e.vendor == vendor and e not in spec.used]


# (vendor, METHOD, template) → the response fields the client reads (runbook/clients/*.py), dotted; '[]' = items.
READS: dict[tuple[str, str, str], list[str]] = {
    ("stripe", "GET", "/v1/webhook_endpoints"): [
        "data[].id", "data[].url", "data[].status", "data[].enabled_events", "has_more"],
    ("stripe", "GET", "/v1/events"): [
        "data[].id", "data[].type", "data[].created", "data[].pending_webhooks", "has_more"],
    ("stripe", "GET", "/v1/events/{id}"): ["id", "pending_webhooks"],
    ("vercel", "GET", "/v6/deployments"): [
        "deployments[].uid", "deployments[].url", "deployments[].readyState", "deployments[].state",
        "deployments[].target", "deployments[].createdAt", "deployments[].created",
        "deployments[].isRollbackCandidate", "deployments[].meta", "pagination.next"],
    ("vercel", "GET", "/v13/deployments/{idOrUrl}"): ["id", "url", "readyState", "target", "createdAt", "meta"],
    ("vercel", "POST", "/v13/deployments"): ["id", "url", "readyState", "target", "createdAt", "meta"],
    ("vercel", "GET", "/v9/projects/{idOrName}"): [
        "id", "name", "targets.production.id", "lastAliasRequest.jobStatus", "lastAliasRequest.type",
        "lastAliasRequest.fromDeploymentId", "lastAliasRequest.toDeploymentId", "lastAliasRequest.requestedAt"],
    ("vercel", "GET", "/v10/projects/{idOrName}/env"): [
        "envs[].id", "envs[].key", "envs[].type", "envs[].target", "envs[].value", "envs[].decrypted"],
    ("vercel", "GET", "/v1/projects/{idOrName}/env/{id}"): ["id", "key", "type", "target", "value", "decrypted"],
    ("vercel", "POST", "/v10/projects/{idOrName}/env"): [
        "created", "failed[].error.code", "failed[].error.message"],
    ("pagerduty-events", "POST", "/enqueue"): ["status", "dedup_key", "message"],
    ("sentry", "GET", "/api/0/organizations/{organization_id_or_slug}/events/"): ["data"],
    ("sentry", "GET", "/api/0/organizations/{organization_id_or_slug}/events-timeseries/"): [
        "timeSeries[].values[].timestamp", "timeSeries[].values[].value"],
    ("statuspage", "POST", "/pages/{page_id}/incidents"): [
        "id", "name", "status", "impact", "shortlink", "components[].id"],
    ("statuspage", "PATCH", "/pages/{page_id}/incidents/{incident_id}"): [
        "id", "name", "status", "impact", "shortlink", "components[].id"],
    ("statuspage", "GET", "/pages/{page_id}/incidents/unresolved"): [
        "[].id", "[].name", "[].status", "[].impact", "[].shortlink", "[].components[].id"],
    ("statuspage", "GET", "/pages/{page_id}/components"): ["[].id", "[].name", "[].status"],
    ("statuspage", "PATCH", "/pages/{page_id}/components/{component_id}"): ["id", "name", "status"],
    ("supabase", "GET", "/v1/projects/{ref}/health"): ["[].name", "[].status", "[].error"],
    ("slack", "POST", "/chat.postMessage"): ["ok", "channel", "ts"],
    ("slack", "POST", "/chat.update"): ["ok"],
}


def assert_conforms(vendor: str, exchanges: Iterable[Exchange]) -> None:
    """Fail with every problem listed, one per line, when any exchange departs from the vendor's document."""
    exchanges = list(exchanges)
    assert exchanges, "no exchange was recorded"
    problems = check_all(vendor, exchanges)
    assert not problems, f"{len(problems)} departure(s) from the {vendor} document:\n" + "\n".join(problems)
