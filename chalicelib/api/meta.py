"""Unauthenticated routes: health (liveness and readiness), the OpenAPI document and the dashboard page."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, ConnectTimeoutError, ReadTimeoutError
from chalice import Blueprint, Response
from chalice.app import HeadersType

from chalicelib.api import problems
from chalicelib.api.routes import NO_BODY
from chalicelib.errors import ServiceUnavailable
from chalicelib.settings import Settings, get_settings

bp = Blueprint(__name__)
log = logging.getLogger(__name__)
_HERE = Path(__file__).parent

# Readiness probes: their own clients, separate from chalicelib.deps (whose timeouts and retries suit requests),
# so that a sick dependency answers "not ready" within READY_DEADLINE_SECONDS instead of after retries.
# Module attributes, not constants folded into a Config: the tests that check how a part fails (not how fast)
# lengthen both, since a moto server on a loaded 2-core CI machine can take over a second for one call.
PROBE_TIMEOUT_SECONDS = 1.0
READY_DEADLINE_SECONDS = 2.0
_MISSING = frozenset({"ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
                      "NoSuchBucket", "NotFound", "404"})
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "403", "UnrecognizedClientException",
                     "InvalidClientTokenId"})


@lru_cache(maxsize=1)
def _openapi() -> str:
    return (_HERE / "openapi.json").read_text()


@bp.route("/health", methods=["GET"], content_types=NO_BODY)
def health() -> dict:
    """Liveness: the function answers. Touches no dependency (it is polled often, and must stay cheap)."""
    return {"status": "ok"}


@bp.route("/health/ready", methods=["GET"], content_types=NO_BODY)
def ready() -> Response:
    """Readiness: the job table, the work queue and the results bucket each answer, checked in parallel."""
    checks = check_dependencies(get_settings())
    headers: HeadersType = {"Cache-Control": "no-store"}
    if all(result == "ok" for result in checks.values()):
        return Response(body={"status": "ready", "checks": checks}, status_code=200, headers=headers)
    failing = ", ".join(f"the {part} ({result})" for part, result in checks.items() if result != "ok")
    log.warning("not ready", extra={"checks": checks})
    response = problems.from_error(ServiceUnavailable(f"Not ready: {failing} did not answer as expected.",
                                                      checks=checks))
    response.headers.update(headers)
    return response


def check_dependencies(settings: Settings) -> dict[str, str]:
    """{"table": ..., "queue": ..., "bucket": ...}: "ok", or why not ("missing", "timeout", "unreachable", ...)."""
    # The clients are made here, on the request's thread: boto3's default session is not thread-safe, and
    # three probe threads making their first clients at once could fail one spuriously (a 503 on a cold start).
    dynamodb, sqs, s3 = (_probe_client(service, settings) for service in ("dynamodb", "sqs", "s3"))
    probes: dict[str, Callable[[], Any]] = {
        "table": lambda: dynamodb.get_item(
            TableName=settings.table("jobs"), Key={"jobId": {"S": "readiness-probe"}}, ProjectionExpression="jobId"),
        "queue": lambda: sqs.get_queue_attributes(QueueUrl=_queue_url(settings), AttributeNames=["QueueArn"]),
        "bucket": lambda: s3.head_bucket(Bucket=settings.results_bucket),
    }
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="ready")
    try:
        futures = {part: pool.submit(probe) for part, probe in probes.items()}
        wait(futures.values(), timeout=READY_DEADLINE_SECONDS)  # one deadline for all three
        results: dict[str, str] = {}
        for part, future in futures.items():
            if not future.done():
                results[part] = "timeout"
            elif (error := future.exception()) is not None:
                results[part] = _reason(error)
            else:
                results[part] = "ok"
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung probe does not hold the answer


def _reason(err: BaseException) -> str:
    if isinstance(err, (ConnectTimeoutError, ReadTimeoutError)):
        return "timeout"
    if isinstance(err, ConnectionError):
        return "unreachable"
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            return "missing"
        if code in _DENIED:
            return "denied"
        return "error"
    return "error"


def _queue_url(settings: Settings) -> str:
    if settings.work_queue_url:
        return settings.work_queue_url
    return _probe_client("sqs", settings).get_queue_url(QueueName=f"{settings.prefix}-work")["QueueUrl"]


def _probe_client(service: str, settings: Settings) -> Any:
    return _client(service, settings.region, settings.aws_endpoint_url, PROBE_TIMEOUT_SECONDS)


@lru_cache(maxsize=16)
def _client(service: str, region: str, endpoint: str | None, timeout: float) -> Any:
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1},
                    max_pool_connections=2)
    return boto3.client(service, region_name=region, endpoint_url=endpoint, config=config)


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
