"""Job routes: generate, poll, list, cancel and the audit trail."""

from __future__ import annotations

import re
from typing import Any

from chalice import Blueprint, Response

from chalicelib import clock
from chalicelib.api import http, models
from chalicelib.api.routes import NO_BODY, handled
from chalicelib.errors import NoLines, NotAsyncReport, ValidationFailed
from chalicelib.jobs import idempotency, service
from chalicelib.jobs.create import create_job
from chalicelib.jobs.states import TERMINAL, JobStatus
from chalicelib.lines.store import has_lines
from chalicelib.reports import service as reports
from chalicelib.settings import get_settings
from chalicelib.tables import Job

bp = Blueprint(__name__)
EVENTS_PAGE_MAX = 1000


def _poll_headers(job: Job) -> dict[str, str]:
    if JobStatus(job.status) in TERMINAL:
        return {}
    return {"Retry-After": str(get_settings().poll_interval_seconds)}


def _generate(request: dict[str, Any]) -> dict[str, Any]:
    """Create the job and build the 202 response (replayed as is for a repeated Idempotency-Key)."""
    report = reports.get_for_generation(request["principal"], request["reportId"])
    if {"type": "api", "mode": "async"} not in report.delivery_targets:
        raise NotAsyncReport("Report is not configured for asynchronous generation.")
    if not has_lines(request["userId"], request["period"]):
        # Before any job write: an empty month creates no job and takes nothing from the hour's limit.
        raise NoLines(f"No expense lines for {request['period']}: import the month's lines first, then generate.")
    job = create_job(request["userId"], report, request["period"], lane=request.get("lane"))
    body = service.to_dict(job, request["baseUrl"])
    return {"status": 202, "headers": {"Location": body["statusUrl"], **_poll_headers(job)}, "body": body}


@bp.route("/reports/{reportId}/generate", methods=["POST"])
@handled
def generate(reportId: str) -> Response:  # noqa: N803
    req = http.current()
    body = http.json_body(req, required=False)
    parsed = models.parse(models.GenerateRequest, body) if body is not None else None
    period = (parsed.period if parsed else None) or clock.now().strftime("%Y-%m")
    who = http.principal(req)
    request = {"principal": who, "userId": who.user_id, "reportId": reportId, "period": period,
               "lane": parsed.lane if parsed else None, "baseUrl": http.base_url(req), "body": body}
    key = req.headers.get("idempotency-key")
    if key is None:
        out = _generate(request)
    else:
        out = idempotency.once(who.user_id, key, {"reportId": reportId, "body": body},
                               lambda: _generate(request))
    return Response(body=out["body"], status_code=out["status"], headers=out["headers"])


@bp.route("/jobs/{jobId}", methods=["GET"], content_types=NO_BODY)
@handled
def get_job(jobId: str) -> Response:  # noqa: N803
    req = http.current()
    who = http.principal(req)
    job = service.get_job(who.user_id, jobId, service.tenant_owner(who))
    return http.cached_json(req, service.to_dict(job, http.base_url(req)), _poll_headers(job))


@bp.route("/jobs", methods=["GET"], content_types=NO_BODY)
@handled
def list_jobs() -> dict:
    req = http.current()
    params = models.parse(models.JobListQuery, http.query_params(req))
    who = http.principal(req)
    out = service.list_jobs(who.user_id, params.status, params.page_size, params.page, params.next_token,
                            service.tenant_owner(who))
    base = http.base_url(req)
    return {**out, "items": [service.to_dict(job, base) for job in out["items"]]}


@bp.route("/jobs/{jobId}", methods=["DELETE"], content_types=NO_BODY)
@handled
def cancel_job(jobId: str) -> dict:  # noqa: N803
    req = http.current()
    who = http.principal(req)
    job = service.cancel_job(who.user_id, jobId, service.tenant_owner(who))
    return service.to_dict(job, http.base_url(req))


@bp.route("/jobs/{jobId}/events", methods=["GET"], content_types=NO_BODY)
@handled
def job_events(jobId: str) -> dict:  # noqa: N803
    req = http.current()
    # Paged like every list: pageSize 1-1000 (default 1000, a whole trail in one page for almost every job).
    params = models.parse(models.EventListQuery, http.query_params(req))
    who = http.principal(req)
    return service.events(who.user_id, jobId, params.page_size, params.next_token, service.tenant_owner(who))


@bp.route("/jobs/{jobId}/deliveries/{n}/retry", methods=["POST"], content_types=NO_BODY)
@handled
def retry_delivery(jobId: str, n: str) -> Response:  # noqa: N803
    from chalicelib.delivery import service as delivery

    req = http.current()
    if not re.fullmatch(r"[0-9]{1,2}", n):
        raise ValidationFailed("n: must be a delivery's number, 0 to 99 (its place in the job's deliveries).",
                               field="n")
    job = delivery.retry(http.principal(req).user_id, jobId, int(n))
    body = service.to_dict(job, http.base_url(req))
    return Response(body=body, status_code=202, headers={"Location": body["statusUrl"]})
