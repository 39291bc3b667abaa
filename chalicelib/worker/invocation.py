"""What one invocation holds while it works a job or a chunk (`Invocation`), how it starts (`start`: the lease, the
retry loop, the model backend), and what it counts per batch (`progress`, against what it `Counted` already)."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from chalicelib import credentials
from chalicelib.categorize import pipeline
from chalicelib.categorize.retry import DEFAULT_POLICY, RetryLoop
from chalicelib.categorize.types import Answer
from chalicelib.categorize.usage import Usage
from chalicelib.jobs import runner
from chalicelib.jobs.runner import Lease, Progress
from chalicelib.jobs.states import event_item
from chalicelib.settings import Settings, get_settings
from chalicelib.tables import Job, LineResult
from chalicelib.worker.readahead import ReadAhead


@dataclass(frozen=True)
class Counted:
    """The retry loop's statistics (RetryLoop.stats) as of the last batch counted: the next batch counts what
    was added since."""

    retries: int = 0
    rate_limited: int = 0
    rate_limited_seconds: float = 0.0
    usage: Usage = Usage()  # the model usage (backend meter) as of the last batch counted

    @classmethod
    def of(cls, stats: Any, usage: Usage) -> Counted:
        return cls(stats.retries, stats.rate_limited, stats.rate_limited_seconds, usage)


@dataclass
class Invocation:
    job: Job
    lease: Lease
    settings: Settings
    deadline: float  # time.monotonic() by which we checkpoint and hand over
    loop: RetryLoop
    backend: pipeline.ModelBackend | None
    started: float
    done: int = 0
    counted: Counted = field(default_factory=Counted)  # retry stats already counted in a checkpoint
    memo: dict[str, Answer] = field(default_factory=dict)  # this invocation's answers by normalized vendor
    background: pipeline.Background = field(default_factory=pipeline.Background)
    ahead: ReadAhead = field(default_factory=ReadAhead)  # lines read past the cursor, not yet worked
    prefetch: Any = None  # the next batch's first request, asked beside this batch's (worker/prefetch.py)
    # Every line result this invocation wrote, when it started the job from its first line (completion.py).
    written: dict[str, LineResult] | None = None


_import_started = threading.Lock()


def _import_provider_beside() -> None:
    """Import provider (openai, pydantic: about a second on a 2-core machine) on a thread of its own, once per
    process. Imported at the first model request instead, it came after the claim, the fan-out and the first
    reads, and delayed the first request by that second; begun here, it overlaps them (they mostly wait on the
    network). An invocation whose vendors are all cached never waits for it."""
    if "chalicelib.categorize.provider" in sys.modules or not _import_started.acquire(blocking=False):
        return
    threading.Thread(target=importlib.import_module, args=("chalicelib.categorize.provider",),
                     name="import-provider", daemon=True).start()


class _Client:
    """The openai client, made on the first model request (provider is imported beside the invocation's first
    steps: _import_provider_beside)."""

    def __init__(self, key: str, base_url: str | None, timeout: float) -> None:
        self._args = (key, base_url, timeout)
        self._client: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # the client's own attributes (`chat`, ...)
        if name.startswith("__"):
            raise AttributeError(name)  # copy, pickle and friends ask before __init__ has run
        with self._lock:  # the model's requests go out on several threads at once
            if self._client is None:
                from chalicelib.categorize import provider  # openai and pydantic: at the first model request

                self._client = provider.client(*self._args)
        return getattr(self._client, name)


def backend(settings: Settings, loop: RetryLoop, tenant: str = "", lane: str | None = None
            ) -> pipeline.ModelBackend | None:
    """The model backend, or None without an API key (the offline rules answer). With fair shares, `tenant`'s
    requests pass the shared limiter through its gate (fair/budget.py).

    `lane` is the job's: flex asks for the flex tier; standard and batch ask the standard tier (a batch job's
    lines that its batch left unanswered go back to the standard lane: worker/batchlane.py).
    """
    key = credentials.openai_api_key(settings)  # SSM in deployed stages (cached), OPENAI_API_KEY locally
    if not key:
        return None
    limiter: Any = None  # a SharedLimiter, or a tenant's gate around it
    if settings.openai_rpm or settings.openai_tpm or settings.openai_limit_learn:
        from chalicelib.categorize import limiter as pacing

        limiter = pacing.SharedLimiter(settings.openai_rpm, settings.openai_tpm, margin=settings.openai_limit_margin,
                                       lead=pacing.LEAD_SECONDS, check_ahead=pacing.CHECK_AHEAD_SECONDS,
                                       late_max=pacing.LATE_MAX_SECONDS,
                                       learn=settings.openai_limit_learn, wait_max=settings.limiter_wait_max_seconds,
                                       key=pacing.key_for(settings.openai_base_url, key))
        if settings.fair_shares and tenant:
            from chalicelib.fair.budget import TenantGate
            from chalicelib.worker.fairness import rules

            limiter = TenantGate(limiter, tenant, rules(settings))
    api = _Client(key, settings.openai_base_url, settings.openai_timeout_seconds)
    return pipeline.ModelBackend(api, settings.openai_model, loop, settings.model_batch_size,
                                 settings.model_concurrency, limiter, lane="flex" if lane == "flex" else "standard")


def retry_loop(settings: Settings, remaining: float, limited_so_far: float = 0.0) -> RetryLoop:
    deadline = time.monotonic() + max(0.0, remaining - settings.lambda_time_reserve_seconds)
    return RetryLoop(settings.retry_policy or DEFAULT_POLICY, deadline=deadline,
                     inline_wait_max=settings.inline_wait_max_seconds,
                     ceiling_seconds=settings.rate_limit_ceiling_seconds, already_limited_seconds=limited_so_far)


def start(context: Any, settings: Settings | None, claim: Any) -> Invocation | None:
    """An invocation holding `claim(lease)`'s job, or None when the claim got nothing."""
    settings = settings or get_settings()
    remaining = context.get_remaining_time_in_millis() / 1000.0
    lease = Lease(owner=str(getattr(context, "aws_request_id", "local")), until=time.time() + remaining + 5)
    if settings.openai_api_key or settings.openai_api_key_param:
        _import_provider_beside()
    job = claim(lease)
    if job is None:
        return None
    loop = retry_loop(settings, remaining, float(job.rate_limited_seconds))
    run = Invocation(job, lease, settings, loop.deadline, loop,
                     backend(settings, loop, job.tenant or job.owner_id, job.lane), time.time())
    if job.batch_state == "collected":
        from chalicelib.worker import batchlane

        run.memo.update(batchlane.answers(job))  # what the provider's batch answered: no request for those
    if settings.fair_shares:
        from chalicelib.worker import fairness

        fairness.give_way_between_requests(run)
    return run


def progress(run: Invocation, answers: dict[str, Answer], waits_until: float | None = None) -> Progress:
    """Counts for this batch, with the retries spent since the previous batch.

    Rate-limited time goes to the job at once, in wall-clock (runner.note_wait): waits that ended now, or with
    `waits_until`, one that the job is about to sit out in the queue. Inline waits get one event here; a long
    wait gets its own (see loop.categorize).
    """
    stats = run.loop.stats
    used = run.backend.meter.total() if run.backend is not None else Usage()
    before, run.counted = run.counted, Counted.of(stats, used)
    limited = stats.rate_limited - before.rate_limited
    waited = stats.rate_limited_seconds - before.rate_limited_seconds
    if waited > 0:
        runner.note_wait(run.job.job_id, waited, waits_until if waits_until is not None else time.time())
    if limited and waits_until is None:
        event_item(run.job.job_id, "rate_limited", {"count": limited, "inline": True,
                                                    "waitSeconds": round(waited, 3)}).save()
    values = answers.values()
    return Progress(lines=len(answers), failed=sum(a.needs_review for a in values),
                    cached=sum(a.source == "cache" for a in values), retries=stats.retries - before.retries,
                    rate_limited_seconds=stats.rate_limited_seconds - before.rate_limited_seconds,
                    usage=used - before.usage)
