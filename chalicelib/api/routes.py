"""Shared view plumbing: every view maps AppError to problem+json in one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable
from chalice import Response
from chalice.app import HeadersType

from chalicelib.api import problems
from chalicelib.errors import AppError, ServiceUnavailable, ValidationFailed

log = logging.getLogger(__name__)
# What a data store answers when it is overloaded or down, as opposed to a request it refuses.
_UNAVAILABLE_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                                "InternalServerError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})

# Routes that read no body accept any Content-Type (Chalice would otherwise demand JSON on a GET).
NO_BODY = ["*/*"]


def handled(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def run(**kwargs: Any) -> Any:
        try:
            return view(**kwargs)
        except AppError as err:
            return problems.from_error(err)
        except Exception as err:
            if store_refused(err):
                # A value the edge let through that DynamoDB will not take (a key past its size limit, an item
                # over 400 KB): the request is at fault, so a 400, and nothing was written by the refused call.
                log.warning("a data store refused a request value", extra={"error": _code(err)})
                return problems.from_error(ValidationFailed(
                    "A value in this request is one the data store does not accept (empty, or too long); "
                    "the request was not carried out."))
            if not store_unavailable(err):
                raise
            # A timeout or an outage of DynamoDB/SQS/S3 is a 503 the client may retry, not a 500 bug report.
            log.warning("a data store did not answer", extra={"error": type(err).__name__})
            return problems.from_error(ServiceUnavailable("A data store this request needs did not answer; "
                                                          "try again shortly."))

    return run


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and what caused it: PynamoDB wraps the botocore error (as its cause, and in `.cause`)."""
    out: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and len(out) < 8 and seen not in out:
        out.append(seen)
        wrapped = getattr(seen, "cause", None)
        seen = seen.__cause__ or (wrapped if isinstance(wrapped, BaseException) else None) or seen.__context__
    return out


def _code(err: BaseException) -> str:
    for seen in _chain(err):
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code", ""))
    return ""


def store_refused(err: BaseException) -> bool:
    """True if a data store refused a value of the request (DynamoDB's ValidationException)."""
    return any(isinstance(seen, ClientError) and seen.response.get("Error", {}).get("Code") == "ValidationException"
               for seen in _chain(err))


def store_unavailable(err: BaseException) -> bool:
    """True if `err` comes of a timeout, an unreachable endpoint or throttling of an AWS data store.

    The whole chain is searched: PynamoDB wraps the botocore error, and its `cause_response_code` itself raises
    AttributeError when that error is a timeout, so callers checking it fail with a third exception.
    """
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (EndpointUnreachable, HTTPClientError)):
            return True
        if isinstance(seen, ClientError) and seen.response.get("Error", {}).get("Code") in _UNAVAILABLE_CODES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def created(body: Any, headers: HeadersType | None = None) -> Response:
    return Response(body=body, status_code=201, headers=headers or {})
