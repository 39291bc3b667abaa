"""Request parsing and response helpers shared by the blueprints."""

from __future__ import annotations

import contextvars
import hashlib
import json
from decimal import Decimal
from typing import Any

from chalice import Response
from chalice.app import Request

from chalicelib.auth import Principal
from chalicelib.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from chalicelib.settings import get_settings

MAX_BODY_BYTES = 6 * 1024 * 1024
MAX_JSON_DEPTH = 20


# Chalice keeps one `app.current_request` for the whole process; `chalice local` serves
# requests on threads, so two requests could read each other's. The middleware pins the
# request of this thread here, and views read it from here only.
_CURRENT: contextvars.ContextVar[Request] = contextvars.ContextVar("current_request")


def bind(request: Request) -> contextvars.Token:
    return _CURRENT.set(request)


def unbind(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


def current() -> Request:
    return _CURRENT.get()


def principal(request: Request) -> Principal:
    return request.principal  # set by api.middleware.guard before any protected view runs


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()


def raw_text(request: Request) -> str:
    raw = request.raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body must be at most {MAX_BODY_BYTES} bytes.")
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ValidationFailed("The body must be UTF-8.") from None


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


class _NotANumber(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotANumber(name)  # NaN, Infinity, -Infinity: Python's json takes them, JSON does not


def json_body(request: Request, required: bool = True) -> Any:
    text = raw_text(request)
    if not text.strip():
        if required:
            raise ValidationFailed("A JSON body is required.")
        return None
    if media_type(request) not in ("application/json",):
        raise UnsupportedMediaType("The body must be application/json.")
    try:
        # Numbers with a point or an exponent become Decimal, exactly as written (never a float); integers int.
        value = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except _NotANumber as err:
        raise ValidationFailed(f"The body is not valid JSON: {err.args[0]} is not a JSON number (JSON has no NaN "
                               "or infinities); send a finite number or a decimal string.") from None
    except (ValueError, RecursionError):
        raise ValidationFailed("The body is not valid JSON.") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValidationFailed(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
    return value


def query(request: Request, name: str) -> str | None:
    params = request.query_params or {}
    return params.get(name)


def query_params(request: Request) -> dict[str, str]:
    """The query string, one value per name (the last one given, as `query` reads it), for a query model."""
    params = request.query_params or {}
    return {name: params.get(name) for name in params}


def base_url(request: Request) -> str:
    configured = get_settings().public_base_url
    if configured:
        return configured
    host = request.headers.get("host") or "localhost"
    proto = request.headers.get("x-forwarded-proto")
    if not proto:
        proto = "http" if host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]") else "https"
    return f"{proto}://{host}"


def etag_of(body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f'"{digest}"'


def cached_json(request: Request, body: Any, headers: dict[str, str] | None = None, tag: str | None = None) -> Response:
    """200 with an ETag (`tag`, else a digest of the body), or 304 when the client already has this representation."""
    tag = tag or etag_of(body)
    headers = {**(headers or {}), "ETag": tag}
    wanted = request.headers.get("if-none-match") or ""
    if tag in [t.strip().removeprefix("W/") for t in wanted.split(",")] or wanted.strip() == "*":
        return Response(body="", status_code=304, headers=headers)
    return Response(body=body, status_code=200, headers=headers)
