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

Nothing is read from the settings at import: the logger, the metrics and the tracer are built by the first
call that needs them (`telemetry()`; in Lambda, the middleware's first invocation).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass
class Telemetry:
    """The process's logger, metrics and tracer, as the settings ask for them."""

    service_name: str
    logger: Logger
    metrics: Metrics
    metrics_on: bool
    tracer: Any  # a Powertools Tracer, or None when tracing is off


_built: Telemetry | None = None
_building = threading.Lock()


def telemetry() -> Telemetry:
    """Built once, at first use (under a lock: the worker's model-request threads count metrics too). Inside
    Lambda it also routes the app's logs through the JSON logger."""
    global _built
    built = _built
    if built is None:
        with _building:
            built = _built = _built or _build()
    return built


def _build() -> Telemetry:
    s = get_settings()
    logger = Logger(service=s.service_name, level=s.log_level, use_rfc3339=True)
    built = Telemetry(service_name=s.service_name, logger=logger,
                      metrics=Metrics(namespace=s.metrics_namespace, service=s.service_name),
                      metrics_on=s.metrics_enabled, tracer=_build_tracer(s.service_name) if s.tracing_enabled else None)
    if s.in_lambda:
        route_app_logs(logger)
    return built


def _build_tracer(service_name: str) -> Any:
    from aws_lambda_powertools import Tracer  # imports and starts the X-Ray SDK: only when it is wanted

    return Tracer(service=service_name)


_cold_start = True


def route_app_logs(into: Logger) -> None:
    """Send every `chalicelib.*` record through the JSON handler (and not also up to Lambda's root handler)."""
    app_logger = logging.getLogger("chalicelib")
    app_logger.handlers = [into.registered_handler]
    app_logger.setLevel(into.log_level)
    app_logger.propagate = False


def bind(**keys: Any) -> None:
    """Correlation keys (`jobId`, `userId`) for this invocation's log lines and its trace subsegment."""
    present = {k: v for k, v in keys.items() if v is not None}
    t = telemetry()
    t.logger.thread_safe_append_keys(**present)
    if t.tracer is not None:
        for key, value in present.items():
            t.tracer.put_annotation(key, str(value))


def count(name: str, value: float = 1, unit: MetricUnit | str = MetricUnit.Count) -> None:
    t = telemetry()
    if t.metrics_on and value:
        t.metrics.add_metric(name=name, unit=unit, value=value)


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
    t = telemetry()
    if t.metrics_on and t.metrics.metric_set:
        t.metrics.flush_metrics()


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
    t = telemetry()
    if t.tracer is None:
        yield
        return
    with t.tracer.provider.in_subsegment(f"## {name}") as subsegment:
        subsegment.put_annotation("ColdStart", cold)
        subsegment.put_annotation("Service", t.service_name)
        yield


def middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every event type: correlation keys, a trace subsegment, one metrics flush."""
    name, keys = _correlation(event)
    logger = telemetry().logger
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})
    try:
        with _segment(name):
            return get_response(event)
    finally:
        flush()
        logger.thread_safe_clear_keys()
