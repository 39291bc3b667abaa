"""Logs, metrics and traces (Powertools), on inside Lambda and quiet everywhere else.

- Logs: inside Lambda every `chalicelib.*` logger writes JSON through the Powertools Logger, with the
  correlation keys `bind()` appends (`requestId`, `apiRequestId`, `jobId`, `userId`); elsewhere they keep
  the process's own logging setup (the local stack's text lines, pytest's capture).
- Metrics: CloudWatch EMF in the namespace `POWERTOOLS_METRICS_NAMESPACE` with the dimension `service`,
  flushed once per invocation by `middleware`. The names are the constants below; the alarms and the
  dashboard in infra/deploy.yaml use the same names (tests/unit/test_template.py checks it).
- Traces: with `tracing_enabled` a Powertools Tracer (X-Ray SDK, boto calls patched) puts each handler in a
  `## <handler>` subsegment. The SDK costs ~0.2-0.4 s of import, so it is built only when enabled: the API
  function's stage disables it to keep its cold start in budget.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from chalice.app import Request

from chalicelib import clock
from chalicelib.settings import get_settings

# Metric names (EMF): one place, so alarms and dashboards cannot drift from the code.
JOBS_CREATED = "JobsCreated"
JOBS_COMPLETED = "JobsCompleted"
JOBS_FAILED = "JobsFailed"
JOBS_CANCELLED = "JobsCancelled"
JOB_DURATION = "JobDurationSeconds"
LINES_PROCESSED = "LinesProcessed"
LINES_NEEDING_REVIEW = "LinesNeedingReview"
CACHE_HITS = "VendorCacheHits"
CACHE_MISSES = "VendorCacheMisses"
MODEL_REQUESTS = "ModelRequests"
MODEL_RATE_LIMITED = "ModelRateLimited"
METRICS = frozenset({JOBS_CREATED, JOBS_COMPLETED, JOBS_FAILED, JOBS_CANCELLED, JOB_DURATION, LINES_PROCESSED,
                     LINES_NEEDING_REVIEW, CACHE_HITS, CACHE_MISSES, MODEL_REQUESTS, MODEL_RATE_LIMITED})
_FINISHED = {"Completed": JOBS_COMPLETED, "Failed": JOBS_FAILED, "Cancelled": JOBS_CANCELLED}  # by terminal status

_settings = get_settings()
logger = Logger(service=_settings.service_name, level=_settings.log_level, use_rfc3339=True)
metrics = Metrics(namespace=_settings.metrics_namespace, service=_settings.service_name)
metrics_on = _settings.metrics_enabled


def _build_tracer() -> Any:
    if not _settings.tracing_enabled:
        return None
    from aws_lambda_powertools import Tracer  # imports and starts the X-Ray SDK: only when it is wanted

    return Tracer(service=_settings.service_name)


tracer = _build_tracer()
_cold_start = True


def route_app_logs(into: Logger = logger) -> None:
    """Send every `chalicelib.*` record through the JSON handler (and not also up to Lambda's root handler)."""
    app_logger = logging.getLogger("chalicelib")
    app_logger.handlers = [into.registered_handler]
    app_logger.setLevel(into.log_level)
    app_logger.propagate = False


if _settings.in_lambda:
    route_app_logs()


def bind(**keys: Any) -> None:
    """Correlation keys (`jobId`, `userId`) for this invocation's log lines and its trace subsegment."""
    present = {k: v for k, v in keys.items() if v is not None}
    logger.thread_safe_append_keys(**present)
    if tracer is not None:
        for key, value in present.items():
            tracer.put_annotation(key, str(value))


def count(name: str, value: float = 1, unit: str = MetricUnit.Count) -> None:
    if metrics_on and value:
        metrics.add_metric(name=name, unit=unit, value=value)


def job_created() -> None:
    count(JOBS_CREATED)


def job_finished(status: str, created_at: str | None) -> None:
    """A job reached `status`; a completed job also reports how long it took from creation."""
    from chalicelib.jobs.states import TERMINAL, JobStatus  # here: jobs.states imports this module

    if status not in TERMINAL:
        return
    name = _FINISHED[JobStatus(status)]
    count(name)
    started = clock.parse(created_at)
    if status == JobStatus.COMPLETED and started:
        count(JOB_DURATION, max(0.0, (clock.now() - started).total_seconds()), MetricUnit.Seconds)


def lines_done(lines: int, needs_review: int = 0) -> None:
    count(LINES_PROCESSED, lines)
    count(LINES_NEEDING_REVIEW, needs_review)


def cache_lookups(hits: int, misses: int) -> None:
    count(CACHE_HITS, hits)
    count(CACHE_MISSES, misses)


def model_request(rate_limited: bool = False) -> None:
    """One request sent to the model provider; `rate_limited` when it was answered 429."""
    count(MODEL_REQUESTS)
    count(MODEL_RATE_LIMITED, int(rate_limited))


def flush() -> None:
    if metrics_on and metrics.metric_set:
        metrics.flush_metrics()


def _correlation(event: Any) -> tuple[str, dict[str, Any]]:
    """(handler name, log keys) for a Chalice event: an HTTP Request or a Lambda event (SQS, schedule)."""
    if isinstance(event, Request):
        return "api", {"requestId": getattr(event.lambda_context, "aws_request_id", None),
                       "apiRequestId": (event.context or {}).get("requestId"), "path": event.path}
    context = getattr(event, "context", None)
    return (getattr(context, "function_name", None) or type(event).__name__,
            {"requestId": getattr(context, "aws_request_id", None)})


@contextlib.contextmanager
def _segment(name: str) -> Iterator[None]:
    global _cold_start
    cold, _cold_start = _cold_start, False
    if tracer is None:
        yield
        return
    with tracer.provider.in_subsegment(f"## {name}") as subsegment:
        subsegment.put_annotation("ColdStart", cold)
        subsegment.put_annotation("Service", _settings.service_name)
        yield


def middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every event type: correlation keys, a trace subsegment, one metrics flush."""
    name, keys = _correlation(event)
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})
    try:
        with _segment(name):
            return get_response(event)
    finally:
        flush()
        logger.thread_safe_clear_keys()
