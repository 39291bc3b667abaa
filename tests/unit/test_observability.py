"""Logs, metrics and traces: quiet in tests and locally, JSON with correlation keys and EMF inside Lambda."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from aws_lambda_powertools import Logger

from chalicelib import clock, observability


@pytest.fixture
def emf(monkeypatch):
    """Metrics switched on as in Lambda; yields the metric set, cleared afterwards."""
    telemetry = observability.telemetry()
    monkeypatch.setattr(telemetry, "metrics_on", True)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    telemetry.metrics.clear_metrics()
    yield telemetry.metrics
    telemetry.metrics.clear_metrics()


@pytest.fixture
def json_logs():
    """chalicelib.* routed into a Powertools Logger writing to a buffer, as in Lambda; restored afterwards."""
    app_logger = logging.getLogger("chalicelib")
    saved = (app_logger.handlers[:], app_logger.level, app_logger.propagate)
    stream = io.StringIO()
    # A service name of its own: Powertools reuses the handler (and stream) of a logger it has seen before.
    observability.route_app_logs(Logger(service=f"test-{uuid.uuid4().hex}", stream=stream))
    yield stream
    app_logger.handlers, app_logger.level, app_logger.propagate = saved[0], saved[1], saved[2]


def test_tests_run_without_metrics_tracing_or_json_logs():
    assert observability.telemetry().metrics_on is False
    assert observability.telemetry().tracer is None  # the X-Ray SDK is not even imported
    assert logging.getLogger("chalicelib").propagate is True


def test_nothing_is_recorded_when_metrics_are_off():
    metrics = observability.telemetry().metrics
    metrics.clear_metrics()
    observability.job_created()
    observability.lines_done(100, 3)
    assert not metrics.metric_set


def test_job_metrics_serialize_as_emf(emf):
    observability.job_created()
    observability.job_finished("Completed", clock.iso(clock.now() - timedelta(seconds=90)))
    observability.job_finished("Failed", None)
    observability.job_finished("Processing", None)  # not a finish: nothing
    observability.lines_done(100, needs_review=3)
    observability.cache_lookups(hits=30, misses=10)
    observability.model_request()
    observability.model_request(rate_limited=True)
    doc = emf.serialize_metric_set()
    values = {k: sum(v) for k, v in doc.items() if isinstance(v, list)}
    assert values[observability.JOBS_CREATED] == 1.0 and values[observability.JOBS_FAILED] == 1.0
    assert 89 <= values[observability.JOB_DURATION] <= 120
    assert values[observability.LINES_PROCESSED] == 100 and values[observability.LINES_NEEDING_REVIEW] == 3
    assert values[observability.CACHE_HITS] == 30 and values[observability.CACHE_MISSES] == 10
    assert values[observability.MODEL_REQUESTS] == 2 and values[observability.MODEL_RATE_LIMITED] == 1
    assert set(values) <= observability.METRICS
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == emf.namespace and ["service"] in directive["Dimensions"]


def test_the_middleware_flushes_once_per_invocation(emf, capsys):
    event = SimpleNamespace(context=SimpleNamespace(function_name="reports-test-process-work", aws_request_id="r-1"))
    observability.middleware(event, lambda e: observability.lines_done(5))
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p[observability.LINES_PROCESSED] for p in printed] == [[5.0]]
    assert not emf.metric_set


def test_app_log_lines_carry_the_correlation_keys_and_are_cleared_after(json_logs):
    event = SimpleNamespace(context=SimpleNamespace(function_name="reports-test-process-work", aws_request_id="r-9"))

    def handler(_event):
        observability.bind(jobId="job-1", userId="user-1")
        logging.getLogger("chalicelib.worker").info("batch done", extra={"lines": 100})

    observability.middleware(event, handler)
    logging.getLogger("chalicelib.worker").info("between invocations")
    first, second = (json.loads(line) for line in json_logs.getvalue().splitlines())
    assert (first["jobId"], first["userId"], first["requestId"], first["lines"]) == ("job-1", "user-1", "r-9", 100)
    assert first["message"] == "batch done" and first["level"] == "INFO"
    assert "jobId" not in second and "requestId" not in second


def test_the_api_request_ids_are_bound_for_http_events(json_logs):
    from chalice.app import Request

    request = Request({"multiValueQueryStringParameters": None, "headers": {}, "pathParameters": {},
                       "requestContext": {"httpMethod": "GET", "resourcePath": "/health", "requestId": "api-7"},
                       "body": None, "isBase64Encoded": False, "stageVariables": None},
                      lambda_context=SimpleNamespace(aws_request_id="lambda-7"))
    observability.middleware(request, lambda r: logging.getLogger("chalicelib.api").info("served"))
    line = json.loads(json_logs.getvalue())
    assert (line["requestId"], line["apiRequestId"]) == ("lambda-7", "api-7")
