"""HTTP middleware: authentication for every protected route, and uniform error bodies."""

from __future__ import annotations

import logging
from collections.abc import Callable

from chalice import Response
from chalice.app import Request

from chalicelib import observability
from chalicelib.api import http, problems
from chalicelib.auth import principal_from_header
from chalicelib.errors import AppError, Unauthorized
from chalicelib.lines.validation import check_line_id_key
from chalicelib.settings import get_settings

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/", "/health", "/health/ready", "/openapi.json"})


def guard(request: Request, get_response: Callable[[Request], Response]) -> Response:
    token = http.bind(request)
    try:
        return _guard(request, get_response)
    finally:
        http.unbind(token)


def _guard(request: Request, get_response: Callable[[Request], Response]) -> Response:
    if request.method != "OPTIONS" and request.path not in PUBLIC_PATHS:
        try:
            http.authenticate(request, principal_from_header(request.headers.get("authorization"), get_settings()))
        except Unauthorized as err:
            # The reason goes to the caller; the token itself is never logged.
            log.info("rejected token", extra={"reason": err.detail, "path": request.path})
            return _with_cors(problems.from_error(err))
        except AppError as err:  # e.g. the signing secret could not be read (503)
            return _with_cors(problems.from_error(err))
        observability.bind(userId=http.principal(request).user_id)
        try:
            _check_path_keys(request)
        except AppError as err:
            return _with_cors(problems.from_error(err))
    return _with_cors(problems.normalize(get_response(request)))


def _check_path_keys(request: Request) -> None:
    """Path parameters that become DynamoDB keys fit DynamoDB's key limits, or the request is a 400.

    jobId and reportId are matched against their own formats by their services (an id of another shape is
    simply not found); a lineId may be any stored line's id, so only its size as a sort key is checked here.
    """
    params = getattr(request, "uri_params", None) or {}
    if "lineId" in params:
        check_line_id_key(params["lineId"], field="lineId")


def _with_cors(response: Response) -> Response:
    origin = get_settings().cors_allow_origin
    if origin and not any(k.lower() == "access-control-allow-origin" for k in response.headers):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Location,Retry-After,ETag"
    return response
