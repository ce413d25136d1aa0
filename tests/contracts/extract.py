"""Re-extract the small per-vendor OpenAPI extracts in tests/contracts/specs/ from the vendors' published documents.

Not run by the tests (nothing downloads at test time): a developer runs it after fetching the vendor repositories,

    python tests/contracts/extract.py --mirrors /work/.mirror            # every vendor, pinned commits
    python tests/contracts/extract.py stripe --file ~/spec3.yaml --commit <sha> --committed <iso date>

and reviews the diff. Each extract keeps, verbatim, only the operations our clients in runbook/clients/ call
(`OPERATIONS`), the components they reference (transitively) and the security schemes, plus `x-provenance`:
repository, path, commit, commit date, the date it was extracted, and why that commit (when it is not the newest).

A mirror is a bare git directory `<mirrors>/<owner>+<name>/repo` (what the session `fetch` tool brings); the
document is read with `git show <commit>:<path>`. Change `commit` in SOURCES to move an extract forward.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SPECS = HERE / "specs"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# vendor -> where its published document lives and which commit the extract is taken from.
SOURCES: dict[str, dict[str, Any]] = {
    "stripe": {
        "repository": "stripe/openapi",
        "path": "openapi/spec3.yaml",
        "commit": "63a674638635c68de26b9f3add13e58198f4df44",
        "note": "The newest commit whose whole spec3 document fits the 4 MiB limit of the mirror this was extracted "
                "from (the document at HEAD f6c2a48fbac2819d1feba8143d942ffc65e1c0d2, 2026-08-21, is larger). "
                "`x-fixtures` holds Stripe's own current example objects (openapi/fixtures3.json at HEAD) so the "
                "tests show the older schemas still describe today's objects.",
        "fixtures": {"path": "openapi/fixtures3.json", "commit": "f6c2a48fbac2819d1feba8143d942ffc65e1c0d2",
                     "objects": ["event", "webhook_endpoint"]},
        # The error object links the objects an error was about; we read only its type/code/message.
        "prune": ["#/components/schemas/api_errors/properties/charge",
                  "#/components/schemas/api_errors/properties/payment_intent",
                  "#/components/schemas/api_errors/properties/payment_method",
                  "#/components/schemas/api_errors/properties/setup_intent",
                  "#/components/schemas/api_errors/properties/source"],
    },
    "vercel": {
        "repository": "vercel/sdk",
        "path": "vercel-spec.json",
        "commit": "1aada4a8c647055674701491c76a6ff2ff645cfb",
        "note": "The newest commit whose vercel-spec.json (the OpenAPI document the SDK is generated from, "
                "https://openapi.vercel.sh/) fits the mirror's 4 MiB limit; HEAD 426eb4b7 (2026-08-20) is larger.",
    },
    "pagerduty-events": {
        "repository": "PagerDuty/api-schema",
        "path": "reference/events-v2/openapiv3.json",
        "commit": "91a06fb3c64b0ab2b2bd6c485d12b327dfb55c18",
        "note": "HEAD at extraction. The REST API (reference/REST/openapiv3.json) is not extracted: no client of "
                "ours calls it (paging, acknowledge and resolve all go through the Events API v2).",
    },
    "pagerduty-rest": {
        "repository": "PagerDuty/api-schema",
        "path": "reference/REST/openapiv3.json",
        "commit": "91a06fb3c64b0ab2b2bd6c485d12b327dfb55c18",
        "note": "HEAD at extraction. Only the read the escalation polls (GET /incidents?incident_key=). The V3 "
                "webhook payload is not in this document: its shape, the X-PagerDuty-Signature rules and the "
                "delivery behaviour are PagerDuty/developer-docs docs/webhooks/01-Overview.md, 02-Behavior.md, "
                "04-Signatures.md @ 94224391aa3eac8fa73ea6a6af542dee0613d3e8 (extract: pagerduty-webhooks.json).",
    },
    "sentry": {
        "repository": "getsentry/sentry-api-schema",
        "path": "openapi-derefed.json",
        "commit": "a589a26c3b29bfc342a47baa963b7970961f958e",
        "note": "HEAD at extraction (the dereferenced document: schemas are inline).",
    },
    "statuspage": {
        "repository": "sbecker59/statuspage-api-client-go",
        "path": "swagger.yaml",
        "commit": "d1949afc27e5ef8b85250a382aced8606499f232",
        "note": "Atlassian publishes the Statuspage OpenAPI document only on https://developer.statuspage.io/ (no "
                "repository of theirs); this is a verbatim copy of that document committed 2020-12-12 by a client "
                "generator (later commits of that repository edit it, so the first one is used). Newer renderings "
                "of the same document (alissonlinneker/statuspage-php-sdk README) add 'Error codes 420 or 429 "
                "indicate that you have exceeded the rate limit'.",
    },
    "supabase": {
        "repository": "supabase/cli",
        "path": "packages/api/src/generated/openapi.json",
        "commit": "1d1e7191268e068fe9cb6aba524d1c619a9c727b",
        "note": "HEAD at extraction: the Management API document the CLI generates its client from "
                "(packages/api/scripts/download-openapi.ts fetches https://api.supabase.com/api/v1-json).",
    },
    "slack": {
        "repository": "slackapi/slack-api-specs",
        "path": "web-api/slack_web_openapi_v2.json",
        "commit": "dfea73e06d146c368d7f94b52ac90796dc4e27e1",
        "note": "The last commit that changed the document (HEAD bc08db4 only edits the contributing notes); "
                "Slack's own Web API document, Swagger 2.0, converted to the OpenAPI 3 shape the checker reads "
                "(`convert: swagger2`, see swagger2_to_openapi3). The repository is no longer updated, so newer "
                "details — views.open taken by POST with JSON, block_actions payloads, response_url — come from "
                "Slack's SDKs: see allowlist_slack.py and slack-interactions.json. The request signature "
                "(v0=HMAC-SHA256 over 'v0:{timestamp}:{body}', a 5-minute window) is in "
                "slackapi/python-slack-sdk slack_sdk/signature/__init__.py.",
        "convert": "swagger2",
    },
}

# vendor -> the operations our clients call, as (method, path template exactly as the document spells it).
OPERATIONS: dict[str, list[tuple[str, str]]] = {
    "stripe": [
        ("get", "/v1/webhook_endpoints"),
        ("get", "/v1/events"),
        ("get", "/v1/events/{id}"),
    ],
    "vercel": [
        ("get", "/v6/deployments"),
        ("get", "/v13/deployments/{idOrUrl}"),
        ("post", "/v13/deployments"),
        ("get", "/v9/projects/{idOrName}"),
        ("post", "/v10/projects/{projectId}/promote/{deploymentId}"),
        ("get", "/v10/projects/{idOrName}/env"),
        ("post", "/v10/projects/{idOrName}/env"),
        ("get", "/v1/projects/{idOrName}/env/{id}"),
        ("delete", "/v9/projects/{idOrName}/env/{id}"),
    ],
    "pagerduty-events": [("post", "/enqueue")],
    "pagerduty-rest": [("get", "/incidents"), ("get", "/users/{id}")],
    "sentry": [
        ("get", "/api/0/organizations/{organization_id_or_slug}/events/"),
        ("get", "/api/0/organizations/{organization_id_or_slug}/events-timeseries/"),
    ],
    "statuspage": [
        ("post", "/pages/{page_id}/incidents"),
        ("patch", "/pages/{page_id}/incidents/{incident_id}"),
        ("get", "/pages/{page_id}/incidents/unresolved"),
        ("get", "/pages/{page_id}/components"),
        ("patch", "/pages/{page_id}/components/{component_id}"),
    ],
    "supabase": [("get", "/v1/projects/{ref}/health")],
    "slack": [("post", "/chat.postMessage"), ("post", "/chat.update"), ("get", "/views.open")],
}


def git_show(mirror: Path, commit: str, path: str) -> str:
    """Return a file of a bare mirror at a commit."""
    out = subprocess.run(["git", f"--git-dir={mirror}", "show", f"{commit}:{path}"],
                         check=True, capture_output=True, text=True)
    return out.stdout


def git_date(mirror: Path, commit: str) -> str:
    """Return a commit's committer date (ISO 8601)."""
    out = subprocess.run(["git", f"--git-dir={mirror}", "log", "-1", "--format=%cI", commit],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def parse(text: str, path: str) -> Any:
    """Parse a JSON or YAML document."""
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def refs(node: Any) -> set[str]:
    """Return every local `$ref` ('#/…') under a node."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            found.add(ref)
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def pointer(doc: Any, ref: str) -> Any:
    """Resolve a '#/a/b' JSON pointer."""
    node = doc
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def put(out: dict[str, Any], ref: str, value: Any) -> None:
    """Store `value` at a '#/a/b' pointer of `out`, creating the parents."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def prune(doc: dict[str, Any], at: list[str]) -> None:
    """Replace the schemas at `at` (pointers) by `{"x-pruned": …}`: any value, and none of their references."""
    for ref in at:
        parent, _, key = ref.rpartition("/")
        node = pointer(doc, parent)
        node[key] = {"x-pruned": "not read by our clients; the full schema is in the published document"}


def _rewrite_refs(node: Any) -> Any:
    """Return a copy of `node` whose '#/definitions/X' references read '#/components/schemas/X'."""
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite_refs(v) for k, v in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/definitions/"):
        out["$ref"] = "#/components/schemas/" + ref[len("#/definitions/"):]
    return out


_SCHEMA_KEYS = ("type", "format", "enum", "items", "pattern", "minimum", "maximum", "minLength", "maxLength",
                "default")
SWAGGER2_CONVERSION = (
    "Converted from Swagger 2.0 by extract.py swagger2_to_openapi3: definitions → components.schemas (references "
    "rewritten), securityDefinitions → components.securitySchemes (oauth2 accessCode → authorizationCode), "
    "host + basePath → servers; per operation: the `token` header parameter (the OAuth token, sent as "
    "`Authorization: Bearer` per RFC 6750) is dropped for the security requirement, query parameters get a "
    "`schema`, formData parameters become one object schema per media type in `consumes` (a JSON body carries "
    "an argument documented as a JSON-encoded string as that JSON value itself: string, array or object), "
    "responses get `content` by `produces`; examples are left out.")


def swagger2_to_openapi3(doc: dict[str, Any]) -> dict[str, Any]:
    """Return a Swagger 2.0 document in the OpenAPI 3.0 shape the checker reads (SWAGGER2_CONVERSION says how)."""
    out: dict[str, Any] = {"openapi": "3.0.0", "info": doc.get("info", {}),
                           "servers": [{"url": f"{(doc.get('schemes') or ['https'])[0]}://{doc.get('host', '')}"
                                               f"{doc.get('basePath', '')}"}],
                           "components": {"schemas": _rewrite_refs(doc.get("definitions", {}))}, "paths": {}}
    schemes: dict[str, Any] = {}
    for name, scheme in (doc.get("securityDefinitions") or {}).items():
        if scheme.get("type") == "oauth2":
            flow = {"accessCode": "authorizationCode", "application": "clientCredentials"}.get(scheme.get("flow"),
                                                                                                  scheme.get("flow"))
            schemes[name] = {"type": "oauth2", "flows": {flow: {k: scheme[k] for k in (
                "authorizationUrl", "tokenUrl", "scopes") if k in scheme}}}
        else:
            schemes[name] = scheme
    out["components"]["securitySchemes"] = schemes
    if "security" in doc:
        out["security"] = doc["security"]
    for path, item in doc.get("paths", {}).items():
        kept: dict[str, Any] = {}
        for method, op in item.items():
            if method not in METHODS:
                continue
            kept[method] = _convert_operation(_rewrite_refs(op), doc)
        out["paths"][path] = kept
    return out


def _convert_operation(op: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    consumes = op.get("consumes") or doc.get("consumes") or ["application/json"]
    produces = op.get("produces") or doc.get("produces") or ["application/json"]
    new = {k: v for k, v in op.items() if k not in ("parameters", "responses", "consumes", "produces")}
    params, form, required = [], {}, []
    for p in op.get("parameters", []):
        if p.get("in") == "header" and p.get("name") == "token":
            continue  # the OAuth token: the security requirement says how it is sent
        schema = {k: p[k] for k in _SCHEMA_KEYS if k in p}
        if p.get("in") == "formData":
            form[p["name"]] = {**schema, **({"description": p["description"]} if "description" in p else {})}
            if p.get("required"):
                required.append(p["name"])
        else:
            params.append({**{k: v for k, v in p.items() if k not in _SCHEMA_KEYS}, "schema": schema})
    if params:
        new["parameters"] = params
    if form:
        content = {}
        for media in consumes:
            props = form if media != "application/json" else {
                name: ({**{k: v for k, v in field.items() if k != "type"},
                        "anyOf": [{"type": "string"}, {"type": "array"}, {"type": "object"}]}
                       if "JSON" in field.get("description", "") and field.get("type") == "string" else field)
                for name, field in form.items()}
            content[media] = {"schema": {"type": "object", "additionalProperties": False, "properties": props,
                                         **({"required": required} if required else {})}}
        new["requestBody"] = {"required": bool(required), "content": content}
    new["responses"] = {}
    for code, response in (op.get("responses") or {}).items():
        converted = {k: v for k, v in response.items() if k not in ("schema", "examples")}
        if "schema" in response:
            converted["content"] = {media: {"schema": response["schema"]} for media in produces}
        new["responses"][code] = converted
    return new


def extract(doc: dict[str, Any], operations: list[tuple[str, str]]) -> dict[str, Any]:
    """Return the document reduced to `operations` and the components they reference."""
    out: dict[str, Any] = {key: doc[key] for key in ("openapi", "swagger", "servers", "security") if key in doc}
    out["info"] = {k: doc["info"][k] for k in ("title", "version") if k in doc.get("info", {})}
    out["paths"] = {}
    for method, path in operations:
        item = doc["paths"][path]
        kept = out["paths"].setdefault(path, {k: v for k, v in item.items() if k not in METHODS})
        kept[method] = item[method]
    schemes = (doc.get("components") or {}).get("securitySchemes")
    if schemes:
        out.setdefault("components", {})["securitySchemes"] = schemes
    pending = refs(out["paths"])
    done: set[str] = set()
    while pending:
        ref = pending.pop()
        # a reference into a component (PagerDuty's '#/components/schemas/Tag/allOf/0') keeps the whole component
        ref = "#/" + "/".join(ref[2:].split("/")[:3]) if ref.startswith("#/components/") else ref
        if ref in done:
            continue
        done.add(ref)
        try:
            value = pointer(doc, ref)
        except (KeyError, TypeError):
            continue  # a dangling reference stays dangling; the contract tests name it
        put(out, ref, value)
        pending |= refs(value) - done
    return out


def build(vendor: str, text: str, committed: str, *, commit: str, fixtures: dict[str, Any] | None = None) -> Any:
    """Return the extract of one vendor from its document's text."""
    source = SOURCES[vendor]
    doc = parse(text, source["path"])
    if source.get("convert") == "swagger2":
        doc = swagger2_to_openapi3(doc)
    prune(doc, source.get("prune", []))
    missing = [f"{m.upper()} {p}" for m, p in OPERATIONS[vendor] if m not in doc.get("paths", {}).get(p, {})]
    if missing:
        raise SystemExit(f"{vendor}: the document no longer has {', '.join(missing)}")
    out = extract(doc, OPERATIONS[vendor])
    out["x-provenance"] = {
        "repository": source["repository"],
        "path": source["path"],
        "commit": commit,
        "committed": committed,
        "extracted": datetime.now(UTC).date().isoformat(),
        "operations": [f"{m.upper()} {p}" for m, p in OPERATIONS[vendor]],
        "note": source["note"],
        "pruned": source.get("prune", []),
        "script": "tests/contracts/extract.py",
        **({"converted": SWAGGER2_CONVERSION} if source.get("convert") == "swagger2" else {}),
    }
    if fixtures is not None:
        out["x-fixtures"] = fixtures
    return out


def stripe_fixtures(mirror: Path) -> dict[str, Any]:
    """Return Stripe's current example objects for the resources we read, with their provenance."""
    spec = SOURCES["stripe"]["fixtures"]
    data = json.loads(git_show(mirror, spec["commit"], spec["path"]))
    objects = data.get("resources", data)
    return {
        "repository": SOURCES["stripe"]["repository"], "path": spec["path"], "commit": spec["commit"],
        "committed": git_date(mirror, spec["commit"]),
        "objects": {name: objects[name] for name in spec["objects"]},
    }


def write(vendor: str, extract_doc: Any) -> Path:
    """Write one extract (sorted keys, one-space indent: reviewable diffs)."""
    SPECS.mkdir(parents=True, exist_ok=True)
    target = SPECS / f"{vendor}.json"
    target.write_text(json.dumps(extract_doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    """Extract the chosen vendors (default: all) from mirrors or from one file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vendors", nargs="*", choices=[[], *SOURCES], default=[])
    parser.add_argument("--mirrors", type=Path, help="folder of bare mirrors <owner>+<name>/repo")
    parser.add_argument("--file", type=Path, help="the vendor's document itself (one vendor only)")
    parser.add_argument("--commit", help="with --file: the commit the file is from")
    parser.add_argument("--committed", help="with --file: that commit's date")
    args = parser.parse_args(argv)
    vendors = args.vendors or list(SOURCES)
    if args.file is not None:
        if len(vendors) != 1 or not args.commit:
            parser.error("--file takes exactly one vendor and --commit")
        vendor = vendors[0]
        doc = build(vendor, args.file.read_text(), args.committed or "", commit=args.commit)
        print(write(vendor, doc))
        return 0
    if args.mirrors is None:
        parser.error("give --mirrors or --file")
    for vendor in vendors:
        source = SOURCES[vendor]
        mirror = args.mirrors / source["repository"].replace("/", "+") / "repo"
        text = git_show(mirror, source["commit"], source["path"])
        fixtures = stripe_fixtures(mirror) if vendor == "stripe" else None
        doc = build(vendor, text, git_date(mirror, source["commit"]), commit=source["commit"], fixtures=fixtures)
        print(write(vendor, doc), f"{len(json.dumps(doc)) // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
