"""Report configurations and expense lines."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib.api import http, models
from chalicelib.api.routes import NO_BODY, created, handled
from chalicelib.errors import UnsupportedMediaType
from chalicelib.lines import store, validation
from chalicelib.reports import service
from chalicelib.settings import get_settings

bp = Blueprint(__name__)
BODY_TYPES = ["application/json", "text/csv"]


@bp.route("/reports", methods=["POST"], content_types=BODY_TYPES)
@handled
def create_report() -> Response:
    request = http.current()
    report, secret = service.create_report(http.principal(request), http.json_body(request))
    # The webhook signing secret is in this response and in no later one (a rotation makes a new one).
    body = {**service.to_dict(report), **({"webhookSecret": secret} if secret else {})}
    return created(body, {"Location": f"/api/v1/reports/{report.report_id}"})


@bp.route("/reports", methods=["GET"], content_types=NO_BODY)
@handled
def list_reports() -> dict:
    request = http.current()
    params = models.parse(models.ReportListQuery, http.query_params(request))
    out = service.list_reports(http.principal(request), params.page_size, params.next_token)
    return {"items": [service.to_dict(r) for r in out["items"]], "nextToken": out["nextToken"]}


@bp.route("/reports/{reportId}", methods=["GET"], content_types=NO_BODY)
@handled
def get_report(reportId: str) -> Response:  # noqa: N803 (Chalice passes path params by name)
    request = http.current()
    report = service.get_visible(http.principal(request), reportId)
    return http.cached_json(request, service.to_dict(report), tag=service.etag(report))


@bp.route("/reports/{reportId}", methods=["PATCH"], content_types=["application/json"])
@handled
def update_report(reportId: str) -> Response:  # noqa: N803
    request = http.current()
    who = http.principal(request)
    # The body is read (and a malformed one refused) before any store is touched; its fields are checked after
    # the report is found, so a report the caller may not see is 404 whatever the body.
    body = http.json_body(request)
    report, secret = service.update_report(who, reportId, body, request.headers.get("if-match"))
    out = {**service.to_dict(report), **({"webhookSecret": secret} if secret else {})}
    return Response(body=out, status_code=200, headers={"ETag": service.etag(report)})


@bp.route("/reports/{reportId}/webhook-secret/rotate", methods=["POST"], content_types=NO_BODY)
@handled
def rotate_webhook_secret(reportId: str) -> dict:  # noqa: N803
    request = http.current()
    return service.rotate_secret(http.principal(request), reportId)


@bp.route("/reports/{reportId}", methods=["DELETE"], content_types=NO_BODY)
@handled
def delete_report(reportId: str) -> Response:  # noqa: N803
    request = http.current()
    service.delete_report(http.principal(request), reportId, request.headers.get("if-match"))
    return Response(body="", status_code=204, headers={})


@bp.route("/expenses", methods=["POST"], content_types=BODY_TYPES)
@handled
def import_expenses() -> Response:
    request = http.current()
    limit = get_settings().max_import_lines
    kind = http.media_type(request)
    if kind == "text/csv":
        lines = validation.parse_csv(http.raw_text(request), limit)
    elif kind == "application/json":
        lines = models.parse(models.ExpenseImport, http.json_body(request), max_lines=limit).stored()
    else:
        raise UnsupportedMediaType("Send application/json or text/csv.")
    return created(store.import_lines(http.principal(request), lines))


@bp.route("/expenses", methods=["GET"], content_types=NO_BODY)
@handled
def list_expenses() -> dict:
    request = http.current()
    params = models.parse(models.ExpenseListQuery, http.query_params(request))
    return store.list_lines(http.principal(request), params.period, params.page_size, params.next_token)
