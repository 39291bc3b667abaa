"""The benchmark's environment and processes: one moto server per run, the stack deployed into it.

`prepare_environment()` must run before anything imports chalicelib (settings are read once per process, as in
tests/conftest.py). `Run` owns every process and thread the benchmarks start and stops them on exit, whether
the run ends normally, raises or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "reports-bench"
# Undeclared in .chalice/config.json: chalice local and chalice.test.Client then apply only the top-level
# environment_variables and keep APP_PREFIX=reports-bench (stage `dev` would force reports-dev).
STAGE = "bench"

# Ambient settings that would make a run leave the machine or measure another configuration.
_CLEARED = (
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "WORK_QUEUE_URL", "DLQ_URL", "RESULTS_BUCKET",
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
    "JWT_JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "PUBLIC_BASE_URL", "JOBS_PER_HOUR", "MODEL_BATCH_SIZE",
    "MODEL_CONCURRENCY", "LINE_BATCH_SIZE", "STALE_AFTER_SECONDS", "MODEL_RETRY_POLICY", "INLINE_WAIT_MAX_SECONDS",
    "LAMBDA_TIME_RESERVE_SECONDS", "RATE_LIMIT_CEILING_SECONDS", "WORKER_CRASH_AT", "COMPONENTS", "CHALICE_STAGE",
    "WORKER_CONCURRENCY", "WORKER_TIMEOUT_SECONDS", "WORKER_WAIT_SECONDS", "OPENAI_RPM", "OPENAI_TPM",
    "OPENAI_TIMEOUT_SECONDS", "FANOUT_THRESHOLD_LINES", "CHUNK_LINES", "JWT_SECRET_PARAM", "OPENAI_API_KEY_PARAM",
    "SECRETS_MAX_AGE_SECONDS", "AWS_LAMBDA_FUNCTION_NAME", "LIMITER_WAIT_MAX_SECONDS", "OPENAI_LIMIT_MARGIN",
    "OPENAI_LIMIT_LEARN",
)


def prepare_environment() -> None:
    """Offline credentials and the bench prefix, before chalicelib is imported."""
    if "chalicelib.tables" in sys.modules:
        raise RuntimeError("chalicelib was imported before the bench environment was set")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name in _CLEARED:
        os.environ.pop(name, None)
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "APP_PREFIX": PREFIX, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true",
        # Read by the moto server we start: PurgeQueue more than once a minute (between parts, between rounds).
        "MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR": "false",
    })


class Run:
    """One benchmark run: the moto server, a lazily started `chalice local`, and everything registered."""

    def __init__(self) -> None:
        self._exit = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-"))
        self._exit.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.aws_url = ""
        self._api_url: str | None = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything started, newest first (idempotent)."""
        self._exit.close()

    def defer(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run `callback` when the run closes (after anything registered later)."""
        self._exit.callback(callback, *args, **kwargs)

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start_aws(self) -> str:
        """Start moto's server, deploy the stack into it and point this process at it; the endpoint URL."""
        from local.deploy import deploy
        from local.stack import MotoServer

        server = MotoServer(log_path=self.log_path("moto"))
        # Moto's server joins its keep-alive connection threads on SIGTERM: give it a second, then SIGKILL.
        self.defer(server.stop, 1.0)
        server.start_and_wait(deadline_seconds=30.0)
        os.environ.update(deploy(server.url, PREFIX)["env"])
        from chalicelib.settings import LOCAL_JWT_SECRET

        os.environ.setdefault("JWT_SECRET", LOCAL_JWT_SECRET)  # chalice local and mint_token must agree
        self.aws_url = server.url
        return server.url

    def api_url(self) -> str:
        """The base URL of `chalice local` (stage bench) against this run's moto; started on first use."""
        if self._api_url is None:
            self._api_url = self._start_api()
        return self._api_url

    def _start_api(self) -> str:
        from local.stack import ChaliceLocal, StartupError, free_port

        for attempt in range(3):
            api = ChaliceLocal(free_port(), dict(os.environ), stage=STAGE, log_path=self.log_path("chalice-local"))
            self.defer(api.stop, 5.0)
            try:
                api.start_and_wait(deadline_seconds=45.0)
                return api.url
            except StartupError:
                api.stop(timeout=3.0)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
