"""The OpenAPI document of the API, built from one source: `make openapi` writes chalicelib/api/openapi.json.

- `components.schemas` come from the pydantic models of chalicelib/api/models.py (the ones that validate the
  requests), through `model_json_schema`'s machinery with `ref_template="#/components/schemas/{model}"`;
- the query parameters of an operation come from its `...Query` model (`query(...)` below);
- everything else (paths, methods, status codes, problem responses, headers, examples, security, the `webhooks`
  section) is the route table below, in Python, referring to the models by name (`ref(m.Job)`);
- `x-problem-types` is the registry of chalicelib/api/problem_types.py.

tests/unit/test_openapi_generated.py fails when the checked-in document is not what this module writes: change
the models or the table, then run `make openapi` and commit both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema

from chalicelib.api import models as m
from chalicelib.api import problem_types
from chalicelib.jobs.states import DeliveryStatus, StepStatus
from chalicelib.results import CSV_COLUMNS

PATH = Path(__file__).with_name("openapi.json")
COMMAND = "make openapi"


def ref(shape: Any) -> dict[str, str]:
    """A reference to the schema of a model or a named value of chalicelib/api/models.py."""
    return m.ref(shape.__name__)


def _ref(response: str) -> dict[str, str]:
    """One of the document's shared responses (components.responses)."""
    return {"$ref": f"#/components/responses/{response}"}


def _problem(description: str) -> dict[str, Any]:
    """A problem+json answer the operation describes in its own words."""
    return {"description": description, "content": {"application/problem+json": {"schema": ref(m.Problem)}}}


def _json(shape: Any, description: str) -> dict[str, Any]:
    """A JSON answer of one of the models."""
    return {"description": description, "content": {"application/json": {"schema": ref(shape)}}}


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema, without what the document never had: generated titles, keys re-sorted."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def sort(self, value: JsonSchemaValue, parent_key: str | None = None) -> JsonSchemaValue:
        return value  # the models' own order (and the examples' order, as written)


def _clean(node: Any, members: bool = False) -> Any:
    """A schema without `title` (the component's name says it) and without `"default": null` (absent means none).
    `members`: `node` maps member names to schemas (`properties`), whose names are kept whatever they are."""
    if isinstance(node, dict):
        return {k: _clean(v, members=not members and k == "properties") for k, v in node.items()
                if members or not (k == "title" or (k == "default" and v is None))}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def schemas() -> dict[str, Any]:
    """components.schemas: every model the API reads (validation mode) or answers (serialization mode), with every
    model and named value they use, by name."""
    wanted: list[tuple[type[BaseModel], Any]] = [(model, "validation") for model in m.REQUESTS]
    wanted += [(model, "serialization") for model in m.RESPONSES]
    _, top = models_json_schema(wanted, ref_template=m.REF, schema_generator=_Schemas)
    found = top["$defs"]
    twice = [name for name in found if name.endswith(("-Input", "-Output"))]
    assert not twice, f"{twice}: a model whose request and response schemas differ needs two names"
    return {name: _clean(found[name]) for name in sorted(found, key=_ORDER.index)}


def query(model: type[m.Query]) -> list[dict[str, Any]]:
    """The query parameters of an operation, from its query model: name, required, description and schema."""
    properties = _clean(model.model_json_schema(ref_template=m.REF, schema_generator=_Schemas))["properties"]
    out: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if alias == "nextToken":
            out.append({"$ref": "#/components/parameters/NextToken"})
            continue
        schema = dict(properties[alias])
        description = schema.pop("description")
        out.append({"name": alias, "in": "query", "required": field.is_required(), "description": description,
                    "schema": schema})
    return out


def _next_token() -> dict[str, Any]:
    schema = _clean(m.ReportListQuery.model_json_schema(schema_generator=_Schemas))["properties"]["nextToken"]
    return {"name": "nextToken", "in": "query", "required": False, "description": schema.pop("description"),
            "schema": schema}


def problem_types_listed() -> list[dict[str, Any]]:
    return [{"slug": t.slug, "type": t.uri, "status": t.status, "title": t.title, "description": t.description}
            for t in problem_types.TYPES]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": INFO,
        "servers": SERVERS,
        "tags": TAGS,
        "security": SECURITY,
        "paths": PATHS,
        "webhooks": WEBHOOKS,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "headers": HEADERS,
            "parameters": {**PARAMETERS, "NextToken": _next_token()},
            "responses": RESPONSES,
            "schemas": schemas(),
        },
        "x-problem-types": problem_types_listed(),
    }


def text() -> str:
    """The document as the checked-in file holds it."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """`python -m chalicelib.api.spec` writes the document; `--check` only says whether it is up to date."""
    new = text()
    current = PATH.read_text() if PATH.exists() else ""
    if "--check" in argv:
        if new != current:
            print(f"{PATH} is not what the models and the route table make: run `{COMMAND}`.", file=sys.stderr)
            return 1
        return 0
    if new != current:
        PATH.write_text(new)
        print(f"wrote {PATH}")
    return 0


# The order of components.schemas in the document.
_ORDER = [
    "Problem", "Timestamp", "Period", "ReportId", "LineId", "Amount", "AmountInput", "Currency", "Category",
    "JobStatus", "ApiDeliveryTarget", "EmailDeliveryTarget", "WebhookEvent", "WebhookDeliveryTarget",
    "DeliveryTarget", "Schedule", "ReportConfigInput", "ReportConfig", "DisabledTarget", "WebhookSecret",
    "WebhookSecretRotation", "ExpenseLineInput", "ExpenseImport", "ExpenseLine", "ImportResult", "ExpenseLinePage",
    "GenerateRequest", "Job", "WebhookJob", "JobStep", "WarmCounts", "Usage", "WebhookPayload", "Delivery",
    "DeliveryStatus", "JobList", "Event", "EventList", "Total", "ResultLine", "Result", "LinePatch", "Health",
    "Readiness", "ReadinessChecks", "ReportConfigPatch", "ReportList",
    "ImportRequest", "ImportAccepted", "ImportProgress", "ImportRowError",
]


# --- the route table ---------------------------------------------------------------------------------------------

INFO = {
    "title": "Async report generation API",
    "version": "1.0.0",
    "description": (
        "Async report generation: store report configurations and expense lines, then generate a report as a job\n"
        "that a worker processes in the background. Clients poll the job (`statusUrl`) and fetch the result.\n"
        "\n"
        "This document describes the HTTP contract exactly; where the contract is silent, the behaviour chosen is\n"
        "written into the `description` of the operation, parameter or schema concerned. Summary of those decisions:\n"
        "\n"
        "- **Errors** are `application/problem+json` (RFC 9457) with `type` `urn:reports:problem:<slug>` (one of the "
        "registered types in\n"
        "  `x-problem-types`, each with its one `title` and status), `title`,\n"
        "  `status` (the HTTP status, always a number), `detail`, and extension members `field` (the offending\n"
        "  input), `line` (`lines[i]` for JSON imports, `row N` for CSV, N counting the header as row 1),\n"
        "  `existingJobId`, `jobStatus` and `deliveryStatus` where named. Bad input is never a 500; 500 is reserved "
        "for faults of the\n"
        "  service itself and never carries a stack trace.\n"
        "- **Authentication**: every route except `GET /`, `GET /health`, `GET /health/ready` and `GET /openapi.json` "
        "needs\n"
        "  `Authorization: Bearer <JWT>` (HS256 with a shared secret, or RS256 from a JWKS URL; `sub` and `exp`\n"
        "  required; `iss`/`aud` checked when configured, and required with a JWKS URL; roles from `roles` or\n"
        "  `cognito:groups`). Any problem with the token is 401 with a `WWW-Authenticate: Bearer ...` header.\n"
        "- **Tenants**: a token's tenant is its `tenant` claim, or Cognito's `custom:tenant`; a token without one is "
        "a\n"
        "  tenant of its own. A user is a `sub` within a tenant: the same `sub` in two tenants is two users. Report "
        "ids\n"
        "  are unique within a tenant (another tenant's `report-123` is another report), and a role grants access\n"
        "  within its own tenant only. The vendor cache is per tenant: a line settled, or a model answer, in one "
        "tenant\n"
        "  never answers another tenant's lines, and `source: \"cache\"` is only ever the caller's own tenant's "
        "answer.\n"
        "- **Ownership**: a job, a report or a line that belongs to another user answers 404, exactly as one that "
        "does\n"
        "  not exist. A report is visible (`GET`) to its owner and to holders of one of its `allowedRoles`; generating "
        "a\n"
        "  report that exists but that the caller may not generate is 403 (as the contract says).\n"
        "- **Ids** minted by the server are random UUID v4 (`jobId`, a missing `lineId`); a minted `reportId` is\n"
        "  `report-<uuid4>`.\n"
        "- **Bodies**: at most 6 MiB (413 beyond); JSON nested at most 20 levels (400 beyond); unknown fields in JSON\n"
        "  request bodies are rejected with 400 (`additionalProperties: false`). A JSON body sent with another\n"
        "  `Content-Type` is 415.\n"
        "- **Expense lines**: `lineId` identifies a line within its month (the `YYYY-MM` of its `date`): re-importing "
        "a\n"
        "  `lineId` with a date in the same month replaces that line; the same `lineId` in another month is another "
        "line.\n"
        "  At most 5,000 lines per request. A request is validated whole before anything is stored.\n"
        "- **Paging**: expenses `pageSize` 1-1000 (default 100); jobs `pageSize` 1-100 (default 20) and `page`\n"
        "  1-10000 (default 1); `nextToken` is opaque, and when given it wins over `page`. Out-of-range or malformed\n"
        "  values are 400.\n"
        "- **Schedules**: `{\"type\": \"monthly\", \"day\": 1..28}` (28 so that every month has that day).\n"
        "- **Rate limit**: at most 20 jobs created per user in any rolling hour (cancelled and failed jobs count);\n"
        "  beyond, 429 with `Retry-After` = seconds until the oldest job of the window leaves it.\n"
        "- **Idempotency-Key** (generate): scoped to the user, 1-255 printable ASCII characters. The same key with "
        "the\n"
        "  same report and body within 24 h replays the first response (status, headers and body: the job as it was\n"
        "  then) and creates nothing; the same key with another report or body is 422; while the first request with "
        "the\n"
        "  key is still running, 409.\n"
        "- **Delivery**: a report's `deliveryTargets` (1 to 10, no two the same) are `api` (poll this API; `generate` "
        "needs `{\"type\": \"api\", \"mode\": \"async\"}`), `email` (the report sent through Amazon SES when a job is "
        "Completed) and `webhook` (a signed POST, Standard Webhooks, on the events listed: see `webhooks`). A report "
        "with a `schedule` is generated on its day whatever its targets, which is how a report delivered only by email "
        "or webhook is generated. When a job becomes Completed, Failed or Cancelled, its `deliveries` are planned in "
        "the same write as the status and each is attempted on its own, retried with backoff for about a day; the "
        "job's status never waits for them.\n"
        "- **Polling**: `Retry-After` (seconds) accompanies a job that is not terminal; every job representation has "
        "a\n"
        "  strong `ETag`, and `If-None-Match` answers 304 with an empty body.\n"
        "- **Retention**: jobs, their events and results are kept 30 days; after that the job answers 404.\n"
        "- CORS preflight (`OPTIONS`) is answered for every route and is not listed here; a method a path does not\n"
        "  support (TRACE and any other method included) is 405 (problem+json) with an `Allow` header listing the\n"
        "  methods it takes; a path no route has is 404 (problem+json), whatever the method.\n"
    ),
}

SERVERS = [{"url": "/", "description": "The host that serves this document."}]


TAGS = [
    {"name": "meta"},
    {"name": "reports"},
    {"name": "expenses"},
    {"name": "jobs"},
    {"name": "results"},
    {"name": "webhooks", "description": "What this service sends to a report's webhook targets."},
]


SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "JWT with `sub` and `exp` (required), optional `iss`/`aud` (checked when the service is configured with "
            "JWT_ISSUER/JWT_AUDIENCE), and roles in `roles` (list of strings) or `cognito:groups`. HS256 with "
            "JWT_SECRET, or RS256 from JWT_JWKS_URL. `alg: none` and any other algorithm are refused. With "
            "JWT_JWKS_URL (Cognito), JWT_ISSUER and JWT_AUDIENCE (the app client id) are required (without them every "
            "token is refused), `iss` must match, and `token_use` must be the configured kind (JWT_TOKEN_USE, default "
            "`access`): an access token names the app client in `client_id`, an ID token in `aud`. Tenant: the "
            "`tenant` claim, or Cognito's `custom:tenant` (a printable string of 1 to 128 characters; if both are "
            "present they must agree); a token without one is a tenant of its own, keyed by its `sub` (such a `sub` "
            "must not start with `tenant#`). Everything is scoped by tenant: the same `sub` in two tenants is two "
            "users, report ids are unique within a tenant, roles grant access within their tenant only, and the vendor "
            "cache (`source: cache`) is per tenant."
        ),
    },
}


HEADERS = {
    "WWW-Authenticate": {
        "description": "Bearer challenge (RFC 6750), e.g. `Bearer error=\"invalid_token\"`.",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer( |$)"},
    },
    "Retry-After": {
        "description": (
            "Seconds to wait before the next request (poll interval, or until the rate window frees a slot)."
        ),
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Retry-After-While-Active": {
        "description": (
            "Suggested poll interval in seconds; present while the job is not terminal (Queued, Processing, "
            "CancellationRequested), absent once it is."
        ),
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Location-Job": {
        "description": "The job's `statusUrl`.",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
    },
    "ETag": {
        "description": "Strong entity tag of this representation; send it back in `If-None-Match`.",
        "required": True,
        "schema": {"type": "string", "pattern": "^\"[^\"]*\"$"},
    },
}


PARAMETERS = {
    "JobId": {
        "name": "jobId",
        "in": "path",
        "required": True,
        "description": "A `jobId` (UUID v4). Any other value, a job of another user or one past retention answers 404.",
        "schema": {"type": "string"},
    },
    "ReportId": {
        "name": "reportId",
        "in": "path",
        "required": True,
        "description": "A `reportId`; a value that cannot be a reportId answers 404.",
        "schema": {"type": "string"},
    },
    "LineId": {
        "name": "lineId",
        "in": "path",
        "required": True,
        "description": (
            "The `lineId` of a line of this job's result. One that no line can have is 404, except one DynamoDB cannot "
            "hold as a key (empty, or over 1024 bytes of UTF-8): that is 400 with `field: lineId`."
        ),
        "schema": ref(m.LineId),
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": (
            "One or more entity tags (comma separated, `W/` prefixes ignored) or `*`; when one matches the current "
            "representation the answer is 304 with no body."
        ),
        "schema": {"type": "string"},
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            "Makes the request safe to repeat. Scoped to the caller. The same key with the same report and body within "
            "24 h returns the first response (same status, headers and body) and creates nothing; the same key with "
            "another report or body is 422; while the first request with this key is still running, 409. Invalid keys "
            "(empty, over 255 characters, not printable ASCII) are 400."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7E]+$"},
    },
    "IfMatch": {
        "name": "If-Match",
        "in": "header",
        "required": True,
        "description": (
            "The ETag of the report as last read (GET /api/v1/reports/{reportId}, or the previous PATCH's answer); `*` "
            "matches any version. Missing: 428. Not the current ETag (a weak `W/` tag never matches): 412, nothing "
            "changed."
        ),
        "schema": {"type": "string", "minLength": 1},
    },
    "IfMatchOptional": {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "description": "Optional on DELETE: when given and not the report's current ETag, 412 and nothing is deleted.",
        "schema": {"type": "string"},
    },
    "WebhookId": {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": (
            "`msg_` and 26 random characters: the same on every attempt of one delivery (and on its manual retries), "
            "so a receiver can drop a message it already handled."
        ),
        "schema": {"type": "string", "pattern": "^msg_[A-Za-z0-9_-]{26}$"},
    },
    "WebhookTimestamp": {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": (
            "When this attempt was made, in Unix seconds. Receivers should refuse a timestamp far from their clock "
            "(the `standardwebhooks` libraries allow 5 minutes)."
        ),
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WebhookSignature": {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": (
            "`v1,<signature>`: the base64 HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>` keyed by the "
            "base64-decoded part of the report's secret after `whsec_`. For 24 h after a rotation, one signature per "
            "live secret, newest first, separated by spaces; a receiver accepts the request when any one matches."
        ),
        "schema": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/]+={0,2}( v1,[A-Za-z0-9+/]+={0,2})*$"},
    },
    "WebhookUserAgent": {
        "name": "user-agent",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "const": "async-reports-webhooks/1"},
    },
}


RESPONSES = {
    "BadRequest": {
        "description": (
            "Invalid input: `detail` says what is wrong; `field` (and for expense lines `line`) name where. Nothing of "
            "the request was stored."
        ),
        "content": {
            "application/problem+json": {
                "schema": ref(m.Problem),
                "example": {
                    "type": "urn:reports:problem:validation-failed",
                    "title": "Invalid request",
                    "status": 400,
                    "detail": (
                        "Line 1 of lines (counting from 1): currency must be a three-letter ISO 4217 code in capitals, "
                        "such as USD."
                    ),
                    "line": "lines[0]",
                    "field": "currency",
                },
            },
        },
    },
    "Unauthorized": {
        "description": "Missing, malformed, badly signed, expired, `alg: none` or wrong-algorithm token.",
        "content": {"application/problem+json": {"schema": ref(m.Problem)}},
        "headers": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    },
    "NotFound": _problem("Not found: it does not exist, or it belongs to another user (the two are not "
                         "distinguished)."),
    "PayloadTooLarge": _problem("The request body is larger than 6 MiB; nothing was stored."),
    "UnsupportedMediaType": _problem("The request's `Content-Type` is not one this operation accepts; nothing was "
                                     "stored."),
    "InternalError": {
        "description": (
            "An unexpected fault of the service (never the answer to bad input); no stack trace is included."
        ),
        "content": {"application/problem+json": {"schema": ref(m.Problem)}},
    },
    "ServiceUnavailable": {
        "description": (
            "A dependency (job store, idempotency store, work queue or another data store) failed or timed out. Retry "
            "later: a failed job create leaves nothing behind, and re-importing the same lineIds replaces those lines."
        ),
        "content": {"application/problem+json": {"schema": ref(m.Problem)}},
        "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
    },
    "PreconditionFailed": {
        "description": (
            "`If-Match` is not the current ETag: the report changed since it was read (or changed while this request "
            "ran). Nothing was changed; read it again."
        ),
        "content": {
            "application/problem+json": {
                "schema": ref(m.Problem),
                "example": {
                    "type": "urn:reports:problem:precondition-failed",
                    "title": "Precondition failed",
                    "status": 412,
                    "detail": (
                        "The report has changed since this ETag was read (If-Match does not match its current ETag); "
                        "read it again and reapply your change."
                    ),
                },
            },
        },
    },
    "PreconditionRequired": _problem("No `If-Match`: a PATCH must name the version (ETag) it read. Nothing was "
                                     "changed."),
}


PATHS = {
    "/": {
        "get": {
            "operationId": "getDashboard",
            "tags": ["meta"],
            "summary": "The dashboard page",
            "security": [],
            "responses": {
                "200": {
                    "description": (
                        "An HTML page that lists and polls the user's jobs (the token is entered in the page)."
                    ),
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
            },
        },
    },
    "/health": {
        "get": {
            "operationId": "getHealth",
            "tags": ["meta"],
            "summary": "Liveness check",
            "security": [],
            "responses": {
                "200": {"description": "The API answers.", "content": {"application/json": {"schema": ref(m.Health)}}},
            },
            "description": "Answers as long as the function runs; touches no dependency. See `/health/ready`.",
        },
    },
    "/health/ready": {
        "get": {
            "operationId": "getReadiness",
            "tags": ["meta"],
            "summary": "Readiness check",
            "security": [],
            "description": (
                "Checks in parallel, each within 2 s and without retries, that the job table (GetItem), the work queue "
                "(GetQueueAttributes) and the results bucket (HeadBucket) answer. 200 when all do; otherwise 503 "
                "`service-unavailable` whose `checks` member names each part's answer."
            ),
            "responses": {
                "200": _json(m.Readiness, "The table, the queue and the bucket answer."),
                "503": {
                    "description": "A part the API needs did not answer; `checks` says which.",
                    "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                },
            },
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "getOpenApiDocument",
            "tags": ["meta"],
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document of this API.",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["openapi", "paths"]}}},
                },
            },
        },
    },
    "/api/v1/reports": {
        "get": {
            "operationId": "listReports",
            "tags": ["reports"],
            "summary": "The report configurations the caller may see, by reportId",
            "description": (
                "The caller's tenant's reports that the caller owns or may generate (holds one of their "
                "`allowedRoles`), in ascending `reportId` order (stable under paging; ids are chosen by clients, so "
                "creation order is not meaningful). Another tenant's reports and reports the caller cannot see are "
                "never listed. Every page but the last holds exactly `pageSize` items."
            ),
            "parameters": [*query(m.ReportListQuery)],
            "responses": {
                "200": _json(m.ReportList, "One page of reports."),
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
        "post": {
            "operationId": "createReport",
            "tags": ["reports"],
            "summary": "Create a report configuration",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(m.ReportConfigInput)}}},
            "responses": {
                "201": {
                    "description": (
                        "Created: the stored configuration with `ownerId` and `createdAt`, and, when it has a webhook "
                        "target, `webhookSecret`: the signing secret, shown in this answer only."
                    ),
                    "headers": {
                        "Location": {
                            "required": True,
                            "description": "`/api/v1/reports/{reportId}` (relative).",
                            "schema": {"type": "string", "format": "uri-reference"},
                        },
                    },
                    "content": {"application/json": {"schema": ref(m.ReportConfig)}},
                },
                "400": {
                    "description": (
                        "Invalid input: `field` names it (`deliveryTargets[0].url` for a webhook URL that is not https "
                        "or not public, `deliveryTargets[0].events`, `deliveryTargets[0].to`, `deliveryTargets` for "
                        "more than 10 targets). Nothing was stored."
                    ),
                    "content": {
                        "application/problem+json": {
                            "schema": ref(m.Problem),
                            "example": {
                                "type": "urn:reports:problem:validation-failed",
                                "title": "Invalid request",
                                "status": 400,
                                "detail": (
                                    "deliveryTargets, target 1 (counting from 1), url must not point at a private, "
                                    "loopback or link-local address."
                                ),
                                "field": "deliveryTargets[0].url",
                            },
                        },
                    },
                },
                "401": _ref("Unauthorized"),
                "409": {
                    "description": (
                        "A report with this `reportId` already exists in the caller's tenant (it is not changed); "
                        "another tenant's report with the same id does not count."
                    ),
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                },
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/reports/{reportId}": {
        "parameters": [{"$ref": "#/components/parameters/ReportId"}],
        "get": {
            "operationId": "getReport",
            "tags": ["reports"],
            "summary": "Read a report configuration",
            "description": (
                "Visible to the owner and to holders of one of its `allowedRoles`; 404 for anyone else. The `ETag` "
                "names the report's version: send it in `If-Match` to PATCH or DELETE."
            ),
            "responses": {
                "200": {
                    "description": "The configuration (never with `webhookSecret`).",
                    "content": {"application/json": {"schema": ref(m.ReportConfig)}},
                    "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                },
                "304": {
                    "description": "Not modified: `If-None-Match` matched the current ETag. No body.",
                    "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                },
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
            "parameters": [{"$ref": "#/components/parameters/IfNoneMatch"}],
        },
        "patch": {
            "operationId": "updateReport",
            "tags": ["reports"],
            "summary": "Change a report configuration (owner only, If-Match required)",
            "description": (
                "Only the owner may change a report: a holder of one of its roles (who can read it) gets 403, anyone "
                "else 404. The write is conditional on the version the `If-Match` ETag names: of two PATCHes with the "
                "same ETag one succeeds and the other gets 412. Checked in this order: visibility and ownership "
                "(404/403), `If-Match` (428/412), then the body (400). Setting `deliveryTargets` enables again the "
                "webhook targets a 410 Gone had disabled (`disabledTargets`); `disabledTargets` itself cannot be set "
                "(400)."
            ),
            "parameters": [{"$ref": "#/components/parameters/IfMatch"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(m.ReportConfigPatch)}}},
            "responses": {
                "200": {
                    "description": (
                        "The configuration after the change, with its new ETag; with `webhookSecret` (shown this once) "
                        "when the change added the report's first webhook target."
                    ),
                    "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                    "content": {"application/json": {"schema": ref(m.ReportConfig)}},
                },
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "403": _problem("The caller holds one of the report's roles (so sees it) but does not own it."),
                "404": _ref("NotFound"),
                "412": _ref("PreconditionFailed"),
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
                "428": _ref("PreconditionRequired"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
        "delete": {
            "operationId": "deleteReport",
            "tags": ["reports"],
            "summary": "Delete a report configuration (owner only)",
            "description": (
                "Only the owner may delete a report (a role holder gets 403, anyone else 404). 409 while any job of "
                "the report (of any user of the tenant) is Queued, Processing or CancellationRequested. Its jobs and "
                "their results stay readable (and their lines can still be settled, against the job's own categories) "
                "until they expire. A generate racing the delete either creates its job before the delete looks (the "
                "delete is then 409) or is refused (404, or 409 while the delete is in progress); never both."
            ),
            "parameters": [{"$ref": "#/components/parameters/IfMatchOptional"}],
            "responses": {
                "204": {"description": "Deleted. No body."},
                "401": _ref("Unauthorized"),
                "403": _problem("The caller holds one of the report's roles (so sees it) but does not own it."),
                "404": _ref("NotFound"),
                "409": {
                    "description": (
                        "A job of the report is active (extension `jobStatus`), or another request is deleting it."
                    ),
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                },
                "412": _ref("PreconditionFailed"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/reports/{reportId}/webhook-secret/rotate": {
        "parameters": [{"$ref": "#/components/parameters/ReportId"}],
        "post": {
            "operationId": "rotateWebhookSecret",
            "tags": ["reports"],
            "summary": "Make a new webhook signing secret (owner only)",
            "description": (
                "No body. Makes a new secret and returns it, this once. The previous secret goes on signing beside the "
                "new one for 24 h, so a receiver can switch without missing a message: meanwhile `webhook-signature` "
                "carries one `v1,...` signature per live secret, newest first, space separated. Only the owner may "
                "rotate (a role holder gets 403, anyone else 404)."
            ),
            "responses": {
                "200": _json(m.WebhookSecretRotation, "The new secret, and until when the previous one still signs."),
                "401": _ref("Unauthorized"),
                "403": _problem("The caller holds one of the report's roles (so sees it) but does not own it."),
                "404": _ref("NotFound"),
                "409": {
                    "description": (
                        "The report has no webhook target, or another rotation (or a delete) of the report ran at the "
                        "same time; nothing was changed."
                    ),
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                },
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/expenses": {
        "post": {
            "operationId": "importExpenses",
            "tags": ["expenses"],
            "summary": "Import expense lines",
            "description": (
                "Up to 5,000 lines as JSON or CSV. The whole request is validated first: any invalid line is 400 whose "
                "`detail` names, in words, the line (JSON: its place in `lines`, counting from 1; CSV: its row, the "
                "header being row 1), the field and what was expected; `line` and `field` name them for programs. "
                "Nothing of the request is stored then. Amounts are decimal strings or JSON numbers, read exactly (see "
                "AmountInput). Lines keep the order they are imported in: a report lists them in that order (each "
                "import after the ones before it; within one import, in the order of `lines` or of the file's rows), "
                "whatever their `lineId`s. Re-importing a `lineId` replaces that line of its month (idempotent) and "
                "moves it to the place of its latest import."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ref(m.ExpenseImport)},
                    "text/csv": {
                        "schema": {
                            "type": "string",
                            "description": (
                                "UTF-8 CSV. First row: the header `lineId,date,vendor,amount,currency,description` "
                                "(any order; `lineId` and `description` columns optional; no other column). Then one "
                                "line per row, one cell per column, fields as in ExpenseLineInput (an amount is "
                                "written plainly, such as 23.50); blank rows are skipped, and a header without rows is "
                                "400. Errors name the row as a spreadsheet counts it: the header is row 1 (`line: row "
                                "N`)."
                            ),
                        },
                        "example": (
                            "lineId,date,vendor,amount,currency,description\n"
                            "tx-1,2026-01-15,UBER *TRIP 8841,23.50,USD,ride to airport\n"
                        ),
                    },
                },
            },
            "responses": {
                "201": {"description": "Stored.", "content": {"application/json": {"schema": ref(m.ImportResult)}}},
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
        "delete": {
            "operationId": "deleteExpenses",
            "tags": ["expenses"],
            "summary": "Remove the caller's lines of one month",
            "description": (
                "The period's lines are gone at once for every reader (listing, a job starting); jobs that already "
                "started keep reading the lines they started on. 409 while a job of the caller reads or imports the "
                "period's lines (extension `existingJobId`); delete once it has finished."
            ),
            "parameters": [*query(m.ExpenseDeleteQuery)],
            "responses": {
                "204": {"description": "Deleted (also when the period had no lines). No body."},
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "409": _problem("A job reads or imports the period's lines (extension `existingJobId`)."),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
        "get": {
            "operationId": "listExpenses",
            "tags": ["expenses"],
            "summary": "The caller's lines of one month",
            "parameters": [*query(m.ExpenseListQuery)],
            "responses": {
                "200": _json(m.ExpenseLinePage, "One page of lines, in `lineId` order."),
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/imports": {
        "post": {
            "operationId": "startImport",
            "tags": ["expenses"],
            "summary": "Import a large file of lines as a job",
            "description": (
                "For a CSV file of any size the bucket takes (POST /expenses stays for up to 5,000 lines). Answers "
                "202 with the import job (type `lines_import`, or `import_and_report` with `reportId`), status "
                "`Queued`, and `uploadUrl`: PUT the file there with `Content-Type: text/csv` within 15 minutes "
                "(`uploadExpiresAt`). The job starts when the file arrives and goes through the steps upload, "
                "validate, stage and commit, with progress in rows (`totalLines`, `processedLines`). It stores all of "
                "the file's rows or none: every row is checked first (by the rules of POST /expenses), and the rows "
                "become the period's lines in one write, so a failed import leaves the previous lines exactly as they "
                "were and a report reads either the old lines or the new ones, never a mix. Errors name the file's "
                "own rows (the header is row 1): `errorMessage` the first, `import.errors` the first 100, "
                "`import.errorCount` all of them. A line without `lineId` is named by its content and its occurrence "
                "in the file, so importing the same file again stores nothing new (`import.newLines` 0). A file "
                "holds the lines of one month. A file never uploaded fails the job with a message saying so."
            ),
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(m.ImportRequest)}}},
            "responses": {
                "202": {
                    "description": "Accepted: the job (status `Queued`) and where to PUT the file. Poll `Location`.",
                    "headers": {
                        "Location": {"$ref": "#/components/headers/Location-Job"},
                        "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                    },
                    "content": {"application/json": {"schema": ref(m.ImportAccepted)}},
                },
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "403": _problem("`reportId` names a report the caller may not generate."),
                "404": _problem("`reportId` names no report of the caller's tenant."),
                "409": _problem(
                    "An import of the same period is active (extension `existingJobId`), or the report of "
                    "`reportId` is not configured for asynchronous generation."
                ),
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/reports/{reportId}/generate": {
        "parameters": [{"$ref": "#/components/parameters/ReportId"}],
        "post": {
            "operationId": "generateReport",
            "tags": ["jobs"],
            "summary": "Start a report job",
            "description": (
                "Creates a job (type `expense_report`) with status `Queued` and queues it for the worker. One active "
                "job per user, report and period; at most 20 jobs of the type per user per rolling hour. A period "
                "without lines is refused (422 `no-lines`) before any job is written."
            ),
            "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": ref(m.GenerateRequest)}}},
            "responses": {
                "202": {
                    "description": "Accepted: the job (status `Queued`). Poll `Location`.",
                    "headers": {
                        "Location": {"$ref": "#/components/headers/Location-Job"},
                        "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                    },
                    "content": {"application/json": {"schema": ref(m.Job)}},
                },
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "403": _problem(
                        "A report of the caller's tenant that the caller neither owns nor holds one of its "
                        "`allowedRoles` for."
                    ),
                "404": {
                    "description": (
                        "Unknown report: no report with this id in the caller's tenant (another tenant's report with "
                        "this id is unknown here, whatever roles the caller holds)."
                    ),
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                },
                "409": {
                    "description": (
                        "Either the report is not configured for asynchronous API delivery (detail \"Report is not "
                        "configured for asynchronous generation.\"), or an active (Queued, Processing, "
                        "CancellationRequested) job exists for the same user, report and period (extension "
                        "`existingJobId`), or a request with the same Idempotency-Key is still running."
                    ),
                    "content": {
                        "application/problem+json": {
                            "schema": ref(m.Problem),
                            "example": {
                                "type": "urn:reports:problem:active-job-exists",
                                "title": "An active job exists",
                                "status": 409,
                                "detail": "An active job for this report and period already exists.",
                                "existingJobId": "9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11",
                            },
                        },
                    },
                },
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
                "422": _problem(
                    "Either `no-lines`: the period has no expense lines of the caller's, and no job was created "
                    "(none counted toward the hourly limit; a report's schedule still generates an empty month, "
                    "as a job that completes with an empty report and says so); or `idempotency-key-reused`: the "
                    "Idempotency-Key was used (within 24 h) with another report or body."),
                "429": {
                    "description": "More than 20 `expense_report` jobs created by the caller in the last hour (the "
                                   "limit counts per user and job type).",
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                    "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
                },
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/jobs": {
        "get": {
            "operationId": "listJobs",
            "tags": ["jobs"],
            "summary": "The caller's jobs, newest first",
            "parameters": [*query(m.JobListQuery)],
            "responses": {
                "200": _json(m.JobList, "One page of jobs."),
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/jobs/{jobId}": {
        "parameters": [{"$ref": "#/components/parameters/JobId"}],
        "get": {
            "operationId": "getJob",
            "tags": ["jobs"],
            "summary": "Poll a job",
            "parameters": [{"$ref": "#/components/parameters/IfNoneMatch"}],
            "responses": {
                "200": {
                    "description": "The job.",
                    "headers": {
                        "ETag": {"$ref": "#/components/headers/ETag"},
                        "Retry-After": {"$ref": "#/components/headers/Retry-After-While-Active"},
                    },
                    "content": {"application/json": {"schema": ref(m.Job)}},
                },
                "304": {
                    "description": "Not modified: `If-None-Match` matched the current ETag. No body.",
                    "headers": {
                        "ETag": {"$ref": "#/components/headers/ETag"},
                        "Retry-After": {"$ref": "#/components/headers/Retry-After-While-Active"},
                    },
                },
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
        "delete": {
            "operationId": "cancelJob",
            "tags": ["jobs"],
            "summary": "Cancel a job",
            "description": (
                "A `Queued` job becomes `Cancelled` at once; a `Processing` one `CancellationRequested`, and the "
                "worker stops it (`Cancelled`) within 10 s. Cancelling a job already `CancellationRequested` answers "
                "200 with the job unchanged."
            ),
            "responses": {
                "200": _json(m.Job, "The job after the cancellation."),
                "409": _problem("The job is already terminal (extension `jobStatus`)."),
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/jobs/{jobId}/retry": {
        "parameters": [{"$ref": "#/components/parameters/JobId"}],
        "post": {
            "operationId": "retryJob",
            "tags": ["jobs"],
            "summary": "Run a stopped job again",
            "description": (
                "A `Failed` or `Cancelled` job is queued again and resumes from its checkpoint: lines already done are "
                "not redone; lines flagged for review are tried again. No body."
            ),
            "responses": {
                "202": {
                    "description": "The job, `Queued` again.",
                    "headers": {
                        "Location": {"$ref": "#/components/headers/Location-Job"},
                        "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                    },
                    "content": {"application/json": {"schema": ref(m.Job)}},
                },
                "409": {
                    "description": (
                        "The job is not `Failed` or `Cancelled`, or another job for the same report and period is "
                        "active (extension `existingJobId`)."
                    ),
                    "content": {"application/problem+json": {"schema": ref(m.Problem)}},
                },
                "415": _ref("UnsupportedMediaType"),
                "503": _ref("ServiceUnavailable"),
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "500": _ref("InternalError"),
            },
        },
    },
    "/api/v1/jobs/{jobId}/deliveries/{n}/retry": {
        "parameters": [
            {"$ref": "#/components/parameters/JobId"},
            {
                "name": "n",
                "in": "path",
                "required": True,
                "description": (
                    "The delivery's place in the job's `deliveries`, from 0. Anything but a number 0-99 is 400 "
                    "(`field: n`); a number with no delivery is 404."
                ),
                "schema": {"type": "integer", "minimum": 0, "maximum": 99},
            },
        ],
        "post": {
            "operationId": "retryDelivery",
            "tags": ["jobs"],
            "summary": "Send a delivery of a finished job again",
            "description": (
                "No body. A `Failed`, `Delivered` or `Disabled` delivery goes back to `Pending` with `attempts` 0 and "
                "is attempted at once, then retried on the usual schedule; a webhook keeps its `webhook-id`, so a "
                "receiver that already has the message can tell. Retrying a `Disabled` delivery enables its report "
                "target again. The audit trail shows `delivery_retry_requested`."
            ),
            "responses": {
                "202": {
                    "description": "The job, its delivery `Pending` again.",
                    "headers": {"Location": {"$ref": "#/components/headers/Location-Job"}},
                    "content": {"application/json": {"schema": ref(m.Job)}},
                },
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "409": {
                    "description": (
                        "The delivery is still `Pending` (extension `deliveryStatus`), the job is running again (its "
                        "deliveries are replaced when it finishes), or another retry of it ran at the same time."
                    ),
                    "content": {
                        "application/problem+json": {
                            "schema": ref(m.Problem),
                            "example": {
                                "type": "urn:reports:problem:conflict",
                                "title": "Conflict",
                                "status": 409,
                                "detail": (
                                    "Delivery 0 is still being attempted (2 attempts so far); its outcome will show "
                                    "here."
                                ),
                                "deliveryStatus": DeliveryStatus.PENDING.value,
                            },
                        },
                    },
                },
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/jobs/{jobId}/result": {
        "parameters": [{"$ref": "#/components/parameters/JobId"}],
        "get": {
            "operationId": "getJobResult",
            "tags": ["results"],
            "summary": "The report of a Completed job",
            "parameters": [*query(m.ResultQuery), {"$ref": "#/components/parameters/IfNoneMatch"}],
            "responses": {
                "200": {
                    "description": "The result. Its ETag changes when a line is settled.",
                    "headers": {
                        "ETag": {"$ref": "#/components/headers/ETag"},
                        "Content-Disposition": {
                            "description": "`attachment; filename=\"<reportId>-<period>.csv\"` for `format=csv`.",
                            "schema": {"type": "string"},
                        },
                    },
                    "content": {
                        "application/json": {"schema": ref(m.Result)},
                        "text/csv": {
                            "schema": {
                                "type": "string",
                                "description": (
                                    f"Header `{','.join(CSV_COLUMNS)}`, "
                                    "then one row per line. Text cells that start with `=`, `+`, `-`, `@`, tab or CR "
                                    "are prefixed with `'` so that spreadsheets do not run them as formulas."
                                ),
                            },
                        },
                    },
                },
                "303": {
                    "description": (
                        "The result is too large for an API response (over 5 MB): `Location` is a presigned download "
                        "URL valid for 5 minutes. No body."
                    ),
                    "headers": {"Location": {"required": True, "schema": {"type": "string", "format": "uri"}}},
                },
                "304": {
                    "description": "Not modified: `If-None-Match` equals the current ETag. No body.",
                    "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                },
                "400": _ref("BadRequest"),
                "409": _problem("The job is not `Completed` (extension `jobStatus`)."),
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/jobs/{jobId}/lines/{lineId}": {
        "parameters": [{"$ref": "#/components/parameters/JobId"}, {"$ref": "#/components/parameters/LineId"}],
        "patch": {
            "operationId": "settleJobLine",
            "tags": ["results"],
            "summary": "Settle one line of a Completed job",
            "description": (
                "A person gives the category of a line (typically one flagged `needsReview`). The line becomes "
                "`source: manual`, `confidence: 1`, `needsReview: false`; the result's totals and `needsReview` follow "
                "(new ETag), and the vendor cache learns the answer (a manual answer is never overwritten by the "
                "model)."
            ),
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(m.LinePatch)}}},
            "responses": {
                "200": _json(m.ResultLine, "The updated line."),
                "400": _ref("BadRequest"),
                "404": _problem("Unknown job, or no such line in this job's result."),
                "409": _problem("The job is not `Completed`."),
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
                "401": _ref("Unauthorized"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
        },
    },
    "/api/v1/jobs/{jobId}/events": {
        "parameters": [{"$ref": "#/components/parameters/JobId"}],
        "get": {
            "operationId": "listJobEvents",
            "tags": ["jobs"],
            "summary": "The job's audit trail, oldest first",
            "responses": {
                "200": {"description": "The events.", "content": {"application/json": {"schema": ref(m.EventList)}}},
                "400": _ref("BadRequest"),
                "401": _ref("Unauthorized"),
                "404": _ref("NotFound"),
                "500": _ref("InternalError"),
                "503": _ref("ServiceUnavailable"),
            },
            "parameters": [*query(m.EventListQuery)],
        },
    },
}


_RETRIED = (
    "Sent to every webhook target of the report that lists this event, as `POST <url>` with `content-type: "
    "application/json`; the request times out after 15 s and redirects are not followed. A 2xx answer is success. "
    "Any other answer, or none, is retried with backoff (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ±10%: 8 attempts "
    "in about a day); a `Retry-After` on a 429 or 503 is honoured when it is longer. A 410 Gone disables the target "
    "(the report's `disabledTargets`) until its owner sets `deliveryTargets` or retries the delivery. Verify the "
    "signature before trusting the body."
)
_RETRY_AFTER = {"Retry-After": {"description": "Seconds, or an HTTP date.", "schema": {"type": "string"}}}
_RETRIED_ANSWERS = {
    "2XX": {"description": "Received: the delivery is `Delivered`. The answer's body is not read beyond 64 kB and "
                           "never used."},
    "410": {"description": "Gone: the delivery becomes `Disabled` and the report's target is disabled; nothing more is "
                           "sent to it."},
    "429": {"description": "Slow down: retried after the later of the backoff and `Retry-After`.",
            "headers": _RETRY_AFTER},
    "503": {"description": "Unavailable: retried after the later of the backoff and `Retry-After`.",
            "headers": _RETRY_AFTER},
    "default": {"description": "Any other answer (a 3xx included: redirects are not followed), a timeout or a "
                               "connection failure: retried with backoff."},
}
_PROGRESS_ANSWERS = {
    "2XX": {"description": "Received."},
    "410": {"description": "Gone: the report's target is disabled."},
    "default": {"description": "Anything else: logged; not retried."},
}
_JOB_URL = "https://api.example.com/api/v1/jobs/9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11"
# The job of the examples, Completed; each event's example changes what differs.
_EXAMPLE_STEPS = [
    {"name": name, "status": StepStatus.COMPLETED.value, "startedAt": started, "completedAt": ended, "attempts": 1,
     "progressPercent": percent, "errorMessage": None}
    for name, started, ended, percent in (
        ("collect", "2026-01-31T10:00:01.000Z", "2026-01-31T10:00:01.000Z", None),
        ("categorize", "2026-01-31T10:00:01.000Z", "2026-01-31T10:00:33.000Z", 100),
        ("assemble", "2026-01-31T10:00:33.000Z", "2026-01-31T10:00:35.000Z", None))]
_EXAMPLE_JOB = {
    "jobId": "9b2f6a1e-8c1d-4c55-9a51-2f0f5f3f8d11", "reportId": "report-123", "period": "2026-01",
    "type": "expense_report", "typeLabel": "Generate report", "status": "Completed",
    "statusMessage": "Categorized 300 of 300 lines",
    "progressPercent": 100, "totalLines": 300, "processedLines": 300, "failedLines": 2, "cachedLines": 64,
    "retryCount": 0, "trigger": "schedule", "steps": _EXAMPLE_STEPS, "lane": "batch",
    "usage": {"modelRequests": 10, "inputTokens": 21300, "cachedTokens": 16640, "outputTokens": 3460,
              "estimatedCostUsd": "0.001555", "flexFallbacks": 0},
    "createdAt": "2026-01-31T10:00:00.000Z",
    "startedAt": "2026-01-31T10:00:01.000Z", "updatedAt": "2026-01-31T10:00:35.000Z",
    "completedAt": "2026-01-31T10:00:35.000Z", "estimatedCompletionAt": None, "errorMessage": None,
    "statusUrl": _JOB_URL, "resultUrl": f"{_JOB_URL}/result", "allowedActions": ["result", "settle"],
}
_STOPPED = {"statusMessage": "Categorized 120 of 300 lines", "progressPercent": 40, "processedLines": 120,
            "resultUrl": None}


def _stopped_steps(categorize: StepStatus, assemble: StepStatus, error: str | None = None) -> list[dict[str, Any]]:
    """The example job's steps while it runs or once it stopped in `categorize` (40% done)."""
    ended = None if categorize is StepStatus.RUNNING else "2026-01-31T10:00:13.000Z"
    return [_EXAMPLE_STEPS[0],
            {"name": "categorize", "status": categorize.value, "startedAt": "2026-01-31T10:00:01.000Z",
             "completedAt": ended, "attempts": 1, "progressPercent": 40, "errorMessage": error},
            {"name": "assemble", "status": assemble.value, "startedAt": None,
             "completedAt": None, "attempts": 0, "progressPercent": None, "errorMessage": None}]


def _webhook(event: str, operation_id: str, what: str, description: str, answers: dict[str, Any],
             **job: Any) -> dict[str, Any]:
    """One event of the `webhooks` section: the same request (signed headers, the job as payload) for each."""
    return {"post": {
        "operationId": operation_id, "tags": ["webhooks"], "summary": f"`{event}`: {what}",
        "description": description, "security": [],
        "parameters": [{"$ref": f"#/components/parameters/{name}"}
                       for name in ("WebhookId", "WebhookTimestamp", "WebhookSignature", "WebhookUserAgent")],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"allOf": [ref(m.WebhookPayload)], "properties": {"type": {"const": event}}},
            "example": {"type": event, "timestamp": "2026-01-31T10:00:36.000Z", "data": {**_EXAMPLE_JOB, **job}},
        }}},
        "responses": answers,
    }}


WEBHOOKS = {
    "job.completed": _webhook("job.completed", "webhookJobCompleted", "A job of the report became `Completed`",
                              f"A job of the report became `Completed`. {_RETRIED}", _RETRIED_ANSWERS),
    "job.failed": _webhook(
        "job.failed", "webhookJobFailed", "A job of the report became `Failed` (`data.errorMessage` says why)",
        f"A job of the report became `Failed` (`data.errorMessage` says why). {_RETRIED}", _RETRIED_ANSWERS,
        status="Failed", **_STOPPED, errorMessage="The model provider refused the API key.",
        allowedActions=["retry"],
        steps=_stopped_steps(StepStatus.FAILED, StepStatus.PENDING, "The model provider refused the API key.")),
    "job.cancelled": _webhook(
        "job.cancelled", "webhookJobCancelled", "A job of the report became `Cancelled`",
        f"A job of the report became `Cancelled`. {_RETRIED}", _RETRIED_ANSWERS,
        status="Cancelled", **_STOPPED, allowedActions=["retry"],
        steps=_stopped_steps(StepStatus.CANCELLED, StepStatus.CANCELLED)),
    "job.progress": _webhook(
        "job.progress", "webhookJobProgress", "A job of the report checkpointed while it runs",
        "A job of the report checkpointed while it runs: at most one every 10 s per job, sent once and never "
        "retried (a later one says more), not listed in the job's `deliveries`. Signed and shaped like the other "
        "events; a 410 Gone disables the target.", _PROGRESS_ANSWERS,
        status="Processing", **_STOPPED, completedAt=None, estimatedCompletionAt="2026-01-31T10:00:50.000Z",
        allowedActions=["cancel"], steps=_stopped_steps(StepStatus.RUNNING, StepStatus.PENDING)),
}



if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
