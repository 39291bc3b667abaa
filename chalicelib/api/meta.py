"""Unauthenticated routes: health, the OpenAPI document and the dashboard page."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from chalice import Blueprint, Response

from chalicelib.api.routes import NO_BODY

bp = Blueprint(__name__)
_HERE = Path(__file__).parent


@lru_cache(maxsize=1)
def _openapi() -> str:
    return (_HERE / "openapi.json").read_text()


@bp.route("/health", methods=["GET"], content_types=NO_BODY)
def health() -> dict:
    return {"status": "ok"}


@bp.route("/openapi.json", methods=["GET"], content_types=NO_BODY)
def openapi() -> Response:
    return Response(body=_openapi(), headers={"Content-Type": "application/json"})


@bp.route("/", methods=["GET"], content_types=NO_BODY)
def dashboard() -> Response:
    page = _HERE / "dashboard.html"
    html = page.read_text() if page.exists() else "<!doctype html><title>Reports</title><p>See /openapi.json</p>"
    # The page's own <meta> CSP limits what it loads; framing can only be refused by a header.
    return Response(body=html, headers={"Content-Type": "text/html; charset=utf-8", "X-Frame-Options": "DENY",
                                        "Content-Security-Policy": "frame-ancestors 'none'",
                                        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def openapi_document() -> dict:
    return json.loads(_openapi())
