"""Shared view plumbing: every view maps AppError to problem+json in one place."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from chalice import Response

from chalicelib.api import problems
from chalicelib.errors import AppError

# Routes that read no body accept any Content-Type (Chalice would otherwise demand JSON on a GET).
NO_BODY = ["*/*"]


def handled(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def run(**kwargs: Any) -> Any:
        try:
            return view(**kwargs)
        except AppError as err:
            return problems.from_error(err)

    return run


def created(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(body=body, status_code=201, headers=headers or {})
