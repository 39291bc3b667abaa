"""The one place where errors become application/problem+json responses.

Every `type` comes from the registry (chalicelib/api/problem_types.py): an AppError by its class's slug,
an answer of Chalice's own (404, 405, 415, 500 ...) by its status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from chalice import Response
from chalice.app import HeadersType

from chalicelib.api import problem_types
from chalicelib.errors import AppError

PROBLEM = "application/problem+json"


def problem(status: int, detail: str, slug: str | None = None, headers: Mapping[str, str | list[str]] | None = None,
            **extensions: Any) -> Response:
    """A problem+json answer of the registered type `slug` (by default the type registered for `status`)."""
    kind = problem_types.get(slug) if slug else problem_types.for_status(status)
    body = {"type": kind.uri, "title": kind.title, "status": status, "detail": detail, **extensions}
    answered: HeadersType = {"Content-Type": PROBLEM, **(headers or {})}
    return Response(body=json.dumps(body), status_code=status, headers=answered)


def from_error(err: AppError) -> Response:
    headers = dict(err.headers)
    if err.status == 401:
        presented = err.extensions.get("tokenPresented", True)
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if presented else "Bearer"
    reserved = {"type", "title", "status", "detail", "kind", "slug", "headers", "tokenPresented"}
    extensions = {k: v for k, v in err.extensions.items() if v is not None and k not in reserved}
    return problem(err.status, err.detail, err.slug, headers, **extensions)


def normalize(response: Response) -> Response:
    """Turn Chalice's own error bodies ({"Code", "Message"}) into problem+json."""
    if response.status_code < 400:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    content_type = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
    if isinstance(content_type, str) and content_type.startswith(PROBLEM):  # a list: a multi-value header
        return response
    body = response.body if isinstance(response.body, dict) else {}
    status = response.status_code
    if status >= 500:
        detail = "The service hit an unexpected error; the request was not completed. Try again."
    elif status == 405:
        # Chalice's message names the method, which is the client's text: say it in our own words.
        detail = "This path does not take this method; the Allow header lists the methods it takes."
    else:
        detail = str(body.get("Message") or problem_types.for_status(status).title)
    return problem(status, detail, headers=headers)
