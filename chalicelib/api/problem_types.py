"""The problem-type registry: every `type` an error answer (application/problem+json) can carry, named once.

A type is `urn:reports:problem:<slug>`; its title is the same on every answer of that type (RFC 9457 §3.1.3),
and its status is the HTTP status it is answered with. Each AppError subclass names its slug
(chalicelib/errors.py), Chalice's own error answers are mapped by status (`for_status`), and the API Gateway
gateway responses of the packaged template (infra/package.py) take theirs from here too. The OpenAPI document
lists the same slugs (`x-problem-types` and the enum of Problem.type), held by tests/unit/test_problem_types.py.

No imports from the rest of the application: infra/package.py and local/stack.py read this module on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "urn:reports:problem:"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        return PREFIX + self.slug

    def body(self, detail: str, **extensions: object) -> dict[str, object]:
        return {"type": self.uri, "title": self.title, "status": self.status, "detail": detail, **extensions}


TYPES: tuple[ProblemType, ...] = (
    ProblemType("validation-failed", 400, "Invalid request",
                "A parameter, header or body is malformed or breaks a rule; `field` (and `line` on an import) "
                "name what is at fault."),
    ProblemType("unauthorized", 401, "Unauthorized",
                "No bearer token, or one that is not valid; the `WWW-Authenticate` header says which."),
    ProblemType("forbidden", 403, "Forbidden",
                "The token is valid but does not allow this action (e.g. generating a report of another user)."),
    ProblemType("not-found", 404, "Not found",
                "No such resource for this caller (another user's counts as none), or no route has this path."),
    ProblemType("method-not-allowed", 405, "Method not allowed",
                "The path exists but does not take this method; the `Allow` header lists the methods it takes."),
    ProblemType("conflict", 409, "Conflict",
                "The request conflicts with the current state (e.g. the report id exists, or a request with the "
                "same Idempotency-Key is still running)."),
    ProblemType("active-job-exists", 409, "An active job exists",
                "A job for the same user, report and period is not finished; `existingJobId` names it."),
    ProblemType("not-async-report", 409, "Report is not asynchronous",
                "The report has no asynchronous API delivery target, so it cannot be generated as a job."),
    ProblemType("invalid-transition", 409, "Not possible in the job's status",
                "The job's status does not allow this action (e.g. cancelling a finished job); `jobStatus` names it."),
    ProblemType("precondition-failed", 412, "Precondition failed",
                "`If-Match` names an ETag that is no longer the resource's current one (it changed since it was "
                "read); nothing was changed. Read it again and reapply the change."),
    ProblemType("payload-too-large", 413, "Payload too large", "The request body is over 6 MiB."),
    ProblemType("unsupported-media-type", 415, "Unsupported media type",
                "The body's Content-Type is not one this operation takes."),
    ProblemType("idempotency-key-reused", 422, "Idempotency-Key reused with another request",
                "The Idempotency-Key was first used with another report or body."),
    ProblemType("no-lines", 422, "No expense lines",
                "The period has no expense lines of the caller's, so its report would be empty: no job was created "
                "(and none counted toward the hourly limit). Import the month's lines first. A report's schedule "
                "still generates an empty month: that job completes with an empty report and says so."),
    ProblemType("precondition-required", 428, "Precondition required",
                "The request changes a resource and must name the version it read: send `If-Match` with the "
                "ETag of the last read."),
    ProblemType("rate-limited", 429, "Too many requests",
                "Too many jobs created in the last hour, or the API is throttled; wait `Retry-After` seconds."),
    ProblemType("internal-error", 500, "Internal error",
                "A fault of the service itself; never caused by the request. Safe to retry."),
    ProblemType("service-unavailable", 503, "Service unavailable",
                "A data store did not answer, or (GET /health/ready) a part the API needs is not ready; `checks` "
                "names the parts. Retry after `Retry-After` seconds."),
)

BY_SLUG: dict[str, ProblemType] = {t.slug: t for t in TYPES}
URIS: frozenset[str] = frozenset(t.uri for t in TYPES)

# The type of an answer that only has a status (Chalice's own errors, API Gateway's): one per status.
_BY_STATUS = {400: "validation-failed", 401: "unauthorized", 403: "forbidden", 404: "not-found",
              405: "method-not-allowed", 409: "conflict", 412: "precondition-failed", 413: "payload-too-large",
              415: "unsupported-media-type", 428: "precondition-required", 429: "rate-limited", 500: "internal-error",
              503: "service-unavailable"}


def get(slug: str) -> ProblemType:
    return BY_SLUG[slug]


def for_status(status: int) -> ProblemType:
    """The registered type for an error answer known only by its status (any other 4xx is a refused request)."""
    slug = _BY_STATUS.get(status) or ("internal-error" if status >= 500 else "validation-failed")
    return BY_SLUG[slug]
