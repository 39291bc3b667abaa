"""Import routes: a large file as an import job (POST /imports), and a period's lines removed (DELETE /expenses)."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import clock
from chalicelib.api import http, models
from chalicelib.api.routes import NO_BODY, handled
from chalicelib.jobs import service
from chalicelib.lines import imports
from chalicelib.settings import get_settings

bp = Blueprint(__name__)


@bp.route("/imports", methods=["POST"], content_types=["application/json"])
@handled
def start_import() -> Response:
    request = http.current()
    who = http.principal(request)
    asked = models.parse(models.ImportRequest, http.json_body(request))
    out = imports.create_import(who, asked.mode, asked.period, asked.report_id)
    body = {**service.to_dict(out.job, http.base_url(request)), "uploadUrl": out.upload_url,
            "uploadExpiresAt": clock.iso(out.upload_expires_at)}
    return Response(body=body, status_code=202, headers={
        "Location": body["statusUrl"], "Retry-After": str(get_settings().poll_interval_seconds)})


@bp.route("/expenses", methods=["DELETE"], content_types=NO_BODY)
@handled
def delete_expenses() -> Response:
    request = http.current()
    params = models.parse(models.ExpenseDeleteQuery, http.query_params(request))
    imports.delete_period(http.principal(request), params.period)
    return Response(body="", status_code=204, headers={})
