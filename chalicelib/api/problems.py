"""The one place where errors become application/problem+json responses."""

from __future__ import annotations

import json
import re
from typing import Any

from chalice import Response

from chalicelib.errors import AppError

PROBLEM = "application/problem+json"
_TITLES = {400: "Invalid request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Payload too large",
           415: "Unsupported media type", 422: "Unprocessable request", 429: "Too many requests",
           500: "Internal error", 503: "Service unavailable"}


def _slug(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def problem(status: int, detail: str, title: str | None = None, kind: str | None = None,
            headers: dict[str, str] | None = None, **extensions: Any) -> Response:
    body = {"type": f"urn:reports:problem:{kind or status}", "title": title or _TITLES.get(status, "Error"),
            "status": status, "detail": detail, **extensions}
    return Response(body=json.dumps(body), status_code=status, headers={"Content-Type": PROBLEM, **(headers or {})})


def from_error(err: AppError) -> Response:
    headers = dict(err.headers)
    if err.status == 401:
        presented = err.extensions.get("tokenPresented", True)
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if presented else "Bearer"
    reserved = {"type", "title", "status", "detail", "kind", "headers", "tokenPresented"}
    extensions = {k: v for k, v in err.extensions.items() if v is not None and k not in reserved}
    return problem(err.status, err.detail, err.title, _slug(type(err).__name__), headers, **extensions)


def normalize(response: Response) -> Response:
    """Turn Chalice's own error bodies ({"Code", "Message"}) into problem+json."""
    if response.status_code < 400:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    content_type = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
    if content_type.startswith(PROBLEM):
        return response
    body = response.body if isinstance(response.body, dict) else {}
    status = response.status_code
    if status >= 500:
        detail = "The service hit an unexpected error; the request was not completed. Try again."
    elif status == 405:
        # Chalice's message names the method, which is the client's text: say it in our own words.
        detail = "This path does not take this method; the Allow header lists the methods it takes."
    else:
        detail = str(body.get("Message") or _TITLES.get(status, "The request was not accepted."))
    return problem(status, detail, headers=headers)
