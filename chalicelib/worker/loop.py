"""The checkpointed batch loop over a `Scope` (a range of lines with its own cursor and lease: scopes.py):
read a batch, ask for its answers while a cancel is watched for, write its rows, checkpoint, until the range is
done (then the scope completes), the invocation's time is up (it requeues), or the job stops being ours."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import ChainMap
from typing import Any, Protocol

from chalicelib import faults, observability
from chalicelib.categorize import pipeline
from chalicelib.categorize.errors import JobFatal, LongWait, QuotaBusy
from chalicelib.categorize.normalize import normalize_vendor
from chalicelib.categorize.types import Answer
from chalicelib.jobs import runner, steps
from chalicelib.jobs.runner import Progress
from chalicelib.jobs.states import JobStatus, event_item
from chalicelib.jobs.types import Step
from chalicelib.messages import MAX_DELAY_SECONDS
from chalicelib.tables import Job
from chalicelib.worker import completion, fairness, prefetch, rows
from chalicelib.worker.cancel import CancelWatch, stop
from chalicelib.worker.invocation import Invocation, progress

log = logging.getLogger(__name__)


class Scope(Protocol):
    """A range of a job's lines that one invocation works under its lease."""

    @property
    def claim_owner(self) -> str | None:
        """The owner vendor claims are taken for (claims between a job's chunks), or None for no claims."""

    def holds(self) -> bool:
        """The invocation still holds this range's lease (as last read)."""

    def cursor(self) -> str:
        """The range's checkpoint: the last line id counted ("" before the first)."""

    def next_lines(self, n: int, after: str | None = None) -> list:
        """Up to `n` lines after the checkpoint (or after the line id `after`), in one read."""

    def checkpoint(self, cursor: str, done: Progress, eta: str | None) -> bool:
        """Count `done` and move the checkpoint to `cursor`, under the lease; False when refused."""

    def hand_back(self, delay: int, retries: int, usage: Any = None) -> bool:
        """Give the lease up so that a message `delay` seconds later takes the range up again."""

    def send(self, delay: int, reason: str) -> None:
        """The message that takes the range up again."""

    def requeue(self, delay: int, reason: str, done: Progress | None = None) -> None:
        """hand_back, then send (or complete a cancel requested meanwhile)."""

    def complete(self) -> None:
        """Every line of the range is worked and checkpointed."""


def work(run: Invocation, scope: Scope) -> None:
    try:
        _work(run, scope)
    finally:
        settle(run)
        _count_rest(run)


def _count_rest(run: Invocation) -> None:
    """Usage no checkpoint counted: a prefetch answered after the last one (the loop left on a cancel, a lost
    lease, a failure). Paid for, so it goes to the job; best effort on the way out."""
    if run.backend is None:
        return
    used = run.backend.meter.total()
    rest = used - run.counted.usage
    if not rest.requests:
        return
    try:
        runner.count_retries(run.job.job_id, 0, rest)
        run.counted = dataclasses.replace(run.counted, usage=used)
    except Exception:
        log.warning("could not count a prefetch's usage", extra={"jobId": run.job.job_id}, exc_info=True)


def settle(run: Invocation) -> None:
    """The prefetch in flight (worker/prefetch.py) asks nothing more, and what it asked is answered: before the
    invocation's usage is counted for the last time, and before the invocation returns."""
    if run.prefetch is not None:
        run.prefetch.stop()
        run.prefetch.join()
        run.prefetch = None


def _work(run: Invocation, scope: Scope) -> None:
    job = run.job  # as the claim has just read it; later rounds read it again at the end of each batch
    while True:
        status = JobStatus(job.status)
        if status is JobStatus.CANCELLATION_REQUESTED:
            return stop(job)
        if status is not JobStatus.PROCESSING or not scope.holds():
            return None
        # At least one batch per invocation, so a short budget still makes progress.
        if run.done and time.monotonic() > run.deadline:
            settle(run)
            scope.requeue(0, "continuation", progress(run, {}))
            return None
        # Fair shares: a tenant holding more workers than its share while another waits gives this one back,
        # at this checkpoint (worker/fairness.py); its message goes to the back of the queue.
        if run.done and (fairness.yielding(run)
                         or fairness.must_yield(run.settings, job.tenant or job.owner_id, run.started)):
            settle(run)
            scope.requeue(0, "fair_share", progress(run, {}))
            return None
        lines = next_batch(run, scope)
        if not lines:
            return scope.complete()
        # The previous batch's cache writes go out now, beside this batch (other chunks of the job want its
        # answers soon); the last batch's wait for the invocation's end, after the job is Completed.
        run.background.release()
        with CancelWatch(job.job_id):
            answers = categorize(run, scope, lines)
        if answers is None:
            return None
        faults.point("after_model_call")
        if (completion.takes_last_batch(run, lines)
                and completion.complete(run, completion.LastBatch(lines, answers))):
            return None
        run.written = rows.keep(run.written, rows.write(job, lines, answers))
        faults.point("after_result_writes")
        done = progress(run, answers)
        observability.lines_done(done.lines, done.failed)
        run.done += done.lines
        remaining = int(job.total_lines) - int(job.processed_lines) - done.lines
        eta = runner.eta(remaining, job.started_at, int(job.processed_lines) + done.lines)
        counted = scope.checkpoint(lines[-1].line_id, done, eta)
        if counted:
            _announce_progress(job)
        faults.point("after_checkpoint")
        job.refresh(consistent_read=True)
        if counted:
            _step_progress(job)


def _step_progress(job: Job) -> None:
    """categorize's progress, from the job's counts as the checkpoint left them (all chunks together)."""
    total = int(job.total_lines)
    if total:
        steps.progress(job, Step.CATEGORIZE, min(99, int(job.processed_lines) * 100 // total))


def _announce_progress(job: Job) -> None:
    """job.progress webhooks for the targets that asked (at most one every 10 s per job, fleet-wide)."""
    from chalicelib.delivery import service as delivery

    try:
        delivery.progress(job.job_id, job.tenant or job.owner_id, job.report_id)
    except Exception:  # progress webhooks are best effort: the job goes on
        log.warning("could not announce progress", extra={"jobId": job.job_id}, exc_info=True)


def next_batch(run: Invocation, scope: Scope) -> list:
    """The next batch: LINE_BATCH_SIZE lines, and more (up to LINE_READ_AHEAD times that) while they bring no vendor
    beyond one wave of model requests (MODEL_BATCH_SIZE x MODEL_CONCURRENCY) that this invocation has not
    answered yet. A small job whose vendors fit one wave is one batch: one checkpoint, not one per 100 lines;
    a batch still costs at most one wave, so progress shows as often as before. A crash redoes that batch, and
    asks the model again for it: its cache writes, held until the next batch starts, are lost with it (a
    chunk's are not held: the job's other chunks wait on them, see pipeline._single_flight)."""
    settings, limit = run.settings, run.settings.line_batch_size
    run.ahead.sync(scope.cursor())
    run.ahead.fill(scope.next_lines, low=limit, capacity=limit * settings.line_read_ahead)
    wave = settings.model_batch_size * max(1, settings.model_concurrency)
    return run.ahead.take(_batch_length(run.ahead.lines, limit, wave, _known(run)))


def _known(run: Invocation) -> Any:
    """The vendors this invocation has answered or is asking about in its prefetch (by normalized vendor)."""
    asked = run.prefetch.vendors if run.prefetch is not None else ()
    return ChainMap(run.memo, dict.fromkeys(asked)) if asked else run.memo


def _batch_length(lines: list, limit: int, wave: int, answered: Any) -> int:
    """How many of `lines` make the batch: at least `limit`, then on until a vendor past `wave` new ones."""
    new: set[str] = set()
    take = 0
    for line in lines:
        vendor = normalize_vendor(line.vendor)
        fresh = vendor not in answered and vendor not in new
        if take >= limit and fresh and len(new) >= wave:
            break
        if fresh:
            new.add(vendor)
        take += 1
    return take


def _by(wait: QuotaBusy) -> str:
    from chalicelib.fair.budget import GiveWay

    return "fair share" if isinstance(wait, GiveWay) else "shared limiter"


def _asks(run: Invocation, scope: Scope, lines: list, backend: Any) -> dict[str, Answer]:
    if not lines:
        return {}
    return pipeline.categorize(lines, list(run.job.categories), run.settings, backend, run.memo,
                               run.job.job_id, run.background, claim_owner=scope.claim_owner,
                               # A job from before tenants: its owner key, a bare sub, is its tenant key.
                               tenant=run.job.tenant or run.job.owner_id)


def _prefetches(run: Invocation) -> bool:
    backend = run.backend
    return (backend is not None and run.settings.model_prefetch and backend.lane == "standard"
            and prefetch.paced(backend.limiter))


def _categorize(run: Invocation, scope: Scope, lines: list, pending: prefetch.Prefetch | None) -> dict[str, Answer]:
    """Answers for `lines`: the vendors that `pending` (the previous batch's prefetch) is not asking about first,
    with the next batch's prefetch taking its turn after them, then `pending`'s answers (and what it could not
    get, asked now)."""
    asked = pending.vendors if pending is not None else frozenset()
    later = [line for line in lines if normalize_vendor(line.vendor) in asked]
    own = [line for line in lines if normalize_vendor(line.vendor) not in asked] if later else lines
    backend, seating = run.backend, None
    # Not when the invocation would stop before the next batch: the prefetch would only delay its way out.
    if _prefetches(run) and time.monotonic() + run.settings.openai_timeout_seconds < run.deadline:
        assert backend is not None
        ahead = prefetch.pick(run.ahead.lines, ChainMap(run.memo, dict.fromkeys(asked)), lines,
                              run.settings.model_batch_size)
        if ahead:
            seating = prefetch.Seating(backend.limiter)
            backend = dataclasses.replace(backend, limiter=seating)
            run.prefetch = prefetch.Prefetch(run, scope, ahead, seating)
    try:
        answers = _asks(run, scope, own, backend)
    except BaseException:
        for unasked in (run.prefetch, pending):  # this batch goes no further: neither do the prefetches
            if unasked is not None:
                unasked.stop()
        if pending is not None:
            pending.join()  # its request is paid for: counted with the hand-back
        raise
    finally:
        if seating is not None:
            seating.done()  # every request of the batch has had its turn (or there was none to have)
    if pending is not None:
        got = pending.join()
        run.memo.update({vendor: a for vendor, a in got.items() if not a.needs_review})
        answers.update({line.line_id: got[normalize_vendor(line.vendor)] for line in later
                        if normalize_vendor(line.vendor) in got})
        later = [line for line in later if normalize_vendor(line.vendor) not in got]
    answers.update(_asks(run, scope, later, run.backend))
    return answers


def categorize(run: Invocation, scope: Scope, lines: list) -> dict[str, Answer] | None:
    """Answers for `lines`, or None when the job was re-enqueued or failed meanwhile."""
    pending, run.prefetch = run.prefetch, None
    try:
        return _categorize(run, scope, lines, pending)
    except LongWait as wait:
        settle(run)  # the next batch's prefetch: its usage is counted with the hand-back
        delay = min(MAX_DELAY_SECONDS, max(1, math.ceil(wait.seconds)))
        limited = run.loop.stats.rate_limited - run.counted.rate_limited
        spent = progress(run, {}, waits_until=time.time() + wait.seconds)
        # QuotaBusy: the fleet's own limiter had no turn soon (the provider was not asked); the job is not
        # throttled by the provider, so this wait does not count against RATE_LIMIT_CEILING_SECONDS.
        # One long wait is one event, with the 429s that led to it.
        detail = {"waitSeconds": round(wait.seconds, 3), "requeuedWithDelaySeconds": delay,
                  **({"count": limited} if limited else {}),
                  **({"by": _by(wait)} if isinstance(wait, QuotaBusy) else {})}
        event_item(run.job.job_id, "rate_limited", detail).save()
        scope.requeue(delay, "rate_limited", spent)
        return None
    except JobFatal as fatal:
        runner.fail(run.job, str(fatal))
        return None
