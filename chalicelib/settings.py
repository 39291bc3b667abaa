"""The only reader of the environment: one frozen Settings built once per process.

Each field says once where its value comes from, in its metadata:
- `env`: read from the environment (`_env`: the variable's name, or names tried in order, and its parser);
  a variable that is unset (or blank, unless `keep_blank`) leaves the field's default, written only here.
- `derived`: computed from other variables after the loop in `from_env` (each says from what).
- `fixed`: part of the service's contract, not configurable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

# The local default is documented in the README; deployed stages read the secret from SSM.
LOCAL_JWT_SECRET = "local-development-secret-change-me-0123456789"

TABLES = ("reports", "lines", "jobs", "chunks", "events", "results", "vendor-cache", "control", "idempotency")

_YES = ("1", "true", "yes", "on")
_NO = ("0", "false", "no", "off")


def _yes(value: str) -> bool:
    """An opt-in flag: on only when it says so (anything else is off)."""
    return value.strip().lower() in _YES


def _switch(value: str) -> bool:
    """An on/off switch: yes or no, and a typo fails the start instead of silently picking one."""
    word = value.strip().lower()
    if word in _YES or word in _NO:
        return word in _YES
    raise ValueError(f"expected one of {_YES + _NO}, got {value!r}")


def _url(value: str) -> str | None:
    return value.rstrip("/") or None


def _word(value: str) -> str:
    return value.strip().lower()


def _retry_policy(value: str) -> tuple[dict, ...]:
    return tuple(json.loads(value))


def _read_ahead(value: str) -> int:
    return max(1, int(value))


def _weights(value: str) -> tuple[tuple[str, float], ...]:
    from chalicelib.fair.shares import parse_weights  # the format is the fairness module's

    return tuple(parse_weights(value).items())


def _env(*names: str, parse: Callable[[str], Any] = str, keep_blank: bool = False) -> dict[str, Any]:
    """Read from the first of `names` that is set and not blank; `keep_blank`: a set but blank value is parsed."""
    return {"env": names, "parse": parse, "keep_blank": keep_blank}


def _int(name: str) -> dict[str, Any]:
    return _env(name, parse=int, keep_blank=True)


def _float(name: str) -> dict[str, Any]:
    return _env(name, parse=float, keep_blank=True)


def _derived(source: str) -> dict[str, Any]:
    return {"derived": source}


def _fixed(why: str) -> dict[str, Any]:
    return {"fixed": why}


_UNSET = object()


def _read(env: Mapping[str, str], meta: Mapping[str, Any]) -> Any:
    for name in meta["env"]:
        value = env.get(name)
        if value is not None and (value or meta["keep_blank"]):
            return meta["parse"](value)
    return _UNSET


@dataclass(frozen=True)
class Settings:
    prefix: str = field(default="reports-dev", metadata=_env("APP_PREFIX", keep_blank=True))
    region: str = field(default="us-east-1", metadata=_env("AWS_DEFAULT_REGION", "AWS_REGION"))
    aws_endpoint_url: str | None = field(default=None, metadata=_env("AWS_ENDPOINT_URL"))
    work_queue_url: str | None = field(default=None, metadata=_env("WORK_QUEUE_URL"))
    # "": `{prefix}-results` (__post_init__).
    results_bucket: str = field(default="", metadata=_env("RESULTS_BUCKET"))
    public_base_url: str | None = field(default=None, metadata=_env("PUBLIC_BASE_URL", parse=_url))
    cors_allow_origin: str = field(default="*", metadata=_env("CORS_ALLOW_ORIGIN", keep_blank=True))
    jwt_secret: str = field(default=LOCAL_JWT_SECRET, repr=False, metadata=_env("JWT_SECRET"))
    jwt_jwks_url: str | None = field(default=None, metadata=_env("JWT_JWKS_URL"))
    # Deployed stages name SSM parameters (SecureString) instead; chalicelib.credentials reads them at first use.
    jwt_secret_param: str | None = field(default=None, metadata=_env("JWT_SECRET_PARAM"))
    openai_api_key_param: str | None = field(default=None, metadata=_env("OPENAI_API_KEY_PARAM"))
    secrets_max_age_seconds: int = field(default=300, metadata=_int("SECRETS_MAX_AGE_SECONDS"))
    # Observability (chalicelib.observability): JSON logs, EMF metrics and X-Ray only inside Lambda.
    in_lambda: bool = field(default=False, metadata=_derived(
        "AWS_LAMBDA_FUNCTION_NAME set and AWS_CHALICE_CLI_MODE not (chalice local sets both)"))
    service_name: str = field(default="async-reports", metadata=_env("POWERTOOLS_SERVICE_NAME"))
    metrics_namespace: str = field(default="AsyncReports", metadata=_env("POWERTOOLS_METRICS_NAMESPACE"))
    metrics_enabled: bool = field(default=False, metadata=_derived("in_lambda and not POWERTOOLS_METRICS_DISABLED"))
    tracing_enabled: bool = field(default=False, metadata=_derived("in_lambda and not POWERTOOLS_TRACE_DISABLED"))
    log_level: str = field(default="INFO", metadata=_env("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL", parse=str.upper))
    jwt_issuer: str | None = field(default=None, metadata=_env("JWT_ISSUER"))
    jwt_audience: str | None = field(default=None, metadata=_env("JWT_AUDIENCE"))
    # JWKS mode only: the Cognito token kind accepted (`token_use`), "access" or "id" (chalicelib.auth).
    jwt_token_use: str = field(default="access", metadata=_env("JWT_TOKEN_USE", parse=_word))
    jobs_per_hour: int = field(default=20, metadata=_int("JOBS_PER_HOUR"))
    retention_days: int = field(default=30, metadata=_fixed("the API contract's job retention"))
    poll_interval_seconds: int = field(default=2, metadata=_int("POLL_INTERVAL_SECONDS"))
    max_import_lines: int = field(default=5000, metadata=_fixed("the API contract's import limit"))
    openai_api_key: str | None = field(default=None, repr=False, metadata=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = field(default=None, metadata=_env("OPENAI_BASE_URL"))
    openai_model: str = field(default="gpt-4o-mini", metadata=_env("OPENAI_MODEL", keep_blank=True))
    model_batch_size: int = field(default=25, metadata=_int("MODEL_BATCH_SIZE"))
    model_concurrency: int = field(default=4, metadata=_int("MODEL_CONCURRENCY"))
    # The provider's limits, shared by every worker through the DynamoDB limiter (unset: no limiter).
    openai_rpm: float | None = field(default=None, metadata=_env("OPENAI_RPM", parse=float))
    openai_tpm: float | None = field(default=None, metadata=_env("OPENAI_TPM", parse=float))
    # The share of those limits the fleet paces at: the rest is room for jitter between a request's turn and its
    # arrival, which a provider's rolling one-second window would otherwise see as a burst (limiter.py).
    openai_limit_margin: float = field(default=0.95, metadata=_float("OPENAI_LIMIT_MARGIN"))
    # Learn the limits left unset from the provider's x-ratelimit-limit-* headers (every worker then paces
    # through the shared limiter); off: an unset limit is no limit.
    openai_limit_learn: bool = field(default=True, metadata=_env("OPENAI_LIMIT_LEARN", parse=_switch))
    # Longest wait for a turn at that limiter; a longer one hands the chunk back to the queue (limiter.py).
    # At 20,000 lines, 3 s handed chunks back 70 times (SQS messages per 1,000 lines tripled); 6 s did it
    # 8 times at the same throughput.
    limiter_wait_max_seconds: float = field(default=6.0, metadata=_float("LIMITER_WAIT_MAX_SECONDS"))
    # Fair shares between tenants (chalicelib/fair): off unless FAIR_SHARES says on (the deployed template does).
    # TENANT_WEIGHTS "acme=3,globex=1" (a tenant not named weighs 1); FAIR_MIN_SLOTS workers a waiting tenant is
    # given back from a tenant holding more; FAIR_QUANTUM_SECONDS, how long an invocation works before it takes
    # turns with a tenant waiting for a worker that an equal split cannot give (fewer workers than tenants).
    fair_shares: bool = field(default=False, metadata=_env("FAIR_SHARES", parse=_switch))
    tenant_weights: tuple[tuple[str, float], ...] = field(default=(), metadata=_env("TENANT_WEIGHTS", parse=_weights))
    fair_min_slots: int = field(default=1, metadata=_int("FAIR_MIN_SLOTS"))
    fair_quantum_seconds: float = field(default=30.0, metadata=_float("FAIR_QUANTUM_SECONDS"))
    # An invocation's running entry (fair/demand) lapses this long after its last renewal; a live invocation renews
    # it every quarter of that (worker/fairness.turn), so a killed worker stops counting within it.
    fair_running_ttl_seconds: float = field(default=60.0, metadata=_float("FAIR_RUNNING_TTL_SECONDS"))
    openai_timeout_seconds: float = field(default=30.0, metadata=_float("OPENAI_TIMEOUT_SECONDS"))
    # A paced backend asks the next batch's first request while a batch's last ones are out (worker/prefetch.py).
    model_prefetch: bool = field(default=True, metadata=_env("MODEL_PREFETCH", parse=_switch))
    line_batch_size: int = field(default=100, metadata=_int("LINE_BATCH_SIZE"))
    # A batch may take up to this many times line_batch_size lines when they need no more model requests
    # than one wave (worker/loop.next_batch); 1 makes every batch exactly line_batch_size lines (at least 1).
    line_read_ahead: int = field(default=4, metadata=_env("LINE_READ_AHEAD", parse=_read_ahead, keep_blank=True))
    # Jobs with more lines than this fan out into chunks of `chunk_lines`, each worked in parallel.
    fanout_threshold_lines: int = field(default=2000, metadata=_int("FANOUT_THRESHOLD_LINES"))
    chunk_lines: int = field(default=1000, metadata=_int("CHUNK_LINES"))
    lambda_time_reserve_seconds: float = field(default=20.0, metadata=_float("LAMBDA_TIME_RESERVE_SECONDS"))
    inline_wait_max_seconds: float = field(default=10.0, metadata=_float("INLINE_WAIT_MAX_SECONDS"))
    rate_limit_ceiling_seconds: float = field(default=3600.0, metadata=_float("RATE_LIMIT_CEILING_SECONDS"))
    stale_after_seconds: int = field(default=300, metadata=_int("STALE_AFTER_SECONDS"))
    result_inline_max_bytes: int = field(default=5_000_000, metadata=_int("RESULT_INLINE_MAX_BYTES"))
    # ASL retriers for model requests (JSON); None means categorize.retry.DEFAULT_POLICY.
    retry_policy: tuple[dict, ...] | None = field(default=None, metadata=_env("MODEL_RETRY_POLICY",
                                                                            parse=_retry_policy))
    # Delivery (chalicelib/delivery): the verified SES identity emails are sent from; whether webhooks may
    # go to http://127.0.0.1 / localhost (`make run` and the tests only, never a deployed stage: forced off
    # inside Lambda).
    ses_from: str = field(default="reports@example.com", metadata=_env("SES_FROM"))
    webhook_allow_loopback: bool = field(default=False, metadata=_env("WEBHOOK_ALLOW_LOOPBACK", parse=_yes))
    webhook_timeout_seconds: float = field(default=15.0, metadata=_float("WEBHOOK_TIMEOUT_SECONDS"))
    # The worker's performance shortcuts, each behind a named seam: "0"/"false" switches one off (the worker
    # then takes the plain path) to compare the two in `make bench`. Report assembly in memory instead of
    # re-reading the results; completing the job in the last batch's write; per-vendor claims between chunks.
    seam_memory_assembly: bool = field(default=True, metadata=_env("SEAM_MEMORY_ASSEMBLY", parse=_switch))
    seam_complete_with_last_batch: bool = field(default=True,
                                                metadata=_env("SEAM_COMPLETE_WITH_LAST_BATCH", parse=_switch))
    seam_vendor_claims: bool = field(default=True, metadata=_env("SEAM_VENDOR_CLAIMS", parse=_switch))

    def __post_init__(self) -> None:
        if not self.results_bucket:
            object.__setattr__(self, "results_bucket", f"{self.prefix}-results")

    def table(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if "env" in f.metadata and (value := _read(env, f.metadata)) is not _UNSET:
                values[f.name] = value
        # The derived fields (metadata `derived`), and the one rule that overrides a variable.
        in_lambda = bool(env.get("AWS_LAMBDA_FUNCTION_NAME")) and not env.get("AWS_CHALICE_CLI_MODE")
        values["in_lambda"] = in_lambda
        values["metrics_enabled"] = in_lambda and not _yes(env.get("POWERTOOLS_METRICS_DISABLED", ""))
        values["tracing_enabled"] = in_lambda and not _yes(env.get("POWERTOOLS_TRACE_DISABLED", ""))
        if in_lambda:
            values["webhook_allow_loopback"] = False  # a deployed stage never posts to its own host
        return cls(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
