"""Result, retry and line settlement routes."""

from __future__ import annotations

from chalice import Blueprint, Response
from chalice.app import HeadersType

from chalicelib import results
from chalicelib.api import http, models
from chalicelib.api.routes import NO_BODY, handled
from chalicelib.errors import Conflict
from chalicelib.jobs import actions, service
from chalicelib.jobs.states import JobStatus
from chalicelib.settings import get_settings

bp = Blueprint(__name__)


@bp.route("/jobs/{jobId}/result", methods=["GET"], content_types=NO_BODY)
@handled
def get_result(jobId: str) -> Response:  # noqa: N803
    req = http.current()
    fmt = models.parse(models.ResultQuery, http.query_params(req)).format
    job = service.get_job(http.principal(req).user_id, jobId)
    if job.status != JobStatus.COMPLETED.value or not job.result_key:
        raise Conflict(f"The result is available once the job is Completed; it is {job.status}.",
                       jobStatus=job.status)
    body, url = results.fetch(job.result_key, csv_format=fmt == "csv")
    if body is None:
        return Response(body="", status_code=303, headers={"Location": url})
    content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    headers: HeadersType = {"Content-Type": content_type, "ETag": f'"{job.job_id}-v{int(job.result_version)}-{fmt}"'}
    if fmt == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{job.report_id}-{job.period}.csv"'
    if req.headers.get("if-none-match") == headers["ETag"]:
        return Response(body="", status_code=304, headers=headers)
    return Response(body=body.decode("utf-8"), status_code=200, headers=headers)


@bp.route("/jobs/{jobId}/retry", methods=["POST"], content_types=NO_BODY)
@handled
def retry_job(jobId: str) -> Response:  # noqa: N803
    req = http.current()
    who = http.principal(req)
    job = actions.retry_job(who.user_id, jobId, service.tenant_owner(who))
    body = service.to_dict(job, http.base_url(req))
    return Response(body=body, status_code=202,
                    headers={"Location": body["statusUrl"], "Retry-After": str(get_settings().poll_interval_seconds)})


@bp.route("/jobs/{jobId}/lines/{lineId}", methods=["PATCH"])
@handled
def settle_line(jobId: str, lineId: str) -> dict:  # noqa: N803
    req = http.current()
    return actions.settle_line(http.principal(req).user_id, jobId, lineId, http.json_body(req))
