"""The only reader of the environment: one frozen Settings built once per process."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

# The local default is documented in the README; deployed stages read the secret from SSM.
LOCAL_JWT_SECRET = "local-development-secret-change-me-0123456789"

TABLES = ("reports", "lines", "jobs", "chunks", "events", "results", "vendor-cache", "control", "idempotency")


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    prefix: str = "reports-dev"
    region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    work_queue_url: str | None = None
    results_bucket: str = "reports-dev-results"
    public_base_url: str | None = None
    cors_allow_origin: str = "*"
    jwt_secret: str = field(default=LOCAL_JWT_SECRET, repr=False)
    jwt_jwks_url: str | None = None
    # Deployed stages name SSM parameters (SecureString) instead; chalicelib.credentials reads them at first use.
    jwt_secret_param: str | None = None
    openai_api_key_param: str | None = None
    secrets_max_age_seconds: int = 300
    # Observability (chalicelib.observability): JSON logs, EMF metrics and X-Ray only inside Lambda.
    in_lambda: bool = False
    service_name: str = "async-reports"
    metrics_namespace: str = "AsyncReports"
    metrics_enabled: bool = False
    tracing_enabled: bool = False
    log_level: str = "INFO"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # JWKS mode only: the Cognito token kind accepted (`token_use`), "access" or "id" (chalicelib.auth).
    jwt_token_use: str = "access"
    jobs_per_hour: int = 20
    retention_days: int = 30
    poll_interval_seconds: int = 2
    max_import_lines: int = 5000
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    model_batch_size: int = 25
    model_concurrency: int = 4
    # The provider's limits, shared by every worker through the DynamoDB limiter (unset: no limiter).
    openai_rpm: float | None = None
    openai_tpm: float | None = None
    # Longest wait for a turn at that limiter; a longer one hands the chunk back to the queue (limiter.py).
    # At 20,000 lines, 3 s handed chunks back 70 times (SQS messages per 1,000 lines tripled); 6 s did it
    # 8 times at the same throughput.
    limiter_wait_max_seconds: float = 6.0
    openai_timeout_seconds: float = 30.0
    line_batch_size: int = 100
    # A batch may take up to this many times line_batch_size lines when they need no more model requests
    # than one wave (worker._next_batch); 1 makes every batch exactly line_batch_size lines.
    line_read_ahead: int = 4
    # Jobs with more lines than this fan out into chunks of `chunk_lines`, each worked in parallel.
    fanout_threshold_lines: int = 2000
    chunk_lines: int = 1000
    lambda_time_reserve_seconds: float = 20.0
    inline_wait_max_seconds: float = 10.0
    rate_limit_ceiling_seconds: float = 3600.0
    stale_after_seconds: int = 300
    result_inline_max_bytes: int = 5_000_000
    # ASL retriers for model requests; None means categorize.retry.DEFAULT_POLICY.
    retry_policy: tuple[dict, ...] | None = None
    # Delivery (chalicelib/delivery): the verified SES identity emails are sent from; whether webhooks may
    # go to http://127.0.0.1 / localhost (`make run` and the tests only, never a deployed stage).
    ses_from: str = "reports@example.com"
    webhook_allow_loopback: bool = False
    webhook_timeout_seconds: float = 15.0

    def table(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        prefix = env.get("APP_PREFIX", "reports-dev")
        in_lambda = bool(env.get("AWS_LAMBDA_FUNCTION_NAME")) and not env.get("AWS_CHALICE_CLI_MODE")
        return cls(
            prefix=prefix,
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            work_queue_url=env.get("WORK_QUEUE_URL") or None,
            results_bucket=env.get("RESULTS_BUCKET", f"{prefix}-results"),
            public_base_url=(env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            cors_allow_origin=env.get("CORS_ALLOW_ORIGIN", "*"),
            jwt_secret=env.get("JWT_SECRET") or LOCAL_JWT_SECRET,
            jwt_jwks_url=env.get("JWT_JWKS_URL") or None,
            jwt_secret_param=env.get("JWT_SECRET_PARAM") or None,
            openai_api_key_param=env.get("OPENAI_API_KEY_PARAM") or None,
            secrets_max_age_seconds=_int("SECRETS_MAX_AGE_SECONDS", 300),
            in_lambda=in_lambda,
            service_name=env.get("POWERTOOLS_SERVICE_NAME") or "async-reports",
            metrics_namespace=env.get("POWERTOOLS_METRICS_NAMESPACE") or "AsyncReports",
            metrics_enabled=in_lambda and not _true("POWERTOOLS_METRICS_DISABLED"),
            tracing_enabled=in_lambda and not _true("POWERTOOLS_TRACE_DISABLED"),
            log_level=(env.get("POWERTOOLS_LOG_LEVEL") or env.get("LOG_LEVEL") or "INFO").upper(),
            jwt_issuer=env.get("JWT_ISSUER") or None,
            jwt_audience=env.get("JWT_AUDIENCE") or None,
            jwt_token_use=(env.get("JWT_TOKEN_USE") or "access").strip().lower(),
            jobs_per_hour=_int("JOBS_PER_HOUR", 20),
            poll_interval_seconds=_int("POLL_INTERVAL_SECONDS", 2),
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_model=env.get("OPENAI_MODEL", "gpt-4o-mini"),
            model_batch_size=_int("MODEL_BATCH_SIZE", 25),
            model_concurrency=_int("MODEL_CONCURRENCY", 4),
            openai_rpm=float(env["OPENAI_RPM"]) if env.get("OPENAI_RPM") else None,
            openai_tpm=float(env["OPENAI_TPM"]) if env.get("OPENAI_TPM") else None,
            limiter_wait_max_seconds=_float("LIMITER_WAIT_MAX_SECONDS", 6.0),
            openai_timeout_seconds=_float("OPENAI_TIMEOUT_SECONDS", 30.0),
            line_batch_size=_int("LINE_BATCH_SIZE", 100),
            line_read_ahead=max(1, _int("LINE_READ_AHEAD", 4)),
            fanout_threshold_lines=_int("FANOUT_THRESHOLD_LINES", 2000),
            chunk_lines=_int("CHUNK_LINES", 1000),
            lambda_time_reserve_seconds=_float("LAMBDA_TIME_RESERVE_SECONDS", 20.0),
            inline_wait_max_seconds=_float("INLINE_WAIT_MAX_SECONDS", 10.0),
            rate_limit_ceiling_seconds=_float("RATE_LIMIT_CEILING_SECONDS", 3600.0),
            stale_after_seconds=_int("STALE_AFTER_SECONDS", 300),
            result_inline_max_bytes=_int("RESULT_INLINE_MAX_BYTES", 5_000_000),
            retry_policy=tuple(json.loads(env["MODEL_RETRY_POLICY"])) if env.get("MODEL_RETRY_POLICY") else None,
            ses_from=env.get("SES_FROM") or "reports@example.com",
            webhook_allow_loopback=_true("WEBHOOK_ALLOW_LOOPBACK") and not in_lambda,
            webhook_timeout_seconds=_float("WEBHOOK_TIMEOUT_SECONDS", 15.0),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
